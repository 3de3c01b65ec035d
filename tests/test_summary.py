"""Summary tables and the paper-claims table from synthetic evaluation outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_figures import (
    LAMS,
    REINIT_LAMS,
    synthetic_ce,
    synthetic_jacobian,
    synthetic_metrics,
    synthetic_probes,
    write_synthetic_study,
)

from jsae.report import summary
from jsae.report.claims import CLAIMS_COLUMNS
from jsae.report.results import load_results


def test_pair_table_has_one_row_per_pair_and_every_scalar(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    table = summary.pair_table(results)
    assert len(table) == len(LAMS) + len(REINIT_LAMS)
    assert list(table.columns[: len(summary.ID_COLUMNS)]) == summary.ID_COLUMNS
    for key in [*synthetic_metrics(0.0, "trained"), *synthetic_probes(0.0)]:
        assert key in table.columns, key
    row = table[(table.control == "trained") & (table.lam == 0.3)].iloc[0]
    m = synthetic_metrics(0.3, "trained")
    assert row["jac/l1"] == pytest.approx(m["jac/l1"])
    assert row["ce/score_mean"] == pytest.approx((m["in/ce_loss_score"] + m["out/ce_loss_score"]) / 2)
    assert row["k"] == 16 and row["n_latents"] == 1024


def _share_above(J: np.ndarray, tau: float) -> float:
    return float((np.abs(J) > tau).mean())


def _median_nonzero(J: np.ndarray) -> float:
    a = np.abs(J).reshape(-1).astype(np.float64)
    return float(np.median(a[a > 0]))


def _effective(J: np.ndarray) -> float:
    a = np.abs(J.reshape(len(J), -1).astype(np.float64))
    return float((a.sum(1) ** 2 / (a.shape[1] * (a**2).sum(1))).mean())


def test_claims_against_brute_force_on_the_jacobians(tmp_path):
    """Each claim's value from the raw synthetic J (numpy, no jsae code): medians, shares, norms, labels."""
    results = load_results(write_synthetic_study(tmp_path, jacobians=True))
    claims = {c.key: c for c in summary.paper_claims(results, 1.0)}
    J0, J1 = synthetic_jacobian(2, "trained", 0.0), synthetic_jacobian(2, "trained", 1.0)
    R0, R1 = synthetic_jacobian(2, "reinit", 0.0), synthetic_jacobian(2, "reinit", 1.0)
    # tau* from the log grid (32 per decade, interpolated) lies within one grid step (7.5%) of the exact median
    # (this J is bimodal and its median sits in the gap, where the grid's interpolation is coarsest) ...
    c = claims["sparsity_ratio"]
    tau = c.headline_tau
    assert tau == pytest.approx(_median_nonzero(J0), rel=0.075)
    # ... and the shares read at it match the exact counts above that tau within 1%
    assert c.value == pytest.approx(_share_above(J0, tau) / _share_above(J1, tau), rel=0.01)
    summary.write_summary(results, tmp_path / "s.md", tmp_path / "s.csv", 1.0)
    tau_r = float(pd.read_csv(tmp_path / "s.csv").query("control == 'reinit'")["jac/own_headline_tau"].iloc[0])
    assert tau_r == pytest.approx(_median_nonzero(R0), rel=0.075)
    assert c.paper_tau_value == pytest.approx(_share_above(J0, 0.01) / _share_above(J1, 0.01), rel=1e-6)
    assert c.verdict == "holds" and c.lo < c.value < c.hi and c.n == 400 and c.n_unit == "tokens"
    gain_t = _share_above(J0, tau) / _share_above(J1, tau)
    gain_r = _share_above(R0, tau_r) / _share_above(R1, tau_r)
    assert claims["gain_trained_over_reinit"].value == pytest.approx(gain_t / gain_r, rel=0.02)
    assert claims["trained_over_reinit"].value == pytest.approx(
        max(_effective(J0) / _effective(R0), _effective(J1) / _effective(R1)), rel=1e-5)
    assert claims["effective_share_ratio"].value == pytest.approx(_effective(J1) / _effective(J0), rel=1e-5)
    l1 = [np.abs(J).reshape(len(J), -1).astype(np.float64).sum(1).mean() for J in (J0, J1)]
    linf = [np.abs(J).reshape(len(J), -1).astype(np.float64).max(1).mean() for J in (J0, J1)]
    assert claims["l1_over_linf_ratio"].value == pytest.approx((l1[1] / l1[0]) / (linf[1] / linf[0]), rel=1e-5)
    ce0, ce1 = synthetic_ce("trained", 0.0), synthetic_ce("trained", 1.0)

    def score(ce):
        m = {k: v.astype(np.float64).mean() for k, v in ce.items()}
        return np.mean([(m[f"ce_token_zero_{s}"] - m[f"ce_token_recon_{s}"])
                        / (m[f"ce_token_zero_{s}"] - m["ce_token_clean"]) for s in ("in", "out")])

    assert claims["sweet_spot_ce_loss_score"].value == pytest.approx(score(ce1) - score(ce0), rel=1e-5)
    curves = np.load(tmp_path / "eval" / "tiny-neox" / "L2" / "trained" / "lam1" / "probe_curves.npz")
    assert claims["linear_frac"].value == pytest.approx((curves["label"] == 0).mean())
    assert claims["on_line_frac"].value == pytest.approx((curves["split"] == 0).mean())
    assert claims["linear_frac"].n == len(set(zip(curves["token_row"].tolist(), curves["in_latent"].tolist())))
    assert "97.7%" in claims["on_line_frac"].paper and "88% linear" in claims["linear_frac"].paper


