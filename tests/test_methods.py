"""The methods table and figure (jsae.report.methods) on hand-written evaluations whose answers are worked out here:
a pair's computation per token is its effective share of the k_in x k_out Jacobian entries, a transcoder's its k;
means over seeds; a refused CE score is no value; the summary and figure CLIs pick the baselines out of --inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jsae.__main__ import main
from jsae.report.methods import load_baselines, method_rows, methods_table, split_baseline_paths
from jsae.report.results import load_results


def _pair(root: Path, lam: float, seed: int, share: float, ev: float, ce: float, kl: float, k: int = 4) -> Path:
    d = root / "eval" / "tiny" / "L2" / "trained" / f"lam{lam:g}" / f"seed{seed}"
    d.mkdir(parents=True)
    doc = {"pair": {"model": "results/models/tiny", "layer": 2, "control": "trained", "lam": lam, "seed": seed,
                    "k": k, "n_latents": 64},
           "metrics": {"jac/effective_share": share, "out/explained_variance": ev, "out/ce_loss_score": ce,
                       "out/ce_score_refused": 0.0, "kl/recon_out": kl, "out/dead_fraction": 0.5,
                       "in/explained_variance": 0.9, "in/ce_loss_score": 0.9, "in/ce_score_refused": 0.0},
           "settings": {}}
    (d / "evaluation.json").write_text(json.dumps(doc))
    return d / "evaluation.json"


def _baseline(root: Path, method: str, seed: int, ev: float, ce: float | None, kl: float, k: int = 4) -> Path:
    d = root / "eval" / "tiny" / "L2" / "trained" / method / f"seed{seed}"
    d.mkdir(parents=True)
    doc = {"baseline": {"method": method, "model": "results/models/tiny", "layer": 2, "control": "trained",
                        "seed": seed, "k": k, "n_latents": 64},
           "metrics": {"out/explained_variance": ev, "out/ce_loss_score": ce,
                       "out/ce_score_refused": 1.0 if ce is None else 0.0, "kl/recon_out": kl,
                       "out/dead_fraction": 0.25},
           "settings": {}}
    (d / "baseline_evaluation.json").write_text(json.dumps(doc))
    return d / "baseline_evaluation.json"


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return [
        _pair(tmp_path, 0.0, 0, share=0.50, ev=0.90, ce=0.80, kl=0.02),
        _pair(tmp_path, 0.0, 1, share=0.70, ev=0.80, ce=0.70, kl=0.04),
        _pair(tmp_path, 1.0, 0, share=0.25, ev=0.85, ce=0.75, kl=0.03),
        _baseline(tmp_path, "transcoder", 0, ev=0.60, ce=0.50, kl=0.10),
        _baseline(tmp_path, "transcoder", 1, ev=0.70, ce=0.60, kl=0.08),
        _baseline(tmp_path, "skip_transcoder", 0, ev=0.75, ce=None, kl=0.05),
    ]


def test_methods_table_by_hand(study) -> None:
    pair_paths, baseline_paths = split_baseline_paths(study)
    assert len(pair_paths) == 3 and len(baseline_paths) == 3
    table = methods_table(method_rows(load_results(pair_paths), load_baselines(baseline_paths)))
    assert list(table["method"]) == ["SAE pair (λ = 0)", "JSAE (λ = 1)", "skip transcoder", "transcoder"]
    row = table.set_index("method")
    # lambda = 0, two seeds: shares 0.5 and 0.7 of 4 x 4 entries -> 8 and 11.2, mean 9.6
    assert row.loc["SAE pair (λ = 0)", "edges_per_token"] == pytest.approx(9.6)
    assert row.loc["SAE pair (λ = 0)", "n_seeds"] == 2
    assert row.loc["SAE pair (λ = 0)", "fvu"] == pytest.approx(0.15)  # 1 - (0.9 + 0.8) / 2
    assert row.loc["SAE pair (λ = 0)", "ce_loss_score"] == pytest.approx(0.75)
    assert row.loc["JSAE (λ = 1)", "edges_per_token"] == pytest.approx(4.0)  # 0.25 x 16
    assert row.loc["transcoder", "edges_per_token"] == 4.0 and row.loc["transcoder", "n_seeds"] == 2
    assert row.loc["transcoder", "kl"] == pytest.approx(0.09) and row.loc["transcoder", "fvu"] == pytest.approx(0.35)
    assert math.isnan(row.loc["skip transcoder", "ce_loss_score"])  # refused: no value, not a number made up


def test_summary_and_figure_read_the_baselines_from_inputs(study, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["summary", "--inputs", *map(str, study), "--out-md", str(out / "summary.md"),
                 "--out-csv", str(out / "summary.csv"), "--jsae-lam", "1"]) == 0
    md = (out / "summary.md").read_text()
    section = md.split("## The JSAE beside its peer methods")[1]
    assert "| tiny | 2 | trained | transcoder | 2 | 4 |" in section
    assert "4 + dense skip" in section and "9.6 |" in section
    import pandas as pd

    assert len(pd.read_csv(out / "summary.csv")) == 3  # the baselines are not pairs
    assert main(["figures", "--only", "fig_methods", "--inputs", *map(str, study), "--out-dir", str(out),
                 "--jsae-lam", "1"]) == 0
    assert (out / "fig_methods.png").stat().st_size > 5000


def test_fig_methods_without_baselines_is_one_line(study, tmp_path: Path, capsys) -> None:
    pairs, _ = split_baseline_paths(study)
    assert main(["figures", "--only", "fig_methods", "--inputs", *map(str, pairs), "--out-dir", str(tmp_path)]) != 0
