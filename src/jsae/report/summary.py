"""The study summary: one row per pair with every scalar, and the paper's claims beside ours.

Outputs ``results/summary.csv`` (the per-pair table, with the scale-free headline-τ shares),
``results/claims.csv`` (one row per site × claim: value, 95% interval, threshold, margin, verdict;
:mod:`jsae.report.claims`) and ``results/summary.md`` (the model, the headline τ, the claims table,
then the per-pair table; with a planted model's ``recovery.json`` among the inputs, a "Planted ground truth"
section before it). ``--log-study`` instead records the study-level MLflow run
(:func:`jsae.tracking.log_study_run`) into the study's parent run: the figures and the summary as artifacts,
each pair's headline values as a table (:func:`study_table`, one row per pair, ``lambda`` a column).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from jsae.cli import MLFLOW_URI_ENV, HelpFormatter, default_tracking_uri, tracking_uri
from jsae.eval.metrics import (
    CE_SCORE_MEAN_KEY,
    EFFECTIVE_SHARE_KEY,
    HEADLINE_FRAC_KEY,
    HEADLINE_FRAC_OWN_KEY,
    HEADLINE_QUANTILE,
    IN_CE_SCORE_KEY,
    IN_EV_KEY,
    JAC_FRAC_KEY,
    JAC_L1_KEY,
    JAC_LINF_KEY,
    OUT_CE_SCORE_KEY,
    OUT_EV_KEY,
    OWN_HEADLINE_TAU_KEY,
    probe_frac_key,
)
from jsae.eval.recovery import (
    EDGE_BEST_F1_KEY,
    EDGE_PR_AUC_KEY,
    EDGE_ROC_AUC_KEY,
    KIND_AGREEMENT_KEY,
    KIND_N_KEY,
    recovery_key,
)
from jsae.io import atomic_path, setup_logging
from jsae.report.claims import (
    BOOT_SEED,
    LEVEL,
    N_BOOT,
    PAPER_TAU,
    RELATIVE_MARGIN,
    Claim,
    claims_frame,
    headline_columns,
    paper_claims,
    paper_tau_saturation,
)
from jsae.report.methods import (
    BaselineResult,
    find_baselines,
    load_baselines,
    method_rows,
    methods_markdown,
    methods_table,
    split_baseline_paths,
)
from jsae.report.results import (
    CE_ABLATION_DELTA_KEYS,
    CE_LOSS_DELTA_KEYS,
    CE_SCORE_KEYS,
    CE_SCORE_REFUSED_KEYS,
    PairResult,
    PretrainRecord,
    ce_score_mean,
    default_jsae_lam,
    find_results,
    load_pretrain,
    load_results,
    sites_of,
)

__all__ = ["Claim", "claims_frame", "paper_claims", "pair_table", "write_summary"]  # claims live in jsae.report.claims
from jsae.tracking import log_study_run, read_parent_run_id, run_name

log = logging.getLogger("jsae.report.summary")

ID_COLUMNS = ["model", "layer", "control", "lam", "seed", "k", "n_latents"]
# shown first in the markdown table; the CSV has every scalar. Each CE loss score sits beside the two
# CE differences (nats) it is the ratio of, so a refused or ill-conditioned score can be read off them.
KEY_COLUMNS = [IN_EV_KEY, OUT_EV_KEY,
               IN_CE_SCORE_KEY, CE_LOSS_DELTA_KEYS["in"], CE_ABLATION_DELTA_KEYS["in"],
               OUT_CE_SCORE_KEY, CE_LOSS_DELTA_KEYS["out"], CE_ABLATION_DELTA_KEYS["out"],
               HEADLINE_FRAC_KEY, HEADLINE_FRAC_OWN_KEY, EFFECTIVE_SHARE_KEY, JAC_FRAC_KEY, JAC_L1_KEY, JAC_LINF_KEY,
               probe_frac_key("linear"), probe_frac_key("on_line")]
#: markdown headers that carry a unit
COLUMN_UNITS = {**{k: f"{k} (nats)" for k in (*CE_LOSS_DELTA_KEYS.values(), *CE_ABLATION_DELTA_KEYS.values())},
                JAC_FRAC_KEY: f"{JAC_FRAC_KEY} (paper τ, absolute units)",
                HEADLINE_FRAC_KEY: f"{HEADLINE_FRAC_KEY} (site's τ*)",
                HEADLINE_FRAC_OWN_KEY: f"{HEADLINE_FRAC_OWN_KEY} (own model's τ*)"}
#: the pretraining record of each pair's model, as summary.csv columns
PRETRAIN_COLUMNS = ["pretrain/steps", "pretrain/max_steps", "pretrain/stopped_by", "pretrain/final_validation_loss"]
REFUSED = "refused"  # a score cell evaluation recorded as NaN (zero-ablation delta below its floor)
# each pair's values that become metrics of the study-level MLflow run
STUDY_COLUMNS = (HEADLINE_FRAC_OWN_KEY, JAC_FRAC_KEY, EFFECTIVE_SHARE_KEY, CE_SCORE_MEAN_KEY)


def pair_table(results: Sequence[PairResult], pretrain: Sequence[PretrainRecord] = ()) -> pd.DataFrame:
    """One row per pair: identity, then every evaluation and probe scalar and the headline-τ shares
    (:func:`jsae.report.claims.headline_columns`; columns sorted by name), then the pretraining record of
    the pair's model (:data:`PRETRAIN_COLUMNS`) where one is given."""
    models = {p.model: p for p in pretrain}
    headline = headline_columns(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"model": r.model, "layer": r.layer, "control": r.control, "lam": r.lam, "seed": r.seed,
                               "k": r.identity.get("k"), "n_latents": r.identity.get("n_latents")}
        values = {**r.metrics, **r.probes, **headline.get(r.key, {})}
        if IN_CE_SCORE_KEY in values or OUT_CE_SCORE_KEY in values:
            values[CE_SCORE_MEAN_KEY] = ce_score_mean(r)
        row.update(dict(sorted(values.items())))
        if r.model in models:  # the re-init control is a copy of this model: same record
            p = models[r.model]
            row.update(zip(PRETRAIN_COLUMNS, (p.steps, p.max_steps, p.stopped_by, p.final_validation_loss)))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS)
    order = df["control"].map({"trained": 0, "reinit": 1}).fillna(2)  # trained pairs first
    return (df.assign(_order=order).sort_values(["model", "layer", "_order", "lam", "seed"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


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


def _mark_refused(table: pd.DataFrame) -> pd.DataFrame:
    """Score cells evaluation refused (NaN beside a measured zero-ablation ΔCE) read "refused", not blank."""
    out = table.copy()
    refused_any = pd.Series(False, index=out.index)
    for side, key in CE_SCORE_KEYS.items():
        if key not in out.columns:
            continue
        flag, ablation = CE_SCORE_REFUSED_KEYS[side], CE_ABLATION_DELTA_KEYS[side]
        if flag in out.columns:  # evaluation's own flag (refused_sides reads the same)
            refused = out[key].isna() & (out[flag].fillna(0) >= 0.5)
        elif ablation in out.columns:
            refused = out[key].isna() & out[ablation].notna()
        else:
            continue
        refused_any |= refused
        out[key] = out[key].astype(object).where(~refused, REFUSED)
    if CE_SCORE_MEAN_KEY in out.columns:
        out[CE_SCORE_MEAN_KEY] = out[CE_SCORE_MEAN_KEY].astype(object).where(~refused_any, REFUSED)
    return out


def model_section(pretrain: Sequence[PretrainRecord], results: Sequence[PairResult]) -> tuple[str, str]:
    """(a warning for above the claims, or "", the table of the models the verdicts were made on)."""
    rows, warnings = [], []
    for p in pretrain:
        if p.stopped_early:
            stopped = f"time cap ({p.minutes:g} min) before max_steps — stopped early"
            warnings.append(
                f"**The verdicts below were made on a model stopped early.** The {p.minutes:g}-minute time cap "
                f"stopped {p.model}'s pretraining at step {p.steps} of max_steps={p.max_steps} "
                f"(allowed by pretrain.allow_time_cap: true); held-out loss "
                f"{p.final_validation_loss:.3f} nats/token. The same config on a faster or idler machine trains a "
                "different model, so these verdicts may not reproduce there.")
        elif p.stopped_by == "time_budget":
            stopped = f"time budget ({p.minutes:g} min; no max_steps, so the step count depends on the machine)"
            warnings.append(f"Note: {p.model} was pretrained for a time budget ({p.minutes:g} min), not a step "
                            "count; another machine trains a different model.")
        else:
            stopped = p.stopped_by
        rows.append({"model": p.model, "pretraining steps": p.steps,
                     "max_steps": "none" if p.max_steps is None else p.max_steps, "stopped by": stopped,
                     "final held-out loss (nats/token)": round(p.final_validation_loss, 4),
                     "unigram baseline (nats/token)": round(p.unigram_baseline_loss, 4)})
    planted = sorted({r.model for r in results if r.has_recovery} - {p.model for p in pretrain})
    others = sorted({r.model for r in results} - {p.model for p in pretrain} - set(planted))
    text = _md_table(pd.DataFrame(rows)) if rows else ""
    if planted:
        text += (f"\n{', '.join(planted)}: a planted ground-truth model (synthetic MLP; no text, so no CE scores); "
                 "see \"Planted ground truth\".\n")
    if others:
        text += (f"\n{', '.join(others)}: no pretrain.json among the inputs (a pretrained checkpoint, not trained "
                 "by this study).\n")
    return "\n\n".join(warnings), text


def _interval(c: Claim) -> str:
    if not math.isfinite(c.value):
        return "n/a"
    if math.isfinite(c.lo) and math.isfinite(c.hi):
        return f"{c.value:.3g} [{c.lo:.3g}, {c.hi:.3g}]"
    return f"{c.value:.3g} (no interval)"


def claims_markdown(claims: Sequence[Claim]) -> pd.DataFrame:
    """The claims table of summary.md: our value with its 95% interval, the bar it must clear, the verdict."""
    return pd.DataFrame([{"site": c.site, "claim": c.claim, "paper": c.paper, "ours": c.ours,
                          "statistic": c.statistic, "value [95% interval]": _interval(c),
                          "threshold (margin)": c.bar, "verdict": c.verdict,
                          "n": (f"{c.n} {c.n_unit}" if c.n else "")
                          + (f" × {c.n_seeds} seeds" if c.n_seeds > 1 else ""),
                          "why": c.why} for c in claims],
                        columns=["site", "claim", "paper", "ours", "statistic", "value [95% interval]",
                                 "threshold (margin)", "verdict", "n", "why"])


def headline_section(table: pd.DataFrame, results: Sequence[PairResult]) -> str:
    """Which τ is the headline, per site, and why (the paper's absolute τ is in Pythia's units, not ours)."""
    rows = []
    for site in sites_of(results):
        sel = table[(table["model"] == site[0]) & (table["layer"] == site[1])] if len(table) else table
        taus = {}
        for control in ("trained", "reinit"):
            own = sel[sel["control"] == control] if "control" in sel.columns else sel
            col = own.get(OWN_HEADLINE_TAU_KEY) if len(own) else None
            taus[control] = float(col.dropna().iloc[0]) if col is not None and col.notna().any() else float("nan")
        rows.append({"site": f"{site[0]} L{site[1]}", "τ* trained (units of J)": taus["trained"],
                     "τ* re-init (units of J)": taus["reinit"],
                     f"trained λ=0 non-zero |J| above the paper's τ = {PAPER_TAU:g}":
                         paper_tau_saturation(results, site)})
    return (
        f"Shares of |J| > τ are read at each site's **τ\\* = the {HEADLINE_QUANTILE:g}-quantile (median) of the "
        "non-zero |J| of its trained λ = 0 pair**, in that model's own units; every pair of the site is read at it "
        f"(`{HEADLINE_FRAC_KEY}`), and each pair also at its own model's λ = 0 τ\\* (`{HEADLINE_FRAC_OWN_KEY}`: the "
        "re-init control at the re-init's τ\\*, so trained vs re-init does not depend on either model's units). "
        f"The paper's τ = {PAPER_TAU:g} is in Pythia-70m's units; where almost every element exceeds it (last "
        "column) it measures scale, not sparsity, so it stays only as a secondary column labelled \"paper τ, "
        "absolute units\". The whole share-vs-τ curve is fig. 32(b). Shares at τ\\* come from each token's counts "
        "above a log grid of τ (32 points per decade): exact at grid points, log-linear in between.\n\n"
        + _md_table(pd.DataFrame(rows))
    )


#: The planted-recovery columns of summary.md: (header, metric key); all are in summary.csv under their keys.
RECOVERY_COLUMNS = (
    ("features in (mean max cos)", recovery_key("in", "mean_max_cosine")),
    ("features in recovered", recovery_key("in", "frac_recovered")),
    ("features out (mean max cos)", recovery_key("out", "mean_max_cosine")),
    ("features out recovered", recovery_key("out", "frac_recovered")),
    ("edge ROC AUC", EDGE_ROC_AUC_KEY),
    ("edge PR AUC", EDGE_PR_AUC_KEY),
    ("edge best F1", EDGE_BEST_F1_KEY),
    ("kind agreement", KIND_AGREEMENT_KEY),
    ("kind n", KIND_N_KEY),
)


def planted_section(results: Sequence[PairResult], jsae_lam: float) -> str:
    """"Planted ground truth": per planted site, one row per (λ, seed) of recovery metrics and, where a λ has
    several seeds, their mean; "" when no recovery.json was among the inputs."""
    rows_by_site: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for site in sites_of([r for r in results if r.has_recovery]):
        rs = sorted((r for r in results if r.site == site and r.has_recovery), key=lambda r: (r.lam, r.seed))
        rows = []
        for lam in sorted({r.lam for r in rs}):
            at = [r for r in rs if r.lam == lam]
            name = "traditional (λ = 0)" if lam == 0 else ("JSAE" if math.isclose(lam, jsae_lam) else "")
            for r in at:
                rows.append({"λ": f"{lam:g}", "": name, "seed": str(r.seed),
                             **{h: r.metrics.get(k, math.nan) for h, k in RECOVERY_COLUMNS}})
            if len(at) > 1:  # nan-mean: a seed without probes has no kind agreement
                rows.append({"λ": f"{lam:g}", "": name, "seed": f"mean of {len(at)}",
                             **{h: _nanmean([r.metrics.get(k, math.nan) for r in at]) for h, k in RECOVERY_COLUMNS}})
        rows_by_site[site] = rows
    if not rows_by_site:
        return ""
    chance = {site: [r for r in results if r.site == site and r.has_recovery][0] for site in rows_by_site}
    parts = [
        "A planted model is a synthetic MLP whose sparse computation is known: input features D_x, output features "
        "D_y and the planted edges (output feature ← input feature, each linear, JumpReLU-like or curved). "
        "**Feature recovery**: per true feature, the best signed cosine of any decoder row (mean over features; "
        "\"recovered\" = share above 0.9). **Edge recovery**: the pair's |J| between co-active latents, mapped to "
        "(output, input) feature pairs through each latent's best-matching feature, ranked against the planted "
        "edges (ROC AUC: chance 0.5; PR AUC: chance = the edge base rate; best F1 over all thresholds). **Kind "
        "agreement**: share of probed functions landing on a planted edge whose probe label (linear / JumpReLU / "
        "other) is the edge's kind (n = how many landed). Definitions: docs/metrics.md, \"Planted ground truth\".\n",
    ]
    for site, rows in rows_by_site.items():
        c_in, c_out = (chance[site].metrics.get(recovery_key(side, "chance_max_cosine"), math.nan)
                       for side in ("in", "out"))
        parts.append(f"### {site[0]} L{site[1]}\n")
        parts.append(f"Chance mean max cosine (random directions): in {c_in:.3f}, out {c_out:.3f}.\n")
        parts.append(_md_table(pd.DataFrame(rows)))
    return "\n".join(parts)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def methods_section(results: Sequence[PairResult], baselines: Sequence[BaselineResult]) -> str:
    """The JSAE beside its peer methods (:mod:`jsae.report.methods`): one row per site, control and method."""
    table = methods_table(method_rows(results, baselines))
    return ("Every method at a site is trained from the same activation cache with the same width, k, recipe and "
            "tokens, and evaluated on the same validation tokens; means over training seeds. Fidelity: the method's "
            "output spliced into the LM in place of the MLP's — a transcoder's T(x) predicts y from x, a pair's "
            "sae_out(y) reconstructs y from y (the easier task). Computation per token: a pair's effective number "
            "of Jacobian entries (jac/effective_share × k_in × k_out, scale-free); a transcoder's k active latents "
            "(each latent connects only to itself); a skip transcoder also has a dense linear path no count sees. "
            "Figure: fig_methods. Definitions: docs/metrics.md, 'Methods'.\n\n" + _md_table(methods_markdown(table)))


def render_markdown(table: pd.DataFrame, claims: Sequence[Claim], jsae_lam: float,
                    pretrain: Sequence[PretrainRecord] = (), results: Sequence[PairResult] = (),
                    baselines: Sequence[BaselineResult] = ()) -> str:
    key = [c for c in ID_COLUMNS + KEY_COLUMNS + [CE_SCORE_MEAN_KEY] if c in table.columns]
    warning, models = model_section(pretrain, results)
    parts = [
        "# JSAE study summary\n",
        f"{len(table)} pairs. JSAE compared with λ = 0 at **λ = {jsae_lam:g}**. Paper: Farnik et al., "
        "*Jacobian Sparse Autoencoders*, ICML 2025 (Pythia models; ours may be a much smaller model, so compare "
        "directions, not magnitudes).\n",
        *([f"{warning}\n"] if warning else []),
        "## The model the verdicts were made on\n",
        models or "_(no pretrain.json given)_\n",
        "## Headline τ\n",
        headline_section(table, results),
        "## The paper's claims beside ours\n",
        f"Each claim's value comes with a {100 * LEVEL:g}% interval: a bootstrap over the evaluation tokens "
        f"({N_BOOT} resamples, seed {BOOT_SEED}), paired — the same tokens for every pair a claim compares, with "
        "τ\\* re-estimated in each resample; probe shares: a cluster bootstrap over the distinct (token, input "
        "latent) sweeps. Where the pairs were trained with several seeds, the value is the mean over the seeds "
        "(each measured on its own pairs) and the interval adds, in quadrature, the t interval across seeds and "
        "the seeds' mean token half-width (column n: tokens × seeds). A claim **holds** when the whole interval "
        "clears the threshold by the margin, **does not hold** when the whole interval is on the wrong side of "
        "the threshold, and is **inconclusive** otherwise "
        "(also without an interval, or when a CE score it needs was refused). Relative claims (\"falls\", "
        f"\"sparser than\") carry a {RELATIVE_MARGIN:g} margin: the smallest effect they count (and, for a "
        "one-seed claim, a guard for the training variation its interval cannot see). All statistics are "
        "scale-free; the paper's absolute τ = 0.01 appears only as labelled text. Every number is in claims.csv.\n\n"
        "A CE loss score is (CE_zero − CE_recon) / (CE_zero − CE_clean); where zero-ablation costs less than "
        "evaluation's floor the score is refused (\"refused\" in the table) and a claim that needs it is "
        "inconclusive. ΔCE values are CE_recon − CE_clean and CE_zero − CE_clean in nats.\n",
        _md_table(claims_markdown(claims)),
        *(["## Planted ground truth\n", planted] if (planted := planted_section(results, jsae_lam)) else []),
        *(["## The JSAE beside its peer methods\n", methods_section(results, baselines)] if baselines else []),
        "## Pairs (key metrics; every scalar is in summary.csv)\n",
        _md_table(_mark_refused(table)[key].rename(columns=COLUMN_UNITS)),
    ]
    return "\n".join(parts)


def write_summary(results: Sequence[PairResult], out_md: str | Path, out_csv: str | Path,
                  jsae_lam: float | None = None, pretrain: Sequence[str | Path] = (),
                  out_claims: str | Path | None = None,
                  baselines: Sequence[BaselineResult] = ()) -> tuple[pd.DataFrame, list[Claim]]:
    """Write the CSV (every scalar per pair), the claims CSV (when ``out_claims`` is given) and the markdown
    (model, headline τ, claims, key metrics), atomically.

    ``pretrain``: the ``pretrain.json`` of each model trained by the study; summary.md states what the
    verdicts were made on (steps, max_steps, what stopped pretraining, held-out loss).
    """
    if not results:
        raise ValueError("no evaluation results were given; expected evaluation.json / probes.json files")
    records = [load_pretrain(p) for p in pretrain]
    lam = default_jsae_lam(results) if jsae_lam is None else float(jsae_lam)
    table = pair_table(results, records)
    claims = paper_claims(results, lam)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    if out_claims is not None:
        with atomic_path(out_claims) as tmp:
            claims_frame(claims).to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        tmp.write_text(render_markdown(table, claims, lam, records, results, baselines))
    for p in records:
        if p.stopped_early:
            log.warning("%s was stopped early by the time cap (step %d of %d): summary.md says so above the claims",
                        p.model, p.steps, p.max_steps)
    return table, claims


def study_metrics(summary_csv: str | Path) -> tuple[int, dict[str, float]]:
    """The number of pairs in summary.csv and each pair's :data:`STUDY_COLUMNS` values as study-run metrics,
    keyed ``{model}/L{layer}/{control}/lam{lam}/seed{seed}/{column}`` (the pair's MLflow run name, then the
    column)."""
    table = pd.read_csv(summary_csv)
    metrics: dict[str, float] = {}
    for _, row in table.iterrows():
        tag = run_name(row["model"], row["layer"], row["lam"], row["control"], int(row.get("seed", 0)))
        for col in STUDY_COLUMNS:
            if col in table.columns and pd.notna(row[col]):
                metrics[f"{tag}/{col}"] = float(row[col])
    return len(table), metrics


#: summary.csv's identity columns in the study run's table (``lam`` is named ``lambda``, as the pair runs' param).
STUDY_TABLE_IDS = ("model", "layer", "control", "lam", "seed")


def study_table(summary_csv: str | Path) -> list[dict[str, object]]:
    """One row per pair of summary.csv for the study run's table: the pair's MLflow run name, its identity
    (``lambda`` a column, so a chart plots against it) and its :data:`STUDY_COLUMNS` values (None if missing)."""
    table = pd.read_csv(summary_csv)
    rows = []
    for _, row in table.iterrows():
        out: dict[str, object] = {"run": run_name(row["model"], row["layer"], row["lam"], row["control"],
                                                  int(row.get("seed", 0)))}
        for col in STUDY_TABLE_IDS:
            value = row.get(col, 0 if col == "seed" else None)
            out["lambda" if col == "lam" else col] = value.item() if hasattr(value, "item") else value
        for col in STUDY_COLUMNS:
            out[col] = float(row[col]) if col in table.columns and pd.notna(row[col]) else None
        rows.append(out)
    return rows


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jsae summary",
        description="Write results/summary.csv (one row per pair, every scalar), results/claims.csv (each claim's "
        "value, 95% interval, threshold, margin and verdict) and results/summary.md (the paper's claims beside "
        "ours), or with --log-study record the study-level MLflow run.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--inputs", nargs="+", metavar="FILE", help="evaluation.json / probes.json / recovery.json files, "
                   "and baseline_evaluation.json of the peer methods (default: every such file under --eval-root)")
    p.add_argument("--eval-root", default="results/eval", help="where to look when --inputs is not given")
    p.add_argument("--out-md", default="results/summary.md", help="markdown output")
    p.add_argument("--out-csv", default="results/summary.csv", help="CSV output")
    p.add_argument("--out-claims", default=None, help="claims CSV output, one row per site × claim (default: "
                   "claims.csv next to --out-csv)")
    p.add_argument("--jsae-lam", type=float, default=None, help="the λ compared with λ = 0 (default: largest λ ≤ 1)")
    p.add_argument("--pretrain", nargs="*", default=None, metavar="FILE",
                   help="pretrain.json of each model the study pretrained (results/models/<model>/pretrain.json); "
                   "default: those under <eval-root>/../models when --inputs is not given")
    g = p.add_argument_group("study-level MLflow run (--log-study)")
    g.add_argument("--log-study", action="store_true", help="log the study-level run instead of writing the summary")
    g.add_argument("--mlflow-uri", default=default_tracking_uri("sqlite:///mlflow.db"),
                   help=f"tracking URI ('none': off; default: ${MLFLOW_URI_ENV}, else sqlite:///mlflow.db)")
    g.add_argument("--experiment", default="jsae-default", help="MLflow experiment (the study name)")
    g.add_argument("--summary-csv", default=None, help="summary.csv whose rows become the study run's table")
    g.add_argument("--mlflow-parent-from", default=None, metavar="MARKER", help="the workflow's tracking marker: "
                   "log into the study run it records (default: the study's run found by name, or a new one)")
    g.add_argument("--artifacts", nargs="*", default=[], metavar="FILE", help="files to attach (figures, summary.md)")
    g.add_argument("--out-run", default="results/tracking/study_run.json", help="where to record the run id")
    p.add_argument("--log-file", default=None, help="also write logs here")
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    if args.log_study:
        # The pairs' numbers are a table (one row per pair), not one metric key per pair: each pair's own
        # run holds them as metrics, where the Compare view plots them against its params.
        rows = study_table(args.summary_csv) if args.summary_csv is not None else []
        uri = tracking_uri(args.mlflow_uri)
        parent = read_parent_run_id(args.mlflow_parent_from) if uri and args.mlflow_parent_from else None
        record = log_study_run(uri, args.experiment, metrics={}, n_pairs=len(rows), table=rows,
                               artifacts=args.artifacts, out_run=args.out_run, parent_run_id=parent)
        log.info("study run %s (%s) at %s: %s", record["run_id"], record["run_name"], args.mlflow_uri,
                 record["status"])
        return 0
    paths = args.inputs if args.inputs else [*find_results(args.eval_root), *find_baselines(args.eval_root)]
    pair_paths, baseline_paths = split_baseline_paths(paths)
    results, baselines = load_results(pair_paths), load_baselines(baseline_paths)
    pretrain = args.pretrain
    if pretrain is None:
        pretrain = [] if args.inputs else sorted((Path(args.eval_root).parent / "models").glob("*/pretrain.json"))
    out_claims = args.out_claims if args.out_claims is not None else Path(args.out_csv).with_name("claims.csv")
    table, claims = write_summary(results, args.out_md, args.out_csv, args.jsae_lam, pretrain, out_claims, baselines)
    log.info("wrote %s (%d pairs), %s and %s (%d claims: %d hold, %d do not, %d inconclusive)", args.out_csv,
             len(table), out_claims, args.out_md, len(claims), sum(c.holds is True for c in claims),
             sum(c.holds is False for c in claims), sum(c.holds is None for c in claims))
    return 0
