"""SAEBench core metrics (jsae.eval.core): each metric against a brute-force numpy oracle written here from
SAEBench's code, hand-built cases with known answers, the JSON against SAEBench's schema (its key tree, written
below from sae_bench/evals/core/eval_output.py, eval_config.py and base_eval_output.py at commit 8042bb3), and
``python -m jsae core`` on a tiny saved GPT-NeoX and a pair trained on it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from oracle import dense_code
from test_faults_cli import LAYER, tiny_pair  # noqa: F401  (fixture)

from jsae.eval import core
from jsae.eval import metrics as ours
from jsae.nn.sae import TopKSAE

# --------------------------------------------------------------------------------------------------
# SAEBench's schema, written out from its source (commit 8042bb3828c6340da8d12062324e92b2077c571c)
# --------------------------------------------------------------------------------------------------

#: CoreEvalOutput -> BaseEvalOutput fields, in order; None: a leaf. Groups and fields from eval_output.py.
SAEBENCH_TREE = {
    "eval_type_id": None,
    "eval_config": {k: None for k in (
        "model_name", "llm_dtype", "batch_size_prompts", "n_eval_reconstruction_batches",
        "n_eval_sparsity_variance_batches", "dataset", "context_size", "compute_kl", "compute_ce_loss",
        "compute_l2_norms", "compute_sparsity_metrics", "compute_variance_metrics",
        "compute_featurewise_density_statistics", "compute_featurewise_weight_based_metrics",
        "exclude_special_tokens_from_reconstruction", "verbose")},
    "eval_id": None,
    "datetime_epoch_millis": None,
    "eval_result_metrics": {
        "model_behavior_preservation": {k: None for k in ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae")},
        "model_performance_preservation": {k: None for k in (
            "ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae")},
        "reconstruction_quality": {k: None for k in ("explained_variance", "explained_variance_legacy", "mse",
                                                     "cossim")},
        "shrinkage": {k: None for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
        "sparsity": {"l0": None, "l1": None},
        "token_stats": {"total_tokens_eval_reconstruction": None, "total_tokens_eval_sparsity_variance": None},
        "misc_metrics": {k: None for k in (
            "freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
            "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
            "frac_alive")},
    },
    "eval_result_details": [{k: None for k in (
        "index", "feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
        "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim")}],
    "sae_bench_commit_hash": None,
    "sae_lens_id": None,
    "sae_lens_release_id": None,
    "sae_lens_version": None,
    "sae_cfg_dict": None,
    "eval_result_unstructured": None,
}
#: SAEBench's CoreEvalConfig defaults (eval_config.py).
SAEBENCH_CONFIG_DEFAULTS = {
    "model_name": "", "llm_dtype": "float32", "batch_size_prompts": 16, "n_eval_reconstruction_batches": 10,
    "n_eval_sparsity_variance_batches": 1, "dataset": "Skylion007/openwebtext", "context_size": 128,
    "compute_kl": False, "compute_ce_loss": False, "compute_l2_norms": False, "compute_sparsity_metrics": False,
    "compute_variance_metrics": False, "compute_featurewise_density_statistics": False,
    "compute_featurewise_weight_based_metrics": False, "exclude_special_tokens_from_reconstruction": False,
    "verbose": False,
}


def assert_tree(doc, tree, path="$"):
    """``doc`` has exactly ``tree``'s keys, in order, at every level the tree spells out."""
    if tree is None:
        return
    if isinstance(tree, list):
        assert isinstance(doc, list), path
        for i, item in enumerate(doc):
            assert_tree(item, tree[0], f"{path}[{i}]")
        return
    assert isinstance(doc, dict), path
    assert list(doc) == list(tree), f"{path}: {list(doc)} != {list(tree)}"
    for k, sub in tree.items():
        assert_tree(doc[k], sub, f"{path}.{k}")


def assert_types(doc):
    """SAEBench's field types, with null where we could not compute a value."""
    assert doc["eval_type_id"] == "core" and isinstance(doc["eval_id"], str)
    assert isinstance(doc["datetime_epoch_millis"], int) and 0 <= doc["datetime_epoch_millis"] <= 9999999999999
    for group, values in doc["eval_result_metrics"].items():
        for k, v in values.items():
            if group == "token_stats":
                assert v is None or (isinstance(v, int) and not isinstance(v, bool)), k
            else:
                assert v is None or isinstance(v, float), k
    for i, row in enumerate(doc["eval_result_details"]):
        assert row["index"] == i
        assert all(v is None or isinstance(v, float) for k, v in row.items() if k != "index")
    for k in ("sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version"):
        assert doc[k] is None or isinstance(doc[k], str)


