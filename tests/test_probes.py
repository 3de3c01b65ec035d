"""Linearity probes: the classifier on synthetic functions, the batched probe against a per-sample loop,
the probe's slope against the closed-form Jacobian, the second-derivative stencil."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import build_hf_mlp

from jsae.eval.probes import (
    FD_STEP,
    classify_curves,
    classify_line_split,
    classify_one,
    output_latent_at,
    probe_batch,
    probe_loop,
    run_probes,
    sample_probes,
    second_derivative_stats,
    sweep_grid,
)
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE


def _grid(hi: float = 5.0, n: int = 100) -> torch.Tensor:
    return torch.linspace(0, hi, n, dtype=torch.float64)


def _synthetic() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    x = _grid()
    relu = torch.relu
    curves = [
        (0.3 * x + 1.0, 0),  # linear
        (torch.full_like(x, 2.0), 0),  # constant counts as linear
        (0.3 * x + 0.004 * torch.sin(7 * x), 0),  # within the 1e-2 tolerance
        (torch.where(x > 2, 0.5 * x + 0.2, torch.zeros_like(x)), 1),  # JumpReLU: jump at 2
        (torch.where(x < 3, 1.0 - 0.2 * x, torch.zeros_like(x)), 1),  # zero run at the right end
        (2.0 * relu(x - 1.0), 1),  # ReLU (a JumpReLU without a jump)
        (0.1 * x**2, 2),  # curved
        (torch.sin(x), 2),  # curved
        (
            torch.where((x > 1) & (x < 2), torch.zeros_like(x), torch.where(x > 3, torch.zeros_like(x), 0.5 * x + 1)),
            2,
        ),  # two zero runs
        (torch.where(x < 4.99, torch.zeros_like(x), torch.ones_like(x)), 2),  # only 1 point outside the zeros
        (torch.where(x > 2, 0.1 * x**2, torch.zeros_like(x)), 2),  # zero run, curved elsewhere
        (0.3 * x + 0.02 * torch.sin(7 * x), 2),  # wiggle above the tolerance
    ]
    ys = torch.stack([c for c, _ in curves])
    return x.expand_as(ys), ys, [lab for _, lab in curves]


def test_classifier_on_synthetic_functions():
    xs, ys, expected = _synthetic()
    assert classify_curves(xs, ys).tolist() == expected
    assert [classify_one(xs[i], ys[i]) for i in range(len(expected))] == expected


def test_classifier_batched_equals_reference_on_random_curves():
    g = torch.Generator().manual_seed(0)
    S = 300
    xs = sweep_grid(torch.rand(S, dtype=torch.float64, generator=g) * 8)
    slope = torch.randn(S, 1, dtype=torch.float64, generator=g)
    thr = torch.rand(S, 1, dtype=torch.float64, generator=g) * 6
    curv = (
        torch.randn(S, 1, dtype=torch.float64, generator=g) * torch.rand(S, 1, dtype=torch.float64, generator=g) * 0.003
    )
    ys = slope * xs + curv * xs**2
    ys = torch.where((xs < thr) & (torch.rand(S, 1, generator=g) < 0.5), torch.zeros_like(ys), ys)
    got = classify_curves(xs, ys).tolist()
    ref = [classify_one(xs[i], ys[i]) for i in range(S)]
    assert got == ref
    assert len(set(got)) == 3  # the random family exercises every label


def test_line_split():
    J = torch.tensor([0.5, 0.5, 0.001, 0.001, 0.3])
    delta = torch.tensor([-0.5, -0.52, -2.0, -0.3, 1.5])
    after = torch.tensor([1.0, 1.0, 0.0, 0.4, 2.0])
    # on the line (exact), on the line (within 0.01 + 0.1*0.5), cluster (switched off), outlier, outlier
    assert classify_line_split(delta, J, after).tolist() == [0, 0, 1, 2, 2]


def test_second_derivative_stats_of_quadratic():
    t = _grid()[None, :]
    c = torch.clamp(t, min=FD_STEP)
    f = lambda z: 0.7 * z**2 - z  # noqa: E731
    stats = second_derivative_stats(f(c - FD_STEP), f(c), f(c + FD_STEP))
    assert stats[0].tolist() == pytest.approx([1.4, 1.4, 1.4], rel=1e-6)


def _pair(seed: int = 0, n: int = 48, k: int = 6) -> JSAEPair:
    mlp = build_hf_mlp("neox-gelu", seed=seed)
    d = 12
    sae_in = TopKSAE(d, n, k, seed=seed + 1, dtype=torch.float64)
    sae_out = TopKSAE(d, n, k, seed=seed + 2, dtype=torch.float64)
    with torch.no_grad():
        sae_in.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        sae_out.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 3))
    return JSAEPair(sae_in, sae_out, mlp).double()


def _samples(pair: JSAEPair, T: int = 40, ppt: int = 3, seed: int = 0, opi: int | None = 2):
    x = torch.randn(T, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    return sample_probes(
        pair, x, inputs_per_token=ppt, outputs_per_input=opi, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("output,opi", [("topk", None), ("topk", 2), ("relu", None)])
def test_batched_probe_equals_per_sample_loop(output, opi):
    pair = _pair()
    samples = _samples(pair, opi=opi)
    assert len(samples) > 60
    r = probe_batch(pair, samples, output=output, max_elements=5000)  # several chunks
    labels, curves, delta = probe_loop(pair, samples, output=output)
    np.testing.assert_allclose(r.ys.numpy(), curves, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.delta.numpy(), delta, rtol=1e-9, atol=1e-12)
    assert r.label.tolist() == labels.tolist()
    if output == "topk":
        np.testing.assert_allclose(r.at_point.numpy(), samples.s_y.numpy(), rtol=1e-10, atol=1e-12)


def test_sampling_all_active_outputs_per_input():
    pair = _pair(seed=4)
    x = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    samples = sample_probes(
        pair, x, inputs_per_token=1, outputs_per_input=None, generator=torch.Generator().manual_seed(0)
    )
    out = pair(x)
    for t in range(5):
        mine = samples.token_row == t
        assert len(set(samples.in_latent[mine].tolist())) == 1  # one j per token
        assert sorted(samples.out_latent[mine].tolist()) == sorted(out.out_idx[t][out.out_vals[t] > 0].tolist())


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
    r = probe_batch(pair, samples)
    xs = sweep_grid(samples.s_x)
    c = xs.clamp_min(FD_STEP)
    f = lambda z: output_latent_at(pair, samples.x, samples.in_latent, samples.s_x, z, samples.out_latent)  # noqa: E731
    direct = second_derivative_stats(f(c - FD_STEP), f(c), f(c + FD_STEP))
    np.testing.assert_allclose(r.d2.numpy(), direct.numpy(), rtol=1e-9, atol=1e-6)


def test_run_probes_metrics_and_curves():
    pair = _pair(seed=3)
    x = torch.randn(200, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    batches = [x[i : i + 50] for i in range(0, 200, 50)]
    metrics, arrays = run_probes(
        pair, batches, n_samples=150, inputs_per_token=2, n_curves=20, samples_per_forward=32, progress=False
    )
    assert metrics["probe/n_samples"] == 150
    fr = [metrics[f"probe/{n}_frac"] for n in ("linear", "jumprelu", "other")]
    assert sum(fr) == pytest.approx(1.0)
    sp = [metrics[f"probe/{n}_frac"] for n in ("on_line", "cluster", "outlier")]
    assert sum(sp) == pytest.approx(1.0)
    assert arrays["label"].shape == (150,) and arrays["curve_ys"].shape == (20, 100)
    assert metrics["probe/linear_frac"] == pytest.approx(float((arrays["label"] == 0).mean()))
    # stored curves are the curves of the samples they index
    again, _, _ = probe_loop(pair, _rebuild(pair, batches, arrays, idx=arrays["curve_index"][:3]))
    assert again.tolist() == arrays["label"][arrays["curve_index"][:3]].tolist()
    # determinism
    m2, a2 = run_probes(
        pair, batches, n_samples=150, inputs_per_token=2, n_curves=20, samples_per_forward=32, progress=False
    )
    assert m2 == metrics and np.array_equal(a2["label"], arrays["label"])


def _rebuild(pair, batches, arrays, idx):
    from jsae.eval.probes import ProbeSamples

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
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"inputs_per_token": 0}, "inputs_per_token"),
        ({"outputs_per_input": 0}, "outputs_per_input"),
        ({"n_curves": -1}, "n_curves"),
        ({"output": "dense"}, "output"),
        ({"n_points": 2}, "n_points"),
    ],
)
def test_run_probes_bad_input(kw, match):
    pair = _pair()
    with pytest.raises(ValueError, match=match):
        run_probes(pair, [torch.randn(4, 12, dtype=torch.float64)], progress=False, **kw)


def test_run_probes_empty_evaluation_set():
    with pytest.raises(ValueError, match="no probe samples"):
        run_probes(_pair(), [], n_samples=5, progress=False)


def test_random_blocks_cover_rows_once_and_rows_are_recorded():
    from jsae.eval.probes import random_blocks

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
    metrics, arrays = run_probes(
        pair,
        [
            (x * 0.01 + torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), r)
            for x, r in got
        ],
        n_samples=40,
        progress=False,
    )
    assert set(arrays["token_row"].tolist()) <= set(rows[: len(got[0][1])].tolist())
