"""Evaluation of a pair: activation metrics vs brute force, CE/KL splice vs an independent oracle
(the HF model's own loss with its MLP module swapped), outputs, tracking, bad input."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from jsae.data.hooks import capture_mlp_input, decoder_layers, mlp_module
from jsae.eval.evaluate import Evaluation, activation_metrics, evaluate_pair, splice_scores, write_evaluation
from jsae.eval.inputs import check_pair_matches, check_tokenizer, check_tokenizer_covers, pair_identity
from jsae.eval.metrics import (
    dead_and_rare,
    explained_variance,
    firing_counts,
    frac_above,
    lp_norms,
    mean_cosine_similarity,
)
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE
from jsae.tracking import log_to_pair_run

D, LAYER, VOCAB, CTX = 16, 1, 50, 12

CONTRACT_KEYS = {
    *(f"{s}/{m}" for s in ("in", "out") for m in ("explained_variance", "cosine", "mse", "ce_loss_score", "kl_score",
                                                   "dead_fraction", "rare_fraction")),
    *(f"jac/frac_above_{t}" for t in ("0.005", "0.01", "0.015", "0.02", "0.04")),
    "jac/l1", "jac/l2", "jac/l4", "jac/linf", "jac/mean_abs",
    "ce/clean", "ce/zero_in", "ce/recon_in", "ce/zero_out", "ce/recon_out",
    *(f"{s}/{m}" for s in ("in", "out") for m in ("ce_loss_delta", "ce_ablation_delta", "ce_score_refused")),
}



def tiny_lm(seed: int = 0) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(hidden_size=D, intermediate_size=4 * D, num_attention_heads=2, num_hidden_layers=2,
                        vocab_size=VOCAB, max_position_embeddings=64, hidden_act="gelu")
    return GPTNeoXForCausalLM(cfg).eval()


def random_pair(model: nn.Module, n: int = 40, k: int = 4, seed: int = 0) -> JSAEPair:
    sae_in, sae_out = TopKSAE(D, n, k, seed=seed + 1), TopKSAE(D, n, k, seed=seed + 2)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        sae_in.b_enc.normal_(0, 0.2, generator=g)
        sae_out.b_enc.normal_(0, 0.2, generator=g)
    return JSAEPair(sae_in, sae_out, mlp_module(model, LAYER))


def peaked_lm(seed: int = 0) -> nn.Module:
    """A tiny LM whose layer-LAYER MLP matters: sharp logits, a 5x MLP output. On its own greedy
    continuations (:func:`self_contexts`) zero-ablating that MLP costs 0.4-1 nats per token."""
    model = tiny_lm(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
        mlp_module(model, LAYER).dense_4h_to_h.weight.mul_(5)
    return model


def self_contexts(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """Greedy continuations of random first tokens: text the clean model predicts well."""
    ids = contexts(n, seed)[:, :1]
    with torch.no_grad():
        for _ in range(CTX - 1):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def identity_sae(d: int) -> TopKSAE:
    """x_hat = ReLU(x) - ReLU(-x) = x exactly: latents +e_f and -e_f, k = all of them."""
    sae = TopKSAE(d, 2 * d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
    return sae


def zero_sae(d: int) -> TopKSAE:
    sae = TopKSAE(d, 4, 2)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


class FakeCache:
    """The slice of the ActivationCache API evaluation uses: rows of MLP inputs for positions >= 1."""

    def __init__(self, model: nn.Module, contexts: torch.Tensor, attrs: dict | None = None):
        self._contexts = contexts.numpy()
        x = capture_mlp_input(model, LAYER, contexts)[:, 1:]
        self.x = x.reshape(-1, D).float()
        self.n_tokens = self.x.shape[0]
        self.d_model = D
        n_ctx, length = contexts.shape
        self.context_index = np.repeat(np.arange(n_ctx), length - 1)
        self.position = np.tile(np.arange(1, length), n_ctx)
        self.attrs = {"model": "tiny", "layer": LAYER, "d_model": D, "first_position": "excluded", **(attrs or {})}

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop]

    def contexts(self) -> np.ndarray:
        return self._contexts


def contexts(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, CTX), generator=torch.Generator().manual_seed(seed))


class _Wrapped(nn.Module):
    """The oracle: the block's MLP replaced by ``post(mlp(pre(x)))`` as a real module swap."""

    def __init__(self, mlp: nn.Module, pre=None, post=None):
        super().__init__()
        self.mlp, self.pre, self.post = mlp, pre, post

    def forward(self, x):
        x = self.pre(x) if self.pre else x
        y = self.mlp(x)
        return self.post(y) if self.post else y