# --------------------------------------------------------------------------------------------------
# Oracles: brute force, token by token, from SAEBench's code (sae_bench/evals/core/main.py)
# --------------------------------------------------------------------------------------------------


def batches_of(batch):
    out: dict[int, list[int]] = {}
    for t, b in enumerate(batch):
        out.setdefault(int(b), []).append(t)
    return list(out.values())


def o_explained_variance(x, xh, batch):
    A, B, C = [], [], []
    for rows in batches_of(batch):
        A.append(np.mean([np.sum((x[t] - xh[t]) ** 2) for t in rows]))
        B.append(np.mean([np.sum(x[t] ** 2) for t in rows]))
        C.append(np.mean([np.mean([x[t, i] ** 2 for t in rows]) for i in range(x.shape[1])]))
    return 1 - np.mean(A) / (np.mean(B) - np.mean(C) ** 2)


def o_explained_variance_legacy(x, xh, batch):
    vals = []
    for rows in batches_of(batch):
        mean = sum(x[t] for t in rows) / len(rows)
        vals += [1 - np.sum((x[t] - xh[t]) ** 2) / np.sum((x[t] - mean) ** 2) for t in rows]
    return np.mean(vals)


def o_mse(x, xh, batch):
    vals = []
    for rows in batches_of(batch):
        vals += [np.sum((x[t] - xh[t]) ** 2) / len(rows) for t in rows]
    return np.mean(vals)


def o_cossim(x, xh):
    return np.mean([x[t] @ xh[t] / (np.linalg.norm(x[t]) * np.linalg.norm(xh[t])) for t in range(len(x))])


def o_l2_ratio(x, xh):
    out = []
    for t in range(len(x)):
        n = np.linalg.norm(x[t])
        out.append(np.linalg.norm(xh[t]) / (1.0 if abs(n) < 1e-4 else n))
    return np.mean(out)


def o_rrb(x, xh, batch):
    per = []
    for rows in batches_of(batch):
        per.append(np.mean([xh[t] @ xh[t] for t in rows]) / np.mean([x[t] @ xh[t] for t in rows]))
    return np.mean(per)


def o_density(acts):
    return np.array([sum(acts[t, j] > 0 for t in range(len(acts))) / len(acts) for j in range(acts.shape[1])])


def o_cah(acts, prompt):
    out = []
    for j in range(acts.shape[1]):
        fired = [t for t in range(len(acts)) if acts[t, j] > 0]
        out.append(len(fired) / len({prompt[t] for t in fired}) if fired else math.nan)
    return np.array(out)


def o_max_cos(W):
    n = len(W)
    out = []
    for i in range(n):
        best = -math.inf
        for j in range(n):
            if j != i:
                best = max(best, W[i] @ W[j] / (np.linalg.norm(W[i]) * np.linalg.norm(W[j])))
        out.append(best)
    return np.array(out)


def o_histogram(density, edges):
    counts = [0] * (len(edges) - 1)
    for d in density:
        if d == 0:
            continue
        v = min(max(math.log10(d), edges[0]), edges[-1])
        i = next(i for i in range(len(edges) - 1) if v < edges[i + 1] or i == len(edges) - 2)
        counts[i] += 1
    return counts, int(sum(d == 0 for d in density))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    T, d, n = 37, 5, 9
    x = torch.randn(T, d, generator=g, dtype=torch.float64) + 0.7
    xh = x + 0.3 * torch.randn(T, d, generator=g, dtype=torch.float64)
    acts = torch.relu(torch.randn(T, n, generator=g, dtype=torch.float64) - 0.5)
    acts[:, 3] = 0  # a latent that never fires
    batch = torch.tensor([0] * 12 + [1] * 12 + [2] * 13)
    prompt = torch.arange(T) // 4
    return x, xh, acts, batch, prompt


