# The environment every job inherits: the one place where the workflow edits it (at DAG-build time,
# so jobs on other nodes, which re-read this file, get the same).

import os
import sys
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

# Jobs on this host stop cleanly (checkpoint kept) when this Snakemake is killed, instead of running on
# as orphans (python -m jsae watches the process; a job Snakemake runs elsewhere re-reads this file).
import socket

os.environ.update(JSAE_SNAKEMAKE=f"{socket.gethostname()}:{os.getpid()}")

# Progress bars go to per-rule log files: one update every 30 s instead of ten a second
# (tqdm reads TQDM_* defaults from the environment).
os.environ.setdefault("TQDM_MININTERVAL", "30")

# Rules run `python -m jsae ...`: that `python` must be the interpreter running Snakemake, where jsae
# is installed, also when Snakemake is started as .venv/bin/snakemake without activating the venv
# (`make run` does), where `python` on PATH would be another interpreter.
os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

# With --sdm conda a rule's own environment (envs/jsae.yaml) comes first on PATH and has no jsae: the
# package source goes on PYTHONPATH. Snakemake strips PYTHONPATH from conda jobs unless
# --conda-not-block-search-path-envvars is given, which the profiles in profiles/ therefore set.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    _src = str(Path(workflow.basedir) / "src")
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (_src, os.environ.get("PYTHONPATH")) if p))

# The config checks (checks.smk) use the package's own validators: where Snakemake runs from an
# environment without jsae installed, they come from the source tree.
import importlib.util

if importlib.util.find_spec("jsae") is None:
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))
