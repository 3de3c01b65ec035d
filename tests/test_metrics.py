"""Each metric against a brute-force implementation on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jsae.eval.metrics import (
    DEFAULT_THRESHOLDS,
    GlobalJacobianAccumulator,
    JacobianAccumulator,
    ReconstructionAccumulator,
    abs_histogram,
    check_thresholds,
    dead_and_rare,
    effective_share,
    explained_variance,
    explained_variance_legacy,
    firing_counts,
    frac_above,
    histogram_cdf,
    histogram_edges,
    lp_norms,
    mean_cosine_similarity,
    mse_per_element,
    recovered_score,
    sse_per_token,
    threshold_key,
    token_cross_entropy,
    token_kl,
)


def test_explained_variance_is_ratio_of_sums():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7)
    x_hat = x + 0.3 * torch.randn(50, 6, generator=g, dtype=torch.float64)
    num = sum(float(((x[t] - x_hat[t]) ** 2).sum()) for t in range(50))
    mean = [sum(float(x[t, f]) for t in range(50)) / 50 for f in range(6)]
    den = sum((float(x[t, f]) - mean[f]) ** 2 for t in range(50) for f in range(6))
    assert explained_variance(x, x_hat) == pytest.approx(1 - num / den, rel=1e-10)
    legacy = np.mean(
        [
            1 - float(((x[t] - x_hat[t]) ** 2).sum()) / sum((float(x[t, f]) - mean[f]) ** 2 for f in range(6))
            for t in range(50)
        ]
    )
    assert explained_variance_legacy(x, x_hat) == pytest.approx(legacy, rel=1e-10)
    assert explained_variance(x, x) == 1.0


def test_cosine_mse_sse_brute_force():
    g = torch.Generator().manual_seed(1)
    x, x_hat = (
        torch.randn(20, 5, generator=g, dtype=torch.float64),
        torch.randn(20, 5, generator=g, dtype=torch.float64),
    )
    cos = np.mean([float(x[t] @ x_hat[t]) / (float(x[t].norm()) * float(x_hat[t].norm())) for t in range(20)])
    assert mean_cosine_similarity(x, x_hat) == pytest.approx(cos, rel=1e-6)
    assert mse_per_element(x, x_hat) == pytest.approx(float(((x - x_hat) ** 2).sum()) / 100, rel=1e-10)
    assert sse_per_token(x, x_hat) == pytest.approx(float(((x - x_hat) ** 2).sum()) / 20, rel=1e-10)


def test_reconstruction_accumulator_equals_pure_functions_on_concatenation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(97, 8, generator=g) * 3 + 5
    x_hat = x + torch.randn(97, 8, generator=g)
    acc = ReconstructionAccumulator(8)
    for s in range(0, 97, 10):
        acc.update(x[s : s + 10], x_hat[s : s + 10])
    r = acc.result()
    assert r["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert r["cosine"] == pytest.approx(mean_cosine_similarity(x, x_hat), rel=1e-9)
    assert r["mse"] == pytest.approx(mse_per_element(x, x_hat), rel=1e-9)
    assert r["sse_per_token"] == pytest.approx(sse_per_token(x, x_hat), rel=1e-9)
    one = ReconstructionAccumulator(8)
    one.update(x, x_hat)
    assert one.result()["explained_variance_legacy"] == pytest.approx(explained_variance_legacy(x, x_hat), rel=1e-9)
    with pytest.raises(ValueError, match="non-empty"):
        ReconstructionAccumulator(8).result()


def test_recovered_score():
    assert recovered_score(zero=5.0, recon=3.0, clean=3.0) == 1.0
    assert recovered_score(zero=5.0, recon=5.0, clean=3.0) == 0.0
    assert recovered_score(zero=5.0, recon=4.0, clean=3.0) == 0.5
    assert math.isnan(recovered_score(1.0, 1.0, 1.0))


def test_token_ce_and_kl_brute_force():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 7, generator=g)
    other = torch.randn(2, 4, 7, generator=g)
    ids = torch.randint(0, 7, (2, 4), generator=g)
    ce = token_cross_entropy(logits, ids)
    for b in range(2):
        for s in range(3):
            p = torch.softmax(logits[b, s].double(), -1)
            assert float(ce[b, s]) == pytest.approx(-math.log(float(p[ids[b, s + 1]])), rel=1e-5)
    kl = token_kl(logits, other)
    p, q = torch.softmax(logits[1, 2].double(), -1), torch.softmax(other[1, 2].double(), -1)
    assert float(kl[1, 2]) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert torch.allclose(token_kl(logits, logits), torch.zeros(2, 4), atol=1e-6)


def test_dead_and_rare_and_firing_counts():
    idx = torch.tensor([[0, 1], [1, 2], [1, 0]])
    vals = torch.tensor([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]])  # latent 2 selected but ReLU'd to 0
    counts = firing_counts(vals, idx, 5)
    assert counts.tolist() == [2, 3, 0, 0, 0]
    r = dead_and_rare(counts, n_tokens=3)
    assert r["dead_fraction"] == pytest.approx(3 / 5)
    assert r["rare_fraction"] == pytest.approx(3 / 5)  # < 1e-6 * 3 tokens means never
    r = dead_and_rare(torch.tensor([0, 1, 5, 100]), n_tokens=4_000_000)  # rare: < 4 firings
    assert r["dead_fraction"] == 0.25 and r["rare_fraction"] == 0.5
    with pytest.raises(ValueError, match="n_tokens"):
        dead_and_rare(counts, n_tokens=0)


@pytest.mark.parametrize("tau", DEFAULT_THRESHOLDS)
def test_frac_above_each_threshold_separately(tau):
    # values straddling every threshold: each tau must see a different share
    vals = torch.tensor([0.001, 0.006, 0.011, 0.016, 0.021, 0.05, -0.012, -0.03, 0.0])
    J = vals.reshape(1, 3, 3)
    brute = sum(1 for v in vals.tolist() if abs(v) > tau) / 9
    got = frac_above(J, [tau])
    assert float(got[0, 0]) == pytest.approx(brute)
    allt = frac_above(J, DEFAULT_THRESHOLDS)[0]
    assert float(allt[DEFAULT_THRESHOLDS.index(tau)]) == pytest.approx(brute)
    assert len(set(allt.tolist())) == len(DEFAULT_THRESHOLDS)  # not all measuring 0.04
    assert (
        threshold_key(tau)
        == {
            0.005: "jac/frac_above_0.005",
            0.01: "jac/frac_above_0.01",
            0.015: "jac/frac_above_0.015",
            0.02: "jac/frac_above_0.02",
            0.04: "jac/frac_above_0.04",
        }[tau]
    )


def test_metric_keys_are_the_contract_strings():
    """The key constants are spelled exactly as evaluation.json, summary.csv and MLflow carry them."""
    from jsae.eval import metrics as m

    assert (m.JAC_FRAC_KEY, m.EFFECTIVE_SHARE_KEY, m.JAC_L1_KEY, m.JAC_LINF_KEY) == (
        "jac/frac_above_0.01",
        "jac/effective_share",
        "jac/l1",
        "jac/linf",
    )
    assert (m.IN_EV_KEY, m.OUT_EV_KEY, m.IN_CE_SCORE_KEY, m.OUT_CE_SCORE_KEY, m.CE_SCORE_MEAN_KEY) == (
        "in/explained_variance",
        "out/explained_variance",
        "in/ce_loss_score",
        "out/ce_loss_score",
        "ce/score_mean",
    )
    assert (
        m.global_threshold_key(0.005),
        m.splice_key("kl", "recon_in"),
        m.probe_frac_key("on_line"),
        m.N_TOKENS_KEY,
        m.lp_key(4.0),
    ) == ("jac/global_frac_above_0.005", "kl/recon_in", "probe/on_line_frac", "eval/n_tokens", "jac/l4")


@pytest.mark.parametrize("bad", [[0.0], [-0.01], [float("nan")], [], [float("inf")], [True]])
def test_thresholds_must_be_positive(bad):
    with pytest.raises(ValueError, match="threshold"):
        check_thresholds(bad)
    with pytest.raises(ValueError):
        JacobianAccumulator(thresholds=tuple(bad))


def test_lp_norms_brute_force():
    g = torch.Generator().manual_seed(4)
    J = torch.randn(3, 4, 4, generator=g)
    n = lp_norms(J)
    for t in range(3):
        v = [abs(float(a)) for a in J[t].reshape(-1)]
        assert float(n[t, 0]) == pytest.approx(sum(v), rel=1e-9)
        assert float(n[t, 1]) == pytest.approx(sum(a**2 for a in v) ** 0.5, rel=1e-9)
        assert float(n[t, 2]) == pytest.approx(sum(a**4 for a in v) ** 0.25, rel=1e-9)
        assert float(n[t, 3]) == pytest.approx(max(v), rel=1e-9)


def test_effective_share_brute_force_and_extremes():
    g = torch.Generator().manual_seed(6)
    J = torch.randn(4, 3, 5, generator=g)
    J[1] = 0.0  # all-zero J: share 0
    J[2] = 0.0
    J[2, 1, 3] = -7.0  # one element holds everything: 1 / k^2
    J[3] = 0.25  # all equal: 1
    e = effective_share(J)
    for t in (0,):
        v = [abs(float(a)) for a in J[t].reshape(-1)]
        assert float(e[t]) == pytest.approx(sum(v) ** 2 / (len(v) * sum(a * a for a in v)), rel=1e-12)
    assert float(e[1]) == 0.0
    assert float(e[2]) == pytest.approx(1 / 15, rel=1e-12)
    assert float(e[3]) == pytest.approx(1.0, rel=1e-12)
    torch.testing.assert_close(effective_share(J * 1e-3), e)  # scale-free: shrinking J changes nothing


def test_histogram_overflow_is_explicit_and_nothing_dropped():
    edges = histogram_edges(1.0, 4)  # [0, .25, .5, .75, 1]
    vals = torch.tensor([0.0, 0.1, -0.3, 0.25, 0.74, 0.75, 1.0, 1.0001, -7.0, 3.0])
    counts, over = abs_histogram(vals, edges)
    brute = [0, 0, 0, 0]
    brute_over = 0
    for v in vals.abs().tolist():
        if v > 1.0:
            brute_over += 1
        else:
            brute[min(int(v // 0.25), 3)] += 1
    assert counts.tolist() == brute and over == brute_over == 3
    assert counts.sum() + over == vals.numel()
    cdf = histogram_cdf(counts, over)
    assert cdf[-1] == pytest.approx(7 / 10)  # overflow mass keeps the CDF below 1
    assert np.all(np.diff(cdf) >= 0)
    with pytest.raises(ValueError, match="NaN"):
        abs_histogram(torch.tensor([float("nan")]), edges)


def test_jacobian_accumulator_matches_concatenation():
    g = torch.Generator().manual_seed(5)
    J = torch.randn(30, 3, 3, generator=g) * 0.02
    J[:, 0] = 0  # an inactive output row
    J[3, 1, 1] = 5.0  # overflow
    acc = JacobianAccumulator(edges=histogram_edges(1.0, 10))
    for s in range(0, 30, 7):
        acc.update(J[s : s + 7])
    m, a = acc.metrics(), acc.arrays()
    fa = frac_above(J).mean(0)
    for i, tau in enumerate(DEFAULT_THRESHOLDS):
        assert m[threshold_key(tau)] == pytest.approx(float(fa[i]), rel=1e-12)
    norms = lp_norms(J).mean(0)
    for key, i in (("jac/l1", 0), ("jac/l2", 1), ("jac/l4", 2), ("jac/linf", 3)):
        assert m[key] == pytest.approx(float(norms[i]), rel=1e-12)
    assert m["jac/mean_abs"] == pytest.approx(float(J.abs().double().mean()), rel=1e-9)
    assert m["jac/effective_share"] == pytest.approx(float(effective_share(J).mean()), rel=1e-12)
    assert int(a["hist_overflow"]) == 1 and a["hist_counts"].sum() == J.numel() - 1


def _brute_global(J, out_idx, in_idx, out_vals, n_out, n_in):
    s = np.zeros((n_out, n_in))
    c = np.zeros((n_out, n_in), dtype=int)
    sq = np.zeros((n_out, n_in))
    active = np.zeros(n_out, dtype=int)
    for t in range(J.shape[0]):
        for a in range(J.shape[1]):
            if out_vals[t, a] <= 0:
                continue
            i = int(out_idx[t, a])
            active[i] += 1
            for b in range(J.shape[2]):
                v = abs(float(J[t, a, b]))
                if v > 0:
                    j = int(in_idx[t, b])
                    s[i, j] += v
                    sq[i, j] += v * v
                    c[i, j] += 1
    return s, c, sq, active


def test_global_accumulator_matches_dense_brute_force():
    g = torch.Generator().manual_seed(6)
    T, k, n_out, n_in = 40, 3, 7, 9
    out_idx = torch.stack([torch.randperm(n_out, generator=g)[:k] for _ in range(T)])
    in_idx = torch.stack([torch.randperm(n_in, generator=g)[:k] for _ in range(T)])
    out_vals = torch.rand(T, k, generator=g) - 0.2
    J = torch.randn(T, k, k, generator=g)
    J = J * (out_vals > 0)[:, :, None]
    acc = GlobalJacobianAccumulator(n_out, n_in, max_entries=None)
    for s in range(0, T, 6):
        acc.update(J[s : s + 6], out_idx[s : s + 6], in_idx[s : s + 6], out_vals[s : s + 6])
    s, c, sq, active = _brute_global(J, out_idx, in_idx, out_vals, n_out, n_in)
    dense = np.zeros((n_out, n_in))
    dense[acc.out_latent.numpy(), acc.in_latent.numpy()] = acc.sum_abs.numpy()
    np.testing.assert_allclose(dense, s, rtol=1e-12)
    dense_c = np.zeros((n_out, n_in), dtype=int)
    dense_c[acc.out_latent.numpy(), acc.in_latent.numpy()] = acc.count.numpy()
    np.testing.assert_array_equal(dense_c, c)
    np.testing.assert_array_equal(acc.out_active.numpy(), active)
    mean = acc.mean_abs_given_output_active().numpy()
    np.testing.assert_allclose(mean, s[acc.out_latent, acc.in_latent] / active[acc.out_latent], rtol=1e-12)
    # top inputs of the busiest output latent: mean / std of the non-zero values
    i = int(np.argmax(active))
    top = acc.top_inputs(i, n=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(c[i] > 0, s[i] / c[i], -1)
    order = np.argsort(-m)[:3]
    order = order[m[order] >= 0]
    np.testing.assert_array_equal(top["in_latent"], order)
    j = order[0]
    assert top["std"][0] == pytest.approx(math.sqrt(max(sq[i, j] / c[i, j] - (s[i, j] / c[i, j]) ** 2, 0)), abs=1e-9)
    om, oc = acc.output_mean_abs()
    assert float(om[i]) == pytest.approx(s[i].sum() / c[i].sum(), rel=1e-12)
    shares = acc.sparsity_shares([0.01, 0.5])
    full = np.divide(s, np.maximum(active, 1)[:, None])
    assert shares.tolist() == pytest.approx([(full > 0.01).mean(), (full > 0.5).mean()])


def test_global_accumulator_bounded_memory_keeps_heaviest():
    acc = GlobalJacobianAccumulator(100, 100, max_entries=5)
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        out_idx = torch.randint(0, 100, (8, 2), generator=g)
        in_idx = torch.randint(0, 100, (8, 2), generator=g)
        acc.update(torch.rand(8, 2, 2, generator=g), out_idx, in_idx, torch.ones(8, 2))
    assert len(acc.keys) == 5
    assert acc.pruned_pairs > 0 and acc.pruned_mass > 0
    assert acc.arrays()["global_out_latent"].shape == (5,)
