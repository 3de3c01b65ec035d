"""Training one pair: learning, schedules as applied, dead latents, exact resume, bad input, outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from builders import build_hf_mlp

from jsae.export import load_pair, read_run
from jsae.nn.mlp import mlp_from_module
from jsae.nn.pair import EVALUATION_POINT
from jsae.train import (
    InMemorySource,
    Prefetcher,
    TrainConfig,
    check_cache_matches,
    run_training,
    work_dir_for,
)
from jsae.train.cli import cli
from jsae.train.schedules import lam_at, lr_at

D = 12  # width of the tiny MLPs in builders.py



@pytest.fixture(scope="module")
def mlp():
    return train_mlp()


@pytest.fixture(scope="module")
def source(mlp) -> InMemorySource:
    # Activations with structure (a sparse mix of directions), so an SAE can learn them.
    return InMemorySource(source_tensor(), attrs={"model": "tiny", "layer": 0, "d_model": D, "n_tokens": 1500})


def small_config(**overrides) -> TrainConfig:
    base = dict(lam=1.0, n_tokens=32 * 24, batch_size=32, k=3, expansion=4, lr=3e-3, seed=0)
    return TrainConfig(**{**base, **overrides})


def train(mlp, source, out, config=None, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log_every", 4)
    kwargs.setdefault("checkpoint_every", 5)
    return run_training(mlp, source, config or small_config(), out, model="tiny", layer=0, **kwargs)


def sae_tensors(run_dir: Path, mlp) -> dict[str, torch.Tensor]:
    pair = load_pair(run_dir, mlp)
    return {f"{role}.{k}": v for role in ("sae_in", "sae_out") for k, v in getattr(pair, role).state_dict().items()}


# -- learning and outputs ---------------------------------------------------------------------------


def test_loss_decreases_and_outputs_are_complete(tmp_path: Path, mlp, source) -> None:
    cfg = small_config(n_tokens=32 * 60)
    rec = train(mlp, source, tmp_path / "run", cfg, log_every=10)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [10, 20, 30, 40, 50, 60]
    first, last = history[0], history[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"]
    assert last["train/in/mse"] < first["train/in/mse"] and last["train/out/mse"] < first["train/out/mse"]
    # run.json: identity, every hyper-parameter, cache attrs, evaluation point, timings, final metrics
    run = read_run(tmp_path / "run")
    assert run == json.loads(json.dumps(rec, default=str))
    assert run["pair"] == {"model": "tiny", "layer": 0, "control": "trained", "lam": 1.0, "seed": 0, "k": 3,
                           "n_latents": 48, "k_out": 3, "n_latents_out": 48}
    assert run["evaluation_point"] == EVALUATION_POINT
    assert run["cache"] == dict(source.attrs)
    assert run["params"]["lr"] == cfg.lr and run["params"]["n_steps"] == 60 and run["params"]["adam_beta2"] == 0.999
    assert run["jsae_version"] and run["timings"]["train_s"] > 0 and 0 <= run["timings"]["reader_wait_fraction"] < 1
    for key in ("train/loss", "train/in/mse", "train/out/mse", "train/jac/l1", "train/jac/frac_above_0.01",
                "train/lam", "train/lr", "train/tokens_per_s", "train/in/dead_fraction", "train/out/dead_fraction"):
        assert key in run["metrics"], key
    # one namespace for training (evaluation logs under eval/ into the same MLflow run)
    assert all(key.startswith("train/") for key in run["metrics"]) and all(
        key == "step" or key.startswith("train/") for key in last)
    assert run["metrics"]["train/tokens"] == run["tokens_trained"] == 60 * 32
    assert not work_dir_for(tmp_path / "run").exists()  # checkpoints are removed once the run is complete
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl", "pair.json", "run.json", "sae_in",
                                                                     "sae_out"]
    # decoders are unit-norm after training (renormalised after every step)
    pair = load_pair(tmp_path / "run", mlp)
    for sae in (pair.sae_in, pair.sae_out):
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_latents))


def test_expected_norm_scales_are_estimated_recorded_and_folded_into_the_export(tmp_path: Path, mlp, source) -> None:
    """Training in normalised units; the exported SAEs act on raw activations with the same latents."""
    from jsae.train import NORM_ESTIMATE_TOKENS, build_pair, estimate_activation_scales

    cfg = small_config(n_tokens=32 * 30, normalize_activations="expected_norm")
    c_in, c_out = estimate_activation_scales(mlp, source, cfg)
    # brute force over the same tokens: the first NORM_ESTIMATE_TOKENS of the data order
    x = torch.cat(list(itertools.islice(source.batches(cfg.batch_size, seed=cfg.seed), NORM_ESTIMATE_TOKENS // 32)))
    with torch.no_grad():
        y = mlp(x)
    assert c_in * x.norm(dim=1).mean() == pytest.approx(D**0.5, rel=1e-5)
    assert c_out * y.norm(dim=1).mean() == pytest.approx(D**0.5, rel=1e-5)
    assert abs(c_out / c_in - 1) > 0.1  # the test MLP changes the scale, so folding is really exercised

    rec = train(mlp, source, tmp_path / "run", cfg)
    assert rec["activation_scales"] == pytest.approx({"in": c_in, "out": c_out})
    assert rec["params"]["normalize_activations"] == "expected_norm"
    exported = load_pair(tmp_path / "run", mlp)
    assert (exported.input_scale, exported.output_scale) == (1.0, 1.0)
    # The same weights before folding (rebuilt from the exported ones) give the same latents, J, x_hat.
    scaled = build_pair(mlp, cfg)
    scaled.load_state_dict(exported.state_dict())
    with torch.no_grad():
        scaled.sae_in.fold_input_scale_(1 / c_in)
        scaled.sae_out.fold_input_scale_(1 / c_out)
    scaled.set_activation_scales(c_in, c_out)
    for sae in (scaled.sae_in, scaled.sae_out):  # trained in normalised units: unit-norm decoders there
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_latents))
    with torch.no_grad():
        a, b = exported(x[:64]), scaled(x[:64])
    assert torch.equal(a.in_idx, b.in_idx) and torch.equal(a.out_idx, b.out_idx)
    for field in ("jacobian", "x_hat", "y_hat"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-4, atol=1e-5, msg=field)
    ev_in = 1 - ((a.x_hat - x[:64]) ** 2).sum() / ((x[:64] - x[:64].mean(0)) ** 2).sum()
    assert ev_in > 0.3  # raw-space reconstructions are right (a missing fold would be off by c_in)


def test_logged_lr_and_lambda_follow_the_schedules(tmp_path: Path, mlp, source) -> None:
    cfg = small_config(n_tokens=32 * 40, lr_warmup_frac=0.1, lam_warmup_frac=0.25, lam=2.0)
    train(mlp, source, tmp_path / "run", cfg, log_every=2)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in history:
        last = int(row["step"]) - 1  # the logged values are those of the window's last step
        assert row["train/lr"] == lr_at(last, 40, lr=cfg.lr, warmup_frac=0.1, decay_frac=0.2)
        assert row["train/lam"] == lam_at(last, 40, lam=2.0, warmup_frac=0.25)
    assert history[0]["train/lam"] < 2.0 and history[-1]["train/lam"] == 2.0 and history[0]["train/lr"] < cfg.lr


def test_lambda_zero_trains_without_the_jacobian_term(tmp_path: Path, mlp, source) -> None:
    rec = train(mlp, source, tmp_path / "run", small_config(lam=0.0))
    m = rec["metrics"]
    assert m["train/jac/l1_train"] == 0.0  # the penalty was not part of the loss
    assert m["train/jac/l1"] > 0  # but the Jacobian is still measured for comparison
    assert m["train/loss"] == pytest.approx(m["train/in/mse"] + m["train/out/mse"], rel=1e-5)


# -- resume -----------------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Crash(f"simulated kill at step {s}")

    return on_step


@pytest.mark.parametrize("auxk_coef", [0.0, 0.5])  # AuxK reads the dead-latent trackers: checkpointed too
def test_kill_and_resume_gives_identical_weights(tmp_path: Path, mlp, source, auxk_coef) -> None:
    cfg = small_config(auxk_coef=auxk_coef)
    train(mlp, source, tmp_path / "straight", cfg)
    with pytest.raises(Crash):
        train(mlp, source, tmp_path / "resumed", cfg, on_step=crash_at(13))  # last checkpoint: step 10
    assert not (tmp_path / "resumed").exists()  # no half-written run directory
    assert (work_dir_for(tmp_path / "resumed") / "checkpoint.pt").is_file()
    steps: list[int] = []
    rec = train(mlp, source, tmp_path / "resumed", cfg, on_step=steps.append)
    assert steps[0] == 11 and steps[-1] == 24  # resumed after the checkpoint, not from scratch
    a, b = sae_tensors(tmp_path / "straight", mlp), sae_tensors(tmp_path / "resumed", mlp)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert rec["timings"]["resumed_from"] == [10] and rec["timings"]["sessions"] == 2
    losses = lambda d: [json.loads(r)["train/loss"] for r in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def test_auxk_gets_the_trackers_dead_masks_before_each_step(mlp, source) -> None:
    from jsae.train import Trainer, build_pair

    assert TrainConfig(lam=1.0).auxk_coef == 0.0  # off by default
    cfg = small_config(auxk_coef=1 / 32, n_tokens=32 * 12, expansion=8)
    pair = build_pair(mlp, cfg)
    trainer = Trainer(pair, source, cfg, progress=False, log_every=4)
    seen: list[tuple[int, int]] = []
    loss = pair.loss

    def checking_loss(x, lam, auxk=None):
        # the masks as the trackers give them now, i.e. after the steps before this one
        assert torch.equal(auxk.dead_in, trainer.dead_in.dead_mask())
        assert torch.equal(auxk.dead_out, trainer.dead_out.dead_mask())
        assert (auxk.coef, auxk.k_in, auxk.k_out) == (1 / 32, D // 2, D // 2)  # default k_aux: half the width
        seen.append((int(auxk.dead_in.sum()), int(auxk.dead_out.sum())))
        return loss(x, lam, auxk)

    pair.loss = checking_loss
    trainer.run()
    assert len(seen) == 12 and seen[0] == (0, 0) and any(n_in and n_out for n_in, n_out in seen)


def test_checkpoint_from_other_hyperparameters_is_refused(tmp_path: Path, mlp, source) -> None:
    with pytest.raises(Crash):
        train(mlp, source, tmp_path / "run", small_config(), on_step=crash_at(6))
    with pytest.raises(ValueError, match=r"different hyper-parameters.*lr: 0.003 != 0.001") as exc:
        train(mlp, source, tmp_path / "run", small_config(lr=1e-3))
    assert "\n" not in str(exc.value)


def test_finished_run_is_skipped_and_never_silently_overwritten(tmp_path: Path, mlp, source) -> None:
    out = tmp_path / "run"
    train(mlp, source, out)
    stamp = (out / "run.json").stat().st_mtime_ns
    steps: list[int] = []
    rec = train(mlp, source, out, on_step=steps.append)  # same arguments: skipped
    assert steps == [] and (out / "run.json").stat().st_mtime_ns == stamp and rec["lam"] == 1.0
    match = r"already holds a finished run with other settings \(lam: 1.0 != 0.5\)"
    with pytest.raises(ValueError, match=match) as exc:
        train(mlp, source, out, small_config(lam=0.5))
    assert "\n" not in str(exc.value)
    rec = train(mlp, source, out, small_config(lam=0.5), force=True)  # --force: retrained and replaced
    assert read_run(out)["lam"] == 0.5 == rec["lam"]


def test_run_recorded_before_a_config_field_existed_counts_as_its_default(tmp_path: Path, mlp, source) -> None:
    out = tmp_path / "run"
    train(mlp, source, out)
    record = json.loads((out / "run.json").read_text())
    for name in ("auxk_coef", "auxk_k"):  # as run.json was written before AuxK existed
        del record["identity"][name]
    (out / "run.json").write_text(json.dumps(record))
    steps: list[int] = []
    train(mlp, source, out, on_step=steps.append)
    assert steps == []  # the same run: skipped
    with pytest.raises(ValueError, match=r"other settings \(auxk_coef: 0.0 != 0.5\)"):
        train(mlp, source, out, small_config(auxk_coef=0.5))


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lam": -0.1}, r"lam=-0.1 is invalid; expected a finite number >= 0"),
        ({"lam": float("nan")}, r"lam=nan is invalid"),
        ({"k": 49}, r"k=49 \(input\) / 49 \(output\) exceeds the number of latents 48"),
        ({"k": 2, "n_latents": 16, "k_out": 20}, r"exceeds the number of latents"),
        ({"n_tokens": 31}, r"zero training steps"),
        ({"batch_size": 0}, r"batch_size=0 is invalid"),
        ({"lr": -1.0}, r"lr=-1.0 is invalid"),
        ({"lr_warmup_frac": 0.9, "lr_decay_frac": 0.2}, r"lr_warmup_frac \+ lr_decay_frac = 1.1 > 1"),
        ({"grad_clip": 0.0}, r"grad_clip=0.0 is invalid"),
        ({"auxk_coef": -0.1}, r"auxk_coef=-0.1 is invalid; expected a finite number >= 0 \(0 = no AuxK\)"),
        ({"auxk_k": 0}, r"auxk_k=0 is invalid; expected a positive integer"),
        ({"auxk_k": 49}, r"auxk_k=49 exceeds the number of latents 48 \(input\) / 48 \(output\)"),
        ({"normalize_activations": "layer_norm"},
         r"normalize_activations='layer_norm' is invalid; expected one of none, "),
    ],
)
def test_bad_config_is_a_one_line_error_before_training(tmp_path: Path, mlp, source, overrides, match) -> None:
    steps: list[int] = []
    with pytest.raises(ValueError, match=match) as exc:
        train(mlp, source, tmp_path / "run", small_config(**overrides), on_step=steps.append)
    assert "\n" not in str(exc.value) and steps == [] and not (tmp_path / "run").exists()


def test_cache_from_another_layer_or_model_is_refused(tmp_path: Path, mlp, source) -> None:
    other = InMemorySource(source.x, attrs={**source.attrs, "layer": 3})
    with pytest.raises(ValueError, match="the cache holds layer 3 activations; expected layer 0") as exc:
        train(mlp, other, tmp_path / "run")
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="expected the MLP input width 12"):
        train(mlp, InMemorySource(torch.randn(100, 7)), tmp_path / "run")
    with pytest.raises(ValueError, match=r"model 'results/models/a'; expected model 'results/models/b'"):
        check_cache_matches({"model": "results/models/a", "layer": 0}, model="results/models/b", layer=0)
    with pytest.raises(ValueError, match="layer 2 activations; expected layer 1"):
        check_cache_matches({"model": "m", "layer": 2}, model="m", layer=1)
    check_cache_matches({"model": str(tmp_path), "layer": 1}, model=str(tmp_path) + "/", layer=1)  # same directory


def test_non_empty_out_dir_without_run_json_is_refused(tmp_path: Path, mlp, source) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files \(notes.txt, ...\) but no run.json"):
        train(mlp, source, tmp_path / "run")
    for sub in ("sae_in", "sae_out"):  # Snakemake creates the declared outputs' directories: fine
        (tmp_path / "empty" / sub).mkdir(parents=True)
    train(mlp, source, tmp_path / "empty")
    assert (tmp_path / "empty" / "run.json").is_file()


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capfd) -> None:
    args = ["--model", "m", "--layer", "0", "--out", str(tmp_path / "run"), "--n-tokens", "100", "--batch-size", "10",
            "--mlflow-uri", "none"]
    assert cli([*args, "--cache", str(tmp_path / "missing.h5"), "--lam", "1"]) == 2
    err = capfd.readouterr().err
    assert "missing.h5 does not exist" in err and len(err.strip().splitlines()) == 1
    assert cli([*args, "--cache", str(tmp_path / "missing.h5"), "--lam", "-1"]) == 2
    assert "lam=-1.0 is invalid" in capfd.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(["--help"])
    assert exc.value.code == 0


# -- components -------------------------------------------------------------------------------------


def test_in_memory_source_is_exactly_resumable_and_reshuffles_each_pass() -> None:
    x = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    src = InMemorySource(x)
    full = [b[:, 0].long() for b in itertools.islice(src.batches(20, seed=1), 10)]
    again = [b[:, 0].long() for b in itertools.islice(src.batches(20, seed=1, start_batch=7), 3)]
    assert all(torch.equal(a, b) for a, b in zip(full[7:], again))
    stream = torch.cat(full)  # 200 rows = 4 passes of 50
    passes = stream.reshape(4, 50)
    assert all(sorted(p.tolist()) == list(range(50)) for p in passes)
    assert not torch.equal(passes[0], passes[1])
    other_seed = torch.cat([b[:, 0] for b in itertools.islice(src.batches(20, seed=2), 3)])
    assert not torch.equal(other_seed.long(), stream[:60])


def test_logged_dead_fractions_are_the_windowed_brute_force_over_the_run(mlp, source) -> None:
    """train/in|out/dead_fraction at each log = evaluation's reading of the codes training produced in the batches
    overlapping the last min(window, T / 4) tokens (jsae.train.dead; the oracle is tests/test_dead.py's)."""
    from test_dead import oracle_dead

    from jsae.train import Trainer, build_pair

    cfg = small_config(n_tokens=32 * 40, dead_window_tokens=32 * 6, expansion=8)
    pair = build_pair(mlp, cfg)
    trainer = Trainer(pair, source, cfg, progress=False, log_every=4)
    codes: dict[str, list] = {"in": [], "out": []}
    step = trainer.train_step

    def recording_step(x):
        parts = step(x)
        codes["in"].append((parts.in_vals, parts.in_idx))
        codes["out"].append((parts.out_vals, parts.out_idx))
        return parts

    trainer.train_step = recording_step
    history = trainer.run().history
    n = {"in": pair.sae_in.n_latents, "out": pair.sae_out.n_latents}
    for row in history:
        t = int(row["step"])
        for side in ("in", "out"):
            counts, _ = oracle_dead(codes[side][:t], cfg.dead_window_tokens, n[side])
            assert row[f"train/{side}/dead_fraction"] == float((counts == 0).double().mean()), (t, side)
            assert row[f"train/{side}/dead_count"] == float((counts == 0).sum())
    assert history[-1]["train/out/dead_fraction"] > 0  # the case is not vacuous


def test_prefetcher_keeps_order_and_surfaces_reader_errors() -> None:
    def batches():
        for i in range(5):
            yield torch.full((2, 2), float(i))
        raise OSError("disk gone")

    reader = Prefetcher(batches(), depth=2)
    assert [int(next(reader)[0, 0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(OSError, match="disk gone"):
        next(reader)
    reader.close()


# -- from a real activation cache (jsae.data.cache) and a real saved model, through the CLI --------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """A tiny GPT-NeoX saved with save_pretrained, a corpus and its layer-1 cache (no downloads)."""
    from builders import build_tiny_saved_lm

    from jsae.data.cache import build_cache

    root = tmp_path_factory.mktemp("real")
    build_tiny_saved_lm(root, validation_fraction=0.2)
    build_cache(str(root / "model"), 1, root / "corpus", "train", 600, 16, root / "train.h5", device="cpu",
                progress=False, batch_size=8)
    return root


def test_cli_trains_from_a_real_cache(tmp_path: Path, real_cache: Path) -> None:
    from jsae.data.cache import ActivationCache
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.eval.inputs import check_pair_matches

    model_dir, cache = str(real_cache / "model"), str(real_cache / "train.h5")
    args = ["--model", model_dir, "--layer", "1", "--cache", cache, "--lam", "1", "--expansion", "4", "--k", "4",
            "--n-tokens", "640", "--batch-size", "32", "--log-every", "5", "--checkpoint-every", "5",
            "--mlflow-uri", "none", "--device", "cpu", "--no-progress"]
    assert cli([*args, "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    attrs = ActivationCache.open(cache).attrs
    assert run["cache"]["corpus_sha256"] == attrs["corpus_sha256"] and run["hook"] == attrs["hook"]
    assert run["hook_name"] == "gpt_neox.layers.1.mlp" and run["n_steps"] == 20
    check_pair_matches(run, attrs, model_spec=model_dir, layer=1, d_model=16)  # what `evaluate` will check
    cfg_in = json.loads((tmp_path / "run" / "sae_in" / "cfg.json").read_text())
    assert cfg_in["metadata"]["hook_name"] == "gpt_neox.layers.1.mlp.input" == attrs["hook"]
    lm, _ = load_model(model_dir)
    pair = load_pair(tmp_path / "run", mlp_module(lm, 1))
    assert pair.sae_in.n_latents == 64 and pair.sae_in.k == 4
    # a cache of layer 1 used for layer 0: refused before any training
    assert cli([*args[:2], "--layer", "0", *args[4:], "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_kill_and_resume_from_a_real_cache_is_exact(tmp_path: Path, real_cache: Path) -> None:
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.train import train_from_files

    model_dir, cache = str(real_cache / "model"), real_cache / "train.h5"
    cfg = TrainConfig(lam=1.0, n_tokens=32 * 30, batch_size=32, k=4, expansion=4, lr=3e-3)  # > 1 pass over 600 rows
    kw = dict(progress=False, checkpoint_every=7, log_every=5, device="cpu")
    train_from_files(model_dir, 1, cache, tmp_path / "straight", cfg, **kw)
    with pytest.raises(Crash):
        train_from_files(model_dir, 1, cache, tmp_path / "resumed", cfg, on_step=crash_at(17), **kw)
    train_from_files(model_dir, 1, cache, tmp_path / "resumed", cfg, **kw)
    mlp = mlp_module(load_model(model_dir)[0], 1)
    a, b = sae_tensors(tmp_path / "straight", mlp), sae_tensors(tmp_path / "resumed", mlp)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert read_run(tmp_path / "resumed")["timings"]["resumed_from"] == [14]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_weights(tmp_path: Path, mlp, source) -> None:
    """A real ``kill -9`` of a training process after its first checkpoint, then the same command again."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "train_job.py"
    script.write_text(f"""
import sys, time, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
torch.set_num_threads(1)
from test_train import small_config, source_tensor, train_mlp
from jsae.train import InMemorySource, run_training
src = InMemorySource(source_tensor(), attrs={dict(source.attrs)!r})
run_training(train_mlp(), src, small_config(), sys.argv[1], model="tiny", layer=0, progress=False, log_every=4,
             checkpoint_every=5, on_step=lambda s: time.sleep(0.3))
""")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(out)])
    ckpt = work_dir_for(out) / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere between checkpoints (or in the middle of writing one)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "run.json").exists()
    train(mlp, source, out)
    train(mlp, source, tmp_path / "straight")
    a, b = sae_tensors(tmp_path / "straight", mlp), sae_tensors(out, mlp)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert read_run(out)["timings"]["resumed_from"][0] in (5, 10, 15, 20)


def source_tensor() -> torch.Tensor:
    """The module's source data (also used by the subprocess of the kill test)."""
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(30, D, generator=g)
    codes = torch.rand(1500, 30, generator=g) * (torch.rand(1500, 30, generator=g) < 0.1)
    return codes @ atoms


def train_mlp():
    return mlp_from_module(build_hf_mlp("neox-gelu")).float()


def test_diverging_loss_stops_with_a_clear_error(tmp_path: Path, mlp, source) -> None:
    with pytest.raises(FloatingPointError, match="the training loss became (nan|inf) by step 4") as exc:
        train(mlp, source, tmp_path / "run", small_config(lr=1e30, lr_warmup_frac=0.0))
    assert "\n" not in str(exc.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("auxk_coef", [0.0, 1 / 32])
def test_bf16_autocast_path_runs(mlp, source, auxk_coef) -> None:
    """The CUDA recipe (fp32 weights, bf16 autocast) exercised on the CPU: dtypes flow through every metric."""
    from jsae.train import Trainer, build_pair

    cfg = small_config(n_tokens=32 * 8, auxk_coef=auxk_coef)
    pair = build_pair(mlp, cfg)
    trainer = Trainer(pair, source, cfg, progress=False, log_every=4)
    trainer.autocast = torch.bfloat16
    out = trainer.run()
    assert all(p.dtype == torch.float32 for p in pair.parameters())
    for key in ("train/loss", "train/in/mse", "train/jac/l1", "train/jac/frac_above_0.01", "train/in/dead_fraction"):
        assert isinstance(out.metrics[key], float) and out.metrics[key] == out.metrics[key], key
