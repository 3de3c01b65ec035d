"""The Snakemake workflow: dry runs of every shipped config, config validation, lint, SLURM profile,
and (slow) the micro study run end to end by the real `snakemake` in a temporary directory."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SHIPPED = ["config.yaml", "smollm2.yaml", "pythia-70m.yaml", "pythia-410m.yaml"]
MICRO = REPO / ".test" / "config" / "config.yaml"


def snakemake(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([SNAKEMAKE, "-s", str(SNAKEFILE), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table Snakemake prints: {rule: count} (without 'total')."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("job") and "count" in line)
    except StopIteration:
        return counts
    for line in lines[start + 2:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m[1] != "total":
            counts[m[1]] = int(m[2])
    return counts


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


# --------------------------------------------------------------------------------------------------
# Dry runs of the shipped configs
# --------------------------------------------------------------------------------------------------


# The default study's dry run is fast-tier; the other configs cost ~5 s each (Snakemake start-up).
@pytest.mark.parametrize("name", [SHIPPED[0], *(pytest.param(n, marks=pytest.mark.slow) for n in SHIPPED[1:])])
def test_shipped_config_dry_run(tmp_path, name):
    res = snakemake("-n", "--configfile", str(REPO / "config" / name), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    cfg = load(name)
    n_sites = sum(len(m["layers"]) for m in cfg["models"])
    lams = {"trained": set(cfg["lambdas"])}
    if cfg["reinit"]["enabled"]:
        lams["reinit"] = set(cfg["reinit"].get("lambdas") or cfg["lambdas"])

    def n_pairs(subset=None):
        return n_sites * sum(len(v if subset is None else v & set(subset)) for v in lams.values())

    counts = job_counts(res.stdout)
    assert counts["train"] == counts["evaluate"] == n_pairs()
    assert counts["probes"] == n_pairs(cfg["probes"].get("lambdas"))
    assert counts["tables"] == n_pairs(cfg["tables"].get("lambdas"))
    assert counts["cache"] == 2 * n_sites * (2 if cfg["reinit"]["enabled"] else 1)
    assert counts["figure"] == 8 and counts["summary"] == 1 and counts["init_tracking"] == 1
    assert counts.get("pretrain", 0) == sum(m.get("source") == "pretrain" for m in cfg["models"])


def test_paper_configs_follow_the_paper():
    for name, layer, expansion, jsae_lam in (("pythia-70m.yaml", 3, 32, 1), ("pythia-410m.yaml", 15, 64, 0.5)):
        cfg = load(name)
        assert cfg["models"][0]["layers"] == [layer] and cfg["sae"] == {"k": 32, "expansion": expansion}
        assert cfg["train"]["tokens"] == 300_000_000 and {0.5, 1} <= set(cfg["lambdas"]) and 0 in cfg["lambdas"]
        assert cfg["figures"]["jsae_lam"] == jsae_lam
        assert cfg["corpora"][cfg["train_corpus"]]["dataset"] == "monology/pile-uncopyrighted"
        assert cfg["corpora"][cfg["eval_corpus"]]["dataset"] == "allenai/c4"


def test_one_figure_builds_only_what_it_needs(tmp_path):
    # target first: a target after `--resources gpu=1` would be read as a second resource
    res = snakemake("results/figures/fig5.pdf", "-n", "--configfile", str(REPO / "config" / "config.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    lams = len(load("config.yaml")["lambdas"])
    assert counts == {"corpus": 1, "pretrain": 1, "cache": 2, "init_tracking": 1, "train": lams, "evaluate": lams,
                      "figure": 1}


@pytest.mark.slow
def test_lint_is_clean(tmp_path):
    res = snakemake("--lint", "--configfile", str(REPO / "config" / "config.yaml"), cwd=tmp_path)
    assert res.returncode == 0 and "Congratulations" in res.stdout + res.stderr, res.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed (optional extra jsae[slurm])")
def test_slurm_profile_dry_run(tmp_path):
    res = snakemake("-n", "--workflow-profile", str(REPO / "profiles" / "slurm"), "--configfile",
                    str(REPO / "config" / "pythia-70m.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "slurm_partition=gpu" in res.stdout and "gpu=1" in res.stdout


# --------------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------------


def validate(cfg: dict) -> dict:
    from snakemake.utils import validate as smk_validate

    smk_validate(cfg, str(SCHEMA))
    return cfg


def minimal() -> dict:
    return {"corpora": {"default": {"source": "default"}},
            "models": [{"name": "tiny-neox", "source": "pretrain", "layers": [1]}], "lambdas": [0, 1]}


def test_schema_fills_defaults():
    cfg = validate(minimal())
    assert cfg["mlflow"] == {"enabled": True, "tracking_uri": "sqlite:///mlflow.db"}
    assert cfg["sae"] == {"k": 32, "expansion": 32}
    assert cfg["models"][0]["pretrain"]["hidden"] == 128
    assert cfg["corpora"]["default"]["validation_fraction"] == 0.05
    assert cfg["figures"]["names"][0] == "fig2" and cfg["reinit"]["enabled"] is True


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(lamdas=[0, 1]), "'lamdas' was unexpected"),
    (lambda c: c.update(train={"tokens": 10, "learning_rate": 1}), "'learning_rate' was unexpected"),
    (lambda c: c.update(lambdas=[0, -0.5]), "-0.5 is less than the minimum of 0"),
    (lambda c: c.pop("corpora"), "'corpora' is a required property"),
    (lambda c: c["corpora"].update(pile={"source": "hf"}), "'dataset' is a required property"),
    (lambda c: c["models"][0].update(name="a/b"), "does not match"),
    (lambda c: c.update(sae={"k": 0}), "0 is less than the minimum of 1"),
    (lambda c: c["models"].append({"name": "pythia", "layers": [3]}), "'spec' is a required property"),
])
def test_schema_rejects(mutate, message):
    from snakemake.exceptions import WorkflowError

    cfg = minimal()
    mutate(cfg)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(cfg)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["models"][0].update(layers=[7]), "layer 7 is out of range; expected 0..3"),
    pytest.param(lambda c: c.update(bogus_key=1), "'bogus_key' was unexpected", marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(eval_corpus="c4"), "eval_corpus='c4' is not a corpus in `corpora`",
                 marks=pytest.mark.slow),
    pytest.param(lambda c: c.update(lambdas=[0.1, 1]), "must include 0", marks=pytest.mark.slow),
])
def test_snakemake_reports_bad_config_in_one_line(tmp_path, mutate, message):
    cfg = load("config.yaml")
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr


# --------------------------------------------------------------------------------------------------
# End to end: the micro study, run by the real snakemake
# --------------------------------------------------------------------------------------------------

PIPELINE_MODULES = ("corpus", "models", "pretrain", "cache", "train", "export", "evaluate", "probes", "tables")


def _declared_outputs(res_stdout: str) -> list[tuple[str, str]]:
    """(file, status) rows of `snakemake --summary`."""
    rows = []
    for line in res_stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 5 and parts[0].startswith("results/"):
            rows.append((parts[0], parts[4]))
    return rows


@pytest.mark.slow
def test_micro_study_end_to_end(tmp_path):
    missing = [m for m in PIPELINE_MODULES if importlib.util.find_spec(f"jsae.{m}") is None]
    if missing:
        pytest.skip(f"pipeline modules not written yet: {', '.join('jsae.' + m for m in missing)}")
    shutil.copy(MICRO, tmp_path / "config.yaml")
    args = ("--configfile", "config.yaml")
    run = snakemake(*args, cwd=tmp_path, timeout=1800)  # a few minutes idle; far more on a loaded machine
    assert run.returncode == 0, run.stderr[-6000:]

    # every declared output exists and is up to date
    summary = snakemake("--summary", *args, cwd=tmp_path)
    rows = _declared_outputs(summary.stdout)
    assert len(rows) > 60, summary.stdout[-3000:]
    for path, status in rows:
        assert (tmp_path / path).is_file(), path
        assert status == "ok", (path, status)
    for fig in ("fig2", "fig4", "fig5", "fig7", "fig8", "fig32", "fig35", "fig36"):
        assert (tmp_path / "results" / "figures" / f"{fig}.png").stat().st_size > 5000
    assert "| site | claim |" in (tmp_path / "results" / "summary.md").read_text()
    assert (tmp_path / "mlflow.db").is_file()

    # a finished study reruns nothing
    again = snakemake("-n", *args, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]

    # deleting one pair's evaluation reruns only that evaluation and what reads it
    (tmp_path / "results/eval/tiny-neox/L1/trained/lam1/evaluation.json").unlink()
    plan = snakemake("-n", *args, cwd=tmp_path)
    assert job_counts(plan.stdout) == {"evaluate": 1, "figure": 7, "summary": 1, "study_run": 1, "all": 1}
    rerun = snakemake(*args, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "Nothing to be done" in snakemake("-n", *args, cwd=tmp_path).stdout

    # the HTML report with the figures and their captions
    report = snakemake("--report", "results/report.html", *args, cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "results" / "report.html").stat().st_size > 100_000
