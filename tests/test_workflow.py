"""The Snakemake workflow: a bare `snakemake -n` from the repository root, dry runs of every shipped
config, the result layout against the package's loader, config validation, lint, SLURM profile, and
(slow) the micro study run end to end by the real `snakemake` in a temporary directory."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
PATHS = REPO / "workflow" / "rules" / "paths.smk"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SHIPPED = ["config.yaml", "smollm2.yaml", "pythia-70m.yaml", "pythia-410m.yaml"]
MICRO = REPO / ".test" / "config" / "config.yaml"


def snakemake(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([SNAKEMAKE, "-s", str(SNAKEFILE), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table Snakemake prints: {rule: count} (without 'total'; cache_* rules as 'cache')."""
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
            # one cache rule per model variant (cache_<variant>): counted together as "cache"
            rule = "cache" if m[1].startswith("cache_") else m[1]
            counts[rule] = counts.get(rule, 0) + int(m[2])
    return counts


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def layout() -> dict:
    """The workflow's path patterns and the functions that fill them (paths.smk is plain Python)."""
    namespace: dict = {}
    exec(compile(PATHS.read_text(), str(PATHS), "exec"), namespace)
    return namespace


def study_pairs(cfg: dict) -> list[tuple[str, int, str, float, int]]:
    """(model, layer, control, lam, seed) of every pair the config asks for, read from the config's own words:
    every lambda of the model (and reinit.lambdas on the control) with `seed`; the lambdas of seeds.lambdas (all
    when null) also with seed + 1 ... seed + seeds.n - 1."""
    base = cfg.get("seed", 0)
    n_seeds = (cfg.get("seeds") or {}).get("n", 1)
    seed_lams = (cfg.get("seeds") or {}).get("lambdas")
    out = []
    for m in cfg["models"]:
        # a model's own `lambdas` replace the study's; a planted model has no re-init control
        own = m.get("lambdas") or cfg["lambdas"]
        lams = {"trained": own}
        if cfg.get("reinit", {}).get("enabled", True) and m.get("source") != "planted":
            lams["reinit"] = [x for x in cfg["reinit"].get("lambdas") or own if x in own]
        for layer in m["layers"]:
            for control, values in lams.items():
                for lam in values:
                    replicated = ((seed_lams is None or lam in seed_lams)
                                  and control in (cfg.get("seeds") or {}).get("controls", ["trained", "reinit"]))
                    out += [(m["name"], layer, control, lam, base + i) for i in range(n_seeds if replicated else 1)]
    return out


# --------------------------------------------------------------------------------------------------
# A bare `snakemake` from the repository root, and the result layout
# --------------------------------------------------------------------------------------------------


