"""Each metric against a brute-force implementation on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jsae.eval.metrics import (
    CE_SCORE_MIN_ABLATION_NATS,
    DEFAULT_THRESHOLDS,
    GlobalJacobianAccumulator,
    JacobianAccumulator,
    ReconstructionAccumulator,
    abs_histogram,
    ce_splice_metrics,
    check_thresholds,
    counts_above_grid,
    dead_and_rare,
    effective_share,
    explained_variance,
    explained_variance_legacy,
    firing_counts,
    frac_above,
    global_shares,
    grid_count_above,
    grid_quantile,
    histogram_cdf,
    histogram_edges,
    lp_norms,
    mean_cosine_similarity,
    mse_per_element,
    recovered_score,
    sse_per_token,
    tau_grid,
    tau_grid_exponents,
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


# Hand-built mean CEs (nats/token): clean, recon, zero, and the expected score worked out by hand.
CE_CASES = [
    pytest.param(3.0, 3.1, 5.0, (5.0 - 3.1) / (5.0 - 3.0), id="ordinary"),
    pytest.param(4.29776, 4.29808, 4.34829, 0.050213 / 0.05053, id="trained-tiny-neox-in"),
    pytest.param(2.0, 2.0, 2.02, 1.0, id="perfect-splice-above-floor"),
    pytest.param(2.0, 1.99, 2.0105, 1.0 + 0.01 / 0.0105, id="just-above-floor-splice-helps"),
    pytest.param(2.0, 2.02, 2.0105, 1.0 - 0.02 / 0.0105, id="just-above-floor-splice-hurts"),
    pytest.param(0.0, 0.002, 0.01, 0.8, id="exactly-at-floor"),  # 0.01 - 0.0 is exact in binary: scored
    pytest.param(2.0, 2.001, 2.0095, float("nan"), id="just-below-floor"),
    pytest.param(8.35479, 8.35428, 8.35634, float("nan"), id="reinit-tiny-neox-in"),  # was "1.33"
    pytest.param(3.0, 3.1, 3.0, float("nan"), id="ablation-costs-nothing"),
    pytest.param(3.0, 3.1, 2.5, float("nan"), id="ablation-helps"),
    pytest.param(3.0, 3.1, float("nan"), float("nan"), id="not-finite"),
]


@pytest.mark.parametrize("clean,recon,zero,score", CE_CASES)
def test_ce_splice_metrics_on_hand_built_numbers(clean, recon, zero, score):
    assert CE_SCORE_MIN_ABLATION_NATS == 0.01  # the cases above straddle this floor
    got = ce_splice_metrics("out", clean, recon, zero)
    assert set(got) == {"out/ce_loss_score", "out/ce_loss_delta", "out/ce_ablation_delta", "out/ce_score_refused"}
    assert got["out/ce_loss_delta"] == pytest.approx(recon - clean, abs=1e-12)
    if math.isnan(zero):
        assert math.isnan(got["out/ce_ablation_delta"])
    else:
        assert got["out/ce_ablation_delta"] == pytest.approx(zero - clean, abs=1e-12)
    if math.isnan(score):
        assert math.isnan(got["out/ce_loss_score"]) and got["out/ce_score_refused"] == 1.0
    else:
        assert got["out/ce_loss_score"] == pytest.approx(score, rel=1e-4) and got["out/ce_score_refused"] == 0.0


def test_ce_score_floor_is_a_parameter():
    # 0.0095 nats is refused at the default floor and scored at a floor of 0.005; any floor refuses a free ablation
    below = ce_splice_metrics("in", 2.0, 2.001, 2.0095)
    assert below["in/ce_score_refused"] == 1.0
    looser = ce_splice_metrics("in", 2.0, 2.001, 2.0095, min_ablation=0.005)
    assert looser["in/ce_score_refused"] == 0.0
    assert looser["in/ce_loss_score"] == pytest.approx(1 - 0.001 / 0.0095, rel=1e-9)
    assert ce_splice_metrics("in", 2.0, 2.1, 1.9, min_ablation=0.0)["in/ce_score_refused"] == 1.0
    free = ce_splice_metrics("in", 2.0, 2.1, 2.0, min_ablation=0.0)
    assert free["in/ce_score_refused"] == 1.0 and math.isnan(free["in/ce_loss_score"])


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), True, "0.01"])
def test_ce_score_floor_must_be_finite_and_not_negative(bad):
    with pytest.raises(ValueError, match="min_ablation"):
        ce_splice_metrics("in", 3.0, 3.1, 5.0, min_ablation=bad)


def test_ce_splice_metrics_side_must_be_known():
    with pytest.raises(ValueError, match="side"):
        ce_splice_metrics("mid", 3.0, 3.1, 5.0)


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
    assert m.CE_SPLICE_METRICS == ("ce_loss_score", "ce_loss_delta", "ce_ablation_delta", "ce_score_refused")
    assert (m.IN_CE_LOSS_DELTA_KEY, m.OUT_CE_ABLATION_DELTA_KEY, m.IN_CE_SCORE_REFUSED_KEY) == (
        "in/ce_loss_delta",
        "out/ce_ablation_delta",
        "in/ce_score_refused",
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


def test_global_shares_count_only_alive_latents_brute_force():
    """jac/global_frac_above_tau: 100% = alive outputs x alive inputs; entries touching a dead latent never count."""
    g = torch.Generator().manual_seed(8)
    T, k, n_out, n_in = 30, 3, 8, 10
    # outputs 6, 7 and inputs 8, 9 are never selected; input latents selected only with value <= 0 stay dead
    out_idx = torch.stack([torch.randperm(6, generator=g)[:k] for _ in range(T)])
    in_idx = torch.stack([torch.randperm(8, generator=g)[:k] for _ in range(T)])
    out_vals = torch.rand(T, k, generator=g) - 0.2
    in_vals = torch.rand(T, k, generator=g) - 0.2
    in_vals[in_idx == 3] = -1.0  # input latent 3 selected but never fires: dead, though its J column is not 0
    J = torch.randn(T, k, k, generator=g) * (out_vals > 0)[:, :, None]
    acc = GlobalJacobianAccumulator(n_out, n_in, max_entries=None)
    acc.update(J, out_idx, in_idx, out_vals)
    fired_out, fired_in = firing_counts(out_vals, out_idx, n_out), firing_counts(in_vals, in_idx, n_in)
    s, c, sq, active = _brute_global(J, out_idx, in_idx, out_vals, n_out, n_in)
    alive_out = [i for i in range(n_out) if any(out_idx[t, a] == i and out_vals[t, a] > 0
                                                 for t in range(T) for a in range(k))]
    alive_in = [j for j in range(n_in) if any(in_idx[t, b] == j and in_vals[t, b] > 0
                                                for t in range(T) for b in range(k))]
    assert 3 not in alive_in and 8 not in alive_in and 6 not in alive_out
    taus = [0.01, 0.3, 1.0]
    brute = []
    for tau in taus:
        above = sum(1 for i in alive_out for j in alive_in if active[i] and s[i, j] / active[i] > tau)
        brute.append(above / (len(alive_out) * len(alive_in)))
    got = acc.sparsity_shares(fired_out > 0, fired_in > 0, taus)
    assert got.tolist() == pytest.approx(brute, rel=1e-12)
    # the module-level definition (what fig. 36 calls on the npz arrays) is the same function
    again = global_shares(acc.mean_abs_given_output_active().numpy(), acc.out_latent.numpy(), acc.in_latent.numpy(),
                          (fired_out > 0).numpy(), (fired_in > 0).numpy(), taus)
    np.testing.assert_array_equal(again, got)
    assert np.isnan(global_shares(np.array([0.5]), np.array([0]), np.array([0]), np.array([False]), np.array([True]),
                                  taus)).all()
    with pytest.raises(ValueError, match="exceed the alive masks"):
        global_shares(np.array([0.5]), np.array([4]), np.array([0]), np.ones(2, bool), np.ones(2, bool), taus)


def test_counts_above_grid_brute_force():
    g = torch.Generator().manual_seed(9)
    J = torch.randn(6, 4, 5, generator=g) * torch.logspace(-3, 1, 6)[:, None, None]
    J[0, 1] = 0.0  # an inactive output row
    exps = tau_grid_exponents(8, (-4, 2))
    grid = tau_grid(exps, 8)
    J[2, 0, 0] = float(grid[10])  # exactly on a grid point: not above it
    J[3, 0, 0] = 1e5  # above the whole grid: counted everywhere
    got = counts_above_grid(J, exps, 8).numpy()
    a = J.abs().double().reshape(6, -1).numpy()
    brute = np.array([[int((a[t] > tau).sum()) for tau in grid] for t in range(6)])
    np.testing.assert_array_equal(got, brute)
    with pytest.raises(ValueError, match="consecutive integers"):
        counts_above_grid(J, np.array([0, 2]), 8)
    with pytest.raises(ValueError, match="per_decade"):
        tau_grid_exponents(0)


def test_grid_count_and_quantile_against_sorted_values():
    """Exact at grid points; between them bracketed by the neighbours; the median's share is exactly 1/2."""
    rng = np.random.default_rng(10)
    a = np.exp(rng.normal(-3, 1.5, 50_000))
    a[:500] = 0.0
    J = torch.as_tensor(a).reshape(1000, 50)
    exps = tau_grid_exponents(32, (-8, 4))
    counts = counts_above_grid(J, exps, 32).numpy().sum(0)
    nonzero = float((a > 0).sum())
    for g in (-100, -64, -20):  # a grid point: exact
        x = np.array(float(g))
        assert float(grid_count_above(counts, exps, np.array(nonzero), x)) == (a > 10 ** (g / 32)).sum()
    x = 32 * np.log10(0.0123)  # between grid points: within the neighbours' counts, close to the truth
    got = float(grid_count_above(counts, exps, np.array(nonzero), np.array(x)))
    lo, hi = (a > 10 ** (np.ceil(x) / 32)).sum(), (a > 10 ** (np.floor(x) / 32)).sum()
    assert lo <= got <= hi and got == pytest.approx((a > 0.0123).sum(), rel=2e-3)
    q = grid_quantile(counts, exps, np.array(nonzero), 0.5)
    tau_star = 10 ** (float(q) / 32)
    assert tau_star == pytest.approx(np.median(a[a > 0]), rel=5e-3)  # within a fraction of one 7.5% grid step
    assert float(grid_count_above(counts, exps, np.array(nonzero), q)) == pytest.approx(nonzero / 2, rel=1e-12)
    assert float(grid_quantile(counts, exps, np.array(nonzero), 0.9)) > float(q)
    # outside the stored columns: only where the edge column vouches for it (all non-zero above it / none)
    assert float(grid_count_above(counts, exps, np.array(nonzero), np.array(-1e6))) == nonzero
    assert float(grid_count_above(counts, exps, np.array(nonzero), np.array(1e6))) == 0.0
    cut = counts[200:]  # starts at 10**(-56/32) ~ 0.018, above many elements: nothing known below it
    assert np.isnan(grid_count_above(cut, exps[200:], np.array(nonzero), np.array(-60.0)))
    assert np.isnan(grid_quantile(cut, exps[200:], np.array(nonzero), 0.1))
    with pytest.raises(ValueError, match="quantile"):
        grid_quantile(counts, exps, np.array(nonzero), 1.0)


