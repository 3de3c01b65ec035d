"""One run directory: train a pair into it (resumable), export it in SAELens format and record it.

* :func:`run_training` trains from an MLP and any :class:`~jsae.train.sources.BatchSource`;
  :func:`train_from_files` opens the HDF5 cache and loads the model's MLP first (the CLI and the
  Snakemake rule). Each checks its input once (pair arguments; the run directory, where a finished
  identical run is skipped before anything is loaded; the cache's attributes) and hands the checked
  objects to the training proper, which checks nothing again.
* The run directory gets ``sae_in/``, ``sae_out/`` (SAELens), ``metrics.jsonl`` and ``run.json``
  (:class:`RunRecord`), written to a temp directory and renamed; checkpoints live in
  ``.{run_dir}.work`` next to it (:func:`work_dir_for`) and are removed once the run is complete.
* MLflow (through :mod:`jsae.tracking`): one run per pair; its params and tags, run.json and the
  SAELens metadata all derive from the one :class:`RunRecord`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jsae import __version__
from jsae.checks import same_model
from jsae.devices import DTYPES, resolve_device
from jsae.io import atomic_dir, atomic_path, read_json, write_json
from jsae.nn.mlp import MLP, mlp_from_module
from jsae.nn.pair import EVALUATION_POINT, JSAEPair, expected_norm_scale
from jsae.nn.sae import TopKSAE
from jsae.train import keys
from jsae.train.config import TrainConfig
from jsae.train.sources import BatchSource
from jsae.train.trainer import Trainer, TrainerBase, TrainResult, fingerprint_diff, jsonable

log = logging.getLogger("jsae.train")

CONTROLS = ("trained", "reinit")
METRICS_FILENAME = "metrics.jsonl"
RUN_FILENAME = "run.json"
#: Tokens read from the start of the data order to estimate the activation scales (expected_norm).
NORM_ESTIMATE_TOKENS = 65536


def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """Where checkpoints of ``out_dir`` live: a hidden sibling, so the run directory appears only when done."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.work"


def run_identity(config: TrainConfig, *, model: str, layer: int, control: str) -> dict[str, Any]:
    """What makes a run this run: compared with a finished run's and with a checkpoint's."""
    return {"model": model, "layer": layer, "control": control, **dataclasses.asdict(config)}


def recorded_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run's recorded identity, with each :class:`TrainConfig` field it predates set to the field's
    default (fields are added with defaults that reproduce the earlier training, e.g. ``auxk_coef = 0``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **identity}


def check_pair_args(*, layer: object, control: object) -> None:
    """One-line ``ValueError`` for a bad layer index or control."""
    if control not in CONTROLS:
        raise ValueError(f"control={control!r} is invalid; expected one of {', '.join(CONTROLS)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer={layer!r} is invalid; expected a non-negative integer")


