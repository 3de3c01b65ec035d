"""MLflow tracking that can never stop training: every call is guarded, failures are logged once.

* One experiment per study, one run per pair, named ``{model}/L{layer}/{control}/lam{lam}/seed{seed}``,
  nested under the study's parent run ``study/<study>`` (tag ``mlflow.parentRunId``): ``python -m jsae.tracking
  URI --study S --marker M`` creates (or finds, by name) the parent once and records its id in the marker,
  which each training job reads (``--mlflow-parent-from``). The summary's study-level logging
  (:func:`log_study_run`) goes into that parent: the figures, and one table row per pair (``lambda`` a column).
* The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (classic model development).
  MLflow 3.17's UI still opens it in its GenAI view until the sidebar is switched to "Model training" (a
  per-browser setting the bundle prefers over the tag): the README says so.
* Each training run logs its activation cache as a dataset input (:func:`cache_dataset`), with a content
  digest made from the cache's stored CRC-32 checksums and attributes (the data is not re-read).
* Telemetry is off (``MLFLOW_DISABLE_TELEMETRY=true``) unless the user set it otherwise.
* A fresh sqlite store is created (and migrated) under an exclusive lock on ``<db>.lock``: MLflow's own
  migrations race when several processes touch a new store at once (``duplicate column name: step``).
  The workflow still creates it once before parallel jobs start (``python -m jsae.tracking URI``).
* A bad URI or a dead tracking server is one warning line; the command goes on (an http(s) server's
  port is probed first, so a dead one costs seconds, not MLflow's retries).
* With a ``sqlite:`` store the artifacts go to ``mlruns/`` next to the database file.
* If the backend is unreachable, :class:`Tracker` logs a warning and becomes a no-op; the run
  directory keeps every metric (``metrics.jsonl``) so nothing is lost.
* Evaluation, probes and tables add their scalars and files to the pair's training run
  (:func:`log_to_pair_run`); the summary records one study-level run (:func:`log_study_run`).
* One meaning per key in a pair's run: training logs under ``train/`` (:mod:`jsae.train.keys`),
  evaluation, probes and the pair's headline numbers under ``eval/`` (:func:`eval_key`), at the
  pair's final training step, so the runs table and Compare show evaluation's values. The files
  (evaluation.json, probes.json) keep their unprefixed keys; the prefix is added here only.

This is the only module of the package that talks to MLflow.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsae.io import read_json, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# An unreachable HTTP server must not stall a training job for minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

log = logging.getLogger("jsae.tracking")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: The namespace of evaluation, probe and headline metrics in a pair's run (training's is ``train/``).
EVAL_PREFIX = "eval/"
DEFAULT_EXPERIMENT = "jsae"
#: The experiment tag MLflow 3's UI reads to choose its view; the classic runs table for model training.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"  # what makes the UI nest a run under another
STUDY_KIND = "study"  # the ``kind`` tag of a study's parent run
#: The study table in the parent run's artifacts (MLflow's log_table format, shown in the Evaluation view).
STUDY_TABLE = "study_summary.json"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (8000 on recent stores; stay below)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):]
    return Path(rest.split("?")[0]) if rest else None


def default_artifact_root(uri: str) -> str | None:
    """``mlruns/`` next to a sqlite database; the server's default for other backends."""
    db = sqlite_path(uri)
    return (db.resolve().parent / "mlruns").as_uri() if db is not None else None


def init_tracking_store(uri: str = DEFAULT_TRACKING_URI, study: str | None = None) -> dict[str, Any]:
    """Create (or migrate) the tracking store once, before parallel training jobs touch it.

    For sqlite this creates the tables (what ``mlflow db upgrade`` does for an existing file) under
    the store's lock (:meth:`Tracker.client`); for a server it checks that it answers. A store that
    cannot be initialised (a bad URI, a dead server) is one warning, never an error: tracking must not
    stop a study, and each job's run directory keeps its metrics. Returns ``{"uri", "database",
    "created", "experiments", "artifact_root"}`` for the workflow's marker, plus ``"error"`` on failure.
    With ``study``: its experiment and parent run exist too (:func:`study_parent_run`), ``"parent_run_id"``
    (None when tracking failed) and ``"experiment"`` are added.
    """
    db = sqlite_path(uri)
    existed = db is not None and db.is_file() and db.stat().st_size > 0
    record: dict[str, Any] = {
        "uri": uri,
        "database": str(db.resolve()) if db is not None else None,
        "created": False,
        "experiments": [],
        "artifact_root": default_artifact_root(uri),
    }
    if study is not None:
        record.update(experiment=study, parent_run_id=None)
    try:
        experiments = Tracker.client(uri).search_experiments()
        if study is not None:
            record["parent_run_id"] = study_parent_run(uri, study)
    except Exception as exc:
        record["error"] = Tracker.describe(exc)
        log.warning("MLflow tracking store %s cannot be initialised (%s); continuing without tracking: each job "
                    "warns once and its run directory keeps every metric", uri, record["error"])
        return record
    log.info("tracking store ready at %s (%d experiments)%s", uri, len(experiments),
             f", study {study!r} parent run {record['parent_run_id']}" if study is not None else "")
    record.update(created=db is not None and not existed, experiments=[e.name for e in experiments])
    return record


