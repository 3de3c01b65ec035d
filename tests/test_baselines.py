"""Transcoder baselines in the study (issue 15): training by our trainer machinery (exact resume, the pairs' recipe
and data order), the train-baseline / evaluate-baseline / core-baseline commands on real files, MLflow (nested under
the study's run, the pairs' stable param names plus ``method``, no ``lambda``), the CE/KL splice against the
language model's own loss with its MLP module swapped (an independent oracle), the schema, and (slow) a tiny study
with baselines enabled planned and run by the real snakemake."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from test_workflow import REPO, job_counts, snakemake, validate

from jsae.__main__ import main
from jsae.eval import baseline as EB
from jsae.eval.metrics import explained_variance
from jsae.nn.transcoder import TopKTranscoder
from jsae.train.baseline import TranscoderTrainer, build_transcoder, load_transcoder
from jsae.train.config import TrainConfig
from jsae.train.sources import InMemorySource

TINY = {"d": 16, "n_x": 24, "n_y": 12, "p": 0.08, "frame_steps": 50}
TRAIN = {"k": 3, "n_latents": 48, "n_latents_out": 24, "n_tokens": 2048, "batch_size": 128, "lr": 0.003,
         "normalize_activations": "expected_norm", "checkpoint_every": 1000, "log_every": 4}
STUDY = "baseline-study"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def error_lines(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.strip() and "Triton" not in line]


# --------------------------------------------------------------------------------------------------
# The trainer: the pairs' recipe and exact resume
# --------------------------------------------------------------------------------------------------


def _mlp():
    from builders import build_hf_mlp

    from jsae.nn.mlp import mlp_from_module

    return mlp_from_module(build_hf_mlp("neox-gelu")).float()


def _trainer(method: str, tmp_path, **kwargs) -> TranscoderTrainer:
    x = torch.randn(3000, 12, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(lam=0.0, k=3, n_latents=32, n_tokens=64 * 20, batch_size=64, lr=0.003, seed=1, auxk_coef=0.1,
                      auxk_k=4, dead_window_tokens=256)
    mlp = _mlp()
    tc = build_transcoder(mlp, cfg, method)
    return TranscoderTrainer(tc, mlp, InMemorySource(x), cfg, work_dir=tmp_path / "work", checkpoint_every=5,
                             log_every=4, progress=False, scales=(1.5, 0.5), **kwargs)


@pytest.mark.parametrize("method", ["transcoder", "skip_transcoder"])
def test_resumed_training_ends_bit_identical(tmp_path, method):
    """Interrupted after step 7 (checkpoint at 5), resumed with the same arguments: the same weights and log as an
    uninterrupted run (the trainer's checkpoint holds the optimiser, RNG, dead-latent counters and the log window)."""
    full = _trainer(method, tmp_path / "a")
    full.run()

    def crash(step: int) -> None:
        if step == 7:
            raise RuntimeError("killed")

    first = _trainer(method, tmp_path / "b", on_step=crash)
    with pytest.raises(RuntimeError, match="killed"):
        first.run()
    resumed = _trainer(method, tmp_path / "b")
    assert resumed.restore() and resumed.step == 5
    resumed.run()
    for name, p in full.tc.named_parameters():
        assert torch.equal(p, getattr(resumed.tc, name)), name
    timing = ("train/tokens_per_s", "train/reader_wait_fraction")
    untimed = lambda h: [{k: v for k, v in row.items() if k not in timing} for row in h]  # noqa: E731
    assert untimed(resumed.history) == untimed(full.history) and resumed.timing["resumed_from"] == [5]
    assert full.history[-1]["train/out/mse"] < full.history[0]["train/out/mse"]
    assert set(full.history[-1]) == {"step", "train/tokens", "train/loss", "train/out/mse", "train/out/auxk_mse",
                                     "train/lr", "train/out/dead_fraction", "train/out/dead_count", *timing}
    # AuxK ran (logged as the pairs' AuxK MSE, jsae.nn.pair.AuxK: the error's MSE against its model from the dead
    # latents, which is the error's own MSE while none is dead)
    assert full.history[-1]["train/out/auxk_mse"] > 0


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    first = _trainer("transcoder", tmp_path)
    first.save_checkpoint()
    other = _trainer("transcoder", tmp_path)
    other.fingerprint = {"identity": {"method": "skip_transcoder"}}
    with pytest.raises(ValueError, match="different hyper-parameters or data .*method"):
        other.restore()


def test_lambda_is_refused_for_a_baseline():
    cfg = TrainConfig(lam=1.0, k=3, n_latents=32, n_tokens=640, batch_size=64)
    mlp = _mlp()
    with pytest.raises(ValueError, match="lam=1.0 is invalid for a transcoder baseline"):
        TranscoderTrainer(TopKTranscoder(12, 12, 32, 3), mlp, InMemorySource(torch.randn(100, 12)), cfg)


# --------------------------------------------------------------------------------------------------
# The commands on a planted model: run directory, MLflow nesting and params
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory) -> dict:
    """A tracking store initialised for STUDY (the workflow's marker), a planted model, its caches, and both
    baselines trained by the CLI nested under the study's run."""
    root = tmp_path_factory.mktemp("baselines")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    marker = root / "tracking" / "store.json"
    assert subprocess.run([sys.executable, "-m", "jsae.tracking", uri, "--study", STUDY, "--marker", str(marker)],
                          capture_output=True, text=True, timeout=300).returncode == 0
    model = root / "model"
    assert main(["planted", "--out", str(model), "--config-json", json.dumps(TINY)]) == 0
    for split, n in (("train", 4096), ("validation", 2048)):
        assert main(["cache", "--model", str(model), "--layer", "0", "--split", split, "--n-tokens", str(n),
                     "--out", str(root / f"{split}.h5")]) == 0
    runs = {}
    for method in ("transcoder", "skip_transcoder"):
        out = root / "runs" / method
        assert main(["train-baseline", "--method", method, "--model", str(model), "--model-name", "planted",
                     "--layer", "0", "--cache", str(root / "train.h5"), "--out", str(out),
                     "--config-json", json.dumps({**TRAIN, "seed": 2}), "--device", "cpu", "--mlflow-uri", uri,
                     "--experiment", STUDY, "--mlflow-parent-from", str(marker), "--no-progress"]) == 0
        runs[method] = json.loads((out / "run.json").read_text())
    return {"root": root, "uri": uri, "marker": json.loads(marker.read_text()), "model": model, "runs": runs}


