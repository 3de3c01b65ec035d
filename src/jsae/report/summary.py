"""The study summary: one row per pair with every scalar, and the paper's claims beside ours.

Outputs ``results/summary.csv`` (the per-pair table) and ``results/summary.md`` (the claims table,
then the per-pair table). ``--log-study`` instead records the study-level MLflow run
(:func:`jsae.tracking.log_study_run`): the figures and the summary as artifacts, each pair's headline
values (:func:`study_metrics`) as metrics.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from jsae.cli import HelpFormatter, tracking_uri
from jsae.eval.metrics import (
    CE_SCORE_MEAN_KEY,
    EFFECTIVE_SHARE_KEY,
    IN_CE_SCORE_KEY,
    IN_EV_KEY,
    JAC_FRAC_KEY,
    JAC_L1_KEY,
    JAC_LINF_KEY,
    OUT_CE_SCORE_KEY,
    OUT_EV_KEY,
    probe_frac_key,
)
from jsae.io import atomic_path, setup_logging
from jsae.report.results import (
    PairResult,
    ce_score_mean,
    default_jsae_lam,
    find_results,
    load_results,
    metric,
    pick_pair,
    sites_of,
)
from jsae.tracking import log_study_run, run_name

log = logging.getLogger("jsae.report.summary")

ID_COLUMNS = ["model", "layer", "control", "lam", "k", "n_latents"]
# shown first in the markdown table; the CSV has every scalar
KEY_COLUMNS = [IN_EV_KEY, OUT_EV_KEY, IN_CE_SCORE_KEY, OUT_CE_SCORE_KEY, JAC_FRAC_KEY, JAC_L1_KEY, JAC_LINF_KEY,
               probe_frac_key("linear"), probe_frac_key("on_line")]
# each pair's values that become metrics of the study-level MLflow run
STUDY_COLUMNS = (JAC_FRAC_KEY, CE_SCORE_MEAN_KEY)


def pair_table(results: Sequence[PairResult]) -> pd.DataFrame:
    """One row per pair: identity, then every evaluation and probe scalar (columns sorted by name)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"model": r.model, "layer": r.layer, "control": r.control, "lam": r.lam,
                               "k": r.identity.get("k"), "n_latents": r.identity.get("n_latents")}
        values = {**r.metrics, **r.probes}
        if IN_CE_SCORE_KEY in values or OUT_CE_SCORE_KEY in values:
            values[CE_SCORE_MEAN_KEY] = ce_score_mean(r)
        row.update(dict(sorted(values.items())))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    order = df["control"].map({"trained": 0, "reinit": 1}).fillna(2)  # trained pairs first
    return (df.assign(_order=order).sort_values(["model", "layer", "_order", "lam"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


@dataclass
class Claim:
    """One headline claim of the paper, the paper's number, ours, and whether ours agrees."""

    site: str
    claim: str
    paper: str
    ours: str
    criterion: str
    holds: bool | None
    value: float = float("nan")  # the scalar behind ``ours`` (logged to MLflow)
    key: str = ""


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3g}"


def _holds(ok: bool, *values: float) -> bool | None:
    return None if any(v is None or not math.isfinite(v) for v in values) else bool(ok)


def paper_claims(results: Sequence[PairResult], jsae_lam: float | None = None) -> list[Claim]:
    """The paper's claims (sections 5.1, 5.3, 5.4, appendices B, F.1) evaluated on our pairs, per site."""
    lam = default_jsae_lam(results) if jsae_lam is None else float(jsae_lam)
    claims: list[Claim] = []
    for site in sites_of(results):
        name = f"{site[0]} L{site[1]}"
        base, jsae = pick_pair(results, site, "trained", 0.0), pick_pair(results, site, "trained", lam)
        if base is None or jsae is None:
            log.warning("%s: no trained pair at λ = 0 and λ = %g; skipping its claims", name, lam)
            continue
        rb, rj = pick_pair(results, site, "reinit", 0.0), pick_pair(results, site, "reinit", lam)
        s0, s1 = metric(base, JAC_FRAC_KEY), metric(jsae, JAC_FRAC_KEY)
        ratio = s0 / s1 if s1 > 0 else float("inf")
        claims.append(Claim(
            name, f"JSAEs make J sparser: share of |J| > 0.01, λ=0 ÷ λ={lam:g}",
            "large reduction (fig. 2, Pythia-410m L15; read off the figure, no number in the text)",
            f"{_fmt(s0, True)} → {_fmt(s1, True)} ({_fmt(ratio)}×)", "ratio > 2", _holds(ratio > 2, s0, s1),
            ratio, "sparsity_ratio"))
        c0, c1 = ce_score_mean(base), ce_score_mean(jsae)
        claims.append(Claim(
            name, f"Sweet spot: CE loss score at λ={lam:g} only slightly below λ=0",
            "sweet spot λ≈0.5 (Pythia-410m, fig. 5), λ≈1 (Pythia-70m, fig. 29): 'only slightly worse'",
            f"{_fmt(c0)} → {_fmt(c1)} (Δ {c1 - c0:+.3f})", "Δ ≥ −0.05", _holds(c1 - c0 >= -0.05, c0, c1),
            c1, "sweet_spot_ce_loss_score"))
        if rb is not None and rj is not None:
            r0, r1 = metric(rb, JAC_FRAC_KEY), metric(rj, JAC_FRAC_KEY)
            claims.append(Claim(
                name, "Trained LM has sparser J than its re-initialisation (λ=0 and JSAE)",
                "always substantially sparser (fig. 7, fig. 38)",
                f"λ=0: {_fmt(s0, True)} vs {_fmt(r0, True)}; λ={lam:g}: {_fmt(s1, True)} vs {_fmt(r1, True)}",
                "trained < re-init at both λ", _holds(s0 < r0 and s1 < r1, s0, r0, s1, r1),
                (s1 / r1) if r1 > 0 else float("nan"), "trained_over_reinit"))
            rratio = r0 / r1 if r1 > 0 else float("inf")
            claims.append(Claim(
                name, "JSAE's sparsity gain is larger on the trained LM than on the re-init",
                "'much larger for trained than random LLMs' (section 5.3)",
                f"trained {_fmt(ratio)}× vs re-init {_fmt(rratio)}×", "trained gain > re-init gain",
                _holds(ratio > rratio, ratio, rratio), rratio, "reinit_sparsity_ratio"))
        if jsae.probes:
            lin, jr, other = (metric(jsae, probe_frac_key(k)) for k in ("linear", "jumprelu", "other"))
            claims.append(Claim(
                name, f"f_s is mostly linear (shares at λ={lam:g})",
                "88% linear, 10% JumpReLU, 2% other (appendix B)",
                f"{_fmt(lin, True)} linear, {_fmt(jr, True)} JumpReLU, {_fmt(other, True)} other",
                "linear > 50%", _holds(lin > 0.5, lin), lin, "linear_frac"))
            if base.probes:
                lb = metric(base, probe_frac_key("linear"))
                claims.append(Claim(
                    name, "JSAEs make f_s more linear than traditional SAEs",
                    "'noticeably higher' share of linear functions (fig. 8b)",
                    f"{_fmt(lb, True)} → {_fmt(lin, True)}", "JSAE > λ=0", _holds(lin > lb, lb, lin),
                    lin - lb, "linear_frac_gain"))
            on = metric(jsae, probe_frac_key("on_line"))
            claims.append(Claim(
                name, "|Δs_y,i| ≈ |J_ij| when s_x,j is lowered by 1",
                "97.7% (fig. 8c, Pythia-410m); 97.5% on the line, 2.1% cluster, 0.4% outliers (fig. 10, Pythia-70m)",
                f"{_fmt(on, True)} on the line, {_fmt(metric(jsae, probe_frac_key('cluster')), True)} cluster, "
                f"{_fmt(metric(jsae, probe_frac_key('outlier')), True)} outliers",
                "on the line ≥ 90%", _holds(on >= 0.9, on), on, "on_line_frac"))
        e0, e1 = metric(base, EFFECTIVE_SHARE_KEY), metric(jsae, EFFECTIVE_SHARE_KEY)
        if not (math.isnan(e0) or math.isnan(e1)):
            claims.append(Claim(
                name, f"J's mass concentrates on fewer elements, scale-free (effective share, λ=0 → λ={lam:g})",
                "implied by figs. 30–31 (normalised Jacobians) and appendix F.1; no number in the paper",
                f"{_fmt(e0, True)} → {_fmt(e1, True)} of k²", "JSAE < λ=0", _holds(e1 < e0, e0, e1),
                e1 / e0 if e0 > 0 else float("nan"), "effective_share_ratio"))
        l1 = metric(jsae, JAC_L1_KEY) / metric(base, JAC_L1_KEY)
        linf = metric(jsae, JAC_LINF_KEY) / metric(base, JAC_LINF_KEY)
        claims.append(Claim(
            name, f"J becomes sparser, not only smaller: L1 falls more than L∞ (λ={lam:g} ÷ λ=0)",
            "L1, L2 fall while L4…L∞ stay roughly the same (fig. 35, appendix F.1)",
            f"L1 ×{_fmt(l1)}, L∞ ×{_fmt(linf)}", "L1 ratio < L∞ ratio", _holds(l1 < linf, l1, linf),
            l1 / linf if linf else float("nan"), "l1_over_linf_ratio"))
    return claims


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    verdict = {True: "yes", False: "no", None: "n/a"}
    return pd.DataFrame([{"site": c.site, "claim": c.claim, "paper": c.paper, "ours": c.ours,
                          "criterion": c.criterion, "holds": verdict[c.holds]} for c in claims],
                        columns=["site", "claim", "paper", "ours", "criterion", "holds"])


def _md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (no optional dependency such as tabulate)."""
    if df.empty:
        return "_(none)_\n"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render_markdown(table: pd.DataFrame, claims: Sequence[Claim], jsae_lam: float) -> str:
    key = [c for c in ID_COLUMNS + KEY_COLUMNS + [CE_SCORE_MEAN_KEY] if c in table.columns]
    parts = [
        "# JSAE study summary\n",
        f"{len(table)} pairs. JSAE compared with λ = 0 at **λ = {jsae_lam:g}**. Paper: Farnik et al., "
        "*Jacobian Sparse Autoencoders*, ICML 2025 (Pythia models; ours may be a much smaller model, so compare "
        "directions, not magnitudes).\n",
        "## The paper's claims beside ours\n",
        _md_table(claims_frame(claims)),
        "## Pairs (key metrics; every scalar is in summary.csv)\n",
        _md_table(table[key]),
    ]
    return "\n".join(parts)


def write_summary(results: Sequence[PairResult], out_md: str | Path, out_csv: str | Path,
                  jsae_lam: float | None = None) -> tuple[pd.DataFrame, list[Claim]]:
    """Write the CSV (every scalar per pair) and the markdown (claims, key metrics), atomically."""
    if not results:
        raise ValueError("no evaluation results were given; expected evaluation.json / probes.json files")
    lam = default_jsae_lam(results) if jsae_lam is None else float(jsae_lam)
    table = pair_table(results)
    claims = paper_claims(results, lam)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        tmp.write_text(render_markdown(table, claims, lam))
    return table, claims


def study_metrics(summary_csv: str | Path) -> tuple[int, dict[str, float]]:
    """The number of pairs in summary.csv and each pair's :data:`STUDY_COLUMNS` values as study-run metrics,
    keyed ``{model}/L{layer}/{control}/lam{lam}/{column}`` (the pair's MLflow run name, then the column)."""
    table = pd.read_csv(summary_csv)
    metrics: dict[str, float] = {}
    for _, row in table.iterrows():
        tag = run_name(row["model"], row["layer"], row["lam"], row["control"])
        for col in STUDY_COLUMNS:
            if col in table.columns and pd.notna(row[col]):
                metrics[f"{tag}/{col}"] = float(row[col])
    return len(table), metrics


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jsae summary",
        description="Write results/summary.csv (one row per pair, every scalar) and results/summary.md (the "
        "paper's claims beside ours), or with --log-study record the study-level MLflow run.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--inputs", nargs="+", metavar="FILE", help="evaluation.json / probes.json files "
                   "(default: every such file under --eval-root)")
    p.add_argument("--eval-root", default="results/eval", help="where to look when --inputs is not given")
    p.add_argument("--out-md", default="results/summary.md", help="markdown output")
    p.add_argument("--out-csv", default="results/summary.csv", help="CSV output")
    p.add_argument("--jsae-lam", type=float, default=None, help="the λ compared with λ = 0 (default: largest λ ≤ 1)")
    g = p.add_argument_group("study-level MLflow run (--log-study)")
    g.add_argument("--log-study", action="store_true", help="log the study-level run instead of writing the summary")
    g.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="tracking URI ('none': off)")
    g.add_argument("--experiment", default="jsae-default", help="MLflow experiment (the study name)")
    g.add_argument("--summary-csv", default=None, help="summary.csv whose key values become run metrics")
    g.add_argument("--artifacts", nargs="*", default=[], metavar="FILE", help="files to attach (figures, summary.md)")
    g.add_argument("--out-run", default="results/tracking/study_run.json", help="where to record the run id")
    p.add_argument("--log-file", default=None, help="also write logs here")
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    if args.log_study:
        n_pairs, metrics = study_metrics(args.summary_csv) if args.summary_csv is not None else (0, {})
        record = log_study_run(tracking_uri(args.mlflow_uri), args.experiment, metrics=metrics, n_pairs=n_pairs,
                               artifacts=args.artifacts, out_run=args.out_run)
        log.info("study run %s (%s) at %s: %s", record["run_id"], record["run_name"], args.mlflow_uri,
                 record["status"])
        return 0
    results = load_results(args.inputs if args.inputs else find_results(args.eval_root))
    table, claims = write_summary(results, args.out_md, args.out_csv, args.jsae_lam)
    log.info("wrote %s (%d pairs) and %s (%d claims, %d hold)", args.out_csv, len(table), args.out_md, len(claims),
             sum(c.holds is True for c in claims))
    return 0