def oracle_ce(model, ids, pre=None, post=None) -> tuple[float, torch.Tensor]:
    block = decoder_layers(model)[LAYER]
    original = block.mlp
    block.mlp = _Wrapped(original, pre, post)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids, use_cache=False)
    finally:
        block.mlp = original
    logits = out.logits.double()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert float(ce) == pytest.approx(float(out.loss), rel=1e-5)  # HF's own (float32) loss agrees
    return float(ce), out.logits


def test_splice_scores_against_hf_loss_with_swapped_module():
    model = tiny_lm().double()  # float64: the score's denominator is small in a random tiny LM
    pair = random_pair(model).double()
    ids = contexts()
    # floor 0: this checks the splice's arithmetic; the random LM's ablation costs only ~0.001 nats
    got = splice_scores(model, LAYER, pair, ids, batch_size=4, first_position_clean=False, min_ablation_nats=0.0,
                        progress=False)
    clean, clean_logits = oracle_ce(model, ids)
    recon_in, logits_in = oracle_ce(model, ids, pre=lambda x: pair.sae_in(x))
    zero_in, _ = oracle_ce(model, ids, pre=torch.zeros_like)
    recon_out, _ = oracle_ce(model, ids, post=lambda y: pair.sae_out(y))
    zero_out, _ = oracle_ce(model, ids, post=torch.zeros_like)
    assert got["ce/clean"] == pytest.approx(clean, rel=1e-10)
    assert got["ce/recon_in"] == pytest.approx(recon_in, rel=1e-10)
    assert got["ce/zero_in"] == pytest.approx(zero_in, rel=1e-10)
    assert got["ce/recon_out"] == pytest.approx(recon_out, rel=1e-10)
    assert got["ce/zero_out"] == pytest.approx(zero_out, rel=1e-10)
    assert got["in/ce_loss_score"] == pytest.approx((zero_in - recon_in) / (zero_in - clean), rel=1e-6)
    assert got["out/ce_loss_score"] == pytest.approx((zero_out - recon_out) / (zero_out - clean), rel=1e-6)
    for side, recon, zero in (("in", recon_in, zero_in), ("out", recon_out, zero_out)):
        assert got[f"{side}/ce_loss_delta"] == pytest.approx(recon - clean, rel=1e-8)
        assert got[f"{side}/ce_ablation_delta"] == pytest.approx(zero - clean, rel=1e-8)
        assert 0 < zero - clean < 0.01 and got[f"{side}/ce_score_refused"] == 0.0
    # at the default floor (0.01 nats) the same ablation is too cheap: both scores refused, deltas unchanged
    default = splice_scores(model, LAYER, pair, ids, batch_size=4, first_position_clean=False, progress=False)
    for side in ("in", "out"):
        assert math.isnan(default[f"{side}/ce_loss_score"]) and default[f"{side}/ce_score_refused"] == 1.0
        for name in ("ce_loss_delta", "ce_ablation_delta"):
            assert default[f"{side}/{name}"] == got[f"{side}/{name}"]
    p = torch.log_softmax(clean_logits.double(), -1)
    q = torch.log_softmax(logits_in.double(), -1)
    assert got["kl/recon_in"] == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()), rel=1e-8)