def check_out_dir(
    out_dir: str | os.PathLike[str], identity: Mapping[str, Any], *, force: bool
) -> dict[str, Any] | None:
    """The finished run at ``out_dir`` if it is this run (skip it), None to train; errors otherwise.

    A finished run (``run.json`` present) from other hyper-parameters, or a non-empty directory that
    is not a finished run, is refused unless ``force`` (which retrains and replaces it at the end).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; expected a run directory path")
    run_json = out / RUN_FILENAME
    if run_json.is_file():
        if force:
            log.warning("%s holds a finished run; --force: retraining and replacing it", out)
            return None
        record = read_json(run_json)
        diff = fingerprint_diff(jsonable(recorded_identity(record.get("identity", {}))), jsonable(dict(identity)))
        if diff:
            raise ValueError(
                f"{out} already holds a finished run with other settings ({diff}); "
                "expected a new --out directory, or --force to replace it"
            )
        return record
    # Snakemake creates the directories of declared outputs (run dir, sae_in/, sae_out/) before the job.
    files = [p for p in out.rglob("*") if not p.is_dir()] if out.is_dir() else []
    if files and not force:
        raise ValueError(
            f"{out} holds files ({files[0].relative_to(out)}, ...) but no {RUN_FILENAME}; "
            "expected an absent directory or one with only empty sub-directories (or --force)"
        )
    return None


def check_cache_matches(attrs: Mapping[str, Any], *, model: str | None, layer: int) -> None:
    """One-line ``ValueError`` when the cache was written for another layer or (unless None) model."""
    cached_model, cached_layer = attrs.get("model"), attrs.get("layer")
    if cached_layer is not None and int(cached_layer) != int(layer):
        raise ValueError(f"the cache holds layer {cached_layer} activations; expected layer {layer} (--layer)")
    if cached_model is not None and not same_model(cached_model, model):
        raise ValueError(f"the cache holds activations of model {cached_model!r}; expected model {model!r} (--model)")


def build_pair(mlp: MLP | torch.nn.Module, config: TrainConfig, *, device: torch.device | str = "cpu") -> JSAEPair:
    """Two freshly initialised TopK SAEs around ``mlp`` (init seeds ``2·seed`` and ``2·seed + 1``: distinct for
    every training seed, so seed replicates never share an initialisation)."""
    mlp = mlp_from_module(mlp)
    dims = config.dims(mlp.d_in, mlp.d_out)
    dtype = DTYPES[config.dtype]
    sae_in = TopKSAE(mlp.d_in, dims["n_latents_in"], dims["k_in"], seed=2 * config.seed, dtype=dtype)
    sae_out = TopKSAE(mlp.d_out, dims["n_latents_out"], dims["k_out"], seed=2 * config.seed + 1, dtype=dtype)
    return JSAEPair(sae_in, sae_out, mlp).to(device)


@torch.no_grad()
def estimate_activation_scales(
    mlp: MLP, source: BatchSource, config: TrainConfig, *, device: torch.device | str = "cpu",
    n_tokens: int = NORM_ESTIMATE_TOKENS,
) -> tuple[float, float]:
    """``(input_scale, output_scale)`` giving x and y = MLP(x) mean L2 norm sqrt(d) (``expected_norm``).

    Estimated on the first ``n_tokens`` of the training order, so a resumed run gets the same scales.
    """
    x_norms: list[Tensor] = []
    y_norms: list[Tensor] = []
    seen = 0
    for batch in source.batches(min(config.batch_size, n_tokens), seed=config.seed):
        x = batch.to(device=device, dtype=mlp.W_out.dtype)
        x_norms.append(x.double().norm(dim=1).cpu())
        y_norms.append(mlp(x).double().norm(dim=1).cpu())
        seen += x.shape[0]
        if seen >= n_tokens:
            break
    return expected_norm_scale(torch.cat(x_norms), mlp.d_in), expected_norm_scale(torch.cat(y_norms), mlp.d_out)


@dataclass(frozen=True)
class RunRecord:
    """One run's facts, each set once: run.json, the MLflow params and tags and the SAELens
    metadata are derived from them (the pair is named by :attr:`names` everywhere)."""

    model: str  # the model SPEC (compared with the cache's and by `evaluate`)
    model_name: str  # short name: the MLflow run name and tag
    layer: int
    control: str
    config: TrainConfig
    dims: Mapping[str, int]  # TrainConfig.dims: n_latents_in/out, k_in/out
    mlp: Mapping[str, Any]  # d_in, d_mlp, mlp_kind
    hook: str | None  # the cache's input hook
    hook_name: str  # the MLP's module path
    cache: Mapping[str, Any]  # the cache's attributes as JSON values
    activation_scales: Mapping[str, float]  # {"in": input_scale, "out": output_scale}
    device: str
    autocast: str | None

    @property
    def names(self) -> dict[str, Any]:
        """What names the pair: model, layer, control, lam and the training seed."""
        return {"model": self.model, "layer": self.layer, "control": self.control, "lam": self.config.lam,
                "seed": self.config.seed}

    @property
    def identity(self) -> dict[str, Any]:
        return run_identity(self.config, model=self.model, layer=self.layer, control=self.control)

    def pair(self) -> dict[str, Any]:
        """run.json's ``pair`` section: the names and both SAEs' sizes."""
        d = self.dims
        return {**self.names, "k": d["k_in"], "n_latents": d["n_latents_in"], "k_out": d["k_out"],
                "n_latents_out": d["n_latents_out"]}

    def params(self) -> dict[str, Any]:
        """MLflow params (and run.json's ``params``): every hyper-parameter and what it ran on. One stable name
        each, for the Compare view: λ is ``lambda`` only, ``k`` and ``n_latents`` are the input SAE's."""
        identity = {("lambda" if key == "lam" else key): value for key, value in self.identity.items()}
        return {
            **identity, **self.dims, "n_latents": self.dims["n_latents_in"], **self.mlp,
            "n_steps": self.config.n_steps, "model_name": self.model_name,
            "evaluation_point": EVALUATION_POINT, "device": self.device, "jsae_version": __version__,
            "input_scale": self.activation_scales["in"], "output_scale": self.activation_scales["out"],
            "cache": {k: v for k, v in self.cache.items() if isinstance(v, (str, int, float, bool))},
        }

    def tags(self, study: str | None = None) -> dict[str, Any]:
        """MLflow tags, to filter and group runs by (the values are params): the study, the model by its
        short name, the layer and the control; λ and the sizes are params only."""
        tags = {"model": self.model_name, "layer": self.layer, "control": self.control}
        return {"study": study, **tags} if study else tags

    def sae_metadata(self) -> dict[str, Any]:
        """The ``metadata`` of both SAELens ``cfg.json`` files (SAELens names the model and layer so)."""
        return {"model_name": self.model, "hook_layer": self.layer, "control": self.control, "lam": self.config.lam,
                "context_size": self.cache.get("context_length"), "jsae_version": __version__,
                "evaluation_point": EVALUATION_POINT}

    def to_json(
        self, result: TrainResult, *, metrics: Mapping[str, float], session_wall_s: float, mlflow_uri: str | None,
        experiment: str, mlflow_status: str,
    ) -> dict[str, Any]:
        """run.json: the facts, what they derive to, and the outcome (timings, final metrics, MLflow)."""
        return {
            **run_json_fields(self, result, metrics=metrics, session_wall_s=session_wall_s, mlflow_uri=mlflow_uri,
                              experiment=experiment, mlflow_status=mlflow_status),
            "pair": self.pair(),
            "evaluation_point": EVALUATION_POINT,
        }


def run_json_fields(
    record: Any, result: TrainResult, *, metrics: Mapping[str, float], session_wall_s: float, mlflow_uri: str | None,
    experiment: str, mlflow_status: str,
) -> dict[str, Any]:
    """run.json's fields every run has (a pair's :class:`RunRecord`, a baseline's record): the names, where it
    read, what it ran on, timings, final metrics and MLflow; the record adds its own sections."""
    return {
        **record.names,
        "model_name": record.model_name,
        "seed": record.config.seed,
        "hook": record.hook,
        "hook_name": record.hook_name,
        "identity": record.identity,
        "params": record.params(),
        "activation_scales": dict(record.activation_scales),
        "cache": dict(record.cache),
        "jsae_version": __version__,
        "torch_version": torch.__version__,
        "device": record.device,
        "autocast": record.autocast,
        "torch_threads": torch.get_num_threads(),
        "n_steps": record.config.n_steps,
        "tokens_trained": record.config.n_steps * record.config.batch_size,
        "timings": {**result.timings, "session_wall_s": session_wall_s},
        "metrics": dict(metrics),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_tags": {key: str(value) for key, value in record.tags(experiment if mlflow_uri else None).items()},
        "mlflow_uri": mlflow_uri,
        "mlflow_experiment": experiment if mlflow_uri else None,
        "mlflow_run_id": result.mlflow_run_id,
        "mlflow_status": mlflow_status,
    }


@dataclass(frozen=True)
class RunSettings:
    """How a run is trained and recorded, never what it learns: the keyword arguments of :func:`run_training`
    and :func:`train_from_files` (and of the baselines' :func:`jsae.train.baseline.train_baseline`).

    ``model_name``: the short name of the MLflow run (default: the spec's last path component); ``hook_name``: the
    MLP's module path (default: from the cache's hook); ``mlflow_parent``: the study's MLflow run id, under which
    the run is nested.
    """

    model_name: str | None = None
    hook_name: str | None = None
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 50
    mlflow_uri: str | None = None
    experiment: str = "jsae"
    mlflow_parent: str | None = None
    progress: bool = True
    log_artifacts: bool = True
    on_step: Callable[[int], None] | None = None

    def trainer_kwargs(self, out_dir: Path) -> dict[str, Any]:
        """A trainer's running options for ``out_dir`` (checkpoints in :func:`work_dir_for`)."""
        return {"work_dir": work_dir_for(out_dir), "checkpoint_every": self.checkpoint_every,
                "log_every": self.log_every, "progress": self.progress, "on_step": self.on_step}

    def names(self, model: str, attrs: Mapping[str, Any], layer: int) -> tuple[str, str]:
        """``(model_name, hook_name)`` with their defaults (the cache records its input hook as ``<path>.input``)."""
        short = self.model_name or Path(str(model).rstrip("/")).name or str(model)
        return short, self.hook_name or str(attrs.get("hook") or f"layers.{layer}.mlp.input").removesuffix(".input")


def skip_finished(out_dir: str | os.PathLike[str], identity: Mapping[str, Any], *, force: bool
                  ) -> dict[str, Any] | None:
    """:func:`check_out_dir`, logging a finished identical run as skipped (its record is returned)."""
    done = check_out_dir(out_dir, identity, force=force)
    if done is not None:
        log.info("%s already holds this finished run; skipping (pass --force to retrain)", out_dir)
    return done


def run_training(
    mlp: MLP | torch.nn.Module,
    source: BatchSource,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    model: str,
    layer: int,
    control: str = "trained",
    force: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train one pair into ``out_dir`` (SAELens ``sae_in/``, ``sae_out/``, ``metrics.jsonl``, ``run.json``).

    ``model`` is the model SPEC (recorded); ``kwargs`` are :func:`_train`'s (``model_name``,
    ``device``, ``checkpoint_every``, ``log_every``, ``mlflow_uri``, ...). Returns run.json's content;
    an already finished identical run is skipped and its record returned.
    """
    check_pair_args(layer=layer, control=control)
    done = skip_finished(out_dir, run_identity(config, model=model, layer=layer, control=control), force=force)
    if done is not None:
        return done
    check_cache_matches(source.attrs, model=None, layer=layer)
    return _train(mlp_from_module(mlp), source, config, Path(out_dir), model=model, layer=layer, control=control,
                  **kwargs)


def open_training_inputs(model: str, layer: int, cache_path: str | os.PathLike[str]) -> tuple[MLP, BatchSource, str]:
    """The MLP of ``model``'s layer, the opened cache (checked to belong to (model, layer)) and the MLP's module
    path; a planted model's own MLP (float64, exact) without an LM around it."""
    if not Path(cache_path).is_file():
        raise FileNotFoundError(
            f"cache {cache_path} does not exist; expected an HDF5 activation cache (python -m jsae cache)"
        )
    from jsae.data.cache import ActivationCache, hook_name
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.data.planted import PLANTED_HOOK, is_planted_dir, planted_mlp

    cache = ActivationCache.open(cache_path)
    check_cache_matches(cache.attrs, model=model, layer=layer)
    if is_planted_dir(model):
        return planted_mlp(model, layer), cache, PLANTED_HOOK.removesuffix(".input")
    lm, _tokenizer = load_model(model, device="cpu", dtype=torch.float32)
    module = mlp_module(lm, layer)
    mlp = mlp_from_module(module)
    mlp_path = hook_name(lm, layer).removesuffix(".input")  # e.g. gpt_neox.layers.3.mlp
    del lm, module  # only the MLP's weights stay alive (its buffers share their storage)
    return mlp, cache, mlp_path


def train_from_files(
    model: str,
    layer: int,
    cache_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    control: str = "trained",
    force: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Open the cache, check it belongs to (model, layer), load the model's MLP and train (:func:`_train`).

    Cheap checks come first: the arguments, the output directory (a finished identical run is
    skipped before anything is loaded), the cache's attributes; then the model is loaded.
    """
    check_pair_args(layer=layer, control=control)
    done = skip_finished(out_dir, run_identity(config, model=model, layer=layer, control=control), force=force)
    if done is not None:
        return done
    mlp, cache, mlp_path = open_training_inputs(model, layer, cache_path)
    return _train(mlp, cache, config, Path(out_dir), model=model, layer=layer, control=control, hook_name=mlp_path,
                  **kwargs)


def cache_facts(source: BatchSource, config: TrainConfig) -> dict[str, Any]:
    """The source's attributes as JSON values, warning when the token budget exceeds the cache."""
    attrs = jsonable(dict(source.attrs))
    n_cache, budget = attrs.get("n_tokens"), config.n_steps * config.batch_size
    if isinstance(n_cache, int) and budget > n_cache:
        log.warning("token budget %d exceeds the cache's %d tokens: %.2f passes over the cache",
                    budget, n_cache, budget / n_cache)
    return attrs


def start_tracking(trainer: TrainerBase, record: Any, name: str, source: BatchSource, opts: RunSettings) -> Any:
    """Start (or resume: the checkpoint's run id) ``record``'s MLflow run ``name`` nested under ``mlflow_parent``,
    log a source with a ``path`` (an activation cache file) as its dataset input and hand it to ``trainer``."""
    from jsae.tracking import Tracker

    tracker = Tracker(opts.mlflow_uri, opts.experiment) if opts.mlflow_uri else Tracker.disabled()
    trainer.mlflow_run_id = tracker.start(name, params=record.params(), tags=record.tags(opts.experiment),
                                          run_id=trainer.mlflow_run_id, parent_run_id=opts.mlflow_parent)
    if isinstance(getattr(source, "path", None), (str, os.PathLike)):
        tracker.log_cache_input(source.path)
    trainer.tracker = tracker
    return tracker


def run_and_write(
    trainer: TrainerBase, tracker: Any, record: Any, out_dir: Path, opts: RunSettings, *,
    save: Callable[[Path], Sequence[str]], complete: Callable[[Path], None] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``trainer`` to the end under ``tracker`` and write the run directory atomically; returns run.json's
    content and the final metrics.

    ``save(tmp)`` writes the trained models into the run directory being written and returns their
    sub-directories (logged as artifacts); ``complete(tmp)``, when given, runs once run.json is written. The
    run's MLflow status is KILLED on Ctrl-C, FAILED on any other error; the work directory is removed at the end.
    """
    config = trainer.config
    wall0 = time.perf_counter()
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    # run.json's metrics are exactly what MLflow shows for the run's train/ keys (the last logged row).
    final = {k: v for k, v in result.metrics.items() if k != keys.STEP}
    for side, dead in trainer.dead_trackers().items():
        final[keys.DEAD_FRACTIONS[side]] = dead.dead_fraction()
    session_wall_s = time.perf_counter() - wall0
    with atomic_dir(out_dir) as tmp:
        subdirs = save(tmp)
        with atomic_path(tmp / METRICS_FILENAME) as mtmp:
            mtmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in result.history))
        tracker.log_metrics(final, step=config.n_steps)
        if opts.log_artifacts:
            for sub in subdirs:
                tracker.log_artifacts(tmp / sub, sub)
            tracker.log_artifact(tmp / METRICS_FILENAME)
        run_json = record.to_json(result, metrics=final, session_wall_s=session_wall_s, mlflow_uri=opts.mlflow_uri,
                                  experiment=opts.experiment, mlflow_status=tracker.status)
        write_json(tmp / RUN_FILENAME, run_json)
        if complete is not None:
            complete(tmp)
        tracker.log_artifact(tmp / RUN_FILENAME)
    tracker.finish()
    shutil.rmtree(work_dir_for(out_dir), ignore_errors=True)
    if tracker.error is not None and opts.mlflow_uri:
        log.warning("MLflow tracking was unavailable (%s); all metrics are in %s", tracker.error,
                    out_dir / METRICS_FILENAME)
    return run_json, final


def _train(
    mlp: MLP,
    source: BatchSource,
    config: TrainConfig,
    out_dir: Path,
    *,
    model: str,
    layer: int,
    control: str,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train a checked (mlp, source, config, out_dir) and write the run directory (``kwargs``: :class:`RunSettings`).
    A source with a ``path`` (an activation cache file) is logged as the run's dataset input."""
    from jsae.export import save_pair, write_manifest
    from jsae.tracking import run_name

    opts = RunSettings(**kwargs)
    attrs = cache_facts(source, config)
    dev = resolve_device(opts.device)
    pair = build_pair(mlp, config, device=dev)
    identity = run_identity(config, model=model, layer=layer, control=control)
    fingerprint = {"identity": identity, "cache": attrs}
    # checks the cache's width against the MLP's
    trainer = Trainer(pair, source, config, device=dev, fingerprint=fingerprint, **opts.trainer_kwargs(out_dir))
    scales = {"in": 1.0, "out": 1.0}
    if config.normalize_activations == "expected_norm":
        scales["in"], scales["out"] = estimate_activation_scales(pair.mlp, source, config, device=dev)
        pair.set_activation_scales(scales["in"], scales["out"])
        log.info("activation scales (expected_norm): input x%.4g, output x%.4g", scales["in"], scales["out"])
    resumed = trainer.restore()  # bad checkpoint -> one-line error before any training

    short_name, mlp_path = opts.names(model, attrs, layer)
    record = RunRecord(
        model=model,
        model_name=short_name,
        layer=layer,
        control=control,
        config=config,
        dims={"n_latents_in": pair.sae_in.n_latents, "n_latents_out": pair.sae_out.n_latents,
              "k_in": pair.sae_in.k, "k_out": pair.sae_out.k},
        mlp={"d_in": pair.mlp.d_in, "d_mlp": pair.mlp.d_hidden, "mlp_kind": pair.mlp.kind},
        hook=attrs.get("hook"),
        hook_name=mlp_path,
        cache=attrs,
        activation_scales=scales,
        device=str(dev),
        autocast=str(trainer.autocast).replace("torch.", "") if trainer.autocast else None,
    )
    tracker = start_tracking(trainer, record, run_name(short_name, layer, config.lam, control, config.seed), source,
                             opts)
    d = record.dims
    auxk = f", AuxK coef {config.auxk_coef:g} k_aux {trainer.auxk_k[0]}/{trainer.auxk_k[1]}" if config.auxk_coef else ""
    log.info(
        "training %s layer %d (%s) lam=%g: %d steps x %d tokens, latents %d/%d, k %d/%d%s, device %s%s",
        record.model_name, layer, control, config.lam, config.n_steps, config.batch_size, d["n_latents_in"],
        d["n_latents_out"], d["k_in"], d["k_out"], auxk, dev, f", resumed at step {trainer.step}" if resumed else "",
    )

    def save(tmp: Path) -> tuple[str, ...]:
        # Exported SAEs act on raw activations: the scales go into their weights (latents and J unchanged).
        pair.fold_activation_scales_()
        save_pair(pair, tmp, hook_name=record.hook_name, metadata=record.sae_metadata())
        return ("sae_in", "sae_out")

    # pair.json is complete after run.json: it reads run.json (seed, scales, model class)
    run_json, final = run_and_write(trainer, tracker, record, out_dir, opts, save=save, complete=write_manifest)
    log.info("finished %s: train loss %.4g, in/mse %.4g, out/mse %.4g, jac/l1 %.4g, dead %.3f/%.3f -> %s",
             record.model_name,
             *(final.get(k, float("nan")) for k in (keys.LOSS, keys.IN_MSE, keys.OUT_MSE, keys.JAC_L1)),
             final[keys.IN_DEAD_FRACTION], final[keys.OUT_DEAD_FRACTION], out_dir)
    return run_json