def test_run_directory_and_record(planted_study):
    root = planted_study["root"]
    for method, run in planted_study["runs"].items():
        out = root / "runs" / method
        assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "run.json", "transcoder"]
        assert sorted(p.name for p in (out / "transcoder").iterdir()) == ["cfg.json", "sae.safetensors"]
        assert not (out.parent / f".{method}.work").exists()  # checkpoints removed once complete
        assert run["method"] == method and run["seed"] == 2 and run["layer"] == 0 and run["control"] == "trained"
        assert run["baseline"]["k"] == 3 and run["baseline"]["n_latents"] == 48  # the pairs' input SAE's sizes
        assert run["tokens_trained"] == 2048 and "lam" not in run
        tc = load_transcoder(out / "transcoder")
        assert tc.skip == (method == "skip_transcoder") and (tc.n_latents, tc.k) == (48, 3)


def test_mlflow_run_is_nested_under_the_study_with_the_pairs_param_names(planted_study):
    client, parent = _client(planted_study["uri"]), planted_study["marker"]["parent_run_id"]
    for method, run in planted_study["runs"].items():
        r = client.get_run(run["mlflow_run_id"])
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert r.info.run_name == f"planted/L0/trained/{method}/seed2" and r.info.status == "FINISHED"
        assert {"study": STUDY, "model": "planted", "layer": "0", "control": "trained", "method": method}.items() \
            <= r.data.tags.items()
        p = r.data.params
        assert (p["method"], p["layer"], p["control"], p["seed"], p["k"], p["n_latents"]) == (method, "0", "trained",
                                                                                            "2", "3", "48")
        assert p["model"] == str(planted_study["model"]) and "lambda" not in p and "lam" not in p
        assert "k_out" not in p and "n_latents_out" not in p
        assert {"train/loss", "train/out/mse", "train/out/dead_fraction"} <= set(r.data.metrics)
        assert not any(k.startswith(("train/jac", "train/in/")) for k in r.data.metrics)
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"transcoder", "run.json", "metrics.jsonl"}


