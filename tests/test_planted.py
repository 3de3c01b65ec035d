"""The planted ground truth (jsae.data.planted) and its recovery metrics (jsae.eval.recovery), against oracles:
autograd for the Jacobian, the planted formula for the features, the true dictionaries for a perfect pair,
random dictionaries for chance, closed forms for the chance cosine, and hand-computed precision / recall /
F1 / AUC / confusion numbers."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jsae.data.planted import (
    KINDS,
    OTHER_KAPPA,
    PlantedConfig,
    build_planted,
    coherence,
    load_planted,
    oracle_pair,
    planted_summary,
    save_planted,
)
from jsae.eval import recovery as R
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE

ACTS = ("relu", "gelu", "gated")
N_TOKENS = 4096


@pytest.fixture(scope="module", params=ACTS)
def planted(request):
    """A default-sized planted model (d 32, 64 inputs, 32 outputs, fan-in 2) and tokens from it."""
    P = build_planted(PlantedConfig(activation=request.param))
    s_x, x = P.sample(N_TOKENS, torch.Generator().manual_seed(1))
    return P, s_x, x


def interfered_formula(P, s_x, G=None):
    """The planted formula evaluated at the units' readouts a = G s_x (interference included), with exact ReLUs:
    what the MLP computes when phi is a ReLU (written here from the docstring, not from the builder)."""
    e = P.edges
    a = (s_x @ (P.G if G is None else G))[:, e.in_feature]
    u = torch.relu(a - e.threshold)
    kappa = OTHER_KAPPA * P.config.scale
    if P.config.activation == "gated":
        curved = u * u / (2 * kappa)
    else:  # interpolant of u^2 / (2 kappa) at u = 0, kappa, 2 kappa, 3 kappa, linear beyond
        curved = 0.5 * u + torch.relu(u - kappa) + torch.relu(u - 2 * kappa) + torch.relu(u - 3 * kappa)
    f = torch.where(e.kind == 0, a, torch.where(e.kind == 1, u, curved))
    return torch.zeros(s_x.shape[0], P.n_y, dtype=torch.float64).index_add_(1, e.out_feature, f * e.weight)


# --------------------------------------------------------------------------------------------------
# The planted model
# --------------------------------------------------------------------------------------------------


def test_kinds_are_the_probe_labels():
    from jsae.eval.probes import LABELS

    assert KINDS == LABELS


def test_build_is_deterministic_and_edges_are_as_configured():
    cfg = PlantedConfig(n_x=48, n_y=24, fan_in=3, kind_shares=(0.5, 0.25, 0.25), seed=3)
    P, Q = build_planted(cfg), build_planted(cfg)
    assert torch.equal(P.D_x, Q.D_x) and torch.equal(P.mlp.W_out, Q.mlp.W_out)
    assert not torch.equal(P.D_x, build_planted(PlantedConfig(n_x=48, n_y=24, fan_in=3, seed=4)).D_x)
    e = P.edges
    assert len(e) == 24 * 3
    for i in range(24):  # fan_in distinct inputs per output
        assert len(set(e.in_feature[e.out_feature == i].tolist())) == 3
    assert torch.bincount(e.kind, minlength=3).tolist() == [36, 18, 18]  # exact shares of 72 edges
    assert torch.bincount(e.in_feature, minlength=48).max() <= 2  # inputs spread evenly (72 edges / 48 inputs)
    lo, hi = cfg.weight_range
    assert bool(((e.weight >= lo) & (e.weight <= hi)).all())
    assert bool((e.threshold[e.kind == 0] == 0).all()) and bool((e.threshold[e.kind > 0] > 0).all())
    assert P.edge_mask().sum() == len(e)
    assert planted_summary(P)["edges"] == {"linear": 36, "jumprelu": 18, "other": 18}


def test_dictionaries_are_unit_norm_and_incoherent():
    P = build_planted(PlantedConfig())
    for D in (P.D_x, P.D_y):
        torch.testing.assert_close(D.norm(dim=0), torch.ones(D.shape[1], dtype=torch.float64))
    assert P.coherence_y < 1e-12  # n_y <= d: orthonormal
    random_mu = coherence(build_planted(PlantedConfig(frame_steps=0)).D_x)
    welch = math.sqrt((64 - 32) / (32 * 63))
    assert welch < P.coherence_x < 0.2 < random_mu  # the frame steps bring it near the Welch bound
    assert P.coherence_x == pytest.approx(coherence(P.D_x))


def test_sample_fires_with_probability_p_and_embeds():
    P = build_planted(PlantedConfig(p=0.1, magnitude="exponential", scale=2.0))
    s, x = P.sample(20_000, torch.Generator().manual_seed(0))
    on = s > 0
    assert float(on.double().mean()) == pytest.approx(0.1, abs=0.003)
    assert float(s[on].mean()) == pytest.approx(2.0, rel=0.03)  # exponential mean = scale
    torch.testing.assert_close(x, s @ P.D_x.T)
    s2, _ = P.sample(20_000, torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)
    u, _ = build_planted(PlantedConfig()).sample(5000, torch.Generator().manual_seed(0))
    assert float(u[u > 0].min()) >= 0.5 and float(u.max()) <= 1.5  # uniform on [scale / 2, 3 scale / 2]


def test_mlp_output_is_the_true_output_features_embedded(planted):
    P, s_x, x = planted
    y = P.mlp(x)
    s_y = P.true_s_y(s_x)
    torch.testing.assert_close(y, s_y @ P.D_y.T, rtol=0, atol=1e-12)  # exact: W_out = D_y V
    torch.testing.assert_close(y @ torch.linalg.pinv(P.D_y).T, s_y, rtol=0, atol=1e-12)  # n_y <= d


#: max_z |phi(z) - relu(z)| (GELU, SiLU) and max_z |z (silu(z) - relu(z))| (test_activation_gap_constants)
GELU_GAP, SILU_GAP, SILU_Z_GAP = 0.170, 0.2785, 0.483


def test_true_output_is_the_planted_formula_up_to_the_activation(planted):
    """relu: exactly the formula at the interfered readouts. GELU / SiLU: each unit phi(g u) / g misses relu(u) by
    at most GAP / g (the gated curved unit phi(g u) u / (2 kappa g) by SILU_Z_GAP / (2 kappa g^2)); linear units
    are exact. Per output the gap is within the sum of its units' bounds (measured max 0.018 GELU, 0.032 gated, against
    largest bounds 0.050 and 0.033)."""
    P, s_x, _ = planted
    act = P.config.activation
    gap = (P.true_s_y(s_x) - interfered_formula(P, s_x)).abs()
    unit_kind = P.edges.kind[P.unit_edge]
    c = torch.full((P.n_hidden,), {"relu": 0.0, "gelu": GELU_GAP, "gated": SILU_GAP}[act], dtype=torch.float64)
    c[unit_kind == 0] = 0.0
    if act == "gated":
        c[unit_kind == 2] = SILU_Z_GAP / P.config.gain  # |V| already holds 1 / (2 kappa g)
    bound = (P.V.abs() * c).sum(1)
    assert bool((gap <= bound + 1e-12).all()), float((gap - bound).max())
    if act == "relu":
        assert float(gap.max()) < 1e-12
    no_interference = interfered_formula(P, s_x, torch.eye(P.n_x, dtype=torch.float64))
    torch.testing.assert_close(P.ideal_s_y(s_x), no_interference, rtol=0, atol=1e-12)


def test_true_jacobian_equals_autograd(planted):
    """J = d s_y / d s_x of s_x -> D_y^+ MLP(D_x s_x), by torch.func.jacrev, on sample tokens."""
    P, s_x, _ = planted
    tokens = s_x[:12]
    pinv = torch.linalg.pinv(P.D_y)

    def composite(s):
        return pinv @ P.mlp((P.D_x @ s)[None])[0]

    ref = torch.stack([torch.func.jacrev(composite)(s) for s in tokens])
    torch.testing.assert_close(P.true_jacobian(tokens), ref, rtol=1e-10, atol=1e-12)


def test_jacobian_is_zero_off_the_edges_up_to_interference(planted):
    """J = J_read G exactly, J_read is zero off the planted edges, so off-edge |J_il| <= mu_x sum_j |J_read,ij|.
    On these tokens the largest off-edge |J| is 0.58 (relu / gelu) and 0.55 (gated) with mu_x = 0.156; on-edge
    |J| is w f' with w in [0.75, 1.25] and f' up to 3.5 (the curved kind)."""
    P, s_x, _ = planted
    s = s_x[:500]
    J, J_read = P.true_jacobian(s), P.readout_jacobian(s)
    off = ~P.edge_mask()
    assert float(J_read[:, off].abs().max()) == 0.0
    torch.testing.assert_close(J, J_read @ P.G, rtol=0, atol=1e-12)
    bound = P.offedge_bound(s)[:, :, None].expand_as(J)[:, off]
    assert bool((J[:, off].abs() <= bound + 1e-12).all())
    assert float(J[:, off].abs().max()) <= P.coherence_x * float(J_read.abs().sum(-1).max()) + 1e-12


@pytest.mark.parametrize("act", ACTS)
def test_without_superposition_the_jacobian_is_exactly_sparse(act):
    P = build_planted(PlantedConfig(d=32, n_x=24, n_y=16, activation=act))
    s, _ = P.sample(400, torch.Generator().manual_seed(0))
    assert P.coherence_x < 1e-12
    J = P.true_jacobian(s)
    assert float(J[:, ~P.edge_mask()].abs().max()) < 1e-12
    if act == "relu":
        torch.testing.assert_close(P.true_s_y(s), P.ideal_s_y(s), rtol=0, atol=1e-12)


def test_save_and_load_round_trip(tmp_path):
    for act in ("gelu", "gated"):
        P = build_planted(PlantedConfig(activation=act, n_x=40, seed=2))
        out = save_planted(P, tmp_path / act)
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "edges.json", "mlp.safetensors",
                                                         "truth.safetensors"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp directory left
        Q = load_planted(out)
        assert Q.config == P.config and type(Q.mlp) is type(P.mlp)
        for name in ("D_x", "D_y", "V", "unit_edge"):
            assert torch.equal(getattr(P, name), getattr(Q, name))
        for f in ("out_feature", "in_feature", "kind", "weight", "threshold"):
            assert torch.equal(getattr(P.edges, f), getattr(Q.edges, f))
        s, x = P.sample(64, torch.Generator().manual_seed(0))
        assert torch.equal(P.mlp(x), Q.mlp(x)) and torch.equal(P.true_jacobian(s), Q.true_jacobian(s))
    save_planted(build_planted(PlantedConfig(activation="relu")), tmp_path / "gelu")  # replaces atomically
    assert load_planted(tmp_path / "gelu").config.activation == "relu"


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a planted model directory"):
        load_planted(tmp_path / "missing")
    save_planted(build_planted(PlantedConfig()), tmp_path / "p")
    (tmp_path / "p" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="is not a jsae-planted v1 config") as err:
        load_planted(tmp_path / "p")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"d": 0}, "d=0 is invalid"),
    ({"n_x": 2.5}, "n_x=2.5 is invalid"),
    ({"fan_in": 70}, "fan_in=70 is invalid; expected at most n_x=64"),
    ({"p": 0.0}, r"p=0.0 is invalid; expected a firing probability in \(0, 1\]"),
    ({"p": 1.5}, "p=1.5 is invalid"),
    ({"magnitude": "normal"}, "magnitude='normal' is invalid; expected one of uniform, exponential"),
    ({"activation": "tanh"}, "activation='tanh' is invalid; expected one of relu, gelu, gated"),
    ({"scale": -1.0}, "scale=-1.0 is invalid"),
    ({"gain": float("inf")}, "gain=inf is invalid"),
    ({"threshold": -0.1}, "threshold=-0.1 is invalid"),
    ({"kind_shares": (0.5, 0.5, 0.5)}, "kind_shares=.* summing to 1"),
    ({"kind_shares": (0.5, 0.5)}, "kind_shares=.*expected 3"),
    ({"weight_range": (1.0, 0.5)}, r"weight_range=\(1.0, 0.5\) is invalid"),
    ({"frame_steps": -1}, "frame_steps=-1 is invalid; expected an integer >= 0"),
    ({"seed": True}, "seed=True is invalid"),
])
def test_bad_config_is_a_one_line_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        PlantedConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_other_bad_inputs_are_one_line_errors():
    P = build_planted(PlantedConfig())
    cases = [
        (lambda: PlantedConfig.from_dict({"d": 8, "width": 3}), "unknown planted config keys width"),
        (lambda: P.sample(0, torch.Generator()), "n_tokens=0 is invalid"),
        (lambda: P.true_jacobian(torch.zeros(3, 5, dtype=torch.float64)), r"s_x has shape \(3, 5\); expected"),
        (lambda: R.precision_recall_f1(np.ones(4), np.ones(4), [0.5]), "expected both positives and negatives"),
        (lambda: R.roc_auc(np.ones(3), np.array([1, 0])), "expected one truth value per score"),
        (lambda: R.roc_auc(np.array([1.0, np.nan]), np.array([1, 0])), "non-finite"),
        (lambda: R.edge_recovery(np.ones((2, 2)), np.eye(2, dtype=bool), rel_taus=[1.5]), "rel_taus="),
        (lambda: R.match_latents(np.eye(2), np.eye(2), floor=2), "floor=2 is invalid"),
        (lambda: R.feature_recovery(np.eye(3), np.eye(2)), "expected \\[n_latents, d\\] and \\[d, n_features\\]"),
        (lambda: R.random_max_cosine(1, 4), "d=1 is invalid"),
        (lambda: R.LatentPairScores(2, 2).mean_abs(0), "min_count=0 is invalid"),
        (lambda: R.feature_pair_scores(np.zeros((2, 3)), np.zeros(2), np.zeros(2), 1, 1), "latent_scores has shape"),
        (lambda: R.kind_agreement(np.zeros(2), np.zeros(2), np.array([0, 3]), np.zeros(1), np.zeros(1),
                                  np.zeros((1, 1))), "label holds 0..3"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            fn()
        assert "\n" not in str(err.value), match


# --------------------------------------------------------------------------------------------------
# Recovery metrics on hand-built cases
# --------------------------------------------------------------------------------------------------

HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
HAND_TRUTH = np.array([1, 0, 1, 1, 0, 0], dtype=bool)


def test_ranking_metrics_on_a_hand_built_case():
    # ROC: positive > negative in 3 + 2 + 2 of the 9 pairs
    assert R.roc_auc(HAND_SCORES, HAND_TRUTH) == pytest.approx(7 / 9)
    # AP: recall steps of 1/3 at precision 1, 2/3, 3/4
    assert R.average_precision(HAND_SCORES, HAND_TRUTH) == pytest.approx(29 / 36)
    g = R.precision_recall_f1(HAND_SCORES, HAND_TRUTH, [0.65, 0.55, 0.95])
    np.testing.assert_allclose(g["precision"], [2 / 3, 3 / 4, np.nan])
    np.testing.assert_allclose(g["recall"], [2 / 3, 1, 0])
    np.testing.assert_allclose(g["f1"], [2 / 3, 6 / 7, 0])
    assert R.best_f1(HAND_SCORES, HAND_TRUTH) == pytest.approx(
        {"f1": 6 / 7, "precision": 0.75, "recall": 1.0, "threshold": 0.6})
    # ties count half in ROC and enter together in AP
    tied, t2 = np.array([1.0, 1.0, 0.0, 0.0]), np.array([1, 0, 1, 0], dtype=bool)
    assert R.roc_auc(tied, t2) == 0.5 and R.average_precision(tied, t2) == 0.5
    np.testing.assert_allclose(R.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_ranking_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        s = np.round(rng.random(n), 1)  # many ties
        t = rng.random(n) < 0.3
        t[:2] = [True, False]
        pos, neg = s[t], s[~t]
        brute_auc = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
        assert R.roc_auc(s, t) == pytest.approx(brute_auc, abs=1e-12)
        ap, prev_recall = 0.0, 0.0
        for thr in sorted(set(s), reverse=True):
            pred = s >= thr
            recall = (pred & t).sum() / t.sum()
            ap += (recall - prev_recall) * (pred & t).sum() / pred.sum()
            prev_recall = recall
        assert R.average_precision(s, t) == pytest.approx(ap, abs=1e-12)
        f1s = [2 * (s >= thr)[t].sum() / ((s >= thr).sum() + t.sum()) for thr in set(s)]
        assert R.best_f1(s, t)["f1"] == pytest.approx(max(f1s), abs=1e-12)


def test_edge_recovery_is_scale_free():
    rng = np.random.default_rng(1)
    truth = rng.random((6, 9)) < 0.2
    scores = np.abs(rng.normal(size=(6, 9))) + 2 * truth
    a, arr_a = R.edge_recovery(scores, truth)
    b, arr_b = R.edge_recovery(7.3 * scores, truth)
    assert a.keys() == b.keys() and set(a) >= {R.EDGE_ROC_AUC_KEY, R.EDGE_PR_AUC_KEY, R.edge_f1_key(0.3)}
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    np.testing.assert_allclose(arr_b["edge_tau"], 7.3 * arr_a["edge_tau"])


def test_feature_recovery_and_matching_on_hand_built_dictionaries():
    D = np.eye(3)  # true features e0, e1, e2 in R^3
    W = np.array([[1, 1, 0], [0, 0, 2], [0.4, 0, math.sqrt(1 - 0.16)], [-1, 0, 0.0]])
    fr = R.feature_recovery(W, D)
    best = [1 / math.sqrt(2), 1 / math.sqrt(2), 1.0]  # e0 and e1 only by the diagonal row; -e0 does not count
    np.testing.assert_allclose(fr["best_cosine"], best)
    assert fr["mean_max_cosine"] == pytest.approx(np.mean(best)) and fr["frac_recovered"] == pytest.approx(1 / 3)
    assert fr["best_latent"].tolist() == [0, 0, 1]
    match, cos = R.match_latents(W, D, floor=0.5)
    assert match.tolist() == [0, 2, 2, -1]  # row 0: tie between e0 and e1 -> the lower index; row 3: below the floor
    np.testing.assert_allclose(cos, [1 / math.sqrt(2), 1, math.sqrt(0.84), 0])


def test_random_max_cosine_against_closed_forms_and_monte_carlo():
    assert R.random_max_cosine(3, 3) == pytest.approx(0.5, abs=1e-6)  # d = 3: cos ~ U[-1, 1], E max = (n-1)/(n+1)
    assert R.random_max_cosine(3, 9) == pytest.approx(0.8, abs=1e-6)
    assert R.random_max_cosine(2, 2) == pytest.approx(4 / math.pi**2, abs=1e-6)  # arcsine law
    assert abs(R.random_max_cosine(7, 1)) < 1e-9  # symmetric
    v = np.random.default_rng(0).standard_normal((4000, 40, 16))
    mc = (v[..., 0] / np.linalg.norm(v, axis=-1)).max(1)
    assert R.random_max_cosine(16, 40) == pytest.approx(mc.mean(), abs=4 * mc.std() / math.sqrt(4000))


def test_latent_pair_scores_streaming_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    T, k_out, k_in, n_out, n_in = 50, 3, 4, 6, 7
    J = torch.randn(T, k_out, k_in, generator=g, dtype=torch.float64)
    out_idx = torch.stack([torch.randperm(n_out, generator=g)[:k_out] for _ in range(T)])
    in_idx = torch.stack([torch.randperm(n_in, generator=g)[:k_in] for _ in range(T)])
    out_vals = torch.rand(T, k_out, generator=g, dtype=torch.float64) * (torch.rand(T, k_out, generator=g) > 0.3)
    in_vals = torch.rand(T, k_in, generator=g, dtype=torch.float64) * (torch.rand(T, k_in, generator=g) > 0.3)
    s, c = np.zeros((n_out, n_in)), np.zeros((n_out, n_in))
    for t in range(T):
        for a in range(k_out):
            for b in range(k_in):
                if out_vals[t, a] > 0 and in_vals[t, b] > 0:
                    s[out_idx[t, a], in_idx[t, b]] += abs(float(J[t, a, b]))
                    c[out_idx[t, a], in_idx[t, b]] += 1
    for m in (1, 2):
        expected = np.where(c >= m, s / np.maximum(c, 1), 0)
        np.testing.assert_allclose(R.latent_pair_scores(J, in_idx, out_idx, in_vals, out_vals, n_out, n_in, m),
                                   expected, rtol=1e-12)
    acc = R.LatentPairScores(n_out, n_in)
    for lo in range(0, T, 16):
        sl = slice(lo, lo + 16)
        acc.update(J[sl], in_idx[sl], out_idx[sl], in_vals[sl], out_vals[sl])
    np.testing.assert_allclose(acc.mean_abs(), np.where(c >= 1, s / np.maximum(c, 1), 0), rtol=1e-12)
    assert acc.n_tokens == T


def test_feature_pair_scores_take_the_max_over_matched_latent_pairs():
    S = np.array([[0.1, 0.2, 0.3, 0.4],
                  [0.5, 0.6, 0.7, 0.8],
                  [0.9, 1.0, 1.1, 1.2]])
    out_match = np.array([1, 1, -1])  # output latents 0 and 1 split feature 1; latent 2 unmatched
    in_match = np.array([0, -1, 2, 0])  # input latents 0 and 3 split feature 0
    got = R.feature_pair_scores(S, out_match, in_match, n_y=2, n_x=3)
    expected = np.array([[0.0, 0.0, 0.0],  # output feature 0: no latent
                         [0.8, 0.0, 0.7]])  # max(0.1, 0.4, 0.5, 0.8); feature 1: no latent; max(0.3, 0.7)
    np.testing.assert_allclose(got, expected)


def test_kind_agreement_on_a_hand_built_confusion():
    kinds = np.array([[0, -1, 1],
                      [-1, 2, 0]])  # edges (0<-0 linear), (0<-2 jumprelu), (1<-1 other), (1<-2 linear)
    out_match = np.array([0, 1, -1])
    in_match = np.array([0, 1, 2, 2])
    #                 (out latent, in latent, probe label)
    probes = np.array([(0, 0, 0), (0, 0, 1), (0, 2, 1), (0, 3, 2),  # edge 0<-0 linear x2; 0<-2 jumprelu x2
                       (1, 1, 2), (1, 1, 0), (1, 2, 0), (1, 3, 1),  # 1<-1 other x2; 1<-2 linear x2
                       (0, 1, 0), (2, 0, 0)])  # off the edges (0<-1) and an unmatched latent: left out
    confusion, m = R.kind_agreement(probes[:, 0], probes[:, 1], probes[:, 2], out_match, in_match, kinds)
    # rows planted kind, columns probe label: linear edges labelled 0, 1, 0, 1; jumprelu 1, 2; other 2, 0
    assert confusion.tolist() == [[2, 2, 0], [0, 1, 1], [1, 0, 1]]
    assert m[R.KIND_AGREEMENT_KEY] == pytest.approx(4 / 8) and m[R.KIND_N_KEY] == 8
    _, empty = R.kind_agreement(np.array([0]), np.array([1]), np.array([0]), out_match, in_match, kinds)
    assert math.isnan(empty[R.KIND_AGREEMENT_KEY]) and empty[R.KIND_N_KEY] == 0


# --------------------------------------------------------------------------------------------------
# True dictionaries recover everything; random ones score chance
# --------------------------------------------------------------------------------------------------


def _k(P, s_x):
    """k = the most features active on any token (inputs: s_x > 0; outputs: the ideal s_y > 0)."""
    return int((s_x > 0).sum(1).max()), int((P.ideal_s_y(s_x) > 0).sum(1).max())


def test_pair_of_true_dictionaries_recovers_features_and_edges(planted):
    """Measured on all three MLPs: feature recovery 1, ROC AUC 1, average precision 1, best F1 1 (asserted: > 0.99,
    > 0.95, > 0.95); the pair's J is exactly the true feature-space Jacobian at the active features."""
    P, s_x, x = planted
    k_in, k_out = _k(P, s_x)
    pair = oracle_pair(P, k_in=k_in, k_out=k_out, bias_in=0.25, bias_out=0.25)
    out = pair(x[:300])
    true = P.true_jacobian(s_x[:300])
    gathered = true[torch.arange(300)[:, None, None], out.out_idx[:, :, None], out.in_idx[:, None, :]]
    gathered = gathered * (out.out_vals > 0)[:, :, None]  # the pair zeroes the rows of inactive output latents
    torch.testing.assert_close(out.jacobian, gathered, rtol=1e-10, atol=1e-12)
    m, arrays = R.pair_recovery(pair, P, [x[:2048], x[2048:]])
    for side in ("in", "out"):
        assert m[R.recovery_key(side, "mean_max_cosine")] == pytest.approx(1.0, abs=1e-12)
        assert m[R.recovery_key(side, "frac_recovered")] == 1.0 and m[R.recovery_key(side, "matched_frac")] == 1.0
    assert m[R.EDGE_ROC_AUC_KEY] > 0.99
    assert m[R.EDGE_PR_AUC_KEY] > 0.95 and m[R.EDGE_BEST_F1_KEY] > 0.95
    assert arrays["in_match"].tolist() == list(range(P.n_x))