def test_reconstruction_metrics_equal_the_oracles(data):
    x, xh, _, batch, _ = data
    X, XH, b = x.numpy(), xh.numpy(), batch.numpy()
    assert core.explained_variance(x, xh, batch) == pytest.approx(o_explained_variance(X, XH, b), rel=1e-12)
    assert core.explained_variance_legacy(x, xh, batch) == pytest.approx(o_explained_variance_legacy(X, XH, b),
                                                                         rel=1e-12)
    assert core.mse(x, xh, batch) == pytest.approx(o_mse(X, XH, b), rel=1e-12)
    assert core.cossim(x, xh) == pytest.approx(o_cossim(X, XH), rel=1e-12)
    assert core.mean_l2_norm(x) == pytest.approx(np.mean([np.linalg.norm(r) for r in X]), rel=1e-12)
    assert core.l2_ratio(x, xh) == pytest.approx(o_l2_ratio(X, XH), rel=1e-12)
    assert core.relative_reconstruction_bias(x, xh, batch) == pytest.approx(o_rrb(X, XH, b), rel=1e-12)
    # one batch by default
    ones = np.zeros(len(X), dtype=int)
    assert core.explained_variance(x, xh) == pytest.approx(o_explained_variance(X, XH, ones), rel=1e-12)
    assert core.mse(x, xh) == pytest.approx(o_mse(X, XH, ones), rel=1e-12)