def test_a_claim_that_fails_is_reported_as_does_not_hold(tmp_path):
    # lambda = 0.1 barely sparsifies: the whole interval of the lambda = 0 / lambda ratio is below 2
    results = load_results(write_synthetic_study(tmp_path, jacobians=True))
    c = {c.key: c for c in summary.paper_claims(results, 0.1)}["sparsity_ratio"]
    assert c.hi < 2 and c.verdict == "does not hold" and "wrong side" in c.why
    frame = summary.claims_frame([c])
    assert frame["verdict"].iloc[0] == "does not hold" and list(frame.columns) == CLAIMS_COLUMNS


def test_an_older_evaluation_gives_values_but_no_interval(tmp_path):
    """Without per-token arrays the scalar claims still show a value, but every verdict is inconclusive."""
    results = load_results(write_synthetic_study(tmp_path))
    claims = {c.key: c for c in summary.paper_claims(results, 1.0)}
    m0, m1 = synthetic_metrics(0.0, "trained"), synthetic_metrics(1.0, "trained")
    assert math.isnan(claims["sparsity_ratio"].value)  # tau* needs the per-token |J| counts
    assert claims["sparsity_ratio"].paper_tau_value == pytest.approx(
        m0["jac/frac_above_0.01"] / m1["jac/frac_above_0.01"])
    assert claims["l1_over_linf_ratio"].value == pytest.approx(
        (m1["jac/l1"] / m0["jac/l1"]) / (m1["jac/linf"] / m0["jac/linf"]))
    for key in ("sparsity_ratio", "l1_over_linf_ratio", "sweet_spot_ce_loss_score", "trained_over_reinit"):
        assert claims[key].verdict == "inconclusive"
        assert "evaluation without per-token" in claims[key].why, claims[key].why
    # probe claims: a cluster bootstrap over the probes' sweeps needs no evaluation arrays
    assert claims["on_line_frac"].verdict == "holds" and claims["on_line_frac"].n_unit == "sweeps"


def test_write_summary_files(tmp_path):
    results = load_results(write_synthetic_study(tmp_path, jacobians=True))
    md, csv, claims_csv = tmp_path / "out" / "summary.md", tmp_path / "out" / "summary.csv", tmp_path / "c.csv"
    summary.write_summary(results, md, csv, 1.0, out_claims=claims_csv)
    df = pd.read_csv(csv)
    assert len(df) == len(LAMS) + len(REINIT_LAMS)
    for key in ("jac/headline_tau", "jac/frac_above_headline_tau", "jac/own_headline_tau",
                "jac/frac_above_own_headline_tau"):
        assert df[key].notna().all(), key
    reinit = df[df.control == "reinit"]
    assert (reinit["jac/own_headline_tau"] > reinit["jac/headline_tau"]).all()  # the re-init's own, larger J
    trained0 = df[(df.control == "trained") & (df.lam == 0)].iloc[0]
    nonzero = float((synthetic_jacobian(2, "trained", 0.0) != 0).mean())
    assert trained0["jac/frac_above_own_headline_tau"] == pytest.approx(0.5 * nonzero, rel=1e-9)  # above the median
    claims = pd.read_csv(claims_csv)
    assert list(claims.columns) == CLAIMS_COLUMNS and len(claims) == 9
    text = md.read_text()
    assert "## Headline τ" in text and "## The paper's claims beside ours" in text
    header = ("| site | claim | paper | ours | statistic | value [95% interval] | threshold (margin) | verdict | n "
              "| why |")
    assert header in text
    assert text.index("## Headline τ") < text.index("## The paper's claims beside ours")
    assert "(paper τ, absolute units)" in text  # the paper's tau column is labelled as such
    assert text.count("| tiny-neox |") == len(df)