def _random_pair(P, k_in, k_out, seed):
    """SAEs with isotropic random unit decoder rows, encoders equal to them (as at initialisation)."""
    g = torch.Generator().manual_seed(seed)
    saes = []
    for n, k in ((P.n_x, k_in), (P.n_y, k_out)):
        sae = TopKSAE(P.d, n, k, dtype=torch.float64)
        W = torch.randn(n, P.d, generator=g, dtype=torch.float64)
        with torch.no_grad():
            sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec)
        saes.append(sae)
    return JSAEPair(*saes, P.mlp)


def test_random_dictionaries_score_chance():
    """Four random pairs, every latent matched (floor -1): mean max cosine within 0.02 of the chance level
    (measured 0.402 vs 0.404 inputs, 0.372 vs 0.360 outputs), ROC AUC 0.5 +- 0.05 on average (measured 0.491,
    0.519, 0.523, 0.504) and average precision near the edge base rate 64 / 2048 = 0.031 (measured 0.058)."""
    P = build_planted(PlantedConfig())
    s_x, x = P.sample(2048, torch.Generator().manual_seed(2))
    k_in, k_out = _k(P, s_x)
    runs = [R.pair_recovery(_random_pair(P, k_in, k_out, seed), P, [x], floor=-1.0)[0] for seed in range(4)]
    for side, n in (("in", P.n_x), ("out", P.n_y)):
        chance = R.random_max_cosine(P.d, n)
        assert runs[0][R.recovery_key(side, "chance_max_cosine")] == chance
        assert np.mean([r[R.recovery_key(side, "mean_max_cosine")] for r in runs]) == pytest.approx(chance, abs=0.02)
    aucs = [r[R.EDGE_ROC_AUC_KEY] for r in runs]
    assert abs(np.mean(aucs) - 0.5) < 0.05 and max(abs(a - 0.5) for a in aucs) < 0.1, aucs
    assert np.mean([r[R.EDGE_PR_AUC_KEY] for r in runs]) < 3 * 64 / 2048