def test_rerun_is_skipped_and_other_settings_refused(planted_study, capfd):
    root = planted_study["root"]
    out = root / "runs" / "transcoder"
    before = (out / "run.json").read_text()
    base = ["train-baseline", "--method", "transcoder", "--model", str(planted_study["model"]), "--layer", "0",
            "--cache", str(root / "train.h5"), "--out", str(out), "--device", "cpu", "--mlflow-uri", "none",
            "--no-progress"]
    assert main([*base, "--config-json", json.dumps({**TRAIN, "seed": 2})]) == 0
    assert (out / "run.json").read_text() == before
    capfd.readouterr()
    assert main([*base, "--config-json", json.dumps({**TRAIN, "seed": 3})]) == 2
    lines = [ln for ln in error_lines(capfd) if "error" in ln.lower()]
    assert len(lines) == 1 and "already holds a finished run with other settings (seed: 2 != 3)" in lines[0], lines


@pytest.mark.parametrize("args, message", [
    (["--lam", "1"], "lam=1.0 is invalid for a transcoder baseline; expected 0 or absent"),
    (["--config-json", '{"k": 999}'], "k=999"),
])
def test_bad_input_is_one_line(planted_study, tmp_path, capfd, args, message):
    root = planted_study["root"]
    code = main(["train-baseline", "--method", "transcoder", "--model", str(planted_study["model"]), "--layer", "0",
                 "--cache", str(root / "train.h5"), "--out", str(tmp_path / "r"), "--device", "cpu",
                 "--mlflow-uri", "none", *args])
    assert code == 2
    lines = [ln for ln in error_lines(capfd) if "error" in ln.lower()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_unknown_method_is_refused(planted_study, tmp_path, capfd):
    with pytest.raises(SystemExit) as exc:
        main(["train-baseline", "--method", "crosscoder", "--model", str(planted_study["model"]), "--layer", "0",
              "--cache", "x.h5", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capfd.readouterr().err
    assert "argument --method: invalid choice: 'crosscoder'" in err and "skip_transcoder" in err


def test_evaluate_and_core_on_a_planted_model(planted_study, tmp_path):
    """No LM: the MLP-output reconstruction only (EV against brute force), no CE/KL, SAEBench's JSON with CE null."""
    from jsae.data.cache import ActivationCache
    from jsae.data.planted import planted_mlp

    root, model = planted_study["root"], planted_study["model"]
    run = root / "runs" / "skip_transcoder"
    out = tmp_path / "eval" / "baseline_evaluation.json"
    common = ["--model", str(model), "--run", str(run), "--cache", str(root / "validation.h5"), "--device", "cpu",
              "--no-progress"]
    assert main(["evaluate-baseline", *common, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    tc, mlp = load_transcoder(run / "transcoder"), planted_mlp(str(model), 0)
    with ActivationCache.open(root / "validation.h5") as cache, torch.no_grad():
        x = cache.read().to(tc.W_enc.dtype)
        y = mlp(x.to(mlp.W_out.dtype)).to(x.dtype)
        assert m["out/explained_variance"] == pytest.approx(explained_variance(y, tc(x)), rel=1e-9)
    assert 0.2 < m["out/explained_variance"] <= 1 and m["eval/n_tokens"] == 2048
    assert not any(k.startswith(("in/", "jac/", "ce/", "kl/")) for k in m) and "out/ce_loss_score" not in m
    assert doc["baseline"]["method"] == "skip_transcoder" and "lam" not in doc["baseline"] and "pair" not in doc
    assert (out.parent / "baseline_arrays.npz").is_file()
    assert main(["core-baseline", *common, "--out", str(tmp_path / "core"), "--ce-contexts", "0",
                 "--batch-size-prompts", "2048"]) == 0
    core = json.loads((tmp_path / "core" / EB.CORE_FILENAME).read_text())
    from jsae.eval.core import TOP_LEVEL_KEYS

    assert tuple(core) == TOP_LEVEL_KEYS and core["eval_result_metrics"]["sparsity"]["l0"] <= 3
    assert core["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] is None
    assert all(d["encoder_decoder_cosine_sim"] is None for d in core["eval_result_details"])
    assert core["sae_cfg_dict"]["transcode"] is True and core["sae_cfg_dict"]["skip_connection"] is True


# --------------------------------------------------------------------------------------------------
# With a language model: the CE / KL splice against an independent oracle, and the commands
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from builders import build_tiny_saved_lm

    from jsae.data.cache import build_cache

    root = tmp_path_factory.mktemp("lm")
    build_tiny_saved_lm(root, validation_fraction=0.3)
    for split, n in (("train", 450), ("validation", 300)):
        build_cache(str(root / "model"), 1, root / "corpus", split, n, 16, root / f"{split}.h5", device="cpu",
                    progress=False, batch_size=8)
    assert main(["train-baseline", "--method", "transcoder", "--model", str(root / "model"), "--layer", "1",
                 "--cache", str(root / "train.h5"), "--out", str(root / "run"), "--config-json",
                 json.dumps({"k": 4, "expansion": 4, "n_tokens": 640, "batch_size": 32, "lr": 0.003, "log_every": 5}),
                 "--device", "cpu", "--mlflow-uri", "none", "--no-progress"]) == 0
    return root


class _Replaced(torch.nn.Module):
    """The MLP module swapped for one computing the transcoder's output from the module's own input."""

    def __init__(self, tc: TopKTranscoder) -> None:
        super().__init__()
        self.tc = tc

    def forward(self, x):
        return self.tc(x.to(self.tc.W_enc.dtype)).to(x.dtype)


def test_splice_ce_equals_the_models_own_loss_with_its_mlp_swapped(lm_run):
    from jsae.data.hooks import decoder_layers
    from jsae.data.models import load_model

    model, _ = load_model(str(lm_run / "model"), device="cpu")
    tc = load_transcoder(lm_run / "run" / "transcoder")
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    losses = EB.splice_token_losses(model, 1, tc, ids, batch_size=2, first_position_clean=False, progress=False)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        block = decoder_layers(model)[1]
        original = block.mlp
        block.mlp = _Replaced(tc)
        try:
            swapped = model(input_ids=ids, labels=ids)
        finally:
            block.mlp = original
    assert float(losses["ce/recon_out"].mean()) == pytest.approx(float(swapped.loss), rel=1e-5)
    logp, logq = clean.log_softmax(-1), swapped.logits.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    assert float(losses["kl/recon_out"].mean()) == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-7)
    m = EB.splice_metrics(losses, min_ablation_nats=0.0)
    ce = {v: float(losses[f"ce/{v}"].mean()) for v in ("clean", "recon_out", "zero_out")}
    assert m["out/ce_loss_score"] == pytest.approx((ce["zero_out"] - ce["recon_out"]) / (ce["zero_out"] - ce["clean"]))


def test_evaluate_and_core_cli_with_a_language_model(lm_run, tmp_path):
    common = ["--model", str(lm_run / "model"), "--run", str(lm_run / "run"), "--cache", str(lm_run / "validation.h5"),
              "--device", "cpu", "--no-progress"]
    out = tmp_path / "baseline_evaluation.json"
    assert main(["evaluate-baseline", *common, "--layer", "1", "--out", str(out), "--ce-tokens", "60"]) == 0
    m = json.loads(out.read_text())["metrics"]
    expected = {"out/explained_variance", "out/cosine", "out/mse", "out/dead_fraction", "out/rare_fraction",
                "out/ce_loss_score", "out/ce_loss_delta", "out/ce_ablation_delta", "out/ce_score_refused",
                "out/kl_score", "ce/clean", "ce/recon_out", "ce/zero_out", "kl/recon_out", "kl/zero_out",
                "eval/n_tokens", "eval/ce_tokens"}
    assert expected <= set(m) and not any(k.startswith(("in/", "jac/")) for k in m)
    assert m["kl/recon_out"] >= 0 and m["out/kl_score"] <= 1
    assert main(["core-baseline", *common, "--out", str(tmp_path / "core"), "--ce-contexts", "4",
                 "--batch-size-prompts", "2"]) == 0
    core = json.loads((tmp_path / "core" / EB.CORE_FILENAME).read_text())
    metrics = core["eval_result_metrics"]
    assert metrics["model_behavior_preservation"]["kl_div_score"] is not None
    assert metrics["sparsity"]["l0"] <= 4 and 0 <= metrics["misc_metrics"]["frac_alive"] <= 1


def test_evaluate_refuses_a_pair_run(lm_run, tmp_path, capfd):
    (tmp_path / "run.json").write_text(json.dumps({"model": str(lm_run / "model"), "layer": 1, "lam": 0}))
    code = main(["evaluate-baseline", "--model", str(lm_run / "model"), "--run", str(tmp_path), "--cache",
                 str(lm_run / "validation.h5"), "--out", str(tmp_path / "e.json"), "--device", "cpu"])
    assert code == 2
    lines = [ln for ln in error_lines(capfd) if "error" in ln.lower()]
    assert len(lines) == 1 and "records no method; expected a baseline run" in lines[0], lines


# --------------------------------------------------------------------------------------------------
# The config: schema, plans
# --------------------------------------------------------------------------------------------------


def _minimal() -> dict:
    return {"corpora": {"default": {"source": "default"}},
            "models": [{"name": "tiny-neox", "source": "pretrain", "layers": [1]}], "lambdas": [0, 1]}


def test_schema_defaults_and_unknown_method():
    from snakemake.exceptions import WorkflowError

    cfg = validate(_minimal())
    assert cfg["baselines"] == {"enabled": False, "methods": ["transcoder", "skip_transcoder"], "controls": ["trained"],
                                "replicates": False}
    bad = {**_minimal(), "baselines": {"enabled": True, "methods": ["crosscoder"]}}
    with pytest.raises(WorkflowError, match="'crosscoder' is not one of \\['transcoder', 'skip_transcoder'\\]"):
        validate(bad)


def test_default_config_plans_them_and_they_switch_off(tmp_path):
    assert yaml.safe_load((REPO / "config" / "config.yaml").read_text())["baselines"]["enabled"] is True
    (tmp_path / "core.yaml").write_text(yaml.safe_dump({"core": {"enabled": True}}))
    res = snakemake("-n", "--configfile", str(REPO / "config" / "config.yaml"), "core.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    # two sites (tiny-neox L2, planted-gelu L0) x two methods, trained control, base seed
    assert counts["train_baseline"] == counts["evaluate_baseline"] == counts["core_baseline"] == 4, counts
    for method in ("transcoder", "skip_transcoder"):
        assert f"results/runs/tiny-neox/L2/trained/{method}/seed0/transcoder/sae.safetensors" in res.stdout
        assert f"results/eval/tiny-neox/L2/trained/{method}/seed0/baseline_evaluation.json" in res.stdout
    assert "results/figures/fig_methods.png" in res.stdout
    # off: no baseline job, the same pairs, and fig_methods (it needs them) is left out of the targets
    (tmp_path / "off.yaml").write_text(yaml.safe_dump({"baselines": {"enabled": False}}))
    off_res = snakemake("-n", "--configfile", str(REPO / "config" / "config.yaml"), "off.yaml", cwd=tmp_path)
    off = job_counts(off_res.stdout)
    assert "train_baseline" not in off and off["train"] == counts["train"], off_res.stderr[-3000:]
    assert off["figure"] == counts["figure"] - 1 and "fig_methods" not in off_res.stdout


def test_reinit_baselines_without_the_control_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        **_minimal(), "baselines": {"enabled": True, "controls": ["reinit"]}, "reinit": {"enabled": False},
        "figures": {"names": ["fig2"]}}))
    res = snakemake("-n", "--configfile", "c.yaml", cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("config error")]
    assert res.returncode != 0 and lines == ["config error: baselines.controls has reinit but reinit.enabled is false; "
                                             "enable the control or remove reinit from baselines.controls"]


# --------------------------------------------------------------------------------------------------
# End to end: a tiny study with baselines, run by the real snakemake
# --------------------------------------------------------------------------------------------------

TINY_STUDY = {
    "study": "jsae-baselines-tiny", "seed": 0, "device": "cpu",
    "mlflow": {"enabled": True, "tracking_uri": "sqlite:///mlflow.db"},
    "models": [{"name": "planted-tiny", "source": "planted", "layers": [0], "planted": dict(TINY)}],
    "cache": {"train_tokens": 4096, "eval_tokens": 2048},
    "sae": {"k": 3, "n_latents": 48, "n_latents_out": 24},
    "train": {k: v for k, v in TRAIN.items() if k not in ("k", "n_latents", "n_latents_out")},
    "lambdas": [0, 1], "reinit": {"enabled": False}, "seeds": {"n": 1},
    "evaluate": {"n_tokens": 2048, "ce_tokens": 2048}, "probes": {"enabled": False}, "tables": {"enabled": False},
    "figures": {"names": ["fig2"], "jsae_lam": 1},
    "core": {"enabled": True}, "baselines": {"enabled": True},
}


@pytest.mark.slow
def test_tiny_study_with_baselines_end_to_end(tmp_path):
    """The whole study is planned with the baselines in it; the baselines' own targets (and what they rest on: the
    planted model, its caches, the tracking store) are run: trained, evaluated, SAEBench JSONs, nested in MLflow."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    args = ("--configfile", "config.yaml")
    plan = snakemake("-n", *args, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = job_counts(plan.stdout)
    assert counts["train_baseline"] == counts["evaluate_baseline"] == counts["core_baseline"] == 2, counts
    assert counts["train"] == counts["evaluate"] == 2
    base = "results/{kind}/planted-tiny/L0/trained/{method}/seed0"
    targets = [f"{base.format(kind='eval', method=m)}/{name}" for m in ("transcoder", "skip_transcoder")
               for name in ("baseline_evaluation.json", "core/transcoder_eval_results.json")]
    run = snakemake(*targets, *args, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-6000:]
    done = job_counts(run.stdout + run.stderr)
    assert done.get("train") is None and done["train_baseline"] == 2, done  # only what the targets need
    marker = json.loads((tmp_path / "results" / "tracking" / "store.json").read_text())
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for method in ("transcoder", "skip_transcoder"):
        record = json.loads((tmp_path / base.format(kind="runs", method=method) / "run.json").read_text())
        assert record["method"] == method and record["mlflow_status"] == "ok"
        r = client.get_run(record["mlflow_run_id"])
        assert r.data.tags["mlflow.parentRunId"] == marker["parent_run_id"] and r.data.params["method"] == method
        assert "eval/out/explained_variance" in r.data.metrics  # evaluate-baseline logged into the run
        ev = json.loads((tmp_path / base.format(kind="eval", method=method) / "baseline_evaluation.json").read_text())
        assert 0 < ev["metrics"]["out/explained_variance"] <= 1
    again = snakemake("-n", *targets, *args, cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


def test_release_holds_the_baseline_as_a_sparsify_folder(lm_run, tmp_path):
    """`python -m jsae export`: a baseline beside a pair is released as a sparsify folder named by the MLP's
    hookpoint, its weights byte for byte, that sparsify loads and runs to our transcoder's output; --select
    patterns that match only pairs leave it out."""
    import shutil

    from sparsify import SparseCoder

    from jsae.release import export_release
    from jsae.train.baseline import load_transcoder

    results = tmp_path / "results"
    base_dir = results / "runs" / "tiny" / "L1" / "trained" / "transcoder" / "seed0"
    shutil.copytree(lm_run / "run", base_dir)
    assert main(["train", "--model", str(lm_run / "model"), "--model-name", "tiny", "--layer", "1", "--lam", "0",
                 "--cache", str(lm_run / "train.h5"), "--out", str(results / "runs/tiny/L1/trained/lam0/seed0"),
                 "--config-json", json.dumps({"k": 4, "expansion": 4, "n_tokens": 64, "batch_size": 32}),
                 "--device", "cpu", "--mlflow-uri", "none", "--no-progress", "--no-artifacts"]) == 0
    manifest = export_release(results, tmp_path / "release")
    [entry] = manifest["baselines"]
    assert entry["path"] == "tiny/L1/trained/transcoder/seed0" and entry["method"] == "transcoder"
    folder = tmp_path / "release" / entry["sparsify"]
    assert folder.name == "layers.1.mlp"  # sparsify's name of GPT-NeoX's MLP module: where a transcoder hooks
    assert (folder / "sae.safetensors").read_bytes() == (base_dir / "transcoder" / "sae.safetensors").read_bytes()
    coder = SparseCoder.load_from_disk(folder)
    ours = load_transcoder(base_dir / "transcoder")
    x = torch.randn(8, ours.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(coder(x, ours(x)).sae_out, ours(x), atol=1e-5)
    card = (tmp_path / "release" / entry["path"] / "README.md").read_text()
    assert "SparseCoder.load_from_disk" in card and "Not evaluated." in card
    only_pairs = export_release(results, tmp_path / "release2", select=["tiny/L1/trained/lam*/seed0"])
    assert only_pairs["baselines"] == [] and len(only_pairs["pairs"]) == 1