def _refuse(results, lam: float, side: str = "out", ablation: float = 0.0012, flag: bool = True) -> None:
    """What evaluation writes when zero-ablation costs less than its floor (0.01 nats): a NaN score beside
    the ΔCE, the refusal flag and the floor in the settings (``flag=False``: an evaluation without the flag)."""
    r = next(r for r in results if r.control == "trained" and r.lam == lam)
    r.metrics[f"{side}/ce_loss_score"] = float("nan")
    r.metrics[f"{side}/ce_ablation_delta"] = ablation
    if flag:
        r.metrics[f"{side}/ce_score_refused"] = 1.0
        r.settings["ce_score_min_ablation_nats"] = 0.01
    else:  # evaluations that predate the flag: no pair has it
        for other in results:
            for s in ("in", "out"):
                other.metrics.pop(f"{s}/ce_score_refused", None)


@pytest.mark.parametrize("flag", [True, False])
def test_a_refused_ce_score_makes_the_sweet_spot_inconclusive(tmp_path, flag):
    results = load_results(write_synthetic_study(tmp_path, jacobians=True))
    _refuse(results, 1.0, flag=flag)
    claims = {c.key: c for c in summary.paper_claims(results, 1.0)}
    c = claims["sweet_spot_ce_loss_score"]
    assert c.holds is None and math.isnan(c.value) and math.isnan(c.lo)
    why = "CE score refused: zero-ablation costs < floor; λ=1 out: 0.0012 nats" + (" < 0.01" if flag else "")
    assert c.verdict == "inconclusive" and c.why == why
    base = next(r for r in results if r.control == "trained" and r.lam == 0.0)
    assert c.ours.startswith(f"{summary.ce_score_mean(base):.3g} → refused;")
    assert claims["sparsity_ratio"].verdict == "holds"  # claims that need no CE score are unaffected
    md, csv = tmp_path / "summary.md", tmp_path / "summary.csv"
    summary.write_summary(results, md, csv, 1.0)
    text = md.read_text()
    assert f"| inconclusive |  | {why} |" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny-neox | 2 | trained | 1 |"))
    assert row.count("| refused |") == 2  # out/ce_loss_score and ce/score_mean
    assert math.isnan(pd.read_csv(csv).query("control == 'trained' and lam == 1")["ce/score_mean"].iloc[0])


