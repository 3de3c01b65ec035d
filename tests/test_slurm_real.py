"""A real SLURM run: the tiny study submitted through Snakemake's SLURM executor with profiles/slurm
(.ci/slurm/run_study.sh), against a running cluster. Skipped unless `sinfo` answers: bring a single-node
cluster up first with `sudo .ci/slurm/up.sh` (profiles/slurm/README.md)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "slurm" / "run_study.sh"


def _cluster_answers() -> str | None:
    """None when a SLURM cluster answers `sinfo`, else why not."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found); bring a test cluster up with: sudo .ci/slurm/up.sh"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo does not answer ({exc}); bring the cluster up with: sudo .ci/slurm/up.sh"
    if res.returncode != 0 or not res.stdout.strip():
        return f"no SLURM controller answers sinfo ({res.stderr.strip()[:200]}); run: sudo .ci/slurm/up.sh"
    return None


@pytest.mark.slow
def test_tiny_study_runs_on_a_real_slurm_cluster(tmp_path):
    reason = _cluster_answers()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # ~4 minutes on 2 idle cores; the jobs run at nice 19, so far longer while other work holds the CPUs (62
    # minutes when a nice-0 study kept both cores busy)
    res = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=4 * 3600)
    out = res.stdout + res.stderr
    print(out[-4000:])  # the check's report (sacct table, MLflow runs, wall time): pytest -rP shows it
    assert res.returncode == 0, out[-6000:]
    assert "[slurm check] PASSED" in out, out[-3000:]
