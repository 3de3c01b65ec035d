"""MLflow tracking of a training run, read back with MlflowClient; an unreachable backend loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import build_hf_mlp

from jsae.export import read_run
from jsae.nn.mlp import mlp_from_module
from jsae.tracking import (
    Tracker,
    default_artifact_root,
    flatten_params,
    init_tracking_store,
    run_name,
    sqlite_path,
    upload_run,
)
from jsae.train.config import TrainConfig
from jsae.train.run import run_training
from jsae.train.sources import InMemorySource


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One initialised sqlite store for the module (creating the tables takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first = init_tracking_store(uri)
    again = init_tracking_store(uri)  # idempotent: the workflow may call it on every start
    assert first["created"] and not again["created"] and first["database"] == str(root / "mlflow.db")
    assert first["artifact_root"] == (root / "mlruns").as_uri()
    return uri


@pytest.fixture(scope="module")
def mlp():
    return mlp_from_module(build_hf_mlp("neox-gelu")).float()


@pytest.fixture(scope="module")
def source() -> InMemorySource:
    x = torch.randn(600, 12, generator=torch.Generator().manual_seed(0))
    return InMemorySource(x, attrs={"model": "tiny", "layer": 1, "d_model": 12, "n_tokens": 600})


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(lam=0.5, n_tokens=32 * 12, batch_size=32, k=3, expansion=4, lr=3e-3), **overrides})


def train(mlp, source, out, uri, experiment, **kwargs):
    return run_training(
        mlp,
        source,
        kwargs.pop("cfg", config()),
        out,
        model="results/models/tiny",
        layer=1,
        mlflow_uri=uri,
        experiment=experiment,
        progress=False,
        log_every=4,
        checkpoint_every=5,
        **kwargs,
    )


def test_run_contents_read_back_with_mlflow_client(tmp_path: Path, store: str, mlp, source) -> None:
    from mlflow.tracking import MlflowClient

    rec = train(mlp, source, tmp_path / "run", store, "study-a")
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("study-a")
    assert exp.artifact_location == default_artifact_root(store)
    assert exp.artifact_location.endswith("/mlruns")  # artifacts next to the database
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_id == rec["mlflow_run_id"] == read_run(tmp_path / "run")["mlflow_run_id"]
    assert run.info.run_name == "tiny/L1/trained/lam0.5/seed0" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert {k: tags[k] for k in ("study", "model", "layer", "control")} == {
        "study": "study-a",
        "model": "tiny",
        "layer": "1",
        "control": "trained",
    }
    assert "lam" not in tags  # λ is a param only
    params = run.data.params
    assert params["lambda"] == "0.5" and "lam" not in params and params["k"] == "3" and params["n_latents"] == "48"
    assert params["lr"] == "0.003" and params["lam_warmup_frac"] == "0.05" and params["n_steps"] == "12"
    assert params["evaluation_point"] == "true_mlp_input" and params["model"] == "results/models/tiny"
    assert params["cache.n_tokens"] == "600"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == [4, 8, 12, 12]  # logged every 4 steps + the final summary
    local = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in sorted(loss, key=lambda m: m.step)][:3] == pytest.approx([r["train/loss"] for r in local])
    for key in (
        "train/in/mse",
        "train/out/mse",
        "train/jac/l1",
        "train/lam",
        "train/lr",
        "train/tokens_per_s",
        "train/in/dead_fraction",
        "train/out/dead_fraction",
        "train/jac/frac_above_0.01",
    ):
        assert client.get_metric_history(run.info.run_id, key), key
    assert all(key.startswith("train/") for key in run.data.metrics)  # training owns only its namespace
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"sae_in", "sae_out", "run.json", "metrics.jsonl"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "sae_in")} == {
        "sae_in/cfg.json",
        "sae_in/sae_weights.safetensors",
    }
    assert read_run(tmp_path / "run")["mlflow_status"] == "ok"


def test_resumed_training_continues_the_same_mlflow_run(tmp_path: Path, store: str, mlp, source) -> None:
    from mlflow.tracking import MlflowClient

    def crash(step: int) -> None:
        if step == 7:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(mlp, source, tmp_path / "run", store, "study-b", on_step=crash)
    rec = train(mlp, source, tmp_path / "run", store, "study-b")
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("study-b").experiment_id])
    assert run.info.run_id == rec["mlflow_run_id"] and run.info.status == "FINISHED"
    assert 12 in {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}


def test_unreachable_backend_does_not_stop_training(tmp_path: Path, store: str, mlp, source, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    rec = train(mlp, source, tmp_path / "run", "http://127.0.0.1:9", "study-c")
    run = read_run(tmp_path / "run")
    assert run["mlflow_status"].startswith("unreachable: ") and run["mlflow_run_id"] is None
    assert "\n" not in run["mlflow_status"]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and rec["metrics"]["train/loss"] == json.loads(rows[-1])["train/loss"]  # nothing lost
    assert (tmp_path / "run" / "sae_in" / "sae_weights.safetensors").is_file()
    # ... and it can be logged later, to a reachable store
    run_id = upload_run(tmp_path / "run", store, "study-c-later")
    client = MlflowClient(tracking_uri=store)
    logged = client.get_run(run_id)
    assert logged.info.run_name == "tiny/L1/trained/lam0.5/seed0" and logged.info.status == "FINISHED"
    assert logged.data.params["lambda"] == "0.5" and logged.data.params["lr"] == "0.003"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [4, 8, 12, 12]
    assert logged.data.metrics == pytest.approx(run["metrics"])  # the same keys and values as training logs them
    assert {"sae_in", "sae_out", "run.json", "metrics.jsonl"} <= {a.path for a in client.list_artifacts(run_id)}
    after = read_run(tmp_path / "run")
    assert after["mlflow_run_id"] == run_id and after["mlflow_status"] == "ok" and after["metrics"] == run["metrics"]


def test_tracker_disabled_and_helpers() -> None:
    t = Tracker.disabled()
    assert t.start("x", params={}, tags={}) is None and t.status == "disabled"
    t.log_metrics({"a": 1.0}, step=1)  # no-ops
    t.finish()
    assert run_name("pythia-70m", 3, 0.0, "reinit", 2) == "pythia-70m/L3/reinit/lam0/seed2"
    assert flatten_params({"a": 1, "b": {"c": None, "d": [1, 2]}}) == {"a": "1", "b.c": "None", "b.d": "[1, 2]"}
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("http://host:5000") is None and default_artifact_root("http://host:5000") is None


@pytest.mark.slow
def test_parallel_jobs_on_an_initialised_store_do_not_race(tmp_path: Path) -> None:
    """Several processes create runs in one fresh store at once, after ``init_tracking_store``."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_tracking_store(uri)
    code = (
        "import sys\nfrom jsae.tracking import Tracker\n"
        "t = Tracker(sys.argv[1], 'parallel')\n"
        "assert t.start(f'job{sys.argv[2]}', params={'i': sys.argv[2]}, tags={}) is not None, t.error\n"
        "t.log_metrics({'loss': 1.0}, step=1)\nt.finish()\nassert t.error is None, t.error\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri, str(i)], stderr=subprocess.PIPE, text=True) for i in range(3)
    ]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2"]
    assert all(r.info.status == "FINISHED" for r in runs)