@pytest.mark.parametrize("first_clean", [False, True])
def test_ce_and_kl_scores_are_one_for_identity_and_zero_for_ablation(first_clean):
    model = peaked_lm(1)
    ids = self_contexts(model, 4, seed=1)
    mlp = mlp_module(model, LAYER)
    perfect = JSAEPair(identity_sae(D), identity_sae(D), mlp)
    got = splice_scores(model, LAYER, perfect, ids, batch_size=3, first_position_clean=first_clean, progress=False)
    assert got["ce/recon_in"] == pytest.approx(got["ce/clean"], abs=1e-5)
    for side in ("in", "out"):
        assert got[f"{side}/ce_ablation_delta"] > 0.1  # well above the floor: the scores are given
        assert got[f"{side}/ce_loss_delta"] == pytest.approx(0.0, abs=1e-5)
        assert got[f"{side}/ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
        assert got[f"{side}/kl_score"] == pytest.approx(1.0, abs=1e-4)
    ablated = JSAEPair(zero_sae(D), zero_sae(D), mlp)
    got = splice_scores(model, LAYER, ablated, ids, batch_size=3, first_position_clean=first_clean, progress=False)
    for side in ("in", "out"):
        assert got[f"{side}/ce_loss_delta"] == pytest.approx(got[f"{side}/ce_ablation_delta"], abs=1e-6)
        assert got[f"{side}/ce_loss_score"] == pytest.approx(0.0, abs=1e-6)
        assert got[f"{side}/kl_score"] == pytest.approx(0.0, abs=1e-6)


def test_first_position_is_left_clean():
    model = tiny_lm(2)
    ids = contexts(3, seed=2)
    pair = JSAEPair(zero_sae(D), zero_sae(D), mlp_module(model, LAYER))
    got = splice_scores(model, LAYER, pair, ids, first_position_clean=True, progress=False)

    def keep_first(f):
        return lambda h: torch.cat([h[:, :1], f(h)[:, 1:]], 1)

    zero_in, _ = oracle_ce(model, ids, pre=keep_first(torch.zeros_like))
    assert got["ce/zero_in"] == pytest.approx(zero_in, rel=1e-5)


def test_activation_metrics_against_brute_force():
    model = tiny_lm(3)
    pair = random_pair(model, seed=3)
    cache = FakeCache(model, contexts(5, seed=3))
    metrics, arrays, glob = activation_metrics(pair, (cache.read(s, s + 7) for s in range(0, cache.n_tokens, 7)),
                                               progress=False)
    x = cache.x
    with torch.no_grad():
        out = pair(x)
    assert metrics["in/explained_variance"] == pytest.approx(explained_variance(x, out.x_hat), rel=1e-6)
    assert metrics["out/explained_variance"] == pytest.approx(explained_variance(out.y, out.y_hat), rel=1e-6)
    assert metrics["out/cosine"] == pytest.approx(mean_cosine_similarity(out.y, out.y_hat), rel=1e-6)
    assert metrics["in/mse"] == pytest.approx(float(((x - out.x_hat) ** 2).mean()), rel=1e-5)
    dr = dead_and_rare(firing_counts(out.out_vals, out.out_idx, 40), x.shape[0])
    assert metrics["out/dead_fraction"] == dr["dead_fraction"]
    fa = frac_above(out.jacobian).mean(0)
    assert metrics["jac/frac_above_0.01"] == pytest.approx(float(fa[1]), rel=1e-9)
    assert metrics["jac/frac_above_0.04"] == pytest.approx(float(fa[4]), rel=1e-9)
    assert metrics["jac/l2"] == pytest.approx(float(lp_norms(out.jacobian)[:, 1].mean()), rel=1e-6)
    assert metrics["eval/n_tokens"] == x.shape[0]
    assert arrays["hist_counts"].sum() + int(arrays["hist_overflow"]) == out.jacobian.numel()
    assert int(glob.out_active.sum()) == int((out.out_vals > 0).sum())


def test_evaluate_pair_writes_contract_outputs(tmp_path):
    model = peaked_lm(4)  # its MLP matters, so neither CE score is refused
    pair = random_pair(model, seed=4)
    cache = FakeCache(model, self_contexts(model, 6, seed=4))
    ev = evaluate_pair(pair, cache, model=model, layer=LAYER, n_tokens=40, batch_size=16, ce_tokens=30, progress=False)
    assert CONTRACT_KEYS <= set(ev.metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in ev.metrics.items() if k in CONTRACT_KEYS)
    assert ev.settings["n_tokens"] == 40 and ev.settings["ce_contexts"] == 3
    assert ev.settings["ce_score_min_ablation_nats"] == 0.01 and ev.settings["ce_score_refused"] == {}
    run = {
        "model": "tiny",
        "layer": LAYER,
        "control": "trained",
        "lam": 1.0,
        "k": 4,
        "n_latents": 40,
        "mlflow_run_id": "abc",
    }
    ident = pair_identity(run, pair)
    npz = write_evaluation(tmp_path / "eval" / "evaluation.json", ev, ident)
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(data) >= {"metrics", "pair"}
    assert data["pair"] == {
        **{k: run[k] for k in ("model", "layer", "control", "lam", "k", "n_latents")},
        "mlflow_run_id": "abc",
    }
    arrays = np.load(npz)
    assert {"hist_edges", "hist_counts", "hist_overflow", "cdf", "global_out_latent", "global_mean_abs"} <= set(
        arrays.files
    )
    assert json.loads(str(arrays["pair_json"])) == ident
    assert not list((tmp_path / "eval").glob(".*tmp"))  # atomic writes leave no temp files


def test_evaluate_pair_keeps_per_token_arrays_for_the_bootstrap(tmp_path):
    """token_* arrays: the first token_stats cache rows in order, each equal to the metric on that token's J;
    ce_token_*: every CE token, whose means are the CE metrics; global shares over alive latents."""
    model = peaked_lm(5)
    pair = random_pair(model, seed=5)
    cache = FakeCache(model, self_contexts(model, 6, seed=5))
    cache.token_ids = np.arange(cache.n_tokens) * 7 % VOCAB  # what ActivationCache records per row
    ev = evaluate_pair(pair, cache, model=model, layer=LAYER, n_tokens=50, batch_size=16, ce_tokens=30,
                       token_stats=37, progress=False)
    a = ev.arrays
    assert a["token_row"].tolist() == list(range(37)) and ev.settings["token_stats"] == 37
    assert a["token_id"].tolist() == cache.token_ids[:37].tolist()
    with torch.no_grad():
        J = pair(cache.x[:37]).jacobian
    np.testing.assert_allclose(a["token_lp"], lp_norms(J).numpy(), rtol=1e-5)
    np.testing.assert_allclose(a["token_frac_above"], frac_above(J).numpy(), rtol=1e-6)
    assert a["token_nonzero"].tolist() == (J.flatten(1) != 0).sum(1).tolist()
    n_ce = ev.settings["ce_contexts"] * (CTX - 1)
    for variant in ("clean", "recon_in", "zero_in", "recon_out", "zero_out"):
        assert a[f"ce_token_{variant}"].shape == (n_ce,) and a[f"ce_token_{variant}"].dtype == np.float32
        assert float(a[f"ce_token_{variant}"].astype(np.float64).mean()) == pytest.approx(
            ev.metrics[f"ce/{variant}"], rel=1e-6)
    clean, _ = oracle_ce(model, torch.as_tensor(cache.contexts()[: ev.settings["ce_contexts"]]))
    assert float(a["ce_token_clean"].astype(np.float64).mean()) == pytest.approx(clean, rel=1e-5)
    # jac/global_frac_above_tau: alive outputs x alive inputs, as fig. 36 reads it back from the npz
    alive_out, alive_in = a["out_fired_count"] > 0, a["in_fired_count"] > 0
    assert not alive_in.all()  # some latents are dead, so the denominator matters
    m = a["global_mean_abs"][alive_out[a["global_out_latent"]] & alive_in[a["global_in_latent"]]]
    assert ev.metrics["jac/global_frac_above_0.01"] == pytest.approx((m > 0.01).sum() / (alive_out.sum()
                                                                                         * alive_in.sum()))
    with pytest.raises(ValueError, match=f"n_tokens={cache.n_tokens + 1} is invalid for an evaluation cache of "
                       f"{cache.n_tokens} tokens"):  # not a silent clamp to fewer tokens than asked for
        evaluate_pair(pair, cache, n_tokens=cache.n_tokens + 1, progress=False)
    none = evaluate_pair(pair, cache, n_tokens=20, token_stats=0, progress=False)
    assert not any(k.startswith("token_") for k in none.arrays)
    with pytest.raises(ValueError, match="token_stats"):
        evaluate_pair(pair, cache, token_stats=-3, progress=False)


def test_refused_ce_score_is_nan_with_its_reason_in_evaluation_json(tmp_path):
    model = tiny_lm(4)  # near-uniform predictions: zero-ablating the MLP costs ~0.001 nats, below the floor
    pair = random_pair(model, seed=4)
    cache = FakeCache(model, contexts(6, seed=4))
    ev = evaluate_pair(pair, cache, model=model, layer=LAYER, n_tokens=40, ce_tokens=30, progress=False)
    assert set(ev.settings["ce_score_refused"]) == {"in", "out"}
    assert "ill-conditioned" in ev.settings["ce_score_refused"]["in"]
    write_evaluation(tmp_path / "evaluation.json", ev, {"model": "tiny"})
    data = json.loads((tmp_path / "evaluation.json").read_text())
    for side in ("in", "out"):
        m = data["metrics"]
        assert math.isnan(m[f"{side}/ce_loss_score"]) and m[f"{side}/ce_score_refused"] == 1.0
        assert abs(m[f"{side}/ce_ablation_delta"]) < 0.01 and math.isfinite(m[f"{side}/ce_loss_delta"])
        assert math.isfinite(m[f"{side}/kl_score"])  # the KL score has no floor
    # a floor of 0 gives the (ill-conditioned) number back; a negative floor is an error
    loose = evaluate_pair(pair, cache, model=model, layer=LAYER, n_tokens=40, ce_tokens=30, min_ablation_nats=0.0,
                          progress=False)
    assert loose.settings["ce_score_refused"].keys() == {s for s in ("in", "out")
                                                         if loose.metrics[f"{s}/ce_ablation_delta"] <= 0}
    with pytest.raises(ValueError, match="min_ablation"):
        evaluate_pair(pair, cache, model=model, layer=LAYER, min_ablation_nats=-0.1, progress=False)


def test_bad_input_one_line_errors():
    model = tiny_lm(5)
    pair = random_pair(model, seed=5)
    cache = FakeCache(model, contexts(2, seed=5))
    run = {"model": "tiny", "layer": LAYER}
    check_pair_matches(run, cache.attrs, model_spec="tiny", layer=LAYER, d_model=D)  # matching: no error
    cases = [
        ({"model": "other"}, {}, "model"),
        ({"layer": 0}, {}, "layer"),
        ({}, {"layer": 0}, "layer"),
        ({"tokenizer_sha256": "aa"}, {"tokenizer_sha256": "bb"}, "tokenizer"),
    ]
    for run_extra, attr_extra, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            check_pair_matches({**run, **run_extra}, {**cache.attrs, **attr_extra})
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="layer"):
        check_pair_matches(run, cache.attrs, layer=0)
    with pytest.raises(ValueError, match="--model"):
        check_pair_matches(run, cache.attrs, model_spec="gpt2")
    with pytest.raises(ValueError, match="width"):
        check_pair_matches(run, cache.attrs, d_model=D + 1)
    with pytest.raises(ValueError, match="vocabulary"):
        check_tokenizer_covers(np.array([[1, 2, VOCAB]]), VOCAB)

    class Tok:
        bos_token_id, eos_token_id = 0, 0

        def __len__(self):
            return VOCAB

    check_tokenizer(Tok(), {"bos_token_id": 0}, np.array([[0, 5]]))
    with pytest.raises(ValueError, match="BOS"):
        check_tokenizer(Tok(), {"bos_token_id": 7}, np.array([[7, 5]]))
    with pytest.raises(ValueError, match="vocabulary"):
        check_tokenizer(Tok(), {"bos_token_id": 0}, np.array([[0, VOCAB + 3]]))
    with pytest.raises(ValueError, match="threshold"):
        evaluate_pair(pair, cache, thresholds=(0.01, 0.0), progress=False)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_pair(pair, cache, thresholds=(-1.0,), progress=False)
    cache.n_tokens = 0
    with pytest.raises(ValueError, match="empty|0 tokens"):
        evaluate_pair(pair, cache, progress=False)
    with pytest.raises(ValueError, match="empty"):
        activation_metrics(pair, iter([]), progress=False)


