"""Rescaling J cannot change a verdict: every scale-free number of claims.csv and summary.csv stays put.

A synthetic study is evaluated by jsae's own accumulators from the same Jacobians multiplied by a
constant — per site uniformly, and with different constants for the trained and the re-initialised
model (their J differ ~100x in raw units) — and the summary is rebuilt. Only the columns labelled as
the paper's absolute τ may move, and they do.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_figures import write_synthetic_study

from jsae.report import summary
from jsae.report.claims import Claim, bootstrap, decide
from jsae.report.results import load_results

LAMS = (0.0, 1.0)
#: claims.csv columns that must not depend on J's units
SCALE_FREE = ["value", "lo", "hi", "threshold", "margin", "n"]
#: summary.csv columns that must not depend on J's units (the others in units of J scale with it);
#: jac/frac_above_headline_tau of a re-init pair reads the re-init's J at the TRAINED model's tau*, so it
#: is unit-free only while both models share one constant (hence the own-tau* column)
SCALE_FREE_PAIR = ["jac/frac_above_own_headline_tau", "jac/effective_share"]


def run_study(root, scale) -> tuple[pd.DataFrame, pd.DataFrame]:
    files = write_synthetic_study(root, jacobians=True, scale=scale, lams=LAMS, reinit_lams=LAMS)
    results = load_results(files)
    summary.write_summary(results, root / "summary.md", root / "summary.csv", 1.0, out_claims=root / "claims.csv")
    return pd.read_csv(root / "claims.csv"), pd.read_csv(root / "summary.csv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("unit"), 1.0)


# powers of ten shift every |J| by whole decades of the 32-per-decade tau grid: equal up to float rounding;
# any other constant moves |J| between grid points, where the shares are interpolated (docs/metrics.md)
@pytest.mark.parametrize(("scale", "rtol"), [
    (0.1, 1e-5),
    (10.0, 1e-5),
    ({"trained": 0.1, "reinit": 10.0}, 1e-5),
    ({"trained": 10.0, "reinit": 0.1}, 1e-5),
    ({"trained": 3.7, "reinit": 0.023}, 1e-2),
])
def test_rescaling_J_changes_no_verdict_and_no_scale_free_number(tmp_path, reference, scale, rtol):
    ref_claims, ref_pairs = reference
    claims, pairs = run_study(tmp_path, scale)
    assert claims["key"].tolist() == ref_claims["key"].tolist() and len(claims) == 9
    assert claims["verdict"].tolist() == ref_claims["verdict"].tolist()
    for col in SCALE_FREE:
        np.testing.assert_allclose(claims[col].to_numpy(float), ref_claims[col].to_numpy(float), rtol=rtol,
                                   err_msg=col)
    for col in SCALE_FREE_PAIR:
        np.testing.assert_allclose(pairs[col].to_numpy(float), ref_pairs[col].to_numpy(float), rtol=rtol,
                                   atol=1e-12, err_msg=col)
    rows = pairs["control"] == "trained" if isinstance(scale, dict) else pairs["control"].notna()
    np.testing.assert_allclose(pairs.loc[rows, "jac/frac_above_headline_tau"].to_numpy(float),
                               ref_pairs.loc[rows, "jac/frac_above_headline_tau"].to_numpy(float), rtol=rtol)
    # tau* is in units of J: it moves with the trained model's constant, exactly as J does
    c_trained = scale["trained"] if isinstance(scale, dict) else scale
    tau = claims.set_index("key")["headline_tau"]
    ref_tau = ref_claims.set_index("key")["headline_tau"]
    assert tau["sparsity_ratio"] == pytest.approx(c_trained * ref_tau["sparsity_ratio"], rel=rtol)
    # the paper's absolute tau (labelled as such) is what changes: it measures units, not sparsity
    paper = claims["paper_tau_value"].to_numpy(float)
    ref_paper = ref_claims["paper_tau_value"].to_numpy(float)
    both = np.isfinite(paper) & np.isfinite(ref_paper)
    assert both.any() and not np.allclose(paper[both], ref_paper[both], rtol=0.05)


def test_every_claim_of_the_synthetic_study_has_an_interval(reference):
    claims, _ = reference
    assert claims[["value", "lo", "hi"]].notna().all().all()
    assert (claims["lo"] <= claims["value"]).all() and (claims["value"] <= claims["hi"]).all()
    assert set(claims["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert set(claims["n_unit"]) == {"tokens", "CE tokens", "sweeps"}


# --------------------------------------------------------------------------------------------------
# The verdict rule on hand-built intervals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi", "direction", "threshold", "margin", "holds"), [
    (2.5, 3.1, ">", 2.0, 0.0, True),     # clears a bar with no margin
    (1.9, 3.1, ">", 2.0, 0.0, None),     # straddles it
    (0.5, 1.8, ">", 2.0, 0.0, False),    # wholly on the wrong side
    (1.05, 1.09, ">", 1.0, 0.1, None),   # above the threshold but inside the margin: too small to call
    (1.11, 1.3, ">", 1.0, 0.1, True),
    (0.70, 0.85, "<", 1.0, 0.1, True),
    (0.85, 0.95, "<", 1.0, 0.1, None),   # reaches past 1 - 0.1
    (0.95, 1.02, "<", 1.0, 0.1, None),   # straddles the threshold itself
    (1.01, 1.2, "<", 1.0, 0.1, False),
    (-0.04, -0.01, ">", -0.05, 0.0, True),
    (-0.07, -0.06, ">", -0.05, 0.0, False),
])
def test_verdict_rule_on_hand_built_intervals(lo, hi, direction, threshold, margin, holds):
    value = (lo + hi) / 2
    got, why = decide(value, lo, hi, direction, threshold, margin)
    assert got is holds, why
    c = Claim("m L0", "k", "claim", "paper", "ours", "stat", direction, threshold, margin, value, lo, hi)
    assert c.verdict == {True: "holds", False: "does not hold", None: "inconclusive"}[holds]


def test_no_value_or_no_interval_is_inconclusive_with_the_reason():
    assert decide(float("nan"), 0.1, 0.2, ">", 0.0, 0.0) == (None, "not measured")
    assert decide(3.0, float("nan"), float("nan"), ">", 2.0, 0.0) == (None, "no interval")  # even far above
    c = Claim("m L0", "k", "claim", "paper", "ours", "stat", ">", -0.05, 0.0, float("nan"),
              note="CE score refused: zero-ablation costs < floor")
    assert c.verdict == "inconclusive" and c.why.startswith("CE score refused")
    with pytest.raises(ValueError, match="direction"):
        decide(1.0, 0.0, 2.0, ">=", 1.0, 0.0)
    with pytest.raises(ValueError, match="margin"):
        decide(1.0, 0.0, 2.0, ">", 1.0, -0.1)


def _rescale_token_share(root, lam: float, factor: float, noise: float, seed: int = 0) -> None:
    """Overwrite the trained λ pair's per-token effective share with λ = 0's × factor × (1 + noise)."""
    d = root / "eval" / "tiny-neox" / "L2" / "trained"
    base = dict(np.load(d / "lam0" / "jacobian_stats.npz"))
    path = d / f"lam{lam:g}" / "jacobian_stats.npz"
    arrays = dict(np.load(path))
    rng = np.random.default_rng(seed)
    e0 = base["token_effective_share"].astype(np.float64)
    arrays["token_effective_share"] = (e0 * factor * (1 + rng.normal(0, noise, len(e0)))).astype(np.float32)
    np.savez(path, **arrays)


@pytest.mark.parametrize(("factor", "noise", "verdict"), [
    (0.5, 0.05, "holds"),            # halves: the whole interval is far below 1 − 0.1
    (0.9, 0.05, "inconclusive"),     # a 10% fall: the interval straddles the margin's bar 0.9
    (0.96, 0.02, "inconclusive"),    # a real but small fall: inside the margin
    (1.3, 0.05, "does not hold"),    # grows
])
def test_effective_share_claim_end_to_end(tmp_path, factor, noise, verdict):
    files = write_synthetic_study(tmp_path, jacobians=True, lams=LAMS, reinit_lams=LAMS, probes=False)
    _rescale_token_share(tmp_path, 1.0, factor, noise)
    claims = {c.key: c for c in summary.paper_claims(load_results(files), 1.0)}
    c = claims["effective_share_ratio"]
    assert c.value == pytest.approx(factor, rel=0.01)
    assert c.lo < c.value < c.hi and c.hi - c.lo < 0.05
    assert c.verdict == verdict, c.why


# --------------------------------------------------------------------------------------------------
# The bootstrap against known answers
# --------------------------------------------------------------------------------------------------


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, 4000)
    value, lo, hi = bootstrap(lambda ws: ws[0] @ x / ws[0].sum(1), [len(x)])
    se = x.std() / math.sqrt(len(x))
    assert value == pytest.approx(x.mean(), rel=1e-12)
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)
    again = bootstrap(lambda ws: ws[0] @ x / ws[0].sum(1), [len(x)])
    assert again == (value, lo, hi)  # seeded


def test_paired_bootstrap_sees_the_shared_token_noise():
    """Two pairs measured on the same tokens share most of their per-token variation: pairing removes it."""
    rng = np.random.default_rng(2)
    common = rng.normal(0, 1.0, 2000)
    a, b = common + rng.normal(0, 0.05, 2000), common + 0.1 + rng.normal(0, 0.05, 2000)

    def diff(ws):
        return ws[-1] @ b / ws[-1].sum(1) - ws[0] @ a / ws[0].sum(1)

    _, plo, phi = bootstrap(diff, [2000, 2000], paired=True)
    _, ulo, uhi = bootstrap(diff, [2000, 2000], paired=False)
    se_paired = math.sqrt(2 * 0.05**2 / 2000)
    assert phi - plo == pytest.approx(2 * 1.96 * se_paired, rel=0.15)
    assert uhi - ulo > 10 * (phi - plo)
    assert plo > 0.09 and phi < 0.11
    with pytest.raises(ValueError, match="same rows"):
        bootstrap(diff, [2000, 1999], paired=True)
    with pytest.raises(ValueError, match="sizes"):
        bootstrap(diff, [], paired=False)


def test_a_statistic_that_is_mostly_undefined_gets_no_interval():
    x = np.zeros(50)
    x[0] = 1.0  # most resamples miss the only non-zero row: 0 / 0
    value, lo, hi = bootstrap(lambda ws: (ws[0] @ x) / (ws[0] @ x), [50])
    assert value == 1.0 and math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------------------------------
# End to end through training: the same MLP in other units
# --------------------------------------------------------------------------------------------------

D, D_MLP, N_TOKENS_E2E = 16, 64, 4096


def _mlp_in_units(c_x: float, c_y: float):
    """A GELU MLP and its activations in other units: x' = c_x x, y' = c_y y — the same function
    (W_in / c_x, W_out c_y, b_out c_y), as a model whose residual stream is scaled differently."""
    from jsae.nn.mlp import PlainMLP, activation_from

    g = torch.Generator().manual_seed(0)
    W_in = torch.randn(D_MLP, D, generator=g, dtype=torch.float64) / D**0.5
    b_in = 0.1 * torch.randn(D_MLP, generator=g, dtype=torch.float64)
    W_out = torch.randn(D, D_MLP, generator=g, dtype=torch.float64) / D_MLP**0.5
    b_out = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
    # inputs: a few sparse directions with heavy-tailed magnitudes, plus noise
    dirs = torch.randn(48, D, generator=g)
    on = torch.rand(N_TOKENS_E2E, 48, generator=g) < 0.08
    x = (on * torch.rand(N_TOKENS_E2E, 48, generator=g) * 3) @ dirs + 0.05 * torch.randn(N_TOKENS_E2E, D, generator=g)
    mlp = PlainMLP(W_in / c_x, b_in, W_out * c_y, b_out * c_y, activation_from(torch.nn.GELU()))
    return mlp, (x * c_x).float()


def _study_in_units(root, c_x: float, c_y: float):
    """Train λ = 0 and λ = 1 on the MLP in these units, evaluate and probe both, and write the claims."""
    from jsae.eval.evaluate import evaluate_pair
    from jsae.eval.inputs import write_pair_outputs
    from jsae.eval.probes import run_probes, write_probes
    from jsae.export import load_pair
    from jsae.train.config import TrainConfig
    from jsae.train.run import run_training
    from jsae.train.sources import InMemorySource

    mlp, x = _mlp_in_units(c_x, c_y)
    files = []
    for lam in (0.0, 1.0):
        run = root / "runs" / f"lam{lam:g}"
        config = TrainConfig(lam=lam, n_tokens=256 * 60, batch_size=256, k=4, expansion=4, lr=3e-3,
                             dtype="float64", normalize_activations="expected_norm")
        run_training(mlp, InMemorySource(x), config, run, model="units", layer=0, progress=False, device="cpu",
                     mlflow_uri=None)
        pair = load_pair(run, mlp).double()
        cache = _TensorCache(x.double())
        ev = evaluate_pair(pair, cache, batch_size=512, progress=False)
        identity = {"model": "units", "layer": 0, "control": "trained", "lam": lam, "seed": 0, "k": 4,
                    "n_latents": 64}
        out = root / "eval" / "units" / "L0" / "trained" / f"lam{lam:g}" / "seed0"
        write_pair_outputs(out / "evaluation.json", "jacobian_stats.npz", ev.metrics, ev.arrays, identity, {})
        metrics, arrays = run_probes(pair, [x[:2048].double()], n_sweeps=300, seed=0, progress=False,
                                     n_curves=0)
        write_probes(out / "probes.json", metrics, arrays, identity, {})
        files += [out / "evaluation.json", out / "probes.json"]
    results = load_results(files)
    summary.write_summary(results, root / "summary.md", root / "summary.csv", 1.0, out_claims=root / "claims.csv")
    return pd.read_csv(root / "claims.csv"), pd.read_csv(root / "summary.csv")


class _TensorCache:
    """The slice of the activation-cache API evaluation reads, over a tensor (no LM: no CE)."""

    def __init__(self, x):
        self.x, self.n_tokens, self.d_model, self.attrs = x, x.shape[0], x.shape[1], {}

    def read(self, start, stop):
        return self.x[start:stop]


@pytest.fixture(scope="module")
def units_reference(tmp_path_factory):
    return _study_in_units(tmp_path_factory.mktemp("units"), 1.0, 1.0)


# powers of two scale the float32 inputs without rounding: the runs agree to float64 rounding; 0.1 and 10 round
@pytest.mark.parametrize(("c_x", "c_y", "rtol"), [(0.25, 32.0, 1e-6), (8.0, 0.125, 1e-6), (0.1, 10.0, 1e-3)])
def test_training_on_the_same_mlp_in_other_units_changes_no_verdict(tmp_path, units_reference, c_x, c_y, rtol):
    """End-to-end rescaling: activations ×c_x in, ×c_y out, the SAEs retrained from scratch — every claim's
    verdict and every scale-free number is unchanged."""
    ref_claims, ref_pairs = units_reference
    claims, pairs = _study_in_units(tmp_path, c_x, c_y)
    assert claims["verdict"].tolist() == ref_claims["verdict"].tolist()
    finite = np.isfinite(ref_claims["value"].to_numpy(float))
    assert finite.sum() >= 5  # sparsity, effective share, L1/L∞, probe claims (no CE without an LM)
    for col in ("value", "lo", "hi"):
        np.testing.assert_allclose(claims[col].to_numpy(float), ref_claims[col].to_numpy(float), rtol=rtol,
                                   err_msg=col)
    for col in ("jac/effective_share", "jac/frac_above_own_headline_tau", "in/explained_variance",
                "out/explained_variance", "probe/linear_frac", "probe/on_line_frac"):
        np.testing.assert_allclose(pairs[col].to_numpy(float), ref_pairs[col].to_numpy(float), rtol=rtol,
                                   atol=1e-9, err_msg=col)
    # expected_norm trains on unit-norm activations and folds the scales into the exported SAEs, so the
    # latents — and J between them — are the same numbers in any units
    np.testing.assert_allclose(pairs["jac/l1"].to_numpy(float), ref_pairs["jac/l1"].to_numpy(float), rtol=rtol)