def test_an_unmeasured_ce_score_is_not_called_refused(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    for r in results:
        r.metrics.pop("out/ce_loss_score")
    c = {c.key: c for c in summary.paper_claims(results, 1.0)}["sweet_spot_ce_loss_score"]
    assert c.verdict == "inconclusive" and c.why == "not measured" and "refused" not in c.ours


def test_ce_deltas_in_nats_stand_beside_the_scores(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    ours = {c.key: c for c in summary.paper_claims(results, 1.0)}["sweet_spot_ce_loss_score"].ours
    # synthetic ΔCE recon: 0.1 + drop * lam (drop 0.01 in, 0.05 out); zero-ablation 2.0 in, 1.5 out
    assert "ΔCE recon (in/out, nats) λ=0 0.1/0.1, λ=1 0.11/0.15" in ours
    assert "ΔCE zero-ablation λ=0 2/1.5, λ=1 2/1.5" in ours
    md = tmp_path / "summary.md"
    summary.write_summary(results, md, tmp_path / "summary.csv", 1.0)
    header = next(line for line in md.read_text().splitlines() if line.startswith("| model | layer |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    i = cols.index("in/ce_loss_score")
    assert cols[i + 1 : i + 3] == ["in/ce_loss_delta (nats)", "in/ce_ablation_delta (nats)"]
    i = cols.index("out/ce_loss_score")
    assert cols[i + 1 : i + 3] == ["out/ce_loss_delta (nats)", "out/ce_ablation_delta (nats)"]


def _pretrain_json(path, *, steps, max_steps, stopped_by, allow=False, minutes=8.0, loss=4.58):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"steps": steps, "stopped_by": stopped_by, "final_validation_loss": loss,
                                "unigram_baseline_loss": 6.1, "config": {"max_steps": max_steps, "minutes": minutes,
                                                                         "allow_time_cap": allow}}))
    return path


def test_summary_records_the_model_the_verdicts_were_made_on(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    pre = _pretrain_json(tmp_path / "models" / "tiny-neox" / "pretrain.json", steps=2000, max_steps=2000,
                         stopped_by="max_steps", loss=4.15)
    md, csv = tmp_path / "summary.md", tmp_path / "summary.csv"
    summary.write_summary(results, md, csv, 1.0, pretrain=[pre])
    text = md.read_text()
    assert "| tiny-neox | 2000 | 2000 | max_steps | 4.15 | 6.1 |" in text
    assert "stopped early" not in text
    df = pd.read_csv(csv)
    assert (df["pretrain/steps"] == 2000).all() and (df["pretrain/stopped_by"] == "max_steps").all()


def test_a_model_stopped_early_is_stated_above_the_claims(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    pre = _pretrain_json(tmp_path / "models" / "tiny-neox" / "pretrain.json", steps=829, max_steps=2000,
                         stopped_by="time_budget", allow=True)
    md = tmp_path / "summary.md"
    summary.write_summary(results, md, tmp_path / "summary.csv", 1.0, pretrain=[pre])
    text = md.read_text()
    warning = text.index("**The verdicts below were made on a model stopped early.**")
    assert warning < text.index("## The paper's claims beside ours")
    assert "step 829 of max_steps=2000" in text and "4.580 nats/token" in text


def test_bad_pretrain_json_is_a_clear_error(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    bad = tmp_path / "models" / "m" / "pretrain.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"steps": 3, "config": {"minutes": 1}}))
    with pytest.raises(ValueError, match="lacks stopped_by, final_validation_loss"):
        summary.write_summary(results, tmp_path / "s.md", tmp_path / "s.csv", 1.0, pretrain=[bad])


def test_cli_and_empty_input(tmp_path):
    write_synthetic_study(tmp_path)
    md, csv = tmp_path / "s.md", tmp_path / "s.csv"
    assert summary.cli(["--eval-root", str(tmp_path / "eval"), "--out-md", str(md), "--out-csv", str(csv)]) == 0
    assert md.is_file() and csv.is_file() and (tmp_path / "claims.csv").is_file()  # claims.csv beside summary.csv
    assert "tiny-neox: no pretrain.json among the inputs" in md.read_text()
    # the workflow's form: explicit inputs and the model's pretrain.json
    pre = _pretrain_json(tmp_path / "models" / "tiny-neox" / "pretrain.json", steps=40, max_steps=40,
                         stopped_by="max_steps")
    inputs = [str(p) for p in sorted((tmp_path / "eval").rglob("*.json"))]
    claims = tmp_path / "c" / "claims.csv"
    assert summary.cli(["--inputs", *inputs, "--pretrain", str(pre), "--out-md", str(md), "--out-csv", str(csv),
                        "--out-claims", str(claims)]) == 0
    assert list(pd.read_csv(claims).columns) == CLAIMS_COLUMNS
    assert "| tiny-neox | 40 | 40 | max_steps |" in md.read_text()
    with pytest.raises(ValueError, match="no evaluation results"):
        summary.write_summary([], md, csv)


@pytest.mark.slow
def test_study_run_is_logged_with_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = load_results(write_synthetic_study(tmp_path))
    md, csv = tmp_path / "summary.md", tmp_path / "summary.csv"
    summary.write_summary(results, md, csv, 1.0)
    fig = tmp_path / "figures" / "fig5.png"
    fig.parent.mkdir()
    fig.write_bytes(b"\x89PNG\r\n\x1a\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from jsae.tracking import init_tracking_store, log_study_run

    init_tracking_store(uri)
    n_pairs, metrics = summary.study_metrics(csv)
    record = log_study_run(
        uri,
        "synthetic-study",
        metrics=metrics,
        n_pairs=n_pairs,
        artifacts=[fig, md],
        out_run=tmp_path / "study_run.json",
    )
    assert record["status"] == "ok" and record["run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.data.tags["kind"] == "study"
    assert run.data.metrics["tiny-neox/L2/trained/lam1/seed0/jac/frac_above_0.01"] == pytest.approx(
        synthetic_metrics(1.0, "trained")["jac/frac_above_0.01"]
    )
    names = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"figures", "summary.md"} <= names