# --------------------------------------------------------------------------------------------------
# A real JSAE pair trained on the planted model (reported, checked only for sanity)
# --------------------------------------------------------------------------------------------------


def test_trained_pairs_recover_the_planted_computation(tmp_path):
    """run_training on the planted GELU MLP (expansion 2, k 4, 400 steps of 256 tokens, float64) at lambda = 0
    and 1; the numbers are printed (pytest -s) and in docs/metrics.md, and asserted only to beat chance."""
    from jsae.eval.probes import run_probes
    from jsae.export import load_pair
    from jsae.train.config import TrainConfig
    from jsae.train.run import run_training
    from jsae.train.sources import InMemorySource

    P = build_planted(PlantedConfig(activation="gelu"))
    _, x_train = P.sample(16384, torch.Generator().manual_seed(1))
    _, x_eval = P.sample(4096, torch.Generator().manual_seed(2))
    for lam in (0.0, 1.0):
        t0 = time.perf_counter()
        config = TrainConfig(lam=lam, n_tokens=256 * 400, batch_size=256, k=4, n_latents=2 * P.n_x,
                             n_latents_out=2 * P.n_y, lr=3e-3, dtype="float64", normalize_activations="expected_norm")
        run = tmp_path / f"lam{lam:g}"
        run_training(P.mlp, InMemorySource(x_train), config, run, model="planted", layer=0, progress=False,
                     device="cpu", mlflow_uri=None, log_every=10**6, checkpoint_every=10**6)
        pair = load_pair(run, P.mlp).double()
        m, arrays = R.pair_recovery(pair, P, [x_eval])
        _, probes = run_probes(pair, [x_eval], n_sweeps=300, seed=0, progress=False, n_curves=0,
                               second_derivative=False)
        confusion, km = R.kind_agreement(probes["out_latent"], probes["in_latent"], probes["label"],
                                         arrays["out_match"], arrays["in_match"],
                                         P.edges.kind_matrix(P.n_y, P.n_x).numpy())
        m.update(km)
        shown = {k.removeprefix("recovery/"): round(v, 3) for k, v in m.items() if "f1_at" not in k}
        print(f"\nplanted gelu, trained lambda={lam:g} ({time.perf_counter() - t0:.1f} s): {shown}\n"
              f"kind confusion (rows planted {'/'.join(KINDS)}, columns probe label):\n{confusion}")
        for side in ("in", "out"):
            assert m[R.recovery_key(side, "mean_max_cosine")] > m[R.recovery_key(side, "chance_max_cosine")] + 0.2
        assert m[R.EDGE_ROC_AUC_KEY] > 0.7


