"""Training-seed replicates: the interval that combines seeds and tokens (coverage by simulation, t quantiles
against scipy), claims measured per seed and combined, and the result loader's seed level."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_figures import synthetic_jacobian, write_synthetic_study

from jsae.report import summary
from jsae.report.claims import combine_seeds, paper_claims, seed_interval, t_quantile_975
from jsae.report.figures import render
from jsae.report.results import base_seed, load_results, pick_pair


def test_t_quantiles_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 8, 10, 20, 30, 60, 120):
        exact = float(stats.t.ppf(0.975, df))
        assert t_quantile_975(df) == pytest.approx(exact, abs=2e-3), df
    # between tabulated df: the next smaller df's value, never below the exact one (conservative)
    for df in (11, 13, 17, 50, 200, 1000):
        assert float(stats.t.ppf(0.975, df)) <= t_quantile_975(df) <= float(stats.t.ppf(0.975, df - 1)) + 0.05
    with pytest.raises(ValueError, match="df=0"):
        t_quantile_975(0)


def _coverage(n_seeds: int, sd_seed: float, sd_token: float, trials: int = 4000) -> float:
    """How often the combined interval covers the true value, simulated: each seed's value is the truth plus
    its own training error plus the token error all seeds share (same evaluation tokens); each seed's token
    interval is its value ± 1.96 sd_token."""
    rng = np.random.default_rng(n_seeds * 1000 + int(100 * sd_seed) + int(1000 * sd_token))
    hits = 0
    for _ in range(trials):
        shared = rng.normal(0, sd_token)
        v = 1.0 + rng.normal(0, sd_seed, n_seeds) + shared + rng.normal(0, 1e-12, n_seeds)
        _, lo, hi = seed_interval(v, v - 1.96 * sd_token, v + 1.96 * sd_token)
        hits += lo <= 1.0 <= hi
    return hits / trials


@pytest.mark.parametrize("n_seeds", [2, 3, 5])
def test_seed_interval_covers_training_variation(n_seeds):
    # training noise only: the t interval, exactly 95% (4000 trials: ± 0.7% is 2 standard errors)
    assert _coverage(n_seeds, sd_seed=0.2, sd_token=0.0) == pytest.approx(0.95, abs=0.012)
    # token noise only (seeds agree): the token interval, 95%
    assert _coverage(n_seeds, sd_seed=0.0, sd_token=0.1) == pytest.approx(0.95, abs=0.012)
    # both: at least 95%, and not absurdly wide
    assert 0.945 <= _coverage(n_seeds, sd_seed=0.1, sd_token=0.1) <= 0.999


def test_seed_interval_needs_two_seeds():
    with pytest.raises(ValueError, match="expected >= 2 seeds"):
        seed_interval([1.0], [0.9], [1.1])


def test_loader_reads_the_seed_level_and_the_figures_show_the_base_seed(tmp_path):
    for seed in (0, 1, 2):
        write_synthetic_study(tmp_path, jacobians=True, seed=seed, lams=(0.0, 1.0))
    results = load_results(sorted(tmp_path.rglob("*.json")))
    assert sorted({r.seed for r in results}) == [0, 1, 2] and len(results) == 3 * 4
    assert {r.seed for r in base_seed(results)} == {0} and len(base_seed(results)) == 4
    site = ("tiny-neox", 2)
    assert pick_pair(results, site, "trained", 1.0).seed == 0
    assert pick_pair(results, site, "trained", 1.0, seed=2).seed == 2
    assert pick_pair(results, site, "trained", 1.0, seed=7) is None
    assert {p.name for p in render(["fig2"], results, tmp_path / "fig", 1.0)} == {"fig2.pdf", "fig2.png"}


def _share_above(J: np.ndarray, tau: float) -> float:
    return float((np.abs(J) > tau).mean())


def _median_nonzero(J: np.ndarray) -> float:
    a = np.abs(J).reshape(-1)
    return float(np.median(a[a > 0]))


def test_claims_are_measured_per_seed_and_combined(tmp_path):
    """Three seeds that agree: the value is the mean of each seed's own ratio (brute force, numpy) and the
    verdict holds; summary.csv has one row per seed; claims.csv records the seeds."""
    for seed in (0, 1, 2):
        write_synthetic_study(tmp_path, jacobians=True, seed=seed, lams=(0.0, 1.0))
    results = load_results(sorted(tmp_path.rglob("*.json")))
    claims = {c.key: c for c in paper_claims(results, 1.0)}
    c = claims["sparsity_ratio"]
    per_seed = []
    for seed in (0, 1, 2):
        J0 = synthetic_jacobian(2, "trained", 0.0, seed=seed)
        J1 = synthetic_jacobian(2, "trained", 1.0, seed=seed)
        tau = _median_nonzero(J0)
        per_seed.append(_share_above(J0, tau) / _share_above(J1, tau))
    assert c.value == pytest.approx(np.mean(per_seed), rel=0.02)
    assert c.n_seeds == 3 and c.seed_values.count("seed ") == 3 and "3 training seeds" in c.interval
    assert c.lo < c.value < c.hi and c.verdict == "holds"
    for claim in claims.values():
        assert claim.n_seeds == 3 or math.isnan(claim.value), claim.key

    md, csv, out_claims = tmp_path / "s.md", tmp_path / "s.csv", tmp_path / "c.csv"
    table, _ = summary.write_summary(results, md, csv, 1.0, out_claims=out_claims)
    assert len(table) == 12 and sorted(table["seed"].unique()) == [0, 1, 2]
    frame = pd.read_csv(out_claims)
    assert (frame["n_seeds"] == 3).all() and "× 3 seeds" in md.read_text()


def test_seeds_that_disagree_make_a_claim_inconclusive(tmp_path):
    """Seed 0 alone clears the bar (ratio well above 2); with two more seeds on which lambda barely works the
    interval across seeds reaches below the bar: inconclusive, not "holds" on one seed's luck."""
    write_synthetic_study(tmp_path, jacobians=True, seed=0, lams=(0.0, 1.0), lam_gain=3.0)
    alone = {c.key: c for c in paper_claims(load_results(sorted(tmp_path.rglob("*.json"))), 1.0)}["sparsity_ratio"]
    assert alone.verdict == "holds" and alone.n_seeds == 1 and "one training seed" in alone.interval
    for seed, gain in ((1, 0.15), (2, 1.0)):
        write_synthetic_study(tmp_path, jacobians=True, seed=seed, lams=(0.0, 1.0), lam_gain=gain)
    c = {c.key: c for c in paper_claims(load_results(sorted(tmp_path.rglob("*.json"))), 1.0)}["sparsity_ratio"]
    assert c.n_seeds == 3 and c.lo < 2.0 < alone.lo
    assert c.verdict == "inconclusive", (c.value, c.lo, c.hi, c.seed_values)


def test_combine_seeds_leaves_out_a_seed_without_a_value():
    from jsae.report.claims import Claim

    def claim(v, lo, hi):
        return Claim("s", "k", "c", "p", "o", "st", ">", 1.0, 0.0, value=v, lo=lo, hi=hi, interval="token bootstrap")

    c = combine_seeds({0: claim(3.0, 2.9, 3.1), 1: claim(float("nan"), float("nan"), float("nan")),
                       2: claim(3.2, 3.1, 3.3)})
    assert c.n_seeds == 2 and c.value == pytest.approx(3.1) and "left out" in c.interval and "seed 1" in c.interval
    one = combine_seeds({0: claim(3.0, 2.9, 3.1)})
    assert (one.value, one.lo, one.hi) == (3.0, 2.9, 3.1) and one.verdict == "holds"
