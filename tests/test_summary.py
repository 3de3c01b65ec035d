"""Summary tables and the paper-claims table from synthetic evaluation outputs."""

from __future__ import annotations

import pandas as pd
import pytest
from test_figures import LAMS, REINIT_LAMS, synthetic_metrics, synthetic_probes, write_synthetic_study

from jsae.report import summary
from jsae.report.results import load_results


def test_pair_table_has_one_row_per_pair_and_every_scalar(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    table = summary.pair_table(results)
    assert len(table) == len(LAMS) + len(REINIT_LAMS)
    assert list(table.columns[:6]) == summary.ID_COLUMNS
    for key in [*synthetic_metrics(0.0, "trained"), *synthetic_probes(0.0)]:
        assert key in table.columns, key
    row = table[(table.control == "trained") & (table.lam == 0.3)].iloc[0]
    m = synthetic_metrics(0.3, "trained")
    assert row["jac/l1"] == pytest.approx(m["jac/l1"])
    assert row["ce/score_mean"] == pytest.approx((m["in/ce_loss_score"] + m["out/ce_loss_score"]) / 2)
    assert row["k"] == 16 and row["n_latents"] == 1024


def test_claims_are_computed_from_the_pairs(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    claims = {c.key: c for c in summary.paper_claims(results, 1.0)}
    m0, m1 = synthetic_metrics(0.0, "trained"), synthetic_metrics(1.0, "trained")
    assert claims["sparsity_ratio"].value == pytest.approx(m0["jac/frac_above_0.01"] / m1["jac/frac_above_0.01"])
    assert claims["sparsity_ratio"].holds is True  # 4x sparser in the synthetic study
    assert claims["trained_over_reinit"].holds is True
    assert claims["linear_frac"].value == pytest.approx(synthetic_probes(1.0)["probe/linear_frac"])
    assert claims["on_line_frac"].holds is True
    assert "97.7%" in claims["on_line_frac"].paper and "88% linear" in claims["linear_frac"].paper
    # CE: 0.95 -> mean(0.94, 0.90) = 0.92, within the 0.05 tolerance
    assert claims["sweet_spot_ce_loss_score"].holds is True
    assert claims["l1_over_linf_ratio"].holds is True


def test_a_claim_that_fails_is_reported_as_no(tmp_path):
    files = write_synthetic_study(tmp_path)
    results = load_results(files)
    jsae = next(r for r in results if r.control == "trained" and r.lam == 1.0)
    jsae.metrics["jac/frac_above_0.01"] = 0.9  # denser than lambda = 0
    claims = {c.key: c for c in summary.paper_claims(results, 1.0)}
    assert claims["sparsity_ratio"].holds is False
    assert (
        summary.claims_frame(list(claims.values())).set_index("claim").filter(like="sparser", axis=0)["holds"].iloc[0]
        == "no"
    )


def test_write_summary_files(tmp_path):
    results = load_results(write_synthetic_study(tmp_path))
    md, csv = tmp_path / "out" / "summary.md", tmp_path / "out" / "summary.csv"
    summary.write_summary(results, md, csv, 1.0)
    df = pd.read_csv(csv)
    assert len(df) == len(LAMS) + len(REINIT_LAMS)
    text = md.read_text()
    assert "## The paper's claims beside ours" in text and "| site | claim | paper | ours | criterion | holds |" in text
    assert text.count("| tiny-neox |") == len(df)


def test_cli_and_empty_input(tmp_path):
    write_synthetic_study(tmp_path)
    md, csv = tmp_path / "s.md", tmp_path / "s.csv"
    assert summary.cli(["--eval-root", str(tmp_path / "eval"), "--out-md", str(md), "--out-csv", str(csv)]) == 0
    assert md.is_file() and csv.is_file()
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
    assert run.data.metrics["tiny-neox/L2/trained/lam1/jac/frac_above_0.01"] == pytest.approx(
        synthetic_metrics(1.0, "trained")["jac/frac_above_0.01"]
    )
    names = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"figures", "summary.md"} <= names