def study_run_name(study: str) -> str:
    """The name of a study's parent run."""
    return f"study/{study}"


def study_parent_run(uri: str, study: str) -> str:
    """The id of the study's parent run, created (FINISHED until the summary logs into it) if there is none.

    Found by name and ``kind`` tag, so re-initialising a store reuses it; raises on a backend failure.
    The lookup and creation hold the sqlite store's lock, so two initialisations cannot create two parents.
    """
    from jsae.io import file_lock

    db = sqlite_path(uri)
    lock = file_lock(db.resolve().with_name(f"{db.name}.lock")) if db is not None else _no_lock()
    tracker = Tracker(uri, study, quiet=True)
    client = Tracker.client(uri)
    with lock:
        tracker._client = client
        exp_id = tracker._experiment_id()
        name = study_run_name(study)
        found = client.search_runs([exp_id], f"tags.kind = '{STUDY_KIND}' and attributes.run_name = '{name}'",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, run_name=name, tags={"kind": STUDY_KIND, "study": study})
        client.log_batch(run.info.run_id, params=[_param("study", study), _param("kind", STUDY_KIND)])
        client.set_terminated(run.info.run_id)
        return run.info.run_id


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value))


class _no_lock:  # noqa: N801  (a null context manager named like file_lock's)
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def read_parent_run_id(marker: str | os.PathLike[str]) -> str | None:
    """The study's parent run id from the workflow's tracking marker, None (one warning) if it has none."""
    try:
        record = read_json(marker)
        run_id = record.get("parent_run_id")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("tracking marker %s is unreadable (%s); the run is not nested under the study's run",
                    marker, Tracker.describe(exc))
        return None
    if not run_id and not record.get("error"):  # a failed store: the job's tracker warns about it
        log.warning("tracking marker %s has no parent_run_id; the run is not nested under the study's run", marker)
    return str(run_id) if run_id else None


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a JSON value (numpy scalars and arrays, bytes)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


#: The cache attributes recorded in the dataset input's profile (what the cache is of).
CACHE_PROFILE_KEYS = ("model", "layer", "split", "n_tokens", "d_model", "dtype")


def cache_digest(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """``(digest, attrs)`` of an activation cache without reading its activations.

    The digest is the first 32 hex digits (MLflow stores 36 characters at most) of the SHA-256 of the
    canonical JSON of ``{"attrs": every file attribute but "request", "x_crc32": the per-block CRC-32s of x,
    "crc32": {dataset: its CRC-32}}``: any changed row changes a block's checksum (:mod:`jsae.data.cache`).
    A cache from before checksums has ``x_crc32`` null: its digest covers the attributes only.
    """
    import hashlib
    import json

    import h5py

    from jsae.data.cache import CHECKSUMS

    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items() if k != "request"}
        sums = [int(v) for v in f[CHECKSUMS][()]] if CHECKSUMS in f else None
        crcs = {name: int(f[name].attrs["crc32"]) for name in sorted(f) if "crc32" in f[name].attrs}
    text = json.dumps({"attrs": attrs, "x_crc32": sums, "crc32": crcs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], attrs


def cache_dataset(path: str | os.PathLike[str]) -> Any:
    """The activation cache as an ``mlflow.entities.Dataset``: a local source (the cache's path), the
    :func:`cache_digest`, and a profile of its :data:`CACHE_PROFILE_KEYS` attributes and path."""
    import json

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    path = Path(path).resolve()
    digest, attrs = cache_digest(path)
    source = _local_source(path)
    name = f"{attrs.get('model')}/L{attrs.get('layer')}/{attrs.get('split')}"
    meta = MetaDataset(source, name=name, digest=digest).to_dict()
    profile = {"path": str(path), **{k: attrs.get(k) for k in CACHE_PROFILE_KEYS}}
    return Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"], source=meta["source"],
                   profile=json.dumps(profile, sort_keys=True, default=str))