def test_jacobian_accumulator_keeps_per_token_arrays_of_the_first_tokens():
    g = torch.Generator().manual_seed(11)
    J = torch.randn(25, 3, 4, generator=g) * 0.05
    J[:, 2] = 0  # an inactive output row
    acc = JacobianAccumulator(token_stats=17)
    for s in range(0, 25, 6):
        acc.update(J[s : s + 6])
    a = acc.arrays()
    assert a["token_row"].tolist() == list(range(17))  # the first 17 tokens, in the order given
    np.testing.assert_allclose(a["token_frac_above"], frac_above(J[:17]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a["token_effective_share"], effective_share(J[:17]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a["token_lp"], lp_norms(J[:17]).numpy(), rtol=1e-6)
    assert a["token_nonzero"].tolist() == [8] * 17 and int(a["token_n_elements"]) == 12
    exps, pd = a["token_tau_exponents"], int(a["token_tau_per_decade"])
    brute = np.array([[int((J[t].abs().double() > 10 ** (e / pd)).sum()) for e in exps] for t in range(17)])
    np.testing.assert_array_equal(a["token_count_above"], brute)
    # trimmed to the varying columns plus one guard each side: all non-zero below, none above
    assert (a["token_count_above"][:, 0] == 8).all() and (a["token_count_above"][:, -1] == 0).all()
    assert len(exps) < len(tau_grid_exponents()) and a["token_count_above"].dtype == np.uint16
    none = JacobianAccumulator(token_stats=0)
    none.update(J)
    assert not any(k.startswith("token_") for k in none.arrays())
    with pytest.raises(ValueError, match="token_stats"):
        JacobianAccumulator(token_stats=-1)


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