def test_probes_on_the_true_dictionaries_report_kind_agreement():
    """The probes' labels on the true-dictionary pair, reported (measured agreement ~0.70 for all three MLPs:
    linear edges are often labelled JumpReLU because the output latent leaves the TopK near t = 0)."""
    from jsae.eval.probes import run_probes

    for act in ACTS:
        P = build_planted(PlantedConfig(activation=act))
        s_x, x = P.sample(2048, torch.Generator().manual_seed(2))
        k_in, k_out = _k(P, s_x)
        pair = oracle_pair(P, k_in=k_in, k_out=k_out, bias_in=0.25, bias_out=0.25)
        _, a = run_probes(pair, [x], n_sweeps=300, seed=0, progress=False, n_curves=0, second_derivative=False)
        confusion, m = R.kind_agreement(a["out_latent"], a["in_latent"], a["label"], np.arange(P.n_y),
                                        np.arange(P.n_x), P.edges.kind_matrix(P.n_y, P.n_x).numpy())
        print(f"\nprobes on the true dictionaries ({act}): agreement {m[R.KIND_AGREEMENT_KEY]:.3f} over "
              f"{m[R.KIND_N_KEY]:.0f} functions; confusion:\n{confusion}")
        assert m[R.KIND_N_KEY] > 100
        assert confusion[1:, 0].sum() <= 0.05 * confusion.sum()  # a thresholded edge is (almost) never "linear"


