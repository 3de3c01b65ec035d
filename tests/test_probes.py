"""Linearity probes: the classifier on hand-built functions at several scales, scale invariance of every
probe share on a real pair, the batched probe against a per-sample loop, the probe's slope against the
closed-form Jacobian, the second-derivative stencil, the per-latent activation quantile, the sampling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from builders import build_hf_mlp

from jsae.eval.probes import (
    FD_STEP,
    LABELS,
    SPLITS,
    ProbeSamples,
    classify_curves,
    classify_line_split,
    classify_one,
    input_latent_scale,
    kth_largest,
    output_latent_at,
    per_group_quantile,
    probe_batch,
    probe_loop,
    random_blocks,
    run_probes,
    sample_probes,
    scale_free_d2,
    second_derivative_stats,
    sweep_grid,
)
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE


def _grid(hi: float = 5.0, n: int = 100) -> torch.Tensor:
    return torch.linspace(0, hi, n, dtype=torch.float64)


# Hand-built f_s curves of known label, written on u in [0, 5] (100 points). Labels by the paper's
# definitions (section 5.4, footnote 1; appendix B): linear = a + b u; JumpReLU = a JumpReLU(b u + c),
# zero on a half-line, so within the sweep the zeros touch an end (a step and a ReLU are special cases);
# everything else is other.
def _u() -> torch.Tensor:
    return _grid()


def _hand_built() -> dict[str, tuple[torch.Tensor, int]]:
    u = _u()
    z = torch.zeros_like(u)
    return {
        "linear rising": (0.3 * u + 1.0, 0),
        "linear falling": (4.0 - 0.7 * u, 0),
        "linear steep": (12.0 * u + 0.5, 0),
        "linear shallow": (0.002 * u + 0.3, 0),
        "constant": (torch.full_like(u, 2.0), 0),
        "all zero": (z, 0),
        "jumprelu, zeros at the left end": (torch.where(u > 2, 0.5 * u + 0.2, z), 1),
        "jumprelu steep": (torch.where(u > 1, 3.0 * u - 1.0, z), 1),
        "jumprelu, zeros at the right end": (torch.where(u < 3, 1.0 - 0.2 * u, z), 1),
        "step": (torch.where(u > 2.5, torch.full_like(u, 0.8), z), 1),
        "step, plateau with a ripple of 0.3% of the jump": (torch.where(u > 2.5, 1.0 + 0.003 * torch.sin(7 * u), z), 1),
        "relu": (2.0 * torch.relu(u - 1.0), 1),
        "relu falling": (torch.relu(3.0 - u), 1),
        "zero run in the middle, one line": (torch.where((u > 1.5) & (u < 3), z, 0.5 * u + 1), 2),
        "zero run in the middle, two lines": (torch.where(u < 1.5, 2 - u, torch.where(u > 3, 0.4 * u, z)), 2),
        "quadratic": (0.1 * u**2, 2),
        "sine": (torch.sin(u) + 1.5, 2),
        "softplus (a smooth relu)": (torch.nn.functional.softplus(3 * (u - 2)) / 3, 2),
        "zeros at the left end, then curved": (torch.where(u > 2, 0.1 * u**2, z), 2),
        "two zero runs": (torch.where((u > 1) & (u < 2), z, torch.where(u > 3, z, 0.5 * u + 1)), 2),
        "one point outside the zeros": (torch.where(u < 4.99, z, torch.ones_like(u)), 2),
    }


SCALES = (0.01, 1.0, 100.0)  # output (s_y) and input (s_x) units: each multiplied by a constant
SWEEP_ENDS = (5.0, 9.3)  # the sweep's right end (5 is the paper's default)


@pytest.mark.parametrize("name", list(_hand_built()))
@pytest.mark.parametrize("out_scale", SCALES)
@pytest.mark.parametrize("in_scale", SCALES)
@pytest.mark.parametrize("hi", SWEEP_ENDS)
def test_hand_built_curve_has_its_label_at_every_scale(name, out_scale, in_scale, hi):
    curve, expected = _hand_built()[name]
    xs, ys = _u() * (hi / 5.0) * in_scale, curve * out_scale
    assert classify_curves(xs[None], ys[None]).tolist() == [expected]
    assert classify_one(xs, ys) == expected


def test_paper_absolute_rule_at_unit_scale_and_where_it_breaks():
    cases = _hand_built()
    ys = torch.stack([c for c, _ in cases.values()])
    xs = _u().expand_as(ys)
    expected = [lab for _, lab in cases.values()]
    # in the units it was written for, the authors' absolute 1e-2 agrees with the definitions ...
    assert classify_curves(xs, ys, tolerance="absolute").tolist() == expected
    assert [classify_one(xs[i], ys[i], tolerance="absolute") for i in range(len(expected))] == expected
    # ... and with the tolerance scaled by the same constant, at any scale (it is the units that differ)
    for scale in SCALES:
        got = classify_curves(xs, ys * scale, tolerance="absolute", tol=0.01 * scale).tolist()
        assert got == expected
    # x0.01: a step, a ReLU and a quadratic span < 0.05 and read as linear under the absolute rule
    small = classify_curves(xs, ys * 0.01, tolerance="absolute").tolist()
    names = list(cases)
    for name in ("step", "relu falling", "quadratic", "jumprelu, zeros at the right end"):
        assert small[names.index(name)] == 0


def test_relative_tolerance_is_a_fraction_of_the_range():
    u = _u()
    # a line (range 1.5) with a wiggle of amplitude 0.4% of the range: linear; 4%: other, at any scale
    for scale in SCALES:
        ys = torch.stack([0.3 * u + 0.006 * torch.sin(7 * u), 0.3 * u + 0.06 * torch.sin(7 * u)]) * scale
        assert classify_curves(u.expand_as(ys), ys).tolist() == [0, 2]
        assert [classify_one(u, y) for y in ys] == [0, 2]
        # the JumpReLU fit, likewise relative to the whole curve's range (0 .. 2.7): one tolerance per curve
        base = torch.where(u > 1, 0.55 * u - 0.05, torch.zeros_like(u))
        wig = torch.where(u > 1, torch.sin(7 * u), torch.zeros_like(u))
        ys = torch.stack([base + 0.005 * wig, base + 0.08 * wig]) * scale
        assert classify_curves(u.expand_as(ys), ys).tolist() == [1, 2]
        assert [classify_one(u, y) for y in ys] == [1, 2]
        # a near-step: the ripple is 0.4% of the curve's range (JumpReLU), though ~100% of the plateau's own
        ys = torch.where(u > 2.5, 1.0 + 0.004 * torch.sin(7 * u), torch.zeros_like(u))[None] * scale
        assert classify_curves(u.expand_as(ys), ys).tolist() == [1] and classify_one(u, ys[0]) == 1


@pytest.mark.parametrize("tolerance", ["relative", "absolute"])
def test_classifier_batched_equals_reference_on_random_curves(tolerance):
    g = torch.Generator().manual_seed(0)
    S = 600
    xs = sweep_grid(torch.rand(S, dtype=torch.float64, generator=g) * 8)
    hi = xs[:, -1:]
    slope = torch.randn(S, 1, dtype=torch.float64, generator=g)
    a = torch.rand(S, 1, dtype=torch.float64, generator=g) * hi
    b = a + torch.rand(S, 1, dtype=torch.float64, generator=g) * (hi - a)
    curv = (
        torch.randn(S, 1, dtype=torch.float64, generator=g) * torch.rand(S, 1, dtype=torch.float64, generator=g) * 0.003
    )
    ys = slope * xs + curv * xs**2 + torch.rand(S, 1, dtype=torch.float64, generator=g) + 0.1  # no zero at t = 0
    # zero runs at the left end, at the right end, in the middle, or none
    kind = torch.randint(0, 4, (S, 1), generator=g)
    zero = torch.where(kind == 0, xs < a, torch.where(kind == 1, xs > b, (xs > a) & (xs < b)))
    ys = torch.where(zero & (kind < 3), torch.zeros_like(ys), ys)
    got = classify_curves(xs, ys, tolerance=tolerance).tolist()
    ref = [classify_one(xs[i], ys[i], tolerance=tolerance) for i in range(S)]
    assert got == ref
    assert len(set(got)) == 3  # the random family exercises every label
    exact = ys == 0
    middle = exact[:, 1:-1].any(1) & ~exact[:, 0] & ~exact[:, -1]
    assert int(middle.sum()) > 50 and all(got[i] != 1 for i in middle.nonzero().squeeze(1).tolist())


def test_line_split_relative():
    J = torch.tensor([0.5, 0.5, 0.5, 0.001, 0.001, 0.0, 0.3])
    delta = torch.tensor([-0.5, -0.54, -0.6, -0.00105, -2.0, 0.0, 1.5])
    after = torch.tensor([1.0, 1.0, 2.0, 0.4, 0.0, 1.0, 2.0])
    # exact; gap 0.04 <= 0.1 x 0.54; gap 0.1 > 0.06 (outlier); tiny but within 10% (on the line, where the
    # absolute 0.01 would pass anything this small); switched off (cluster); both 0; outlier
    expected = [0, 0, 2, 0, 1, 0, 2]
    for c in (1e-3, 1.0, 1e3):  # the same in any units of J (and of delta, which is in J's units)
        assert classify_line_split(delta * c, J * c, after).tolist() == expected


def test_line_split_absolute():
    J = torch.tensor([0.5, 0.5, 0.001, 0.001, 0.3, 0.001])
    delta = torch.tensor([-0.5, -0.52, -2.0, -0.3, 1.5, -0.009])
    after = torch.tensor([1.0, 1.0, 0.0, 0.4, 2.0, 1.0])
    # on the line (exact), within 0.01 + 0.1*0.5, cluster, outlier, outlier, within 0.01 though 9x |J|
    assert classify_line_split(delta, J, after, tolerance="absolute").tolist() == [0, 0, 1, 2, 2, 0]


def test_second_derivative_stats_of_quadratic():
    t = _grid()[None, :]
    c = torch.clamp(t, min=FD_STEP)
    f = lambda z: 0.7 * z**2 - z  # noqa: E731
    stats = second_derivative_stats(f(c - FD_STEP), f(c), f(c + FD_STEP))
    assert stats[0].tolist() == pytest.approx([1.4, 1.4, 1.4], rel=1e-6)
    # per-row steps: the same curve in input units x10 has f'' / 100 with h x 10
    t10, h10 = t * 10, torch.tensor([FD_STEP * 10])
    c10 = torch.maximum(t10, h10[:, None])
    g = lambda z: f(z / 10)  # noqa: E731
    stats10 = second_derivative_stats(g(c10 - h10), g(c10), g(c10 + h10), h10)
    assert stats10[0].tolist() == pytest.approx([0.014, 0.014, 0.014], rel=1e-6)


def test_scale_free_second_derivative():
    # a t^2 on [0, W]: f'' = 2a, range a W^2, so f'' W^2 / range = 2 whatever a and W
    for a, W in ((0.7, 5.0), (3e-4, 0.02), (50.0, 800.0)):
        d2 = torch.tensor([[2 * a, 2 * a, 2 * a]], dtype=torch.float64)
        got = scale_free_d2(d2, torch.tensor([W], dtype=torch.float64), torch.tensor([a * W * W], dtype=torch.float64))
        assert got[0].tolist() == pytest.approx([2.0, 2.0, 2.0], rel=1e-12)
    assert torch.isnan(scale_free_d2(torch.ones(1, 3), torch.ones(1), torch.zeros(1))).all()  # constant


def test_per_group_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 7, (500,), generator=g)
    groups[groups == 5] = 4  # group 5 empty
    groups[0], groups[1] = 6, 3
    groups[groups == 6] = 2
    groups[0] = 6  # group 6 has one value
    values = torch.rand(500, generator=g, dtype=torch.float64) * 3
    for q in (0.0, 0.5, 0.99, 1.0):
        got = per_group_quantile(values, groups, 8, q)
        for k in range(8):
            sel = values[groups == k]
            if sel.numel() == 0:
                assert torch.isnan(got[k])
            else:
                assert float(got[k]) == pytest.approx(float(torch.quantile(sel, q)), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="quantile"):
        per_group_quantile(values, groups, 8, 1.5)


@pytest.mark.parametrize("shape,k", [((50, 4096), 32), ((40, 48), 6), ((30, 100), 7), ((20, 64), 4), ((5, 16), 16)])
def test_kth_largest_is_topks_smallest(shape, k):
    g = torch.Generator().manual_seed(shape[1])
    for values in (torch.randn(shape, generator=g), torch.randint(0, 4, shape, generator=g).double(),  # ties
                   -torch.rand(shape, generator=g, dtype=torch.float64)):
        assert torch.equal(kth_largest(values, k), values.topk(k, dim=1).values[:, -1])


def _pair(seed: int = 0, n: int = 48, k: int = 6) -> JSAEPair:
    mlp = build_hf_mlp("neox-gelu", seed=seed)
    d = 12
    sae_in = TopKSAE(d, n, k, seed=seed + 1, dtype=torch.float64)
    sae_out = TopKSAE(d, n, k, seed=seed + 2, dtype=torch.float64)
    with torch.no_grad():
        sae_in.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        sae_out.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 3))
    return JSAEPair(sae_in, sae_out, mlp).double()


def _x(T: int, seed: int) -> torch.Tensor:
    return torch.randn(T, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2


def test_input_latent_scale_is_the_quantile_of_each_latents_activations():
    pair = _pair(seed=6)
    x = _x(300, 6)
    batches = [x[i : i + 64] for i in range(0, 300, 64)]
    got = input_latent_scale(pair, batches, quantile=0.9, max_tokens=250)
    with torch.no_grad():
        vals, idx = pair.sae_in.encode(x[:250])  # brute force: every (token, slot), latent by latent
    for j in range(pair.sae_in.n_latents):
        mine = vals[(idx == j) & (vals > 0)]
        if mine.numel() == 0:
            assert torch.isnan(got[j])
        else:
            assert float(got[j]) == pytest.approx(float(np.quantile(mine.numpy(), 0.9)), rel=1e-12)
    assert torch.isfinite(got).sum() > 20


def _samples(pair: JSAEPair, T: int = 40, ppt: int = 3, seed: int = 0, opi: int | None = 2, relative: bool = True):
    x = _x(T, seed)
    scale = input_latent_scale(pair, [x]) if relative else None
    return sample_probes(
        pair, x, inputs_per_token=ppt, outputs_per_input=opi, generator=torch.Generator().manual_seed(seed),
        input_scale=scale,
    )


@pytest.mark.parametrize("output,opi,tolerance", [("topk", None, "relative"), ("topk", 2, "relative"),
                                                  ("relu", None, "relative"), ("topk", None, "absolute")])
def test_batched_probe_equals_per_sample_loop(output, opi, tolerance):
    pair = _pair()
    samples = _samples(pair, opi=opi, relative=tolerance == "relative")
    assert len(samples) > 60
    r = probe_batch(pair, samples, output=output, max_elements=5000, tolerance=tolerance)  # several chunks
    labels, curves, delta, split = probe_loop(pair, samples, output=output, tolerance=tolerance)
    np.testing.assert_allclose(r.ys.numpy(), curves, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.delta.numpy(), delta, rtol=1e-9, atol=1e-12)
    assert r.label.tolist() == labels.tolist()
    assert r.split.tolist() == split.tolist()
    assert len(set(labels.tolist())) >= 2 and len(set(split.tolist())) >= 2  # the comparison sees variety
    if output == "topk":
        np.testing.assert_allclose(r.at_point.numpy(), samples.s_y.numpy(), rtol=1e-10, atol=1e-12)


def test_sweep_follows_the_rule():
    s_x = torch.tensor([1.0, 7.0, 0.3], dtype=torch.float64)
    # absolute: [0, max(5, s_x + 1)]
    assert sweep_grid(s_x)[:, -1].tolist() == pytest.approx([5.0, 8.0, 5.0])
    # relative: u = q / 5, [0, max(q, s_x + q / 5)]
    u = torch.tensor([2.0, 1.0, 0.01], dtype=torch.float64)
    assert sweep_grid(s_x, step=u)[:, -1].tolist() == pytest.approx([10.0, 8.0, 0.31])
    assert sweep_grid(s_x, step=u)[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_sampling_draws_distinct_sweeps_and_outputs():
    pair = _pair(seed=4)
    x = _x(30, 4)
    out = pair(x)
    s = sample_probes(pair, x, inputs_per_token=4, outputs_per_input=3, generator=torch.Generator().manual_seed(0))
    triples = list(zip(s.token_row.tolist(), s.in_latent.tolist(), s.out_latent.tolist()))
    assert len(set(triples)) == len(triples)  # no function twice
    for t in range(30):
        mine = s.token_row == t
        n_in = int((out.in_vals[t] > 0).sum())
        assert len(set(s.in_latent[mine].tolist())) == min(4, n_in)
        active_out = set(out.out_idx[t][out.out_vals[t] > 0].tolist())
        for j in set(s.in_latent[mine].tolist()):
            outs = s.out_latent[mine & (s.in_latent == j)].tolist()
            assert len(outs) == min(3, len(active_out)) and set(outs) <= active_out
    # default: one j per token, every active output of it
    s = sample_probes(pair, x[:5], generator=torch.Generator().manual_seed(0))
    for t in range(5):
        mine = s.token_row == t
        assert len(set(s.in_latent[mine].tolist())) == 1
        assert sorted(s.out_latent[mine].tolist()) == sorted(out.out_idx[t][out.out_vals[t] > 0].tolist())
    assert s.step.tolist() == [1.0] * len(s)  # no input_scale: the paper's step


def test_sampled_latents_are_active_and_jacobian_matches_the_probe_slope():
    pair = _pair(seed=1)
    samples = _samples(pair, seed=1)
    assert bool((samples.s_x > 0).all()) and bool((samples.s_y > 0).all())
    eps = 1e-6
    t = torch.stack([samples.s_x - eps, samples.s_x + eps], 1)
    f = output_latent_at(pair, samples.x, samples.in_latent, samples.s_x, t, samples.out_latent)
    slope = (f[:, 1] - f[:, 0]) / (2 * eps)
    # away from TopK switches the probe's local slope is the closed-form J_ij
    np.testing.assert_allclose(slope.numpy(), samples.jac.numpy(), rtol=1e-5, atol=1e-7)


def test_probe_second_derivative_matches_direct_stencil():
    pair = _pair(seed=2)
    samples = _samples(pair, T=10, ppt=2, seed=2)
    assert not bool((samples.step == 1).all())
    r = probe_batch(pair, samples)
    xs = sweep_grid(samples.s_x, step=samples.step)
    h = (FD_STEP * samples.step)[:, None]
    c = torch.maximum(xs, h)
    f = lambda z: output_latent_at(pair, samples.x, samples.in_latent, samples.s_x, z, samples.out_latent)  # noqa: E731
    direct = (f(c + h) - 2 * f(c) + f(c - h)) / h**2
    np.testing.assert_allclose(r.d2[:, 1].numpy(), direct.abs().mean(1).numpy(), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(r.d2[:, 2].numpy(), direct.abs().amax(1).numpy(), rtol=1e-9, atol=1e-6)


def _rescaled(pair: JSAEPair, p: float, q: float) -> JSAEPair:
    """An equivalent pair: input latents x p and output latents x q (encoder rows x, decoder rows /)."""
    other = copy.deepcopy(pair)
    with torch.no_grad():
        for sae, c in ((other.sae_in, p), (other.sae_out, q)):
            sae.W_enc.mul_(c)
            sae.b_enc.mul_(c)
            sae.W_dec.div_(c)
    return other


SHARES = [f"probe/{n}_frac" for n in (*LABELS, *SPLITS)]


def _probe(pair, tolerance="relative"):
    x = _x(400, 9)
    batches = [x[i : i + 100] for i in range(0, 400, 100)]
    return run_probes(pair, batches, n_sweeps=200, seed=3, n_curves=10, samples_per_forward=128,
                      progress=False, tolerance=tolerance)


def test_rescaling_the_latents_changes_no_probe_share():
    pair = _pair(seed=8)
    metrics, arrays = _probe(pair)
    assert metrics["probe/n_sweeps"] == 200
    assert set(arrays["label"].tolist()) == {0, 1, 2} == set(arrays["split"].tolist())  # every outcome occurs
    for p, q in ((0.1, 0.1), (0.1, 10.0), (10.0, 0.1), (10.0, 10.0)):
        scaled = _rescaled(pair, p, q)
        m2, a2 = _probe(scaled)
        for k in (*SHARES, "probe/n_samples", "probe/n_sweeps"):
            assert m2[k] == metrics[k], (p, q, k)
        assert np.array_equal(a2["label"], arrays["label"]) and np.array_equal(a2["split"], arrays["split"])
        # the equivalent pair: s_x -> p s_x, s_y -> q s_y, J -> (q / p) J, delta in J's units
        np.testing.assert_allclose(a2["s_x"], p * arrays["s_x"], rtol=1e-9)
        np.testing.assert_allclose(a2["s_y"], q * arrays["s_y"], rtol=1e-9)
        np.testing.assert_allclose(a2["jac"], q / p * arrays["jac"], rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(a2["delta"], q / p * arrays["delta"], rtol=1e-7, atol=1e-12)
        for k in ("probe/d2_rel_mean_abs_median", "probe/d2_rel_max_abs_median"):
            assert m2[k] == pytest.approx(metrics[k], rel=1e-6)


def test_the_absolute_rule_is_not_scale_free():
    # the check above can fail: the paper's absolute rule on the same equivalent pairs changes its shares
    pair = _pair(seed=8)
    base, _ = _probe(pair, "absolute")
    moved = [_probe(_rescaled(pair, p, q), "absolute")[0] for p, q in ((0.1, 0.1), (10.0, 10.0))]
    assert any(m[k] != base[k] for m in moved for k in SHARES)


def test_run_probes_metrics_and_curves():
    pair = _pair(seed=3)
    x = _x(200, 3)
    batches = [x[i : i + 50] for i in range(0, 200, 50)]
    kw = dict(n_sweeps=120, inputs_per_token=2, n_curves=20, samples_per_forward=32, progress=False)
    metrics, arrays = run_probes(pair, batches, **kw)
    assert metrics["probe/n_sweeps"] == 120
    n = int(metrics["probe/n_samples"])
    assert n > 120 and arrays["label"].shape == (n,)
    pairs = set(zip(arrays["token_row"].tolist(), arrays["in_latent"].tolist()))
    assert len(pairs) == 120  # distinct (token, j)
    fr = [metrics[f"probe/{n}_frac"] for n in ("linear", "jumprelu", "other")]
    assert sum(fr) == pytest.approx(1.0)
    sp = [metrics[f"probe/{n}_frac"] for n in ("on_line", "cluster", "outlier")]
    assert sum(sp) == pytest.approx(1.0)
    assert metrics["probe/linear_frac"] == pytest.approx(float((arrays["label"] == 0).mean()))
    assert "probe/d2_mean_abs_median" not in metrics  # in units: only under the absolute rule
    assert arrays["curve_ys"].shape == (20, 100)
    idx = arrays["curve_index"]
    assert len(set(zip(arrays["token_row"][idx].tolist(), arrays["in_latent"][idx].tolist()))) == 20
    # stored curves are the curves of the samples they index
    again, ys, _, _ = probe_loop(pair, _rebuild(pair, batches, arrays, idx=idx[:3]))
    assert again.tolist() == arrays["label"][idx[:3]].tolist()
    np.testing.assert_allclose(ys, arrays["curve_ys"][:3], rtol=1e-5, atol=1e-6)
    # determinism
    m2, a2 = run_probes(pair, batches, **kw)
    assert m2 == metrics and np.array_equal(a2["label"], arrays["label"])
    # a cap on the functions
    m3, _ = run_probes(pair, batches, **{**kw, "n_samples": 50})
    assert m3["probe/n_samples"] == 50 and m3["probe/n_sweeps"] < 50
    # the absolute rule: step 1, the paper's units for the second derivative as well
    m4, a4 = run_probes(pair, batches, **{**kw, "tolerance": "absolute"})
    assert set(a4["step"].tolist()) == {1.0} and "probe/d2_mean_abs_median" in m4


def _rebuild(pair, batches, arrays, idx):
    x = torch.cat(batches)
    rows = torch.as_tensor(arrays["token_row"][idx])
    col = lambda name: torch.as_tensor(arrays[name][idx])  # noqa: E731
    return ProbeSamples(
        x=x[rows],
        in_latent=col("in_latent"),
        out_latent=col("out_latent"),
        s_x=col("s_x"),
        s_y=col("s_y"),
        jac=col("jac"),
        token_row=rows,
        step=col("step"),
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_sweeps": 0}, "n_sweeps"),
        ({"n_samples": 0}, "n_samples"),
        ({"inputs_per_token": 0}, "inputs_per_token"),
        ({"outputs_per_input": 0}, "outputs_per_input"),
        ({"n_curves": -1}, "n_curves"),
        ({"output": "dense"}, "output"),
        ({"n_points": 2}, "n_points"),
        ({"tolerance": "loose"}, "tolerance"),
        ({"tolerance": "absolute", "input_scale": torch.ones(48)}, "input_scale"),
    ],
)
def test_run_probes_bad_input(kw, match):
    pair = _pair()
    with pytest.raises(ValueError, match=match):
        run_probes(pair, [torch.randn(4, 12, dtype=torch.float64)], progress=False, **kw)


def test_probes_refuse_an_unfolded_pair():
    pair = _pair()
    pair.set_activation_scales(2.0, 1.0)
    with pytest.raises(ValueError, match="activation scales"):
        run_probes(pair, [_x(10, 0)], progress=False)


def test_bad_tolerances():
    xs, ys = _u()[None], _u()[None]
    for kw in ({"tolerance": "loose"}, {"tol": 0.0}, {"tol": float("inf")}):
        with pytest.raises(ValueError, match="tol"):
            classify_curves(xs, ys, **kw)
        with pytest.raises(ValueError, match="tol"):
            classify_one(xs[0], ys[0], **kw)


def test_run_probes_empty_evaluation_set():
    with pytest.raises(ValueError, match="no probe samples"):
        run_probes(_pair(), [], n_sweeps=5, progress=False, tolerance="absolute")
    with pytest.raises(ValueError, match="no tokens"):
        run_probes(_pair(), [], n_sweeps=5, progress=False)


def test_random_blocks_cover_rows_once_and_rows_are_recorded():
    class Cache:
        n_tokens = 300
        data = torch.arange(300, dtype=torch.float64)[:, None].repeat(1, 12)

        def read(self, a, b):
            return self.data[a:b]

    got = list(random_blocks(Cache(), seed=0, block=64, batch=128))
    rows = torch.cat([r for _, r in got])
    assert sorted(rows.tolist()) == list(range(300))
    assert all(torch.equal(x[:, 0].long(), r) for x, r in got)
    pair = _pair(seed=5)
    noisy = [(x * 0.01 + torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), r)
             for x, r in got]
    metrics, arrays = run_probes(pair, noisy, n_sweeps=40, progress=False)
    assert set(arrays["token_row"].tolist()) <= set(rows[: len(got[0][1])].tolist())
