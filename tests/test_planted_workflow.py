"""A planted ground-truth model as a model source of the study (issue 13): the schema's `planted:` block against
PlantedConfig, the `planted` / `cache` / `train` / `evaluate` / `probes` / `recovery` commands on real files, the
report's reading of recovery.json, real `snakemake -n` plans of config/planted.yaml (alone and beside a language
model), config errors in one line, and (slow) a tiny planted study run end to end by the real snakemake."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import yaml
from test_workflow import REPO, SCHEMA, job_counts, load, snakemake, study_pairs

from jsae.__main__ import main
from jsae.data.cache import ActivationCache
from jsae.data.planted import (
    PLANTED_FILES,
    PLANTED_HOOK,
    PlantedConfig,
    build_planted,
    is_planted_dir,
    load_planted,
    sample_split,
)
from jsae.eval import recovery as R

PLANTED_YAML = REPO / "config" / "planted.yaml"
#: A planted model small enough for a whole pair's commands in seconds.
TINY = {"d": 16, "n_x": 24, "n_y": 12, "p": 0.08, "frame_steps": 50}
TINY_TRAIN = {"k": 3, "n_latents": 48, "n_latents_out": 24, "n_tokens": 32768, "batch_size": 256, "lr": 0.003,
              "normalize_activations": "expected_norm", "checkpoint_every": 1000, "log_every": 50}


# --------------------------------------------------------------------------------------------------
# The schema's planted block is PlantedConfig
# --------------------------------------------------------------------------------------------------


def test_schema_planted_keys_are_the_dataclass_fields_with_their_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["$defs"]["planted"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(PlantedConfig)}
    assert list(props) == list(fields)
    for name, default in fields.items():
        have = props[name]["default"]
        assert (tuple(have) if isinstance(have, list) else have) == default, name
    assert "planted" in schema["$defs"]["model"]["properties"]["source"]["enum"]


def test_schema_accepts_a_planted_only_study_without_corpora():
    from test_workflow import validate

    cfg = validate({"models": [{"name": "p", "source": "planted", "layers": [0], "planted": {"n_x": 80}}],
                    "lambdas": [0, 1]})
    block = cfg["models"][0]["planted"]
    assert block["n_x"] == 80 and PlantedConfig.from_dict(block) == PlantedConfig(n_x=80)
    assert "corpora" not in cfg


# --------------------------------------------------------------------------------------------------
# The commands on real files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted") / "model"
    assert main(["planted", "--out", str(out), "--config-json", json.dumps(TINY)]) == 0
    return out


def test_planted_cli_writes_the_model_of_its_config(planted_dir):
    assert sorted(p.name for p in planted_dir.iterdir()) == sorted(PLANTED_FILES)
    assert is_planted_dir(planted_dir) and not is_planted_dir(planted_dir.parent)
    loaded, built = load_planted(planted_dir), build_planted(PlantedConfig(**TINY))
    assert loaded.config == built.config
    torch.testing.assert_close(loaded.D_x, built.D_x, rtol=0, atol=0)
    torch.testing.assert_close(loaded.mlp.W_out, built.mlp.W_out, rtol=0, atol=0)


@pytest.mark.parametrize("config_json, message", [
    ('{"n_x": 0}', "n_x=0 is invalid"),
    ('{"colour": 1}', "unknown planted config keys colour"),
    ('[1, 2]', "expected a JSON object"),
    ('{"n_x": ', "--config-json is not valid JSON"),
])
def test_planted_cli_bad_config_is_one_line(tmp_path, capsys, config_json, message):
    assert main(["planted", "--out", str(tmp_path / "m"), "--config-json", config_json]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "m").exists()


def test_cache_of_a_planted_model_is_a_readable_cache_with_its_firing_statistics(planted_dir, tmp_path):
    n = 20000
    for split in ("train", "validation"):
        assert main(["cache", "--model", str(planted_dir), "--layer", "0", "--split", split, "--n-tokens", str(n),
                     "--out", str(tmp_path / f"{split}.h5"), "--seed", "3"]) == 0
    with ActivationCache.open(tmp_path / "train.h5") as train, ActivationCache.open(tmp_path / "validation.h5") as val:
        P = load_planted(planted_dir)
        for cache, split, split_seed in ((train, "train", 6), (val, "validation", 7)):
            a = cache.attrs
            assert (a["model"], a["layer"], a["hook"], a["d_model"], a["n_tokens"]) == (str(planted_dir), 0,
                                                                                       PLANTED_HOOK, 16, n)
            assert a["source"] == "planted" and a["split_seed"] == split_seed and a["format"] == 2
            # x is exactly the documented stream: sample_split(seed, split), stored as float32
            s_x = torch.cat([s for s, _ in sample_split(P, n, 3, split)])
            x_ref = torch.cat([x for _, x in sample_split(P, n, 3, split)]).float()
            assert torch.equal(cache.read(), x_ref)
            # firing statistics: each of n_x features fires w.p. p; a row is all-zero w.p. (1 - p)^n_x
            active = float((s_x > 0).sum(1).double().mean())
            assert a["mean_active_features"] == pytest.approx(active)
            assert active == pytest.approx(TINY["n_x"] * TINY["p"], rel=0.03)
            zero_rows = float((cache.read().abs().sum(1) == 0).double().mean())
            assert zero_rows == pytest.approx((1 - TINY["p"]) ** TINY["n_x"], abs=0.01)
            # the token-level datasets ActivationCache requires: dummies (no text)
            assert cache.contexts().shape == (n, 2) and not cache.contexts().any()
            assert not np.asarray(cache.token_ids).any() and len(cache.position) == n
        assert not torch.equal(train.read(0, 100), val.read(0, 100))  # the splits never share draws


def test_cache_of_a_planted_model_refuses_other_layers(planted_dir, tmp_path, capsys):
    assert main(["cache", "--model", str(planted_dir), "--layer", "1", "--split", "train", "--n-tokens", "10",
                 "--out", str(tmp_path / "c.h5")]) == 2
    assert "layer=1 is out of range for planted model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def planted_pair(planted_dir, tmp_path_factory):
    """One pair trained, evaluated, probed and scored against the truth by the CLI commands (what the rules run)."""
    root = tmp_path_factory.mktemp("pair")
    train, val = root / "train.h5", root / "validation.h5"
    for split, path, n in (("train", train, 32768), ("validation", val, 2048)):
        assert main(["cache", "--model", str(planted_dir), "--layer", "0", "--split", split, "--n-tokens", str(n),
                     "--out", str(path)]) == 0
    run = root / "runs" / "planted" / "L0" / "trained" / "lam1" / "seed0"
    ev = root / "eval" / "planted" / "L0" / "trained" / "lam1" / "seed0"
    assert main(["train", "--model", str(planted_dir), "--model-name", "planted", "--layer", "0", "--control",
                 "trained", "--cache", str(train), "--out", str(run), "--config-json",
                 json.dumps({**TINY_TRAIN, "lam": 1.0, "seed": 0}), "--device", "cpu", "--mlflow-uri", "none",
                 "--no-progress"]) == 0
    common = ["--model", str(planted_dir), "--layer", "0", "--run", str(run), "--cache", str(val), "--device", "cpu"]
    assert main(["evaluate", *common, "--out", str(ev / "evaluation.json"), "--no-progress"]) == 0
    assert main(["probes", *common, "--out", str(ev / "probes.json"), "--n-sweeps", "64", "--no-progress"]) == 0
    assert main(["recovery", *common, "--probes", str(ev / "probes.json"), "--out", str(ev / "recovery.json")]) == 0
    return run, ev


def test_train_evaluate_probes_recovery_on_a_planted_model(planted_pair, planted_dir):
    run, ev = planted_pair
    record = json.loads((run / "run.json").read_text())
    assert record["hook"] == PLANTED_HOOK and record["params"]["mlp_kind"] == "plain"
    evaluation = json.loads((ev / "evaluation.json").read_text())
    assert not any(k.startswith("ce/") or "ce_score" in k for k in evaluation["metrics"])  # no LM: no CE/KL
    doc = json.loads((ev / "recovery.json").read_text())
    assert doc["pair"] == evaluation["pair"]  # the same identity section as evaluation.json
    assert doc["arrays"] == "recovery_arrays.npz" and (ev / "recovery_arrays.npz").is_file()
    m = doc["metrics"]
    for side in ("in", "out"):
        for name in R.FEATURE_METRICS:
            assert 0 <= m[R.recovery_key(side, name)] <= 1
    for key in (R.EDGE_ROC_AUC_KEY, R.EDGE_PR_AUC_KEY, R.EDGE_BEST_F1_KEY, R.KIND_AGREEMENT_KEY):
        assert 0 <= m[key] <= 1, key
    assert m[R.KIND_N_KEY] > 0 and len(doc["settings"]["kind_confusion"]["counts"]) == 3
    assert m[R.EDGE_ROC_AUC_KEY] > 0.6  # a trained pair beats chance (0.5) even at these sizes
    with np.load(ev / "recovery_arrays.npz") as z:
        assert z["feature_scores"].shape == (TINY["n_y"], TINY["n_x"]) and z["kind_confusion"].sum() == m[R.KIND_N_KEY]


def test_recovery_refuses_a_language_model_and_probes_of_another_pair(planted_pair, planted_dir, tmp_path, capsys):
    run, ev = planted_pair
    common = ["--run", str(run), "--cache", str(ev.parents[5] / "validation.h5"), "--out", str(tmp_path / "r.json")]
    assert main(["recovery", "--model", str(tmp_path), *common]) == 2
    assert "is not a planted model directory" in capsys.readouterr().err
    other = json.loads((ev / "probes.json").read_text())
    other["pair"]["lam"] = 3.0
    (tmp_path / "probes.json").write_text(json.dumps(other))
    (tmp_path / other["arrays"]).symlink_to(ev / other["arrays"])
    assert main(["recovery", "--model", str(planted_dir), *common, "--probes", str(tmp_path / "probes.json")]) == 2
    assert "probed lam=3.0 but the pair has lam=1.0" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_tables_and_language_model_loading_refuse_a_planted_model(planted_pair, planted_dir, tmp_path, capsys):
    from jsae.data.models import resolve_spec

    with pytest.raises(ValueError, match="is a planted ground-truth model"):
        resolve_spec(str(planted_dir))
    run, ev = planted_pair
    assert main(["tables", "--model", str(planted_dir), "--layer", "0", "--run", str(run), "--cache",
                 str(ev.parents[5] / "validation.h5"), "--out", str(tmp_path / "t.html")]) == 2
    assert "is a planted model; expected a language model" in capsys.readouterr().err


def test_report_reads_recovery_into_the_pair_and_renders_section_and_figure(planted_pair, tmp_path):
    from jsae.report.figures import render
    from jsae.report.results import find_results, load_results
    from jsae.report.summary import write_summary

    _, ev = planted_pair
    paths = find_results(ev.parents[4])
    assert ev / "recovery.json" in paths
    (r,) = load_results(paths)
    assert r.has_recovery and r.metrics[R.EDGE_ROC_AUC_KEY] == pytest.approx(
        json.loads((ev / "recovery.json").read_text())["metrics"][R.EDGE_ROC_AUC_KEY])
    assert r.stats_path == ev / "jacobian_stats.npz" and r.recovery_path == ev / "recovery_arrays.npz"
    assert r.settings.get("evaluation_point")  # evaluation's settings kept (recovery.json does not replace them)
    table, _ = write_summary([r], tmp_path / "summary.md", tmp_path / "summary.csv", jsae_lam=1.0,
                             out_claims=tmp_path / "claims.csv")
    md = (tmp_path / "summary.md").read_text()
    assert "## Planted ground truth" in md and "### planted L0" in md and "edge ROC AUC" in md
    assert "a planted ground-truth model" in md
    assert R.EDGE_BEST_F1_KEY in table.columns
    written = render(["fig_recovery"], [r], tmp_path / "figures", jsae_lam=1.0)
    assert {p.name for p in written} == {"fig_recovery.pdf", "fig_recovery.png"}
    assert (tmp_path / "figures" / "fig_recovery.png").stat().st_size > 5000


def test_summary_without_recovery_has_no_planted_section(tmp_path):
    from jsae.report.results import PairResult
    from jsae.report.summary import planted_section

    assert planted_section([PairResult("m", 1, "trained", 0.0, metrics={"x": 1.0})], 1.0) == ""


# --------------------------------------------------------------------------------------------------
# The workflow: dry runs and config errors
# --------------------------------------------------------------------------------------------------


def test_planted_study_dry_run_plans_the_expected_jobs(tmp_path):
    res = snakemake("-n", "-p", "--configfile", str(PLANTED_YAML), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    cfg = load("planted.yaml")
    n_models = len(cfg["models"])
    assert n_models >= 2 and all(m["source"] == "planted" for m in cfg["models"])
    pairs = study_pairs(cfg)
    n_pairs = len(pairs)
    # every seed of the probed lambdas (all are replicated)
    n_probed = sum(1 for p in pairs if p[3] in cfg["probes"]["lambdas"])
    counts = job_counts(res.stdout)
    assert counts == {"planted": n_models, "cache": 2 * n_models, "train": n_pairs, "evaluate": n_pairs,
                      "probes": n_probed, "recovery": n_pairs, "core": n_pairs, "figure": len(cfg["figures"]["names"]),
                      "summary": 1, "all": 1}, counts
    commands = [line for line in res.stdout.splitlines() if "python -m jsae" in line]
    caches = [c for c in commands if "jsae cache" in c]
    assert len(caches) == 2 * n_models and not any("--corpus" in c for c in caches)
    recoveries = [c for c in commands if "jsae recovery" in c]
    with_probes = [c for c in recoveries if "--probes" in c]
    assert len(with_probes) == n_probed
    for c in with_probes:  # each recovery reads its own pair's probes
        run = re.search(r"--run results/runs/(\S+)", c)[1]
        assert f"--probes results/eval/{run}/probes.json" in c, c
    summary = next(c for c in commands if "jsae summary" in c)
    assert summary.count("recovery.json") == n_pairs and "--pretrain  --out-md" in summary


def test_planted_model_beside_a_language_model_dry_run(tmp_path):
    """The default study's planted model (its own lambdas, sae and train keys): no re-init copy, no tables, no
    fig7 inputs of its own; its own keys reach its training commands only; the language model's plan is the
    same as in a study without it."""
    cfg = load("config.yaml")
    (planted,) = [m for m in cfg["models"] if m["source"] == "planted"]
    lm_only = {**cfg, "models": [m for m in cfg["models"] if m["source"] != "planted"],
               "figures": {**cfg["figures"], "names": [f for f in cfg["figures"]["names"] if f != "fig_recovery"]}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(lm_only))
    base = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    res = snakemake("-n", "-p", "--configfile", str(REPO / "config" / "config.yaml"), cwd=tmp_path)
    assert res.returncode == 0 and base.returncode == 0, res.stderr[-3000:] + base.stderr[-3000:]
    before, after = job_counts(base.stdout), job_counts(res.stdout)
    seeds, seed_lams = cfg["seeds"]["n"], cfg["seeds"]["lambdas"]
    own = planted["lambdas"]
    planted_pairs = len(own) + (seeds - 1) * len([x for x in own if x in seed_lams])
    assert after["train"] == after["evaluate"] == before["train"] + planted_pairs
    assert after["recovery"] == planted_pairs and after["planted"] == 1
    assert after["reinit"] == before["reinit"] == 1 and after["tables"] == before["tables"]
    assert after["cache"] == before["cache"] + 2 and after["figure"] == before["figure"] + 1
    assert "results/models/planted-gelu-reinit" not in res.stdout
    fig7 = re.search(r"rule figure:\n(?: {4}.*\n)*? {4}output: results/figures/fig7\.pdf", res.stdout)
    fig7_block = res.stdout[res.stdout.rindex("rule figure:", 0, fig7.end()):fig7.end()] if fig7 else ""
    assert fig7_block and "planted-gelu" not in fig7_block
    # each model's training commands carry the study's sae/train keys with its own on top
    assert after["train_baseline"] == before["train_baseline"] + 2  # a transcoder and a skip transcoder
    for line in (x for x in res.stdout.splitlines() if "python -m jsae train " in x):  # pairs, not train-baseline
        config = json.loads(re.search(r"--config-json '([^']+)'", line)[1])
        mine = planted if "--model-name planted-gelu" in line else {}
        want = {**cfg["sae"], **mine.get("sae", {}), **cfg["train"], **mine.get("train", {})}
        assert {k: config[k] for k in want} == want, line
        assert fmt(config["lam"]) in {fmt(x) for x in (mine.get("lambdas") or cfg["lambdas"])}


def fmt(x) -> str:
    return f"{float(x):g}"


def _bad(tmp_path, cfg: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert res.returncode != 0
    out = [line for line in (res.stdout + res.stderr).splitlines()
           if line.strip() and not line.startswith("Using workflow specific profile")]
    assert len(out) == 1 and out[0].startswith("config error: "), out[:20]
    assert not (tmp_path / "results").exists()
    return out[0]


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["models"][0].update(layers=[1]),
     "model 'planted-gelu': layer 1 is out of range; expected layers: [0]"),
    (lambda c: c["models"][0]["planted"].update(kind_shares=[0.5, 0.5, 0.5]),
     "model 'planted-gelu' planted: kind_shares=[0.5, 0.5, 0.5] is invalid"),
    (lambda c: c["models"][0]["planted"].update(fan_in=100), "model 'planted-gelu' planted: fan_in=100 is invalid"),
    (lambda c: c["figures"].update(names=["fig2", "fig7"]), "every model is planted"),
    (lambda c: c["models"][0].update(spec="gpt2"), "`spec` is only for source 'pretrained'"),
    (lambda c: c["models"][0]["planted"].update(colour=1), "'colour' was unexpected"),
])
def test_bad_planted_config_is_refused_in_one_line(tmp_path, mutate, message):
    cfg = load("planted.yaml")
    mutate(cfg)
    assert message in _bad(tmp_path, cfg)


def test_recovery_figure_without_a_planted_model_is_refused(tmp_path):
    cfg = load("config.yaml")
    cfg["models"] = [m for m in cfg["models"] if m["source"] != "planted"]
    cfg["figures"]["names"] = ["fig2", "fig_recovery"]
    assert "fig_recovery (recovery of a planted ground truth) but no model has source 'planted'" in _bad(tmp_path, cfg)


# --------------------------------------------------------------------------------------------------
# End to end: a tiny planted study, run by the real snakemake
# --------------------------------------------------------------------------------------------------

TINY_STUDY = {
    "study": "jsae-planted-tiny", "seed": 0, "device": "cpu", "mlflow": {"enabled": False},
    "models": [{"name": "planted-tiny", "source": "planted", "layers": [0], "planted": dict(TINY)}],
    "cache": {"train_tokens": 32768, "eval_tokens": 2048},
    "sae": {"k": 3, "n_latents": 48, "n_latents_out": 24},
    "train": {k: v for k, v in TINY_TRAIN.items() if k not in ("k", "n_latents", "n_latents_out")},
    "lambdas": [0, 1], "reinit": {"enabled": False}, "seeds": {"n": 2, "lambdas": [0]},
    "evaluate": {"n_tokens": 2048, "ce_tokens": 2048}, "probes": {"enabled": True, "n_sweeps": 32},
    "tables": {"enabled": False}, "figures": {"names": ["fig2", "fig_recovery"], "jsae_lam": 1},
    "interaction": {"enabled": True},
}


@pytest.mark.slow
def test_tiny_planted_study_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    args = ("--configfile", "config.yaml")
    run = snakemake(*args, cwd=tmp_path, timeout=1200)
    assert run.returncode == 0, run.stderr[-6000:]
    results = tmp_path / "results"
    for lam, seed in (("0", 0), ("0", 1), ("1", 0)):
        doc = json.loads((results / f"eval/planted-tiny/L0/trained/lam{lam}/seed{seed}/recovery.json").read_text())
        assert doc["pair"]["lam"] == float(lam) and doc["pair"]["seed"] == seed
        assert 0 <= doc["metrics"][R.EDGE_ROC_AUC_KEY] <= 1 and R.KIND_AGREEMENT_KEY in doc["metrics"]
    md = (results / "summary.md").read_text()
    assert "## Planted ground truth" in md and "### planted-tiny L0" in md and "mean of 2" in md
    for fig in ("fig2", "fig_recovery"):
        assert (results / "figures" / f"{fig}.png").stat().st_size > 5000
    assert not (results / "corpus").exists() and not (results / "models" / "planted-tiny-reinit").exists()
    csv = (results / "summary.csv").read_text().splitlines()[0]
    assert R.EDGE_ROC_AUC_KEY in csv
    # SCALAR-style interaction sparsity: the planted model's own output is "downstream"
    inter = json.loads((results / "eval/planted-tiny/L0/trained/lam1/seed0/interaction.json").read_text())
    assert 0 <= inter["metrics"]["interaction/circuit_area"] <= 1, inter["metrics"]
    # SAEBench's core metrics, without CE/KL (no LM)
    core = json.loads((results / "eval/planted-tiny/L0/trained/lam1/seed0/core/sae_out_eval_results.json").read_text())
    assert core["eval_result_metrics"]["sparsity"]["l0"] == 3
    assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] is None
    # the positive-control claims, combined over the seeds both pairs have (seed 0 only at lambda 1 here)
    import pandas as pd

    claims = pd.read_csv(results / "claims.csv").set_index("key")
    for key in ("planted_edge_auc", "planted_edge_ap_gain"):
        row = claims.loc[key]
        assert row["n_unit"] == "output features" and row["lo"] <= row["value"] <= row["hi"], row
    again = snakemake("-n", *args, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    # a deleted file of the planted model is rebuilt, and everything resting on it reruns
    (results / "models" / "planted-tiny" / "truth.safetensors").unlink()
    plan = job_counts(snakemake("-n", *args, cwd=tmp_path).stdout)
    assert plan.get("planted") == 1 and plan.get("recovery") == 3 and plan.get("summary") == 1, plan


def test_fig7_draws_only_the_sites_with_a_re_init_control(tmp_path):
    """A study with a language model and a planted model: fig7 leaves the planted site (no re-init) out; with no
    re-init pair at all it is a one-line error naming what is missing."""
    from test_figures import write_synthetic_study

    from jsae.report import figures
    from jsae.report.results import load_results

    lm = write_synthetic_study(tmp_path / "a")
    planted = write_synthetic_study(tmp_path / "b", model="planted-gelu", layers=(0,), reinit_lams=())
    results = load_results(lm + planted)
    assert {r.site for r in results} == {("tiny-neox", 2), ("planted-gelu", 0)}
    written = figures.render(["fig7"], results, tmp_path / "fig", jsae_lam=1.0)
    assert [p.name for p in written] == ["fig7.pdf", "fig7.png"]
    with pytest.raises(ValueError, match="fig7 needs re-init pairs"):
        figures.render(["fig7"], load_results(planted), tmp_path / "fig", jsae_lam=1.0)