@pytest.mark.slow
def test_mlflow_logging_to_the_pairs_run(tmp_path):
    """Slow: creating a sqlite tracking store runs MLflow's migrations (~15 s here)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(exp).info.run_id
    f = tmp_path / "evaluation.json"
    f.write_text("{}")
    assert log_to_pair_run(uri, run_id, {"in/explained_variance": 0.9, "jac/frac_above_0.01": 0.1}, [f], step=12)
    logged = client.get_run(run_id).data.metrics
    assert logged == {"eval/in/explained_variance": 0.9, "eval/jac/frac_above_0.01": 0.1}
    assert [m.step for m in client.get_metric_history(run_id, "eval/in/explained_variance")] == [12]
    assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == ["evaluation/evaluation.json"]


def test_mlflow_unreachable_or_off_only_warns():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert not log_to_pair_run("http://127.0.0.1:9", "deadbeef", {"a": 1.0}, step=1)
        assert any("MLflow" in str(x.message) for x in w)
    assert not log_to_pair_run(None, "run", {"a": 1.0}, step=1)
    with pytest.warns(UserWarning, match="mlflow_run_id"):
        assert not log_to_pair_run("http://127.0.0.1:9", None, {"a": 1.0}, step=1)


def test_evaluation_dataclass_defaults():
    ev = Evaluation({"a": 1.0})
    assert ev.arrays == {} and ev.settings == {}


# -- end to end: a saved tiny model, real caches (jsae.data.cache), a trained pair (jsae.train.run), the CLIs ----------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny GPT-NeoX saved with save_pretrained, its corpus, train/validation caches and a trained pair."""
    from builders import build_tiny_saved_lm

    from jsae.data.cache import build_cache
    from jsae.train.run import TrainConfig, train_from_files

    root = tmp_path_factory.mktemp("e2e")
    build_tiny_saved_lm(root, validation_fraction=0.3)
    for split, n in (("train", 450), ("validation", 300)):
        build_cache(
            str(root / "model"),
            1,
            root / "corpus",
            split,
            n,
            16,
            root / f"{split}.h5",
            device="cpu",
            progress=False,
            batch_size=8,
        )
    train_from_files(
        str(root / "model"),
        1,
        root / "train.h5",
        root / "run",
        TrainConfig(lam=1.0, n_tokens=32 * 10, batch_size=32, k=4, expansion=4, lr=3e-3),
        progress=False,
        device="cpu",
        log_every=5,
        checkpoint_every=100,
    )
    return root


