"""The positive-control claims on a planted ground truth (jsae.report.claims.planted_claims): hand-built
feature-pair scores with known answers — a pair whose scores are the truth, one whose scores are noise — through
the report's loader, the per-seed claims and their combination over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jsae.eval import recovery as R
from jsae.io import write_json
from jsae.report.claims import PLANTED_AUC_BAR, paper_claims, planted_claims
from jsae.report.results import PairResult, load_results

N_Y, N_X, FAN_IN = 32, 64, 2


def _truth(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.zeros((N_Y, N_X), dtype=bool)
    for i in range(N_Y):
        t[i, rng.choice(N_X, FAN_IN, replace=False)] = True
    return t


def _pair(tmp_path, lam: float, seed: int, scores: np.ndarray, truth: np.ndarray | None) -> PairResult:
    """A recovery.json + recovery_arrays.npz written as `jsae recovery` does, loaded by the report's loader."""
    d = tmp_path / f"lam{lam:g}" / f"seed{seed}"
    d.mkdir(parents=True)
    t = _truth() if truth is None else truth
    metrics = {R.EDGE_ROC_AUC_KEY: R.roc_auc(scores, t), R.EDGE_PR_AUC_KEY: R.average_precision(scores, t)}
    for side in ("in", "out"):
        metrics[R.recovery_key(side, "mean_max_cosine")] = 0.9
    arrays = {"feature_scores": scores}
    if truth is not None:
        arrays["edge_truth"] = truth
    np.savez(d / "recovery_arrays.npz", **arrays)
    write_json(d / "recovery.json", {"pair": {"model": "planted", "layer": 0, "control": "trained", "lam": lam,
                                              "seed": seed}, "metrics": metrics, "arrays": "recovery_arrays.npz"})
    (r,) = load_results([d / "recovery.json"])
    assert r.has_recovery and r.recovery_path is not None
    return r


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).random((N_Y, N_X))


def _good(truth: np.ndarray, seed: int, noise: float = 0.3) -> np.ndarray:
    return truth + noise * np.random.default_rng(200 + seed).random(truth.shape)


def _by_key(claims):
    return {c.key: c for c in claims}


def test_a_pair_that_scores_the_truth_passes_and_noise_fails(tmp_path):
    truth = _truth()
    base = _pair(tmp_path, 0.0, 0, _noise(0), truth)
    good = _pair(tmp_path, 1.0, 0, _good(truth, 0), truth)  # every planted edge above every other
    c = _by_key(planted_claims(base, good, 1.0, "planted L0"))
    auc, gain = c["planted_edge_auc"], c["planted_edge_ap_gain"]
    assert auc.value == pytest.approx(1.0) and auc.lo == pytest.approx(1.0) and auc.verdict == "holds"
    # noise's average precision is ~ the share of planted edges (2/64): the gain is ~0.97
    assert gain.value == pytest.approx(1 - R.average_precision(_noise(0), truth))
    assert gain.lo > 0.8 and gain.verdict == "holds"
    assert auc.n == N_Y and auc.n_unit == "output features"
    # swapped: noise as the JSAE loses on both
    c = _by_key(planted_claims(good, base, 1.0, "planted L0"))
    assert c["planted_edge_auc"].verdict == "does not hold" and c["planted_edge_auc"].hi < PLANTED_AUC_BAR
    assert abs(c["planted_edge_auc"].value - 0.5) < 0.1
    assert c["planted_edge_ap_gain"].verdict == "does not hold"


def test_equal_pairs_make_the_gain_inconclusive_with_an_interval_around_zero(tmp_path):
    truth = _truth()
    s = _good(truth, 0, noise=1.5)  # imperfect: rows differ, so the bootstrap has spread
    a, b = _pair(tmp_path, 0.0, 0, s, truth), _pair(tmp_path, 1.0, 0, s.copy(), truth)
    g = _by_key(planted_claims(a, b, 1.0, "planted L0"))["planted_edge_ap_gain"]
    assert g.value == 0.0 and g.lo == 0.0 and g.hi == 0.0  # paired: the same rows in both pairs
    assert g.verdict == "inconclusive"
    one = _pair(tmp_path / "x", 1.0, 0, _good(truth, 1, noise=1.5), truth)
    g = _by_key(planted_claims(a, one, 1.0, "planted L0"))["planted_edge_ap_gain"]
    assert g.lo < g.value < g.hi


def test_bootstrap_interval_covers_the_row_sampling_spread(tmp_path):
    """The interval against a brute-force reference: AUCs of fresh planted rows drawn from the same process
    (each output feature's scores independent) — the bootstrap's 95% interval should be about as wide."""
    rng = np.random.default_rng(7)

    def draw(n):
        t = np.zeros((n, N_X), dtype=bool)
        for i in range(n):
            t[i, rng.choice(N_X, FAN_IN, replace=False)] = True
        return t, t * rng.normal(1.0, 1.0, t.shape) + rng.random(t.shape)

    fresh = [R.roc_auc(*draw(N_Y)[::-1]) for _ in range(400)]
    width = np.quantile(fresh, 0.975) - np.quantile(fresh, 0.025)
    t, s = draw(N_Y)
    c = _by_key(planted_claims(_pair(tmp_path, 0.0, 0, s, t), _pair(tmp_path, 1.0, 0, s, t), 1.0, "p"))
    boot = c["planted_edge_auc"].hi - c["planted_edge_auc"].lo
    assert 0.5 * width < boot < 2.0 * width


def test_recovery_without_the_truth_array_says_why(tmp_path):
    truth = _truth()
    a = _pair(tmp_path, 0.0, 0, _noise(0), None)
    b = _pair(tmp_path, 1.0, 0, _good(truth, 0), None)
    c = _by_key(planted_claims(a, b, 1.0, "p"))
    assert c["planted_edge_auc"].verdict == "inconclusive" and "re-run" in c["planted_edge_auc"].why
    assert math.isfinite(c["planted_edge_auc"].value)


def test_claims_combine_over_seeds_on_a_planted_site(tmp_path):
    truth = _truth()
    rs = []
    for seed in range(3):
        rs += [_pair(tmp_path, 0.0, seed, _good(truth, seed, noise=2.0), truth),
               _pair(tmp_path, 1.0, seed, _good(truth, 10 + seed, noise=0.2), truth)]
    claims = _by_key(paper_claims(rs, 1.0))
    auc, gain = claims["planted_edge_auc"], claims["planted_edge_ap_gain"]
    assert auc.n_seeds == 3 and gain.n_seeds == 3
    assert auc.verdict == "holds" and gain.verdict == "holds"
    per_seed = [R.roc_auc(_good(truth, 10 + s, noise=0.2), truth) for s in range(3)]
    assert auc.value == pytest.approx(np.mean(per_seed))
    # the LM-only claims have no value on a planted site: present, and inconclusive for that reason
    assert claims["sweet_spot_ce_loss_score"].verdict == "inconclusive"