def _local_source(path: Path) -> Any:
    """MLflow's ``local`` dataset source of ``path`` (a class MLflow registers at import, not importable by name)."""
    import json

    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": str(path)}), source_type="local")


def run_name(model: str, layer: int, lam: float, control: str, seed: int) -> str:
    """The MLflow run name of a pair: ``{model}/L{layer}/{control}/lam{lam}/seed{seed}`` (its result path)."""
    return f"{model}/L{layer}/{control}/lam{lam:g}/seed{seed}"


def eval_key(name: str) -> str:
    """The MLflow key of an evaluation or probe metric: ``eval/{name}`` (``eval/in/explained_variance``,
    ``eval/probe/linear_frac``); a name already under ``eval/`` (``eval/n_tokens``) is not prefixed twice."""
    return name if name.startswith(EVAL_PREFIX) else f"{EVAL_PREFIX}{name}"


def pair_headlines(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The pair's headline numbers that are not in evaluation.json, computed from its metrics with the
    report's own definitions: ``ce/score_mean`` (fig. 5's y-axis, :func:`jsae.report.results.ce_score_mean`)
    when either CE loss score is present. Unprefixed, like evaluation.json's keys."""
    from jsae.eval.metrics import CE_SCORE_MEAN_KEY, IN_CE_SCORE_KEY, OUT_CE_SCORE_KEY
    from jsae.report.results import PairResult, ce_score_mean

    if IN_CE_SCORE_KEY not in metrics and OUT_CE_SCORE_KEY not in metrics:
        return {}
    scores = {k: float(metrics[k]) for k in (IN_CE_SCORE_KEY, OUT_CE_SCORE_KEY) if k in metrics}
    # A NaN mean (a refused or missing score, by the report's rule) is dropped by Tracker.log_metrics.
    return {CE_SCORE_MEAN_KEY: ce_score_mean(PairResult("", 0, "", 0.0, metrics=scores))}


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``a.b`` keys and values as strings (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."
    return flat


class Tracker:
    """One MLflow run; every method is a no-op after the first backend failure (logged once).

    ``Tracker.disabled()`` gives a tracker that does nothing (``--mlflow-uri none``). ``quiet``: the
    failure is only recorded (``error``, ``status``), for callers that warn in their own words.
    """

    #: Seconds to wait for a tracking server's TCP port before giving up (a dead server fails fast).
    CONNECT_TIMEOUT_S = 3.0

    def __init__(self, uri: str | None, experiment: str = DEFAULT_EXPERIMENT, *, quiet: bool = False) -> None:
        self.uri, self.experiment = uri, experiment
        self.run_id: str | None = None
        self.error: str | None = None if uri else "disabled"
        self.quiet = quiet
        self._client: Any = None

    @staticmethod
    def describe(exc: BaseException) -> str:
        """``Type: first line of the message``, at most 300 characters (for one log line and run.json)."""
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]

    @classmethod
    def client(cls, uri: str) -> Any:
        """An ``MlflowClient`` whose store is ready; raises on a bad URI or an unreachable server.

        A sqlite store is created or migrated under an exclusive lock on ``<db>.lock``: MLflow's alembic
        migrations race when several fresh processes open a new database at once (all but one lose
        tracking). An http(s) server's port is probed first, so a dead server costs
        :attr:`CONNECT_TIMEOUT_S` at most instead of MLflow's retries with backoff.
        """
        import socket
        import urllib.request
        from urllib.parse import urlparse

        from mlflow.tracking import MlflowClient

        from jsae.io import file_lock

        url = urlparse(uri)
        # Behind a proxy the server's own port may be unreachable directly: leave that case to MLflow.
        direct = not urllib.request.getproxies().get(url.scheme) or urllib.request.proxy_bypass(url.hostname or "")
        if url.scheme in ("http", "https") and direct:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                socket.create_connection((url.hostname or "localhost", port), timeout=cls.CONNECT_TIMEOUT_S).close()
            except OSError as exc:
                raise ConnectionError(f"tracking server {url.hostname}:{port} is unreachable ({exc})") from None
        db = sqlite_path(uri)
        if db is None:
            return MlflowClient(tracking_uri=uri)
        db = db.resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(db.with_name(f"{db.name}.lock")):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # the tables exist before the lock is released
        return client

    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None)

    @property
    def active(self) -> bool:
        return self.error is None and self.run_id is not None

    @property
    def status(self) -> str:
        """``ok``, ``disabled`` or ``unreachable: <reason>`` for run.json."""
        if self.error is None:
            return "ok"
        return self.error if self.error == "disabled" else f"unreachable: {self.error}"

    def _fail(self, what: str, exc: BaseException) -> None:
        msg = self.describe(exc)
        if self.error is None and not self.quiet:
            log.warning("MLflow tracking at %s failed while %s (%s); continuing without it, the output files keep "
                        "every result", self.uri, what, msg)
        self.error = msg

    def start(self, name: str, *, params: Mapping[str, Any], tags: Mapping[str, Any],
              run_id: str | None = None, parent_run_id: str | None = None) -> str | None:
        """Start (or, with ``run_id``, resume) the run; returns its id, or None when tracking is off.
        ``parent_run_id``: the study's run, under which the UI nests this one."""
        if self.error is not None:
            return None
        try:
            from mlflow.entities import Param, RunTag

            self._client = self.client(self.uri)
            if run_id is not None:
                try:
                    self._client.get_run(run_id)
                    self._client.update_run(run_id, status="RUNNING")
                    self.run_id = run_id
                    log.info("resuming MLflow run %s", run_id)
                    return run_id
                except Exception as exc:  # the old run is gone: start a fresh one
                    log.warning("MLflow run %s cannot be resumed (%s); starting a new run", run_id, type(exc).__name__)
            exp_id = self._experiment_id()
            str_tags = {key: str(value) for key, value in tags.items()}
            if parent_run_id:
                str_tags[PARENT_TAG] = parent_run_id
            run = self._client.create_run(exp_id, run_name=name, tags=str_tags)
            self.run_id = run.info.run_id
            flat = flatten_params(params)
            items = sorted(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
            self._client.log_batch(self.run_id, tags=[RunTag("mlflow.runName", name)])
            log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, name, self.experiment, self.uri)
            return self.run_id
        except Exception as exc:
            self._fail("starting the run", exc)
            return None

    def attach(self, run_id: str) -> bool:
        """Log into an existing run (evaluation, probes and tables add to the pair's training run)."""
        if self.error is not None:
            return False
        try:
            self._client = self.client(self.uri)
            self._client.get_run(run_id)
            self.run_id = run_id
            return True
        except Exception as exc:
            self._fail(f"opening run {run_id}", exc)
            return False

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # an experiment from before the tag
                self._client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            root = default_artifact_root(self.uri or "")
            return self._client.create_experiment(self.experiment, artifact_location=root,
                                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:
            # Another job created it between our lookup and our create.
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                     if v is not None and math.isfinite(float(v))]
            self._client.log_batch(self.run_id, metrics=batch)
        except Exception as exc:
            self._fail(f"logging metrics at step {step}", exc)

    def log_cache_input(self, path: str | os.PathLike[str]) -> None:
        """Log the activation cache at ``path`` as the run's training dataset (:func:`cache_dataset`)."""
        if not self.active:
            return
        try:
            from mlflow.entities import DatasetInput, InputTag

            dataset = cache_dataset(path)
            self._client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
        except Exception as exc:
            self._fail("logging the activation cache as an input", exc)

    def log_table(self, rows: Sequence[Mapping[str, Any]], artifact_file: str) -> None:
        """Log ``rows`` (one dict per row) as an MLflow table artifact."""
        if not self.active:
            return
        try:
            import pandas as pd

            self._client.log_table(self.run_id, data=pd.DataFrame(list(rows)), artifact_file=artifact_file)
        except Exception as exc:
            self._fail("logging a table", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        try:
            from mlflow.entities import RunTag

            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception as exc:
            self._fail("setting tags", exc)

    def log_artifacts(self, local_dir: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if not self.active:
            return
        try:
            self._client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        except Exception as exc:
            self._fail("uploading artifacts", exc)

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if not self.active:
            return
        try:
            self._client.log_artifact(self.run_id, str(local_path), artifact_path)
        except Exception as exc:
            self._fail("uploading an artifact", exc)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED (or FAILED / KILLED)."""
        if not self.active:
            return
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            self._fail("closing the run", exc)


def upload_run(run_dir: str | os.PathLike[str], uri: str, experiment: str | None = None,
               cache: str | os.PathLike[str] | None = None) -> str:
    """Log a finished run directory to MLflow after the fact (its backend was unreachable, or another store).

    Params and tags from ``run.json``, every row of ``metrics.jsonl`` at its step, the final metrics,
    and ``sae_in/``, ``sae_out/``, ``metrics.jsonl``, ``run.json`` as artifacts. Metric keys go under
    ``train/`` as training logs them (a run directory written before the namespace existed has bare
    keys; :func:`jsae.train.keys.train_key` maps both to the same names). The run is a child of the
    experiment's study run (:func:`study_parent_run`, found or created), as training nests it; ``cache``, the
    activation cache it trained on (checked against run.json's record of it), is logged as its input.
    ``run.json`` is then rewritten (atomically) with the new run id, so ``evaluate`` logs to it. Returns the run id.
    """
    import json

    from jsae.train.baseline import CODER_DIRNAME
    from jsae.train.baseline import run_name as baseline_run_name
    from jsae.train.keys import STEP, train_key

    run_dir = Path(run_dir)
    record = read_json(run_dir / "run.json")
    if cache is not None:
        _check_upload_cache(cache, record.get("cache", {}), run_dir)
    tracker = Tracker(uri, experiment or record.get("mlflow_experiment") or DEFAULT_EXPERIMENT)
    model_name = str(record.get("model_name") or record["model"])
    if "method" in record:  # a transcoder baseline (jsae.train.baseline): named by its method, no lambda
        name = baseline_run_name(model_name, int(record["layer"]), str(record["control"]), str(record["method"]),
                                 int(record.get("seed") or 0))
    else:
        name = run_name(model_name, int(record["layer"]), float(record["lam"]), str(record["control"]),
                        int(record.get("seed") or 0))
    parent = None
    if tracker.error is None:
        try:
            parent = study_parent_run(uri, tracker.experiment)
        except Exception as exc:
            tracker._fail("finding the study's run", exc)
    run_id = tracker.start(name, params=record.get("params", {}), tags=record.get("mlflow_tags", {}),
                           parent_run_id=parent)
    if run_id is None:
        raise ValueError(f"cannot log {run_dir} to MLflow at {uri} ({tracker.status}); "
                         "expected a reachable tracking store")
    if cache is not None:
        tracker.log_cache_input(cache)
    metrics_file = run_dir / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    for row in rows:
        tracker.log_metrics({train_key(k): v for k, v in row.items() if k != STEP}, step=int(row[STEP]))
    tracker.log_metrics({train_key(k): v for k, v in record.get("metrics", {}).items()},
                        step=int(record.get("n_steps", 0)))
    for sub in ("sae_in", "sae_out", CODER_DIRNAME):
        if (run_dir / sub).is_dir():
            tracker.log_artifacts(run_dir / sub, sub)
    if metrics_file.is_file():
        tracker.log_artifact(metrics_file)
    record.update(mlflow_uri=uri, mlflow_experiment=tracker.experiment, mlflow_run_id=run_id,
                  mlflow_status=tracker.status)
    write_json(run_dir / "run.json", record)
    tracker.log_artifact(run_dir / "run.json")
    tracker.finish()
    if tracker.error is not None:
        raise ValueError(f"logging {run_dir} to MLflow at {uri} failed part-way ({tracker.error}); "
                         "expected a reachable store")
    log.info("logged %s to MLflow run %s (%s)", run_dir, run_id, name)
    return run_id


def _check_upload_cache(cache: str | os.PathLike[str], recorded: Mapping[str, Any], run_dir: Path) -> None:
    """The cache given to :func:`upload_run` is the one the run trained on: its attrs agree with run.json's."""
    from jsae.data.cache import ActivationCache
    from jsae.train.trainer import jsonable

    opened = ActivationCache.open(cache)
    try:
        attrs = jsonable(dict(opened.attrs))  # as training records them in run.json
    finally:
        opened.close()
    differ = sorted(k for k in recorded if k in attrs and _plain(recorded[k]) != attrs[k])
    if differ:
        key = differ[0]
        raise ValueError(f"cache {cache} has {key}={attrs[key]!r} but {run_dir} trained on {key}="
                         f"{recorded[key]!r}; expected the cache the run trained on")


def log_to_pair_run(
    uri: str | None,
    run_id: str | None,
    metrics: Mapping[str, float],
    artifacts: Iterable[str | os.PathLike[str]] = (),
    *,
    step: int | None,
) -> bool:
    """Log evaluation scalars (and files, under ``evaluation/``) to the pair's existing run; warn and
    return False if it cannot.

    ``metrics`` are evaluation.json / probes.json's unprefixed keys; each is logged as :func:`eval_key`
    of it, with :func:`pair_headlines` added, at ``step``: the pair's final training step (run.json's
    ``n_steps``), so they are the run's latest values. ``uri`` None or empty: tracking is off (no
    warning). ``run_id`` or ``step`` None: no run, or a run.json without ``n_steps``, to add to (a
    warning; the files are written regardless).
    """
    if not uri:
        return False
    if not run_id:
        warnings.warn("no mlflow_run_id in run.json; the evaluation is written to files only", stacklevel=2)
        return False
    if step is None:
        warnings.warn("no n_steps in run.json; expected the pair's final training step, the evaluation is "
                      "written to files only", stacklevel=2)
        return False
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} is invalid; expected the pair's final training step, an integer >= 0")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    scalars.update(pair_headlines(scalars))
    tracker = Tracker(uri, quiet=True)  # the warning below is the one line
    if tracker.attach(run_id):
        tracker.log_metrics({eval_key(k): v for k, v in scalars.items()}, step=step)
        for path in artifacts:
            tracker.log_artifact(path, "evaluation")
    if tracker.error is not None:
        warnings.warn(f"MLflow logging to {uri} (run {run_id}) failed: {tracker.error}; the files are written",
                      stacklevel=2)
        return False
    return True


def log_study_run(uri: str | None, experiment: str, *, metrics: Mapping[str, float], n_pairs: int,
                  artifacts: Sequence[str | os.PathLike[str]], out_run: str | os.PathLike[str],
                  name: str | None = None, table: Sequence[Mapping[str, Any]] = (),
                  parent_run_id: str | None = None) -> dict[str, Any]:
    """Log into the study's parent run: ``metrics`` at step 0, ``table`` (one row per pair, ``lambda`` a
    column) as :data:`STUDY_TABLE`, the files as artifacts (figures under ``figures/``), ``n_pairs`` as a tag.

    The parent is ``parent_run_id`` (the workflow's marker), else the study's run found or created by name
    (:func:`study_parent_run`). Writes ``out_run`` (run id, name, experiment, URI, status, artifacts) and
    returns that record.
    """
    missing = [str(p) for p in artifacts if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"artifact {missing[0]} does not exist; expected the study's figures and summary files")
    tracker = Tracker(uri or None, experiment)
    run_name = name or study_run_name(experiment)
    if tracker.error is None and not parent_run_id:
        try:
            parent_run_id = study_parent_run(str(uri), experiment)
        except Exception as exc:
            tracker._fail("finding the study's run", exc)
    if parent_run_id and tracker.attach(parent_run_id):
        tracker.set_tags({"n_pairs": n_pairs})  # a tag: a study that grows logs a new count
        tracker.log_metrics(metrics, step=0)
        if table:
            tracker.log_table(table, STUDY_TABLE)
        for p in map(Path, artifacts):
            tracker.log_artifact(p, "figures" if p.parent.name == "figures" else None)
        tracker.finish()
    record = {"run_id": tracker.run_id, "run_name": run_name, "experiment": experiment, "tracking_uri": uri,
              "status": tracker.status, "artifacts": [str(p) for p in artifacts]}
    write_json(out_run, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m jsae.tracking [URI]``: initialise the store once (the workflow's first step);
    ``python -m jsae.tracking URI --upload RUN_DIR...``: log finished run directories after the fact."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jsae.tracking", description=main.__doc__)
    parser.add_argument("uri", nargs="?", default=DEFAULT_TRACKING_URI, help="tracking URI (default: %(default)s)")
    parser.add_argument("--upload", nargs="+", default=None, metavar="RUN_DIR", help="run directories to log")
    parser.add_argument("--experiment", default=None, help="experiment for --upload (default: the one in run.json)")
    parser.add_argument("--cache", default=None, help="with --upload: the activation cache the runs trained on, "
                        "logged as their input (checked against run.json)")
    parser.add_argument("--study", default=None, help="create (or find) this study's experiment and parent run")
    parser.add_argument("--marker", default=None, help="write the store's record (with parent_run_id) here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = init_tracking_store(args.uri, args.study)
    if args.marker is not None:
        write_json(args.marker, {"tracking_uri": args.uri, **record})
    for run_dir in args.upload or []:
        try:
            upload_run(run_dir, args.uri, args.experiment, args.cache)
        except (ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