def test_cli_end_to_end(tmp_path, real_run):
    from jsae.eval.evaluate import cli as evaluate_cli
    from jsae.eval.probes import cli as probes_cli
    from jsae.eval.tables import cli as tables_cli

    common = [
        "--model",
        str(real_run / "model"),
        "--layer",
        "1",
        "--run",
        str(real_run / "run"),
        "--cache",
        str(real_run / "validation.h5"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    out = tmp_path / "eval"
    assert (
        evaluate_cli([*common, "--out", str(out / "evaluation.json"), "--ce-tokens", "60", "--batch-size", "64"]) == 0
    )
    data = json.loads((out / "evaluation.json").read_text())
    assert CONTRACT_KEYS <= set(data["metrics"])
    assert data["pair"]["layer"] == 1 and data["pair"]["k"] == 4 and data["pair"]["lam"] == 1.0
    assert data["metrics"]["eval/n_tokens"] == 300
    assert (out / "jacobian_stats.npz").is_file()
    assert probes_cli([*common, "--out", str(out / "probes.json"), "--n-samples", "200", "--seed", "1"]) == 0
    probes = json.loads((out / "probes.json").read_text())
    assert probes["metrics"]["probe/n_samples"] == 200
    assert sum(probes["metrics"][f"probe/{n}_frac"] for n in ("linear", "jumprelu", "other")) == pytest.approx(1)
    assert np.load(out / "probe_curves.npz")["curve_ys"].shape[1] == 100
    assert tables_cli([*common, "--out", str(out / "tables.html"), "--n-output-latents", "2", "--min-active", "1"]) == 0
    assert "output latent" in (out / "tables.html").read_text() and (out / "tables.md").is_file()


def test_cli_refuses_mismatched_inputs(tmp_path, real_run, capfd):
    from jsae.eval.evaluate import cli as evaluate_cli

    base = [
        "--model",
        str(real_run / "model"),
        "--run",
        str(real_run / "run"),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path / "e.json"),
    ]

    def error_line() -> str:
        lines = [ln for ln in capfd.readouterr().err.splitlines() if "ERROR" in ln]
        assert len(lines) == 1 and "Traceback" not in lines[0]
        return lines[0]

    assert evaluate_cli([*base, "--layer", "0", "--cache", str(real_run / "validation.h5")]) == 2
    assert "trained on layer 1" in error_line()
    assert evaluate_cli([*base, "--layer", "1", "--cache", str(tmp_path / "missing.h5")]) == 2
    assert "does not exist" in error_line()
    assert (
        evaluate_cli([*base, "--layer", "1", "--cache", str(real_run / "validation.h5"), "--thresholds", "0.01,0"]) == 2
    )
    assert "threshold" in error_line()
    assert evaluate_cli([*base, "--layer", "1", "--cache", str(real_run / "train.h5"), "--n-tokens", "0"]) == 2
    assert "n_tokens" in error_line()
    assert evaluate_cli([*base, "--layer", "1", "--cache", str(real_run / "validation.h5"),
                         "--ce-min-ablation-nats", "-0.01"]) == 2
    assert "min_ablation" in error_line()
    assert not (tmp_path / "e.json").exists()
