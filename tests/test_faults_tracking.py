"""Tracking never stops a study: a bad MLflow URI scheme or a dead tracking server (a real closed port) is one
warning and every command still succeeds and writes its outputs; a fresh sqlite store opened by several
processes at once gives every one of them its run (MLflow's migrations no longer race).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from test_faults_cli import LAYER, jsae, no_proxy_env, tiny_pair  # noqa: F401  (fixture)

pytestmark = pytest.mark.faults  # make faults

BAD_SCHEME = "foo://x"
DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
URIS = [BAD_SCHEME, DEAD_SERVER]


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING " in line]


def assert_succeeded(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and " ERROR " not in res.stderr, res.stderr[-3000:]
    # A dead server is found by one probe, not by MLflow's retries with backoff.
    assert "Retrying" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("uri", URIS)
def test_initialising_a_broken_store_warns_and_succeeds(uri, tmp_path):
    """The workflow's first rule (python -m jsae.tracking URI): before, a traceback and rc 1 stopped the study."""
    env = {**no_proxy_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "jsae.tracking", uri], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert_succeeded(res)
    assert time.monotonic() - t0 < 60
    [line] = warnings_of(res.stderr)
    assert uri in line and "cannot be initialised" in line and "continuing without tracking" in line


def test_initialising_a_broken_store_returns_the_error(monkeypatch):
    from jsae.tracking import init_tracking_store

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    record = init_tracking_store(DEAD_SERVER)
    assert record["uri"] == DEAD_SERVER and record["experiments"] == [] and not record["created"]
    assert "unreachable" in record["error"] and "\n" not in record["error"]


@pytest.mark.parametrize("uri", URIS)
def test_training_with_broken_tracking_writes_its_outputs(uri, tiny_pair, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = jsae("train", "--model", tiny_pair["model"], "--layer", str(LAYER), "--cache", str(tiny_pair["train"]),
               "--out", str(out), "--lam", "1", "--n-tokens", "192", "--batch-size", "32", "--k", "4",
               "--expansion", "4", "--device", "cpu", "--no-progress", "--mlflow-uri", uri)
    assert_succeeded(res)
    assert any(uri in line for line in warnings_of(res.stderr)), res.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["mlflow_status"].startswith("unreachable: ") and run["mlflow_run_id"] is None
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    assert (out / "sae_in" / "sae_weights.safetensors").is_file()


@pytest.fixture
def pair_with_run_id(tiny_pair, tmp_path):  # noqa: F811
    """The pair, with a run id in run.json, so evaluation tries to add to that MLflow run."""
    shutil.copytree(tiny_pair["run"], tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    run.update(mlflow_run_id="0123456789abcdef0123456789abcdef")
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    return {**tiny_pair, "run": tmp_path / "run"}


@pytest.mark.parametrize(
    "command,uri,outputs,extra",
    [
        ("evaluate", DEAD_SERVER, ("evaluation.json", "jacobian_stats.npz"), ["--ce-tokens", "30"]),
        ("probes", BAD_SCHEME, ("probes.json", "probe_curves.npz"), ["--n-samples", "100", "--n-sweeps", "20",
                                                                     "--scale-tokens", "200"]),
        ("tables", DEAD_SERVER, ("tables.html", "tables.md"), ["--n-output-latents", "2", "--min-active", "1"]),
    ],
)
def test_evaluation_commands_with_broken_tracking_write_their_outputs(command, uri, outputs, extra,
                                                                      pair_with_run_id, tmp_path):
    pair = pair_with_run_id
    out = tmp_path / "out" / outputs[0]
    res = jsae(command, "--model", pair["model"], "--layer", str(LAYER), "--run", str(pair["run"]), "--cache",
               str(pair["validation"]), "--device", "cpu", "--no-progress", "--mlflow-uri", uri, "--out", str(out),
               *extra)
    assert_succeeded(res)
    for name in outputs:
        assert (out.parent / name).is_file(), name
    about_mlflow = [line for line in warnings_of(res.stderr) if "MLflow" in line]
    assert len(about_mlflow) == 1, res.stderr[-3000:]  # one line, not a log line plus a Python warning
    assert uri in about_mlflow[0] and "the files are written" in about_mlflow[0]


@pytest.mark.slow
def test_three_processes_on_a_fresh_sqlite_store_all_get_their_run(tmp_path):
    """No init_tracking_store first: three jobs open a never-initialised database at the same moment, the way
    ``python -m jsae train`` does (Tracker.start, metrics, finish). Before the lock, two lost tracking."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{db}"
    code = (
        "import sys\nfrom jsae.tracking import Tracker\n"
        "t = Tracker(sys.argv[1], 'parallel')\n"
        "assert t.start(f'job{sys.argv[2]}', params={'i': sys.argv[2]}, tags={}) is not None, t.error\n"
        "t.log_metrics({'loss': 1.0}, step=1)\nt.finish()\nassert t.error is None, t.error\n"
    )
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(i)], stderr=subprocess.PIPE, text=True, env=env)
             for i in range(3)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert db.with_name("mlflow.db.lock").is_file()