def test_activation_gap_constants():
    """The constants behind the activation bounds: max |GELU - relu|, max |SiLU - relu|, max |z (SiLU - relu)|."""
    z = torch.linspace(-30, 30, 600_001, dtype=torch.float64)
    assert float((F.gelu(z) - torch.relu(z)).abs().max()) <= GELU_GAP
    assert float((F.silu(z) - torch.relu(z)).abs().max()) <= SILU_GAP
    assert float((z * (F.silu(z) - torch.relu(z))).abs().max()) <= SILU_Z_GAP


# --------------------------------------------------------------------------------------------------
# What the workflow uses: the model directory as a SPEC, and the per-split data streams the cache stores
# --------------------------------------------------------------------------------------------------


def test_split_streams_are_seeded_per_split_and_chunk_as_documented():
    from jsae.data.planted import SAMPLE_CHUNK, sample_split, split_seed

    assert [split_seed(s, sp) for s in (0, 3) for sp in ("train", "validation")] == [0, 1, 6, 7]
    for bad, match in (((0, "test"), "split='test' is invalid"), ((-1, "train"), "seed=-1 is invalid")):
        with pytest.raises(ValueError, match=re.escape(match)):
            split_seed(*bad)
    P = build_planted(PlantedConfig(frame_steps=0))
    n = SAMPLE_CHUNK + 100
    parts = list(sample_split(P, n, 3, "validation"))
    assert [x.shape[0] for _, x in parts] == [SAMPLE_CHUNK, 100]
    g = torch.Generator().manual_seed(7)  # = split_seed(3, "validation"); successive sample() calls
    expected = [P.sample(SAMPLE_CHUNK, g), P.sample(100, g)]
    for (s, x), (s_ref, x_ref) in zip(parts, expected):
        assert torch.equal(s, s_ref) and torch.equal(x, x_ref)
    train = torch.cat([x for _, x in sample_split(P, 500, 3, "train")])
    assert not torch.equal(train, torch.cat([x for _, x in parts])[:500])


def test_a_saved_model_directory_is_recognised_as_a_planted_spec(tmp_path):
    from jsae.data.planted import is_planted_dir

    P = build_planted(PlantedConfig(frame_steps=0))
    save_planted(P, tmp_path / "m")
    assert is_planted_dir(tmp_path / "m") and is_planted_dir(str(tmp_path / "m"))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt_neox"}')  # a transformers directory
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    for other in (tmp_path / "hf", tmp_path / "broken", tmp_path / "absent", None, "gpt2"):
        assert not is_planted_dir(other)
