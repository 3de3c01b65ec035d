"""The MLflow layout of a study, read back from a real sqlite store: the study's parent run made by the store's
initialisation, each pair's run its child with one stable name per param and the activation cache as a dataset
input (digest recomputed here from the file's checksums), the study table logged into the parent, the experiment
in MLflow's classic (non-GenAI) view, and (slow) 8 processes writing runs at once losing nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from jsae.__main__ import main
from jsae.tracking import init_tracking_store, log_study_run

TINY = {"d": 16, "n_x": 24, "n_y": 12, "p": 0.08, "frame_steps": 50}
TRAIN = {"k": 3, "n_latents": 48, "n_latents_out": 24, "n_tokens": 512, "batch_size": 64, "lr": 0.003,
         "checkpoint_every": 1000, "log_every": 4}
STUDY = "layout-study"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A store initialised for STUDY (twice: idempotent) and one planted pair trained by the CLI with the marker."""
    root = tmp_path_factory.mktemp("layout")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    marker = root / "tracking" / "store.json"
    assert subprocess.run([sys.executable, "-m", "jsae.tracking", uri, "--study", STUDY, "--marker", str(marker)],
                          capture_output=True, text=True, timeout=300).returncode == 0
    again = init_tracking_store(uri, STUDY)
    model, cache = root / "model", root / "train.h5"
    assert main(["planted", "--out", str(model), "--config-json", json.dumps(TINY)]) == 0
    assert main(["cache", "--model", str(model), "--layer", "0", "--split", "train", "--n-tokens", "1024",
                 "--out", str(cache)]) == 0
    assert main(["train", "--model", str(model), "--model-name", "planted", "--layer", "0", "--lam", "0.5",
                 "--cache", str(cache), "--out", str(root / "run"), "--config-json", json.dumps(TRAIN),
                 "--device", "cpu", "--mlflow-uri", uri, "--experiment", STUDY, "--mlflow-parent-from", str(marker),
                 "--no-progress", "--no-artifacts"]) == 0
    return {"uri": uri, "marker": json.loads(marker.read_text()), "again": again, "cache": cache,
            "run": json.loads((root / "run" / "run.json").read_text()), "root": root}


def test_init_creates_the_study_parent_once_in_a_classic_experiment(study) -> None:
    marker, uri = study["marker"], study["uri"]
    assert marker["tracking_uri"] == uri and marker["experiment"] == STUDY and marker["parent_run_id"]
    assert study["again"]["parent_run_id"] == marker["parent_run_id"]  # reused by name, not a second one
    client = _client(uri)
    exp = client.get_experiment_by_name(STUDY)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'study'")
    assert [r.info.run_id for r in parents] == [marker["parent_run_id"]]
    assert parents[0].info.run_name == f"study/{STUDY}"


def test_pair_run_is_a_child_with_stable_params_and_tags(study) -> None:
    run = _client(study["uri"]).get_run(study["run"]["mlflow_run_id"])
    tags, params = run.data.tags, run.data.params
    assert tags["mlflow.parentRunId"] == study["marker"]["parent_run_id"]
    assert {k: tags[k] for k in ("study", "model", "layer", "control")} == {
        "study": STUDY, "model": "planted", "layer": "0", "control": "trained"}
    assert not any("0.5" == v for k, v in tags.items() if not k.startswith("mlflow."))  # λ is not a tag
    assert params["lambda"] == "0.5" and "lam" not in params  # λ under one name
    assert {k: params[k] for k in ("layer", "control", "seed", "k", "n_latents")} == {
        "layer": "0", "control": "trained", "seed": "0", "k": "3", "n_latents": "48"}
    assert params["model"] == str(study["root"] / "model") and params["cache.split"] == "train"
    assert "train/loss" in run.data.metrics and not any(k == "lambda" for k in run.data.metrics)


