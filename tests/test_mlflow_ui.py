"""The MLflow UI shows the study: `mlflow server` on 127.0.0.1, pages rendered by headless Chromium.

Runs are written by jsae's own tracker (the code the train/evaluate/summary rules use) into a fresh
sqlite store; the test then reads the rendered DOM of the experiment's runs page and of one run page.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
    ),
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
EXPERIMENT = "jsae-ui-study"
RUNS = {"tiny-neox/L1/trained/lam0": 0.4375, "tiny-neox/L1/trained/lam1": 0.0625}
METRIC = "eval/jac/frac_above_0.01"  # evaluation's value, logged as the evaluate rule logs it
N_STEPS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _render(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets the React app fetch and render)."""
    res = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.fixture
def study_store(tmp_path):
    from jsae.tracking import Tracker, init_tracking_store, log_to_pair_run  # also switches MLflow's telemetry off

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_tracking_store(uri)
    ids = {}
    for name, value in RUNS.items():
        t = Tracker(uri, EXPERIMENT)
        ids[name] = t.start(name, params={"lam": name.rsplit("lam", 1)[1], "k": 4}, tags={"control": "trained"})
        t.log_metrics({"train/jac/frac_above_0.01": 0.999}, step=N_STEPS)  # training's own value, own key
        t.finish()
        assert t.status == "ok"
        assert log_to_pair_run(uri, ids[name], {METRIC.removeprefix("eval/"): value}, step=N_STEPS)
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT)
    return uri, exp.experiment_id, ids


@pytest.fixture
def mlflow_server(tmp_path, study_store):
    uri, exp_id, ids = study_store
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        yield f"http://127.0.0.1:{port}", exp_id, ids
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_runs_and_metric_are_shown(tmp_path, mlflow_server):
    base, exp_id, ids = mlflow_server
    # The UI opens in GenAI mode; the classic runs table needs workflowType=machine_learning.
    runs_page = _render(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning", tmp_path / "chrome1")
    for name in RUNS:
        assert name in runs_page, f"run {name} not on the runs page"
    run_page = _render(f"{base}/#/experiments/{exp_id}/runs/{ids['tiny-neox/L1/trained/lam1']}", tmp_path / "chrome2")
    assert METRIC in run_page and "0.0625" in run_page