def test_saebench_explained_variance_is_not_a_variance_ratio():
    """SAEBench's EV subtracts (E||x||^2 / d)^2 (its bug, SAELens #659), not ||E x||^2: the closed form holds, and on
    activations with a large mean it is far from ours, the conventional ratio of sums (it measures variance about
    ~0)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 50, generator=g, dtype=torch.float64) + 3.0
    xh = x + 0.3 * torch.randn(40, 50, generator=g, dtype=torch.float64)
    d = x.shape[1]
    A, B = float((x - xh).pow(2).sum(-1).mean()), float(x.pow(2).sum(-1).mean())
    assert core.explained_variance(x, xh) == pytest.approx(1 - A / (B - (B / d) ** 2), rel=1e-12)
    assert ours.explained_variance(x, xh) == pytest.approx(0.91, abs=0.02)
    assert core.explained_variance(x, xh) == pytest.approx(0.989, abs=0.003)
    # SAEBench's mse = ours (per element) x d / N for one batch
    assert core.mse(x, xh) == pytest.approx(ours.mse_per_element(x, xh) * d / x.shape[0], rel=1e-12)


def test_sparsity_and_density_equal_the_oracles(data):
    _, _, acts, _, prompt = data
    A = acts.numpy()
    assert core.l0(acts) == pytest.approx(np.mean([sum(v != 0 for v in row) for row in A]))
    assert core.l1(acts) == pytest.approx(np.mean([sum(row) for row in A]), rel=1e-12)
    density = core.feature_density(acts).numpy()
    np.testing.assert_allclose(density, o_density(A), rtol=1e-12)
    np.testing.assert_allclose(core.consistent_activation_heuristic(acts, prompt).numpy(), o_cah(A, prompt.numpy()),
                               rtol=1e-12)
    assert core.frac_alive(density) == pytest.approx(np.mean([v > 0 for v in density]))
    for t in (0.01, 0.1, 0.3):
        assert core.freq_over(density, t) == pytest.approx(np.mean([v > t for v in density]))
        above = sum(v for v in density if v > t)
        assert core.normalized_freq_over(density, t) == pytest.approx(above / sum(density), rel=1e-12)
    edges = core.DENSITY_LOG10_EDGES
    counts, n_zero = core.feature_density_histogram(density)
    assert (counts.tolist(), n_zero) == o_histogram(density, edges)


def test_weight_metrics_equal_the_oracles():
    g = torch.Generator().manual_seed(1)
    W_enc, W_dec = torch.randn(11, 4, generator=g), torch.randn(11, 4, generator=g)
    np.testing.assert_allclose(core.max_cosine_sim(W_dec, chunk=3).numpy(), o_max_cos(W_dec.double().numpy()),
                               rtol=1e-5)
    np.testing.assert_allclose(core.max_cosine_sim(W_enc).numpy(), o_max_cos(W_enc.double().numpy()), rtol=1e-5)
    expect = [e @ d / (np.linalg.norm(e) * np.linalg.norm(d)) for e, d in zip(W_enc.double().numpy(),
                                                                               W_dec.double().numpy())]
    np.testing.assert_allclose(core.encoder_decoder_cosine_sim(W_enc, W_dec).numpy(), expect, rtol=1e-12)
    sae = TopKSAE(4, 11, 2, seed=0, dtype=torch.float64)
    w = core.weight_features(sae)
    np.testing.assert_allclose(w["encoder_norm"], [np.linalg.norm(r) for r in sae.W_enc.detach().numpy()], rtol=1e-12)
    np.testing.assert_allclose(w["encoder_decoder_cosine_sim"], 1.0, rtol=1e-12)  # W_enc = W_dec at init
    misc = core.misc_metrics(np.full(11, 0.05), w["max_encoder_cosine_sim"], w["max_decoder_cosine_sim"])
    assert misc["average_max_decoder_cosine_sim"] == pytest.approx(np.mean(o_max_cos(sae.W_dec.detach().numpy())))
    assert (misc["freq_over_1_percent"], misc["freq_over_10_percent"], misc["frac_alive"]) == (1.0, 0.0, 1.0)


def test_hand_built_cases():
    x = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    # perfect reconstruction
    assert core.explained_variance(x, x) == 1.0 and core.explained_variance_legacy(x, x) == 1.0
    assert core.mse(x, x) == 0.0 and core.cossim(x, x) == pytest.approx(1.0)
    assert core.l2_ratio(x, x) == pytest.approx(1.0) and core.relative_reconstruction_bias(x, x) == pytest.approx(1.0)
    assert core.mean_l2_norm(x) == pytest.approx((5 + 1 + math.sqrt(8) + math.sqrt(3)) / 4)
    # zero reconstruction: mse = mean ||x||^2 / N; norms and ratio 0; cosine undefined (SAEBench: NaN)
    z = torch.zeros_like(x)
    assert core.mse(x, z) == pytest.approx((25 + 1 + 8 + 3) / 4 / 4)
    assert core.mean_l2_norm(z) == 0.0 and core.l2_ratio(x, z) == 0.0
    assert math.isnan(core.cossim(x, z)) and ours.mean_cosine_similarity(x, z) == 0.0
    B, d = (25 + 1 + 8 + 3) / 4, 3
    # E||x||^2 = 9.25 > d^2 = 9: SAEBench's denominator B - (B / d)^2 is negative, and EV = 37 for zeros
    assert core.explained_variance(x, z) == pytest.approx(1 - B / (B - (B / d) ** 2)) == pytest.approx(37.0)
    # a tiny input norm: the ratio divides by 1
    assert core.l2_ratio(torch.tensor([[1e-5, 0.0]]), torch.tensor([[0.5, 0.0]])) == pytest.approx(0.5)
    # a latent that never fires is dead, and counts as never fired in the histogram
    acts = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, 0.0]])
    density = core.feature_density(acts)
    assert density.tolist() == [1.0, 0.0, 0.5]
    assert core.frac_alive(density) == pytest.approx(2 / 3)
    assert ours.dead_and_rare(torch.tensor([2, 0, 1]), 2)["dead_fraction"] == pytest.approx(1 / 3)
    cah = core.consistent_activation_heuristic(acts, [0, 0])
    assert cah[0] == 2.0 and math.isnan(cah[1]) and cah[2] == 1.0
    counts, n_zero = core.feature_density_histogram(density)
    assert n_zero == 1 and counts[-1] == 2  # log10(1) = 0 and log10(0.5) = -0.3: the last, closed bin
    assert core.feature_density_histogram([1e-12])[0][0] == 1  # below the first edge: the first bin
    # identical decoder rows have max cosine 1; orthogonal ones 0; one latent alone has no other
    W = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert core.max_cosine_sim(W).tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert core.max_cosine_sim(W[:1]).tolist() == [-math.inf]
    # scores: a perfect splice recovers 1, the ablation 0
    assert core.ce_loss_score(5.0, 3.0, 3.0) == 1.0 and core.ce_loss_score(5.0, 5.0, 3.0) == 0.0
    assert core.kl_div_score(0.2, 0.0) == 1.0 and core.kl_div_score(0.2, 0.05) == pytest.approx(0.75)
    assert math.isnan(core.ce_loss_score(3.0, 3.0, 3.0))  # no ablation cost: undefined, not an error
    assert core.ce_loss_score(3.004, 3.001, 3.0) == pytest.approx(0.75)  # ours refuses this one; SAEBench does not
    assert math.isnan(ours.ce_loss_score(3.004, 3.001, 3.0))


def test_accumulator_equals_the_pure_functions_on_concatenated_batches():
    g = torch.Generator().manual_seed(2)
    sae = TopKSAE(6, 20, 3, seed=1, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(20, generator=g, dtype=torch.float64) * 0.3)
        sae.b_dec.copy_(torch.randn(6, generator=g, dtype=torch.float64) * 0.3)
    sizes = [10, 10, 7]
    xs = [torch.randn(n, 6, generator=g, dtype=torch.float64) + 0.5 for n in sizes]
    acc = core.CoreAccumulator(6, 20)
    prompts = []
    for b, x in enumerate(xs):
        vals, idx = sae.encode(x)
        prompt = torch.arange(len(x)) // 5 + 100 * b
        prompts.append(prompt)
        acc.update(x, sae.decode(vals, idx).detach(), vals.detach(), idx, prompt)
    got, per_latent = acc.result()
    x = torch.cat(xs)
    with torch.no_grad():
        acts = dense_code(sae, x)
        xh = acts @ sae.W_dec + sae.b_dec
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    expect = {
        "explained_variance": core.explained_variance(x, xh, batch),
        "explained_variance_legacy": core.explained_variance_legacy(x, xh, batch),
        "mse": core.mse(x, xh, batch), "cossim": core.cossim(x, xh),
        "l2_norm_in": core.mean_l2_norm(x), "l2_norm_out": core.mean_l2_norm(xh), "l2_ratio": core.l2_ratio(x, xh),
        "relative_reconstruction_bias": core.relative_reconstruction_bias(x, xh, batch),
        "l0": core.l0(acts), "l1": core.l1(acts),
    }
    assert got == pytest.approx(expect, rel=1e-10)
    np.testing.assert_allclose(per_latent["feature_density"], core.feature_density(acts).numpy(), rtol=1e-12)
    np.testing.assert_allclose(per_latent["consistent_activation_heuristic"],
                               core.consistent_activation_heuristic(acts, torch.cat(prompts)).numpy(), rtol=1e-12)
    assert acc.n_tokens == 27 and acc.n_batches == 3


def test_splice_metrics_mask_special_tokens_as_saebench():
    """CE at p (predicting p+1) and KL at p are dropped when the token at p is ignored."""
    contexts = np.array([[0, 5, 6, 9, 7], [0, 8, 9, 5, 5]])
    g = torch.Generator().manual_seed(3)
    losses = {f"ce/{v}": torch.rand(8, generator=g, dtype=torch.float64) + 1
              for v in ("clean", "recon_in", "zero_in", "recon_out", "zero_out")}
    losses.update({f"kl/{v}": torch.rand(10, generator=g, dtype=torch.float64)
                   for v in ("recon_in", "zero_in", "recon_out", "zero_out")})
    got = core.splice_core_metrics(losses, contexts, ignore_token_ids=[0, 9])

    def mean(key, length):
        vals = losses[key].reshape(2, -1).numpy()
        return np.mean([vals[c, p] for c in range(2) for p in range(length) if contexts[c, p] not in (0, 9)])

    for role, side in (("sae_in", "in"), ("sae_out", "out")):
        r = got[role]
        assert r["ce_loss_without_sae"] == pytest.approx(mean("ce/clean", 4))
        assert r["ce_loss_with_sae"] == pytest.approx(mean(f"ce/recon_{side}", 4))
        assert r["kl_div_with_ablation"] == pytest.approx(mean(f"kl/zero_{side}", 5))
        ce_abl = mean(f"ce/zero_{side}", 4)
        score = (ce_abl - r["ce_loss_with_sae"]) / (ce_abl - r["ce_loss_without_sae"])
        assert r["ce_loss_score"] == pytest.approx(score)
        assert r["kl_div_score"] == pytest.approx(1 - r["kl_div_with_sae"] / r["kl_div_with_ablation"])
    with pytest.raises(ValueError, match="shape"):
        core.splice_core_metrics(losses, contexts[:1])


class FakeCache:
    def __init__(self, x, token_ids, context_index):
        self.x, self.token_ids, self.context_index = x, token_ids, context_index

    def read(self, start, stop):
        return self.x[start:stop]


def test_row_batches_drop_special_tokens_and_keep_context_ids():
    x = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 2)
    cache = FakeCache(x, np.array([5, 0, 6, 7, 2, 8, 9, 0, 4, 4, 4, 3]), np.repeat(np.arange(4), 3))
    got = list(core.row_batches(cache, 10, 6, ignore_token_ids=[0, 2]))
    assert [b[0][:, 0].tolist() for b in got] == [[0, 2, 3, 5], [6, 8, 9]]
    assert [b[1].tolist() for b in got] == [[0, 0, 1, 1], [2, 2, 3]]
    assert core.ignored_tokens(None) == []


def test_core_eval_json_follows_saebench_schema():
    config = core.core_eval_config()
    assert config == SAEBENCH_CONFIG_DEFAULTS and list(config) == list(SAEBENCH_CONFIG_DEFAULTS)
    doc = core.core_eval_json({"l0": 3.0, "mse": float("nan"), "total_tokens_eval_sparsity_variance": 12.0},
                              {"feature_density": [0.5, 0.0], "max_decoder_cosine_sim": [1.0, -math.inf]},
                              eval_config=config, datetime_epoch_millis=1700000000000, eval_id="x")
    assert_tree(doc, SAEBENCH_TREE)
    assert_types(doc)
    m = doc["eval_result_metrics"]
    assert m["sparsity"]["l0"] == 3.0 and m["reconstruction_quality"]["mse"] is None  # NaN -> null
    assert m["token_stats"]["total_tokens_eval_sparsity_variance"] == 12 and m["shrinkage"]["l2_ratio"] is None
    assert doc["eval_result_details"][1] == {
        "index": 1, "feature_density": 0.0, "consistent_activation_heuristic": None, "encoder_bias": None,
        "encoder_norm": None, "encoder_decoder_cosine_sim": None, "max_decoder_cosine_sim": None,
        "max_encoder_cosine_sim": None}
    with pytest.raises(ValueError, match="unknown core metrics.*'cosine'"):
        core.core_eval_json({"cosine": 1.0}, {}, eval_config=config)
    with pytest.raises(ValueError, match="unknown CoreEvalConfig fields.*'batch_size'"):
        core.core_eval_config(batch_size=3)
    with pytest.raises(ValueError, match="lengths"):
        core.core_eval_json({}, {"feature_density": [0.1], "encoder_norm": [1.0, 2.0]}, eval_config=config)


def test_bad_inputs_are_one_line_errors():
    x = torch.ones(3, 2)
    for call, match in [
        (lambda: core.mse(x, torch.ones(3, 3)), r"x \(3, 2\) and x_hat \(3, 3\)"),
        (lambda: core.mse(x, x, batch=[0, 1]), "one integer id per token"),
        (lambda: core.l0(torch.ones(4)), "dense code"),
        (lambda: core.frac_alive([0.5, 1.5]), r"in \[0, 1\]"),
        (lambda: core.max_cosine_sim(torch.ones(3, 2), chunk=0), "chunk=0"),
        (lambda: core.consistent_activation_heuristic(x, [0, 0]), "one integer context id"),
        (lambda: core.feature_density_histogram([0.1], edges=[0.0, -1.0]), "edges"),
        (lambda: core.result_filename("sae_mid"), "sae_mid"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


# --------------------------------------------------------------------------------------------------
# python -m jsae core on a tiny saved GPT-NeoX
# --------------------------------------------------------------------------------------------------


def core_args(pair: dict, out, *extra: str) -> list[str]:
    return ["core", "--model", pair["model"], "--run", str(pair["run"]), "--cache", str(pair["validation"]),
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_cli_writes_saebench_json_for_both_saes(tiny_pair, tmp_path):  # noqa: F811
    from jsae.__main__ import main
    from jsae.eval.inputs import load_inputs

    out = tmp_path / "core"
    assert main(core_args(tiny_pair, out, "--batch-size-prompts", "4", "--ce-contexts", "6")) == 0
    inputs = load_inputs(tiny_pair["model"], LAYER, str(tiny_pair["run"]), str(tiny_pair["validation"]))
    pair, cache = inputs.pair, inputs.cache
    ignore = {inputs.tokenizer.bos_token_id, inputs.tokenizer.eos_token_id, inputs.tokenizer.pad_token_id} - {None}
    # the oracle: every row not holding an ignored token, batches of 4 contexts x 15 rows, dense codes
    keep = ~np.isin(cache.token_ids, list(ignore))
    rows = np.arange(cache.n_tokens)
    x = cache.read().double()[torch.from_numpy(keep)]
    batch = torch.from_numpy(rows[keep] // (4 * 15))
    prompt = torch.from_numpy(cache.context_index[keep].astype(np.int64))
    pair = pair.double()
    with torch.no_grad():
        y = pair.mlp(x)
    for role, sae, inp in (("sae_in", pair.sae_in, x), ("sae_out", pair.sae_out, y)):
        doc = json.loads((out / f"{role}_eval_results.json").read_text())
        assert_tree(doc, SAEBENCH_TREE)
        assert_types(doc)
        m = {k: v for group in doc["eval_result_metrics"].values() for k, v in group.items()}
        with torch.no_grad():
            acts = dense_code(sae, inp)
            xh = acts @ sae.W_dec + sae.b_dec
        X, XH, b = inp.numpy(), xh.numpy(), batch.numpy()
        assert m["explained_variance"] == pytest.approx(o_explained_variance(X, XH, b), rel=1e-4)
        assert m["explained_variance_legacy"] == pytest.approx(o_explained_variance_legacy(X, XH, b), rel=1e-4)
        assert m["mse"] == pytest.approx(o_mse(X, XH, b), rel=1e-4)
        assert m["cossim"] == pytest.approx(o_cossim(X, XH), rel=1e-4)
        assert m["l2_ratio"] == pytest.approx(o_l2_ratio(X, XH), rel=1e-4)
        assert m["relative_reconstruction_bias"] == pytest.approx(o_rrb(X, XH, b), rel=1e-4)
        A = acts.numpy()
        assert m["l0"] == pytest.approx(np.mean((A != 0).sum(1))) and m["l0"] <= sae.k
        assert m["l1"] == pytest.approx(A.sum(1).mean(), rel=1e-4)
        density = np.array([r["feature_density"] for r in doc["eval_result_details"]])
        np.testing.assert_allclose(density, o_density(A), atol=1e-12)
        cah = np.array([np.nan if r["consistent_activation_heuristic"] is None else r["consistent_activation_heuristic"]
                        for r in doc["eval_result_details"]])
        np.testing.assert_allclose(cah, o_cah(A, prompt.numpy()), rtol=1e-12)
        np.testing.assert_allclose([r["max_decoder_cosine_sim"] for r in doc["eval_result_details"]],
                                   o_max_cos(sae.W_dec.detach().numpy()), rtol=1e-5)
        assert m["frac_alive"] == pytest.approx(np.mean(o_density(A) > 0))
        assert m["total_tokens_eval_sparsity_variance"] == len(X)
        # CE / KL: present, on 6 contexts of 16 tokens; the scores are SAEBench's formula of the means
        assert m["total_tokens_eval_reconstruction"] == 6 * 16
        assert m["ce_loss_score"] == pytest.approx((m["ce_loss_with_ablation"] - m["ce_loss_with_sae"])
                                                   / (m["ce_loss_with_ablation"] - m["ce_loss_without_sae"]))
        assert m["kl_div_score"] == pytest.approx(1 - m["kl_div_with_sae"] / m["kl_div_with_ablation"])
        cfg = doc["eval_config"]
        assert (cfg["batch_size_prompts"], cfg["n_eval_reconstruction_batches"], cfg["context_size"]) == (4, 2, 16)
        assert cfg["compute_ce_loss"] and cfg["llm_dtype"] == "float32"
        assert doc["sae_cfg_dict"]["metadata"]["sae_role"] == role and doc["sae_cfg_dict"]["d_sae"] == len(density)
        extra = doc["eval_result_unstructured"]["jsae"]
        assert extra["definitions"]["sae_bench_commit"] == core.SAE_BENCH_COMMIT
        assert extra["dead_fraction"] == pytest.approx(1 - m["frac_alive"])
        assert extra["jsae_metrics"]["explained_variance"] == pytest.approx(ours.explained_variance(inp, xh), rel=1e-4)
        assert sum(extra["feature_density_histogram"]["counts"]) + extra["feature_density_histogram"][
            "n_never_fired"] == len(density)
    # the clean CE, independently: the LM's next-token CE over the kept positions of the first 6 contexts
    ctx = torch.as_tensor(np.asarray(cache.contexts()[:6])).long()
    with torch.no_grad():
        logits = inputs.model(input_ids=ctx).logits.double()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ctx[:, 1:].reshape(-1),
                                           reduction="none")
    kept = ~torch.isin(ctx[:, :-1], torch.tensor(sorted(ignore))).reshape(-1)
    doc = json.loads((out / "sae_in_eval_results.json").read_text())
    assert doc["eval_result_metrics"]["model_performance_preservation"]["ce_loss_without_sae"] == pytest.approx(
        float(ce[kept].mean()), rel=1e-5)


def test_cli_without_ce_and_bad_inputs(tiny_pair, tmp_path, capfd):  # noqa: F811
    from jsae.__main__ import main

    out = tmp_path / "core"
    assert main(core_args(tiny_pair, out, "--ce-contexts", "0", "--n-tokens", "100", "--layer", str(LAYER))) == 0
    doc = json.loads((out / "sae_out_eval_results.json").read_text())
    assert all(v is None for v in doc["eval_result_metrics"]["model_performance_preservation"].values())
    assert doc["eval_result_metrics"]["token_stats"]["total_tokens_eval_reconstruction"] is None
    assert doc["eval_result_unstructured"]["jsae"]["null_reasons"]["ce_loss_score"] == "skipped: --ce-contexts 0"
    assert not doc["eval_config"]["compute_kl"] and doc["eval_config"]["n_eval_reconstruction_batches"] == 0
    capfd.readouterr()
    bad = tmp_path / "bad"
    for extra, needle in [(("--ce-contexts", "999"), "ce_contexts=999"),
                          (("--batch-size-prompts", "0"), "batch_size_prompts=0"),
                          (("--n-tokens", "100000"), "n_tokens=100000"),
                          (("--layer", "0"), "trained on layer 1")]:
        assert main(core_args(tiny_pair, bad, *extra)) == 2
        err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not bad.exists()


def test_cli_on_a_planted_model_leaves_what_needs_an_lm_null(tmp_path):
    """A planted model has no LM (CE/KL null) and no text (consistent_activation_heuristic null); its all-zero rows
    make SAEBench's cossim NaN (null, with the reason)."""
    from jsae.__main__ import main

    planted = {"d": 16, "n_x": 24, "n_y": 12, "p": 0.08, "frame_steps": 50}
    train = {"k": 3, "n_latents": 48, "n_latents_out": 24, "n_tokens": 2048, "batch_size": 256, "lr": 0.003,
             "lam": 1.0, "seed": 0, "checkpoint_every": 1000, "log_every": 50}
    model, run = tmp_path / "model", tmp_path / "run"
    assert main(["planted", "--out", str(model), "--config-json", json.dumps(planted)]) == 0
    for split in ("train", "validation"):
        assert main(["cache", "--model", str(model), "--layer", "0", "--split", split, "--n-tokens", "1024",
                     "--out", str(tmp_path / f"{split}.h5")]) == 0
    assert main(["train", "--model", str(model), "--layer", "0", "--cache", str(tmp_path / "train.h5"), "--out",
                 str(run), "--config-json", json.dumps(train), "--device", "cpu", "--mlflow-uri", "none",
                 "--no-progress"]) == 0
    out = tmp_path / "core"
    assert main(["core", "--model", str(model), "--run", str(run), "--cache", str(tmp_path / "validation.h5"),
                 "--out", str(out), "--no-progress", "--batch-size-prompts", "256"]) == 0
    for role in ("sae_in", "sae_out"):
        doc = json.loads((out / f"{role}_eval_results.json").read_text())
        assert_tree(doc, SAEBENCH_TREE)
        assert_types(doc)
        m, extra = doc["eval_result_metrics"], doc["eval_result_unstructured"]["jsae"]
        assert all(v is None for v in m["model_behavior_preservation"].values())
        assert "no language model" in extra["null_reasons"]["ce_loss_score"]
        assert all(r["consistent_activation_heuristic"] is None for r in doc["eval_result_details"])
        assert doc["eval_config"]["llm_dtype"] is None and doc["eval_config"]["n_eval_sparsity_variance_batches"] == 4
        assert m["token_stats"]["total_tokens_eval_sparsity_variance"] == 1024 and m["sparsity"]["l0"] <= 3
    doc = json.loads((out / "sae_in_eval_results.json").read_text())
    assert doc["eval_result_metrics"]["reconstruction_quality"]["cossim"] is None
    assert "zero input" in doc["eval_result_unstructured"]["jsae"]["null_reasons"]["cossim"]