def test_bare_snakemake_from_the_repository_root(tmp_path):
    """`snakemake -n`, no options, no targets: Snakefile, workflow profile and default study are found.

    The root's entries are linked into an empty directory, so results of an earlier `make run` in the
    checkout cannot change the plan."""
    for name in ("Snakefile", "workflow", "profiles", "config", "envs", "src"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([SNAKEMAKE, "-n"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    assert "workflow specific profile profiles/default" in res.stderr, res.stderr[-3000:]

    # the default study, planned in full, at the paths of the workflow's layout
    cfg = load("config.yaml")
    paths = layout()
    pairs = study_pairs(cfg)
    assert len({p[4] for p in pairs}) >= 3, "the default study trains >= 3 seeds of the pairs its claims compare"
    counts = job_counts(res.stdout)
    assert counts["all"] == 1 and counts["train"] == counts["evaluate"] == len(pairs), counts
    for pair in pairs:
        assert f"{paths['eval_dir'](*pair)}/evaluation.json" in res.stdout, pair
        assert f"{paths['run_dir'](*pair)}/run.json" in res.stdout, pair

    # the profile's `cores: all` reached the scheduler: pretrain asks for 4 threads and gets min(4, cores)
    # (a dry run without cores plans every job with one thread and prints no `threads:` line)
    from snakemake.utils import available_cpu_count

    threads = min(4, available_cpu_count())
    pretrain = re.search(r"^rule pretrain:\n((?: {4}.*\n)+)", res.stdout, re.M)
    assert pretrain is not None, res.stdout[-3000:]
    if threads > 1:
        assert f"    threads: {threads}\n" in pretrain[1], pretrain[1]


def test_result_layout_agrees_with_the_result_loader(tmp_path):
    """Paths built from the workflow's patterns give the loader back model, layer, control, lambda and seed."""
    from jsae.report.results import find_results, load_results

    paths = layout()
    pairs = [("tiny-neox", 2, "trained", 0, 0), ("tiny-neox", 2, "reinit", 0.3, 1),
             ("pythia-70m", 3, "trained", 1e-05, 0), ("smollm2-135m", 15, "reinit", 10, 12),
             ("a_b.c-d", 0, "trained", 2.5, 3), ("tiny-neox", 2, "trained", 0, 2)]
    expected = sorted((model, layer, control, float(lam), seed) for model, layer, control, lam, seed in pairs)
    for pair in pairs:
        for directory in (paths["eval_dir"](*pair), paths["run_dir"](*pair)):
            path = tmp_path / directory / "evaluation.json"
            path.parent.mkdir(parents=True)
            path.write_text('{"metrics": {"x": 1.0}}')  # no "pair" record: the identity comes from the path
    for pattern in (paths["EVAL_DIR"], paths["RUN_DIR"]):
        root = tmp_path / pattern.split("/{")[0]  # results/eval, results/runs
        assert sorted(r.key for r in load_results(find_results(root))) == expected, pattern


# --------------------------------------------------------------------------------------------------
# Dry runs of the shipped configs
# --------------------------------------------------------------------------------------------------


# The default study's dry run is fast-tier; the other configs cost ~5 s each (Snakemake start-up).
@pytest.mark.parametrize("name", [SHIPPED[0], *(pytest.param(n, marks=pytest.mark.slow) for n in SHIPPED[1:])])
def test_shipped_config_dry_run(tmp_path, name):
    res = snakemake("-n", "--configfile", str(REPO / "config" / name), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    cfg = load(name)
    pairs = study_pairs(cfg)
    base = [p for p in pairs if p[4] == cfg.get("seed", 0)]

    def n_pairs(of, subset=None):
        return sum(1 for p in of if subset is None or p[3] in subset)

    counts = job_counts(res.stdout)
    assert counts["train"] == counts["evaluate"] == len(pairs)
    # probes: every base-seed pair at probes.lambdas, and the trained replicates (the probe claims' pairs)
    replicas = [p for p in pairs if p[4] != cfg.get("seed", 0) and p[2] == "trained"]
    probe_lams = cfg["probes"].get("lambdas")
    assert counts["probes"] == n_pairs(base, probe_lams) + n_pairs(replicas, probe_lams)
    planted = {m["name"] for m in cfg["models"] if m.get("source") == "planted"}
    lm_base = [p for p in base if p[0] not in planted]  # text windows: language models only
    assert counts.get("tables", 0) == (n_pairs(lm_base, cfg["tables"].get("lambdas"))
                                       if cfg["tables"].get("enabled", True) else 0)
    # one cache job per (model variant, split), whatever the number of layers: one forward caches all of them
    n_variants = sum(1 if m["name"] in planted or not cfg["reinit"]["enabled"] else 2 for m in cfg["models"])
    assert counts["cache"] == 2 * n_variants
    assert counts.get("recovery", 0) == sum(1 for p in pairs if p[0] in planted)
    names = (cfg.get("figures") or {}).get("names")  # absent: the schema's default, the paper's 8 figures
    assert counts["figure"] == (len(names) if names else 8) and counts["summary"] == 1
    assert counts.get("init_tracking", 0) == (1 if cfg.get("mlflow", {}).get("enabled", True) else 0)
    assert counts.get("pretrain", 0) == sum(m.get("source") == "pretrain" for m in cfg["models"])


def test_paper_configs_follow_the_paper():
    for name, layer, expansion, jsae_lam in (("pythia-70m.yaml", 3, 32, 1), ("pythia-410m.yaml", 15, 64, 0.5)):
        cfg = load(name)
        assert cfg["models"][0]["layers"] == [layer] and cfg["sae"] == {"k": 32, "expansion": expansion}
        assert cfg["train"]["n_tokens"] == 300_000_000 and {0.5, 1} <= set(cfg["lambdas"]) and 0 in cfg["lambdas"]
        assert cfg["figures"]["jsae_lam"] == jsae_lam
        assert cfg["corpora"][cfg["train_corpus"]]["dataset"] == "monology/pile-uncopyrighted"
        assert cfg["corpora"][cfg["eval_corpus"]]["dataset"] == "allenai/c4"


def test_one_figure_builds_only_what_it_needs(tmp_path):
    # target first: a target after `--resources gpu=1` would be read as a second resource
    res = snakemake("results/figures/fig5.pdf", "-n", "--configfile", str(REPO / "config" / "config.yaml"),
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    lams = len(load("config.yaml")["lambdas"])
    assert counts == {"corpus": 1, "pretrain": 1, "cache": 2, "init_tracking": 1, "train": lams, "evaluate": lams,
                      "figure": 1}


@pytest.mark.parametrize("allow", [False, True])
def test_pretrain_cap_and_summary_provenance_reach_the_commands(tmp_path, allow):
    """The default study's step budget and cap reach `jsae pretrain`; the summary reads the model's pretrain.json."""
    cfg = load("config.yaml")
    cfg["models"][0]["pretrain"]["allow_time_cap"] = allow
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("results/summary.md", "-n", "-p", "--configfile", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    pre = cfg["models"][0]["pretrain"]
    pretrain_cmd = next(line for line in res.stdout.splitlines() if "python -m jsae pretrain" in line)
    assert f"--minutes {pre['minutes']} --max-steps {pre['max_steps']}" in pretrain_cmd
    assert ("--allow-time-cap" in pretrain_cmd) is allow
    summary_cmd = next(line for line in res.stdout.splitlines() if "python -m jsae summary" in line)
    assert "--pretrain results/models/tiny-neox/pretrain.json --out-md" in summary_cmd
    assert "pretrain.json" not in summary_cmd.split("--pretrain")[0]  # not read as an evaluation input


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
    assert cfg["models"][0]["pretrain"]["allow_time_cap"] is False  # a cap that fires fails the rule by default
    assert cfg["corpora"]["default"]["validation_fraction"] == 0.05
    assert cfg["figures"]["names"][0] == "fig2" and cfg["reinit"]["enabled"] is True


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(lamdas=[0, 1]), "'lamdas' was unexpected"),
    (lambda c: c.update(train={"n_tokens": 10, "learning_rate": 1}), "'learning_rate' was unexpected"),
    (lambda c: c.update(lambdas=[0, -0.5]), "-0.5 is less than the minimum of 0"),
    (lambda c: c.pop("corpora"), "'corpora' is a required property"),
    (lambda c: c["corpora"].update(pile={"source": "hf"}), "'dataset' is a required property"),
    (lambda c: c["models"][0].update(name="a/b"), "does not match"),
    (lambda c: c.update(sae={"k": 0}), "0 is less than the minimum of 1"),
    (lambda c: c["models"].append({"name": "pythia", "layers": [3]}), "'spec' is a required property"),
    (lambda c: c["models"][0].update(pretrain={"allow_time_cap": "yes"}), "'yes' is not of type 'boolean'"),
])
def test_schema_rejects(mutate, message):
    from snakemake.exceptions import WorkflowError

    cfg = minimal()
    mutate(cfg)
    with pytest.raises(WorkflowError, match=re.escape(message)):
        validate(cfg)


# Bad configs refused by the real snakemake in one line: tests/test_faults_config.py


# --------------------------------------------------------------------------------------------------
# End to end: the micro study, run by the real snakemake
# --------------------------------------------------------------------------------------------------



def _declared_outputs(res_stdout: str) -> list[tuple[str, str]]:
    """(file, status) rows of `snakemake --summary`."""
    rows = []
    for line in res_stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 5 and parts[0].startswith("results/"):
            rows.append((parts[0], parts[4]))
    return rows


def _jobs_running_in(directory: Path) -> list[int]:
    """pids of `python -m jsae` processes whose working directory is ``directory``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"jsae" in cmd and b"-m" in cmd and Path(os.readlink(proc / "cwd")) == directory:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def _kill_snakemake_during_a_job(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Fault injection: kill -9 Snakemake while a job runs (the micro study's pretraining); no job may run on
    as an orphan (the long-running case is tests/test_faults_cli.py), and a plain re-run must resume."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([SNAKEMAKE, "-s", str(SNAKEFILE), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not (tmp_path / "results" / "logs" / "pretrain").is_dir() or not _jobs_running_in(tmp_path):
            assert proc.poll() is None and time.monotonic() < deadline, "the study ended before pretraining"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 90  # the jobs notice within seconds, then stop at their next step
    while _jobs_running_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _jobs_running_in(tmp_path), "jobs of a killed Snakemake kept running"
    assert list((tmp_path / ".snakemake" / "locks").iterdir())  # the lock `make run` releases


@pytest.mark.slow
@pytest.mark.faults
def test_micro_study_end_to_end(tmp_path):
    shutil.copy(MICRO, tmp_path / "config.yaml")
    args = ("--configfile", "config.yaml")
    _kill_snakemake_during_a_job(tmp_path, args)
    assert snakemake("--unlock", *args, cwd=tmp_path).returncode == 0
    # a plain re-run resumes (the profile reruns the jobs the kill left incomplete)
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

    # the replicate seed of lambda = 0 was trained and evaluated; the claims combine both seeds
    assert (tmp_path / "results/eval/tiny-neox/L1/reinit/lam0/seed1/evaluation.json").is_file()
    claims = pd.read_csv(tmp_path / "results" / "claims.csv")
    assert set(claims["n_seeds"]) <= {0, 1}  # lambda 1 has one seed here: nothing to combine
    assert "seed 0" in claims["seed_values"].iloc[0]

    # a finished study reruns nothing
    again = snakemake("-n", *args, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    # another tracking store (e.g. a server on a cluster) re-plans only the store's initialisation and the study's
    # run: where a job logs is not in its params or command text (jobs read $JSAE_MLFLOW_URI)
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "sqlite:///elsewhere.db"}}))
    moved = snakemake("-n", "--configfile", "config.yaml", "elsewhere.yaml", cwd=tmp_path)
    assert job_counts(moved.stdout) == {"init_tracking": 1, "study_run": 1, "all": 1}, moved.stdout[-3000:]

    # fault injection: a deleted intermediate under existing downstream outputs is rebuilt, and what rests on it
    # reruns (Snakemake alone would say "Nothing to be done": the files are the study's targets)
    for lost, rule in (("results/runs/tiny-neox/L1/trained/lam1/seed0/sae_out/sae_weights.safetensors", "train"),
                       ("results/models/tiny-neox/model.safetensors", "pretrain"),
                       ("results/models/tiny-neox-reinit/model.safetensors", "reinit"),
                       ("results/corpus/default/train.jsonl", "corpus")):
        kept = tmp_path / "kept"
        (tmp_path / lost).rename(kept)
        plan = snakemake("-n", *args, cwd=tmp_path)
        kept.rename(tmp_path / lost)
        counts = job_counts(plan.stdout)
        assert counts.get(rule) == 1 and counts.get("summary") == 1, (lost, counts)

    # deleting one pair's evaluation reruns only that evaluation and what reads it
    (tmp_path / "results/eval/tiny-neox/L1/trained/lam1/seed0/evaluation.json").unlink()
    plan = snakemake("-n", *args, cwd=tmp_path)
    assert job_counts(plan.stdout) == {"evaluate": 1, "figure": 7, "summary": 1, "study_run": 1, "all": 1}
    rerun = snakemake(*args, cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "Nothing to be done" in snakemake("-n", *args, cwd=tmp_path).stdout

    # the HTML report with the figures and their captions
    report = snakemake("--report", "results/report.html", *args, cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "results" / "report.html").stat().st_size > 100_000


def test_gguf_weights_are_materialized_once_and_every_job_loads_the_folder(tmp_path):
    """config/smollm2.yaml: one materialize job saves the GGUF weights as a folder; cache, reinit, train and
    evaluation load that folder (no job de-quantizes the GGUF again), and one cache job per variant and split
    caches all three layers."""
    res = snakemake("-n", "-p", "--configfile", str(REPO / "config" / "smollm2.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts["materialize"] == 1 and counts["cache"] == 4  # (trained, re-init) x (train, validation)
    commands = [line for line in res.stdout.splitlines() if "python -m jsae" in line]
    loading = [c for c in commands if re.search(r"jsae (cache|reinit|train|evaluate|probes|tables) ", c)]
    assert loading and all("--model smollm2-135m" not in c for c in loading)
    assert all("--model results/models/smollm2-135m" in c for c in loading)
    caches = [c for c in commands if "jsae cache" in c]
    assert all("--layer 5 15 25 " in c and "--forward-dtype bfloat16" in c for c in caches), caches