def _expected_digest(path: Path) -> str:
    """The cache's digest from its stored checksums and attributes, written out independently here."""
    def plain(v):
        v = v.tolist() if hasattr(v, "tolist") else v
        return v.decode() if isinstance(v, bytes) else v

    with h5py.File(path, "r") as f:
        attrs = {k: plain(v) for k, v in f.attrs.items() if k != "request"}
        doc = {"attrs": attrs, "x_crc32": [int(c) for c in f["x_crc32"][()]],
               "crc32": {n: int(f[n].attrs["crc32"]) for n in f if "crc32" in f[n].attrs}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def test_activation_cache_is_the_runs_dataset_input(study) -> None:
    run = _client(study["uri"]).get_run(study["run"]["mlflow_run_id"])
    [inp] = run.inputs.dataset_inputs
    ds = inp.dataset
    assert ds.digest == _expected_digest(study["cache"])
    assert json.loads(ds.source)["uri"] == str(study["cache"].resolve()) and ds.source_type == "local"
    profile = json.loads(ds.profile)
    with h5py.File(study["cache"], "r") as f:
        assert profile == {"path": str(study["cache"].resolve()), "model": f.attrs["model"], "layer": 0,
                           "split": "train", "n_tokens": 1024, "d_model": 16, "dtype": f.attrs["dtype"]}
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train"


def test_study_logging_goes_into_the_parent_run(study, tmp_path: Path) -> None:
    uri, parent = study["uri"], study["marker"]["parent_run_id"]
    csv = tmp_path / "summary.csv"
    csv.write_text("model,layer,control,lam,seed,jac/frac_above_0.01\nplanted,0,trained,0.5,0,0.25\n"
                   "planted,0,trained,0,0,0.75\n")
    fig = tmp_path / "figures" / "fig.png"
    fig.parent.mkdir()
    fig.write_bytes(b"\x89PNG\r\n\x1a\n")
    marker = tmp_path / "store.json"
    marker.write_text(json.dumps(study["marker"]))
    out = tmp_path / "study_run.json"
    assert main(["summary", "--log-study", "--mlflow-uri", uri, "--experiment", STUDY, "--summary-csv", str(csv),
                 "--mlflow-parent-from", str(marker), "--artifacts", str(fig), "--out-run", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["run_id"] == parent and record["status"] == "ok"
    client = _client(uri)
    run = client.get_run(parent)
    assert run.data.tags["n_pairs"] == "2" and run.data.metrics == {}  # no per-pair metric keys
    assert {"figures", "study_summary.json"} <= {a.path for a in client.list_artifacts(parent)}
    table = json.loads(Path(client.download_artifacts(parent, "study_summary.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["lambda"], r["jac/frac_above_0.01"]) for r in rows] == [(0.5, 0.25), (0.0, 0.75)]
    assert rows[0]["run"] == "planted/L0/trained/lam0.5/seed0"
    # without a marker the study's run is found by name: still the same parent
    again = log_study_run(uri, STUDY, metrics={}, n_pairs=0, artifacts=[], out_run=tmp_path / "again.json")
    assert again["run_id"] == parent


N_WRITERS, N_STEPS = 8, 25
WRITER = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient  # imported before the barrier: the writes, not the imports, overlap
from jsae.tracking import Tracker
uri, parent, barrier = sys.argv[1], sys.argv[3], Path(sys.argv[4])
i, n, steps = int(sys.argv[2]), int(sys.argv[5]), int(sys.argv[6])
(barrier / str(i)).touch()
while len(list(barrier.iterdir())) < n:  # every writer starts at once
    time.sleep(0.01)
t = Tracker(uri, "concurrent")
assert t.start(f"pair{i}", params={"lambda": i}, tags={}, parent_run_id=parent) is not None, t.error
for step in range(steps):
    t.log_metrics({"train/loss": i + step / 100, "train/lam": float(i)}, step=step)
t.finish()
assert t.error is None, t.error
"""


@pytest.mark.slow
def test_concurrent_writers_to_one_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = init_tracking_store(uri, "concurrent")["parent_run_id"]
    barrier = tmp_path / "ready"
    barrier.mkdir()
    args = [str(barrier), str(N_WRITERS), str(N_STEPS)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(i), parent, *args],
                              stderr=subprocess.PIPE, text=True) for i in range(N_WRITERS)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * N_WRITERS, [e[-500:] for e in errors]
    assert all(" WARNING " not in e and "MLflow tracking" not in e for e in errors), errors
    client = _client(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id != parent]
    assert sorted(r.info.run_name for r in runs) == sorted(f"pair{i}" for i in range(N_WRITERS))
    for r in runs:
        i = int(r.data.params["lambda"])
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent
        loss = client.get_metric_history(r.info.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in loss) == [(s, pytest.approx(i + s / 100)) for s in range(N_STEPS)]
        assert len(client.get_metric_history(r.info.run_id, "train/lam")) == N_STEPS


def test_an_uploaded_run_is_a_child_of_its_study_with_its_cache(study, tmp_path: Path) -> None:
    """`python -m jsae.tracking URI --upload RUN --cache CACHE` (a run trained offline): nested as training nests it."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(study["root"] / "run", run_dir)
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    other = tmp_path / "other.h5"
    assert main(["cache", "--model", str(study["root"] / "model"), "--layer", "0", "--split", "validation",
                 "--n-tokens", "256", "--out", str(other)]) == 0
    refused = subprocess.run([sys.executable, "-m", "jsae.tracking", uri, "--upload", str(run_dir), "--cache",
                              str(other), "--experiment", STUDY], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "expected the cache the run trained on" in refused.stderr, refused.stderr
    done = subprocess.run([sys.executable, "-m", "jsae.tracking", uri, "--upload", str(run_dir), "--cache",
                           str(study["cache"]), "--experiment", STUDY], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    client = _client(uri)
    exp = client.get_experiment_by_name(STUDY)
    [parent] = client.search_runs([exp.experiment_id], "tags.kind = 'study'")
    run = client.get_run(json.loads((run_dir / "run.json").read_text())["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.info.run_name == f"study/{STUDY}"
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.digest == _expected_digest(study["cache"])
