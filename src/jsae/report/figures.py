"""The paper's figures, rendered from the per-pair evaluation and probe outputs.

Each figure keeps the paper's number (Farnik et al., ICML 2025) and is written as PDF and PNG:

* fig2  share of the k×k active Jacobian elements above thresholds, JSAE vs traditional (λ = 0)
* fig4  reconstruction, performance preservation and sparsity metrics against λ (sparsity: share of
        |J| > τ*, the scale-free headline, beside the paper's absolute τ = 0.01 and the effective share)
* fig5  CE loss score against Jacobian sparsity (share of |J| > τ*) across the λ sweep, labelled with λ
* fig7  the same shares as fig2 on the trained model and on its random re-initialisation
* fig8  linearity of f_s: example functions, linear/JumpReLU/other shares, |Δs_y| vs |J|
* fig32 |J| histogram and CDF (the whole share-vs-τ curve; τ* and the paper's τ marked), JSAE vs traditional
* fig35 Lp norms of J against λ (relative to λ = 0)
* fig36 global sparsity of the mean-|J| matrix over tokens (100% = alive output × alive input latents)
* fig_recovery (ours, not the paper's; named so because it has no paper number) recovery of a planted ground
        truth against λ, per planted site: edge ROC AUC and best F1, feature recovery of both SAEs; every seed
        drawn, their mean joined (inputs: the planted pairs' ``recovery.json``)

Inputs are the per-pair results as :mod:`jsae.report.results` reads them (``evaluation.json``,
``probes.json`` and their npz siblings). A "site" is one (model, layer); figures comparing λ = 0 with
the JSAE draw one panel (or row) per site. fig7 draws only the sites that have a re-init control (a planted
model has none).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jsae.cli import HelpFormatter
from jsae.eval.metrics import (
    DEFAULT_THRESHOLDS,
    EFFECTIVE_SHARE_KEY,
    HEADLINE_FRAC_KEY,
    JAC_FRAC_KEY,
    SIDES,
    lp_key,
    probe_frac_key,
    side_key,
    tau_grid,
    threshold_key,
)
from jsae.eval.metrics import global_shares as metric_global_shares
from jsae.eval.recovery import EDGE_BEST_F1_KEY, EDGE_PR_AUC_KEY, EDGE_ROC_AUC_KEY, recovery_key
from jsae.io import atomic_path, setup_logging
from jsae.report.claims import PAPER_TAU, TokenStats, headline_columns, headline_taus
from jsae.report.methods import (  # methods imports this module lazily (its plot helpers): no cycle at import
    BaselineResult,
    fig_methods,
    find_baselines,
    load_baselines,
    split_baseline_paths,
)
from jsae.report.results import (
    PairResult,
    base_seed,
    ce_score_mean,
    default_jsae_lam,
    find_results,
    load_results,
    metric,
    pick_pair,
    refused_sides,
    sites_of,
)

log = logging.getLogger("jsae.report.figures")

FIGURES = ("fig2", "fig4", "fig5", "fig7", "fig8", "fig32", "fig35", "fig36")  # the paper's
#: Ours, beyond the paper: fig_recovery for a study with a planted model (its pairs' recovery.json), fig_methods for
#: a study with peer methods (baselines' baseline_evaluation.json; jsae.report.methods).
OWN_FIGURES = ("fig_recovery", "fig_methods")
ALL_FIGURES = FIGURES + OWN_FIGURES
THRESHOLDS = DEFAULT_THRESHOLDS  # the paper's taus (figs. 2, 7, 36)

COLORS = {"traditional": "#1f77b4", "jsae": "#d62728", "reinit_traditional": "#9ecae1", "reinit_jsae": "#fcae91"}
CLASS_COLORS = {"linear": "#2ca02c", "jumprelu": "#ff7f0e", "other": "#7f7f7f"}
SPLIT_COLORS = {"on_line": "#1f77b4", "cluster": "#2ca02c", "outlier": "#d62728"}


# --------------------------------------------------------------------------------------------------
# Plot helpers
# --------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 9})
    return plt


def _lam_axis(ax, lams: Sequence[float]) -> None:
    """λ includes 0: a symlog axis, linear below the smallest positive λ, ticks at the λs used."""
    positive = sorted(x for x in lams if x > 0)
    ax.set_xscale("symlog", linthresh=positive[0] if positive else 1.0, linscale=0.5)
    ax.set_xticks(sorted(set(lams)))
    ax.set_xticklabels([f"{x:g}" for x in sorted(set(lams))])
    ax.set_xlabel("Jacobian loss coefficient λ")


def _site_title(site: tuple[str, int]) -> str:
    return f"{site[0]}, layer {site[1]}"


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("pdf", "png"):
        final = out_dir / f"{name}.{ext}"
        with atomic_path(final) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        written.append(final)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return written


def _caption(fig, lines: Sequence[str]) -> None:
    """Notes under the figure (kept in the PNG/PDF by ``bbox_inches='tight'``): what a reader must know."""
    if lines:
        fig.text(0.01, 0.0, "\n".join(lines), ha="left", va="top", fontsize=7.5, color="0.25")


REFUSED_NOTE = "score refused by evaluation: zero-ablation costs < floor, so the ratio is ill-conditioned"


def _finite_points(x: Sequence[float], y: Sequence[float], lams: Sequence[float]
                   ) -> tuple[list[float], list[float], list[float]]:
    """The λs whose point is not finite (skipped, to be named in the caption), and the kept x, y."""
    keep = [i for i, (a, b) in enumerate(zip(x, y)) if math.isfinite(a) and math.isfinite(b)]
    skipped = [lams[i] for i in range(len(lams)) if i not in keep]
    return [x[i] for i in keep], [y[i] for i in keep], skipped


def _lams_text(lams: Sequence[float]) -> str:
    return ", ".join(f"{x:g}" for x in lams)


def _threshold_shares(r: PairResult | None, thresholds: Sequence[float]) -> np.ndarray:
    return np.array([metric(r, threshold_key(t)) for t in thresholds]) * 100.0


def _grouped_bars(
    ax, thresholds: Sequence[float], series: list[tuple[str, np.ndarray, str]], *, percent_axis: bool = True
) -> None:
    x = np.arange(len(thresholds))
    width = 0.8 / max(len(series), 1)
    for i, (label, values, color) in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, values, width, label=label, color=color, edgecolor="black", linewidth=0.4)
        for b, v in zip(bars, values):
            if np.isfinite(v):
                ax.annotate(f"{v:.2g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=6.5, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t:g}" for t in thresholds])
    ax.set_xlabel("threshold τ on |J| (the paper's τ, absolute units of J)")
    top = max((float(np.nanmax(v)) for _, v, _ in series if np.isfinite(v).any()), default=0.0)
    if percent_axis and top > 0:  # headroom above the bars for a legend placed at the top
        ax.set_ylim(0, top * (1.15 + 0.1 * len(series)))
        if top <= 100:  # shares in %: no ticks above 100
            ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= 100])


def _need(pairs: dict[str, PairResult | None], figure: str) -> None:
    missing = [name for name, r in pairs.items() if r is None]
    if missing:
        raise ValueError(f"{figure} needs the {' and '.join(missing)} pair(s), which are not among the inputs")


def _base_and_jsae(results: Sequence[PairResult], site: tuple[str, int], jsae_lam: float,
                   figure: str) -> tuple[PairResult, PairResult]:
    """The site's trained pairs at λ = 0 and at the JSAE's λ (a one-line error naming the missing one)."""
    base, jsae = pick_pair(results, site, "trained", 0.0), pick_pair(results, site, "trained", jsae_lam)
    _need({"λ = 0": base, f"λ = {jsae_lam:g}": jsae}, figure)
    assert base is not None and jsae is not None
    return base, jsae


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def fig2(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """Share of |J| above each threshold (100% = k²), traditional (λ = 0) vs JSAE."""
    plt = _plt()
    sites = sites_of([r for r in results if r.control == "trained"])
    fig, axes = plt.subplots(1, len(sites), figsize=(4.8 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        base, jsae = _base_and_jsae(results, site, jsae_lam, "fig2")
        _grouped_bars(ax, THRESHOLDS, [
            ("traditional SAEs (λ = 0)", _threshold_shares(base, THRESHOLDS), COLORS["traditional"]),
            (f"JSAEs (λ = {jsae_lam:g})", _threshold_shares(jsae, THRESHOLDS), COLORS["jsae"]),
        ])
        ax.set_ylabel("active Jacobian elements with |J| > τ (% of k²)")
        ax.set_title(_site_title(site))
        ax.legend(frameon=False, loc="upper center", ncol=2, fontsize=8)
    fig.suptitle("Fig. 2 — large Jacobian elements: JSAEs vs traditional SAEs", fontweight="bold")
    return _save(fig, out_dir, "fig2")


FIG4_PANELS: tuple[tuple[str, str, Callable[[float], float] | None], ...] = (
    ("explained_variance", "explained variance (fraction)", None),
    ("cosine", "cosine similarity cos(x̂, x)", None),
    ("ce_loss_score", "CE loss score (fraction recovered)", None),
    ("kl_score", "KL score (fraction recovered)", None),
    ("dead_fraction", "dead latents (%)", lambda v: 100 * v),
)


def fig4(results: Sequence[PairResult], out_dir: Path) -> list[Path]:
    """Reconstruction, CE/KL preservation, dead latents and Jacobian sparsity against λ."""
    plt = _plt()
    trained = [r for r in results if r.control == "trained"]
    if not trained:
        raise ValueError("fig4 needs trained pairs; none among the inputs")
    lams = sorted({r.lam for r in trained})
    headline = headline_columns(results)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    styles = ["-", "--", ":", "-."]
    notes: list[str] = []
    sites = sites_of(trained)
    for si, site in enumerate(sites):
        rs = sorted([r for r in trained if r.site == site], key=lambda r: r.lam)
        lam_x = [r.lam for r in rs]
        ls = styles[si % len(styles)]
        # several sites: colour and marker say the quantity (legends inside), line style the site (one legend
        # under the figure), so the legends stay short however many sites there are
        tag = "" if si == 0 else "_nolegend_"
        for ax, (key, ylabel, tf) in zip(axes.flat, FIG4_PANELS):
            for side, color in zip(SIDES, (COLORS["traditional"], COLORS["jsae"])):
                name = f"{'input' if side == 'in' else 'output'} SAE"
                y = [(tf or (lambda v: v))(metric(r, side_key(side, key))) for r in rs]
                x, y, skipped = _finite_points(lam_x, y, lam_x)
                ax.plot(x, y, ls, marker="o", color=color, label=tag or name)
                if skipped:
                    refused = key == "ce_loss_score" and all(side in refused_sides(r) for r in rs if r.lam in skipped)
                    why = REFUSED_NOTE if refused else "not measured"
                    where = f" ({_site_title(site)})" if len(sites) > 1 else ""
                    quantity = ylabel.split(" (")[0]
                    notes.append(f"{quantity}, {name}{where}: λ = {_lams_text(skipped)} not drawn ({why}).")
            ax.set_ylabel(ylabel)
        ax = axes.flat[5]
        y = [headline.get(r.key, {}).get(HEADLINE_FRAC_KEY, math.nan) * 100 for r in rs]
        if not all(math.isnan(v) for v in y):
            ax.plot(lam_x, y, ls, marker="D", color="#8c564b", label=tag or "|J| > τ* (λ = 0 median), scale-free")
        y = [metric(r, JAC_FRAC_KEY) * 100 for r in rs]
        ax.plot(lam_x, y, ls, marker="o", color="black", label=tag or "|J| > 0.01, paper's τ (absolute units)")
        y = [metric(r, EFFECTIVE_SHARE_KEY) * 100 for r in rs]
        if not all(math.isnan(v) for v in y):
            ax.plot(lam_x, y, ls, marker="s", color="0.55", label=tag or "effective share, scale-free")
        ax.set_ylabel("Jacobian elements (% of k²)")
    for ax in axes.flat:
        _lam_axis(ax, lams)
    axes.flat[0].legend(frameon=False, fontsize=7)
    axes.flat[5].legend(frameon=False, fontsize=7)
    fig.suptitle("Fig. 4 — quality and sparsity against the Jacobian coefficient λ", fontweight="bold")
    if len(sites) > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls=styles[i % len(styles)], color="0.3", label=_site_title(site))
                   for i, site in enumerate(sites)]
        fig.legend(handles=handles, loc="lower center", ncol=len(sites), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        fig.tight_layout()
    _caption(fig, notes)
    return _save(fig, out_dir, "fig4")


def fig5(results: Sequence[PairResult], out_dir: Path) -> list[Path]:
    """CE loss score (mean of both SAEs) against the share of |J| > τ*, one point per λ.

    τ* is the site's headline τ (the median of its λ = 0 pair's non-zero |J|; summary.md); a site
    evaluated without per-token arrays falls back to the paper's absolute τ = 0.01, and the axis says which.
    """
    plt = _plt()
    trained = [r for r in results if r.control == "trained"]
    if not trained:
        raise ValueError("fig5 needs trained pairs; none among the inputs")
    fig, ax = plt.subplots(figsize=(6, 4.4))
    markers = ["o", "s", "^", "D"]
    notes: list[str] = []
    headline = headline_columns(results)
    used_paper_tau = False
    for si, site in enumerate(sites_of(trained)):
        rs = sorted([r for r in trained if r.site == site], key=lambda r: r.lam)
        shares = [headline.get(r.key, {}).get(HEADLINE_FRAC_KEY, math.nan) for r in rs]
        if any(math.isnan(v) for v in shares):
            shares, used_paper_tau = [metric(r, JAC_FRAC_KEY) for r in rs], True
        x, y, skipped = _finite_points([v * 100 for v in shares], [ce_score_mean(r) for r in rs], [r.lam for r in rs])
        if skipped:
            refused = all(refused_sides(r) for r in rs if r.lam in skipped)
            notes.append(f"{_site_title(site)}: λ = {_lams_text(skipped)} not drawn "
                         f"({REFUSED_NOTE if refused else 'CE score or Jacobian share not measured'}).")
        rs = [r for r in rs if r.lam not in skipped]
        ax.plot(x, y, "-", color="0.6", lw=1, zorder=1)
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
        sc = ax.scatter(x, y, c=[math.log10(r.lam) if r.lam > 0 else np.nan for r in rs], cmap=cmap,
                        marker=markers[si % len(markers)], s=48, zorder=2, edgecolor="black", linewidth=0.5,
                        plotnonfinite=True, label=_site_title(site))
        for r, xi, yi in zip(rs, x, y):
            ax.annotate(f"λ={r.lam:g}", (xi, yi), xytext=(5, 4), textcoords="offset points", fontsize=8)
    if not any(len(c.get_offsets()) for c in ax.collections):
        ax.text(0.5, 0.5, "no point to draw: see the note below", transform=ax.transAxes, ha="center", color="0.4")
    ax.margins(x=0.12, y=0.08)
    if used_paper_tau:
        ax.set_xlabel("active Jacobian elements with |J| > 0.01, the paper's absolute τ (% of k²)  ← sparser")
        notes.append("No per-token arrays for some site (an older evaluation): its x is the share above the paper's "
                     "τ = 0.01 in absolute units.")
    else:
        ax.set_xlabel("active Jacobian elements with |J| > τ* (% of k²)  ← sparser")
        notes.append("τ* = the median of the non-zero |J| of the site's λ = 0 pair (summary.md, 'Headline τ').")
    ax.set_ylabel("CE loss score (mean of input and output SAE)")
    ax.set_title("Fig. 5 — reconstruction vs Jacobian sparsity across λ", fontweight="bold")
    if len(sites_of(trained)) > 1:
        ax.legend(frameon=False)
    cb = fig.colorbar(sc, ax=ax, pad=0.02)
    cb.set_label("log10 λ (λ = 0 in grey)")
    fig.tight_layout()
    _caption(fig, notes)
    return _save(fig, out_dir, "fig5")


def fig7(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """Shares of |J| > τ on the trained model vs its random re-initialisation, λ = 0 and JSAE."""
    plt = _plt()
    # a site without any re-init pair (a planted model) has nothing to compare: left out, not an error
    sites = sites_of([r for r in results if r.control == "reinit"])
    if not sites:
        raise ValueError("fig7 needs re-init pairs (trained vs re-initialised model); none among the inputs")
    fig, axes = plt.subplots(1, len(sites), figsize=(6 * len(sites), 3.8), squeeze=False)
    for ax, site in zip(axes[0], sites):
        picks = {
            "trained, λ = 0": pick_pair(results, site, "trained", 0.0),
            f"trained, λ = {jsae_lam:g}": pick_pair(results, site, "trained", jsae_lam),
            "re-init, λ = 0": pick_pair(results, site, "reinit", 0.0),
            f"re-init, λ = {jsae_lam:g}": pick_pair(results, site, "reinit", jsae_lam),
        }
        _need(picks, "fig7")
        colors = [COLORS["traditional"], COLORS["jsae"], COLORS["reinit_traditional"], COLORS["reinit_jsae"]]
        labels = ["traditional SAEs, trained LM", f"JSAEs (λ = {jsae_lam:g}), trained LM",
                  "traditional SAEs, re-initialised LM", f"JSAEs (λ = {jsae_lam:g}), re-initialised LM"]
        _grouped_bars(ax, THRESHOLDS, [(lab, _threshold_shares(r, THRESHOLDS), c)
                                       for lab, r, c in zip(labels, picks.values(), colors)])
        ax.set_ylabel("active Jacobian elements with |J| > τ (% of k²)")
        ax.set_title(_site_title(site))
        ax.legend(frameon=False, fontsize=7, loc="upper center", ncol=2)
    fig.suptitle("Fig. 7 — Jacobian sparsity: trained LM vs randomly re-initialised LM", fontweight="bold")
    _caption(fig, ["τ is absolute and the two models' J are in different units, so these bars mix units and "
                   "sparsity; the scale-free comparisons are in claims.csv (effective share; shares at each model's "
                   "own λ = 0 τ*)."])
    return _save(fig, out_dir, "fig7")


def _curve_examples(curves: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """One stored sweep per class (linear / JumpReLU / other), if the sample has one."""
    labels = ("linear", "jumprelu", "other")
    idx = curves.get("curve_index", np.zeros(0, dtype=int))
    xs, ys = curves.get("curve_xs"), curves.get("curve_ys")
    label = curves.get("label")
    out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {name: None for name in labels}
    if xs is None or ys is None or label is None or len(idx) == 0:
        return out
    for row, sample in enumerate(idx):
        name = labels[int(label[sample])] if int(label[sample]) < len(labels) else None
        if name is not None and out[name] is None:
            out[name] = (xs[row], ys[row])
    return out


def fig8(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """(a) example functions s_x,j → s_y,i, (b) class shares, (c) |Δs_y,i| against |J_ij|."""
    plt = _plt()
    sites = sites_of([r for r in results if r.probes])
    if not sites:
        raise ValueError("fig8 needs probes.json inputs (linearity probes); none among the inputs")
    fig, axes = plt.subplots(len(sites), 3, figsize=(14, 4.0 * len(sites)), squeeze=False)
    for row, site in zip(axes, sites):
        base, jsae = _base_and_jsae(results, site, jsae_lam, "fig8")
        curves = jsae.curves()
        ax = row[0]
        for name, ex in _curve_examples(curves).items():
            if ex is not None:
                label = name if name != "jumprelu" else "JumpReLU"
                ax.plot(ex[0], ex[1], color=CLASS_COLORS[name], lw=1.8, label=label)
        ax.set_xlabel("input latent activation s_x,j (swept)")
        ax.set_ylabel("output latent activation s_y,i")
        ax.set_title(f"(a) example functions, λ = {jsae_lam:g} — {_site_title(site)}")
        ax.legend(frameon=False)
        ax = row[1]
        names = [("linear", "linear"), ("jumprelu", "JumpReLU"), ("other", "other")]
        xpos = np.arange(2)
        bottom = np.zeros(2)
        for key, lab in names:
            vals = np.array([metric(base, probe_frac_key(key)), metric(jsae, probe_frac_key(key))]) * 100
            ax.bar(xpos, vals, 0.6, bottom=bottom, color=CLASS_COLORS[key], edgecolor="black", linewidth=0.4, label=lab)
            for xi, v, b in zip(xpos, vals, bottom):
                if v >= 3:
                    ax.text(xi, b + v / 2, f"{v:.1f}%", ha="center", va="center", fontsize=8)
            bottom += np.nan_to_num(vals)
        ax.set_xticks(xpos)
        ax.set_xticklabels(["traditional (λ = 0)", f"JSAE (λ = {jsae_lam:g})"])
        ax.set_ylabel("sampled functions f_s,(i,j) (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.5, 2.2)  # room on the right so the legend never covers a bar's label
        ax.set_title("(b) shape of the scalar functions")
        ax.legend(frameon=False, loc="center right", fontsize=7)
        ax = row[2]
        jac, delta = np.abs(curves.get("jac", np.zeros(0))), np.abs(curves.get("delta", np.zeros(0)))
        split = curves.get("split", np.zeros(len(jac), dtype=int))
        rng = np.random.default_rng(0)
        keep = rng.permutation(len(jac))[:1000]
        for si, name in enumerate(("on_line", "cluster", "outlier")):
            sel = keep[split[keep] == si]
            frac = metric(jsae, probe_frac_key(name)) * 100
            ax.scatter(jac[sel], delta[sel], s=6, alpha=0.6, color=SPLIT_COLORS[name],
                       label=f"{name.replace('_', ' ')} ({frac:.1f}%)")
        hi = float(max(jac.max(initial=0), delta.max(initial=0), 1e-3))
        ax.plot([0, hi], [0, hi], color="black", lw=0.8, ls="--", label="|Δs_y| = |J|")
        ax.set_xlabel("|J_ij| at the observed s_x")
        ax.set_ylabel("|Δs_y,i| per unit, s_x,j lowered by one step")
        ax.set_title(f"(c) Jacobian predicts the change (λ = {jsae_lam:g}, ≤1000 samples)")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle("Fig. 8 — how linear is f_s?", fontweight="bold")
    fig.tight_layout()
    return _save(fig, out_dir, "fig8")


def fig32(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """(a) histogram of |J| over the k×k active elements, (b) its CDF; traditional vs JSAE."""
    plt = _plt()
    sites = sites_of([r for r in results if r.control == "trained"])
    fig, axes = plt.subplots(len(sites), 2, figsize=(11, 3.8 * len(sites)), squeeze=False)
    for row, site in zip(axes, sites):
        base, jsae = _base_and_jsae(results, site, jsae_lam, "fig32")
        xmax, first_edge, xmax_cdf = 0.0, math.inf, 0.0
        grid = [TokenStats.of(r) for r in (base, jsae)]
        use_grid = all(g is not None for g in grid)  # the log grid spans any units; the histogram stops at 1.5
        for r, g, lab, color in ((base, grid[0], "traditional SAEs (λ = 0)", COLORS["traditional"]),
                                 (jsae, grid[1], f"JSAEs (λ = {jsae_lam:g})", COLORS["jsae"])):
            st = r.stats()
            edges, counts = st["hist_edges"], st["hist_counts"].astype(float)
            nonzero = np.flatnonzero(counts)
            # zoom on the occupied bins; the overflow share is in the legend
            xmax = max(xmax, float(edges[nonzero[-1] + 1]) if len(nonzero) else float(edges[-1]))
            overflow = float(np.asarray(st.get("hist_overflow", 0)))
            total = counts.sum() + overflow
            row[0].stairs(counts / max(total, 1), edges, color=color, lw=1.5,
                          label=f"{lab}; {100 * overflow / max(total, 1):.2g}% above {edges[-1]:g}")
            if use_grid and g is not None:
                # P(|J| <= tau_g) from each token's counts above the grid (exact at the grid points)
                taus = tau_grid(g.exponents, g.per_decade)
                cdf = 1 - g.counts.sum(0) / (g.n * g.n_elements)
                row[1].plot(taus, cdf, color=color, lw=1.5, label=lab)
                # the axis starts where the CDF leaves the zero rows' floor (+0.1%) and ends where it reaches 1
                rising = np.flatnonzero(cdf > cdf[0] + 1e-3)
                first_edge = min(first_edge, float(taus[max(rising[0] - 1, 0)]) if len(rising) else float(taus[0]))
                xmax_cdf = max(xmax_cdf, float(taus[-1]))
            else:
                first_edge = min(first_edge, float(edges[1]))
                cdf = st.get("cdf", np.cumsum(counts) / max(total, 1))
                # the CDF is known at the bins' right edges (all > 0): P(|J| ≤ edge)
                row[1].plot(edges[1:], cdf, color=color, lw=1.5, label=lab)
        tau_star = headline_taus(results, site)["trained"]
        for tau, style, name in ((tau_star, "-", f"headline τ* = {tau_star:.3g} (median of λ = 0 non-zero |J|)"),
                                 (PAPER_TAU, ":", f"paper's τ = {PAPER_TAU:g} (absolute units)")):
            if math.isfinite(tau):
                row[1].axvline(tau, color="0.3", ls=style, lw=1, label=name)
        row[0].set_yscale("log")
        row[0].set_xlim(0, xmax * 1.05)
        row[0].set_xlabel("|J| of active elements")
        row[0].set_ylabel("fraction of elements per bin")
        row[0].set_title(f"(a) histogram — {_site_title(site)}")
        row[0].legend(frameon=False, fontsize=7)
        # |J| ≥ 0: a log axis over the measured range (first bin edge .. last occupied bin); a symlog axis
        # would also draw an empty negative half
        row[1].set_xscale("log")
        if use_grid:
            row[1].set_xlim(first_edge, xmax_cdf)
            row[1].set_xlabel("|J| (log scale; from each token's counts above a log grid, first "
                              f"{grid[0].n if grid[0] else 0} tokens)")
        else:
            row[1].set_xlim(first_edge, max(xmax * 1.5, first_edge * 10))
            row[1].set_xlabel(f"|J| of active elements (log scale, from the first bin edge {first_edge:g})")
        row[1].set_ylabel("P(|J| ≤ x)")
        row[1].set_ylim(0, 1.02)
        row[1].set_title("(b) cumulative distribution")
        row[1].legend(frameon=False, fontsize=7, loc="upper left")
    fig.suptitle("Fig. 32 — distribution of Jacobian elements", fontweight="bold")
    fig.tight_layout()
    return _save(fig, out_dir, "fig32")


LP_KEYS = ((lp_key(1.0), "L1"), (lp_key(2.0), "L2"), (lp_key(4.0), "L4"), (lp_key(math.inf), "L∞"))


def fig35(results: Sequence[PairResult], out_dir: Path) -> list[Path]:
    """Lp norms of the flattened k×k Jacobian against λ, relative to λ = 0 (sparser vs smaller)."""
    plt = _plt()
    trained = [r for r in results if r.control == "trained"]
    sites = sites_of(trained)
    if not sites:
        raise ValueError("fig35 needs trained pairs; none among the inputs")
    fig, axes = plt.subplots(1, len(sites), figsize=(5.5 * len(sites), 3.8), squeeze=False)
    for ax, site in zip(axes[0], sites):
        rs = sorted([r for r in trained if r.site == site], key=lambda r: r.lam)
        base = pick_pair(results, site, "trained", 0.0)
        _need({"λ = 0": base}, "fig35")
        for key, name in LP_KEYS:
            ref = metric(base, key)
            ax.plot([r.lam for r in rs], [metric(r, key) / ref for r in rs], marker="o", label=f"{name} norm")
        ax.set_yscale("log")
        ax.set_ylabel("mean per-token norm of J, relative to λ = 0")
        _lam_axis(ax, [r.lam for r in rs])
        ax.set_title(_site_title(site))
        ax.legend(frameon=False)
    fig.suptitle("Fig. 35 — Lp norms of J against λ: sparser or only smaller?", fontweight="bold")
    fig.tight_layout()
    return _save(fig, out_dir, "fig35")


def alive_latents(r: PairResult) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the output and input latents alive on the evaluation tokens (fired on ≥ 1 token).

    From the firing counts evaluation writes to ``jacobian_stats.npz`` (``out_fired_count``,
    ``in_fired_count``; :func:`jsae.eval.metrics.firing_counts`, the same count behind ``dead_fraction``).
    """
    st = r.stats()
    missing = [k for k in ("out_fired_count", "in_fired_count") if k not in st]
    if missing:
        raise ValueError(f"jacobian_stats.npz of {r.label} has no {' / '.join(missing)}; expected the firing counts "
                         "evaluation writes (re-run the evaluation of this pair)")
    return np.asarray(st["out_fired_count"]) > 0, np.asarray(st["in_fired_count"]) > 0


def global_shares(r: PairResult, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Fig. 36: share (%) of the alive × alive entries of the mean-|J| matrix above each threshold.

    :func:`jsae.eval.metrics.global_shares` (the definition behind ``jac/global_frac_above_*``) on the
    npz arrays: 100% = (alive output latents) × (alive input latents), alive = fired on ≥ 1 evaluation
    token; entries touching a dead latent do not count.
    """
    st = r.stats()
    alive_out, alive_in = alive_latents(r)
    if "global_out_latent" not in st or "global_in_latent" not in st:
        raise ValueError(f"jacobian_stats.npz of {r.label} has no global_out_latent / global_in_latent; expected "
                         "the global matrix evaluation writes (re-run the evaluation of this pair)")
    return metric_global_shares(st["global_mean_abs"], st["global_out_latent"], st["global_in_latent"],
                                alive_out, alive_in, thresholds) * 100.0


def fig36(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """Global sparsity: the mean-|J| matrix over tokens (100% = alive n_out · alive n_in), traditional vs JSAE."""
    plt = _plt()
    sites = sites_of([r for r in results if r.control == "trained"])
    fig, axes = plt.subplots(len(sites), 2, figsize=(11, 3.8 * len(sites)), squeeze=False)
    notes = ["(a) 100% = alive output latents × alive input latents (alive = fired on ≥ 1 evaluation token; "
             "dead latents have no entries and are left out of the denominator)."]
    for row, site in zip(axes, sites):
        base, jsae = _base_and_jsae(results, site, jsae_lam, "fig36")
        _grouped_bars(row[0], THRESHOLDS, [
            ("traditional SAEs (λ = 0)", global_shares(base), COLORS["traditional"]),
            (f"JSAEs (λ = {jsae_lam:g})", global_shares(jsae), COLORS["jsae"]),
        ], percent_axis=False)
        row[0].set_yscale("log")
        row[0].set_ylabel("mean |J| > τ (% of alive n_out · alive n_in)")
        row[0].set_title(f"(a) global shares — {_site_title(site)}")
        row[0].legend(frameon=False, fontsize=7)
        alive = []
        for r, lab, color in ((base, "traditional (λ = 0)", COLORS["traditional"]),
                              (jsae, f"JSAE (λ = {jsae_lam:g})", COLORS["jsae"])):
            st = r.stats()
            vals = np.sort(np.asarray(st["global_mean_abs"], dtype=float))[::-1]
            vals = vals[vals > 0]
            if len(vals):
                row[1].plot(np.arange(1, len(vals) + 1), vals, color=color, lw=1.5, label=lab)
            a_out, a_in = alive_latents(r)
            alive.append(f"{lab}: {int(a_out.sum())} of {len(a_out)} output × {int(a_in.sum())} of {len(a_in)} input")
        notes.append(f"{_site_title(site)}, alive latents — " + "; ".join(alive) + ".")
        row[1].set_xscale("log")
        row[1].set_yscale("log")
        row[1].set_xlabel("rank of (output, input) latent pair")
        row[1].set_ylabel("mean |J| (tokens where output latent active)")
        row[1].set_title("(b) entries sorted by size")
        row[1].legend(frameon=False, fontsize=7)
    fig.suptitle("Fig. 36 — global sparsity of the mean |J| over tokens", fontweight="bold")
    fig.tight_layout()
    _caption(fig, notes)
    return _save(fig, out_dir, "fig36")


RECOVERY_PANELS = (
    ("(a) edges", ((EDGE_ROC_AUC_KEY, "ROC AUC", "#1f77b4", "o"), (EDGE_BEST_F1_KEY, "best F1", "#d62728", "s"),
                   (EDGE_PR_AUC_KEY, "PR AUC", "#2ca02c", "^"))),
    ("(b) features", ((recovery_key("in", "mean_max_cosine"), "input SAE vs D_x", "#9467bd", "o"),
                      (recovery_key("out", "mean_max_cosine"), "output SAE vs D_y", "#ff7f0e", "s"))),
)


def fig_recovery(results: Sequence[PairResult], jsae_lam: float, out_dir: Path) -> list[Path]:
    """A planted ground truth's recovery against λ (λ = 0: traditional SAEs), one row per planted site: (a) edge
    ROC AUC, best F1 and PR AUC, (b) the mean max cosine of each SAE with the true features (chance dashed).
    Every seed is a dot; the line joins the means over seeds."""
    plt = _plt()
    planted = [r for r in results if r.control == "trained" and r.has_recovery]
    sites = sites_of(planted)
    if not sites:
        raise ValueError("fig_recovery needs recovery.json of a planted model's pairs; none among the inputs")
    fig, axes = plt.subplots(len(sites), 2, figsize=(10, 3.6 * len(sites)), squeeze=False)
    for row, site in zip(axes, sites):
        rs = [r for r in planted if r.site == site]
        lams = sorted({r.lam for r in rs})
        for ax, (title, series) in zip(row, RECOVERY_PANELS):
            for key, label, color, marker in series:
                pts = [(r.lam, metric(r, key)) for r in rs if math.isfinite(metric(r, key))]
                means = [(lam, float(np.mean([v for x, v in pts if x == lam]))) for lam in lams
                         if any(x == lam for x, _ in pts)]
                ax.scatter([x for x, _ in pts], [v for _, v in pts], color=color, marker=marker, s=14, alpha=0.5)
                ax.plot([x for x, _ in means], [v for _, v in means], "-", color=color, marker=marker, label=label)
            if title.startswith("(b)"):
                for side, color in (("in", "#9467bd"), ("out", "#ff7f0e")):
                    chance = metric(rs[0], recovery_key(side, "chance_max_cosine"))
                    if math.isfinite(chance):
                        ax.axhline(chance, color=color, ls=":", lw=1, label=f"chance ({side})")
                ax.set_ylabel("mean max cosine with the true features")
            else:
                ax.axhline(0.5, color="0.5", ls=":", lw=1, label="ROC AUC chance")
                ax.set_ylabel("score against the planted edges")
            ax.axvline(jsae_lam, color="0.7", ls="--", lw=1)
            _lam_axis(ax, lams)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{_site_title(site)} — {title}")
            ax.legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle("Planted ground truth — recovery against λ (λ = 0: traditional SAEs)", fontweight="bold")
    fig.tight_layout()
    n_seeds = max(len({r.seed for r in planted if r.site == s and r.lam == lam}) for s in sites
                  for lam in {r.lam for r in planted if r.site == s})
    _caption(fig, [f"Dots: one training seed each (up to {n_seeds} per λ); lines: mean over seeds. Dashed vertical "
                   f"line: the JSAE λ = {jsae_lam:g}. Definitions: docs/metrics.md, 'Planted ground truth'."])
    return _save(fig, out_dir, "fig_recovery")


def render(names: Sequence[str], results: Sequence[PairResult], out_dir: str | Path,
           jsae_lam: float | None = None, baselines: Sequence[BaselineResult] = ()) -> list[Path]:
    """Render the named figures into ``out_dir`` (``figN.pdf`` and ``figN.png`` each); ``baselines``: the peer
    methods' evaluations, which fig_methods draws beside the pairs."""
    unknown = [n for n in names if n not in ALL_FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; expected one of {', '.join(ALL_FIGURES)}")
    if not results:
        raise ValueError("no evaluation or probe results were given; expected evaluation.json / probes.json files")
    lam = default_jsae_lam(results) if jsae_lam is None else float(jsae_lam)
    if lam <= 0:
        raise ValueError(f"jsae_lam={lam:g} is invalid; expected the λ > 0 shown as 'JSAE' against λ = 0")
    every_seed = list(results)  # fig_recovery shows the seeds' spread
    results = base_seed(results)  # seed replicates are the claims' business; a figure shows one training run
    out = Path(out_dir)
    makers: dict[str, Callable[[], list[Path]]] = {
        "fig_recovery": lambda: fig_recovery(every_seed, lam, out),
        "fig_methods": lambda: fig_methods(every_seed, baselines, out),
        "fig2": lambda: fig2(results, lam, out),
        "fig4": lambda: fig4(results, out),
        "fig5": lambda: fig5(results, out),
        "fig7": lambda: fig7(results, lam, out),
        "fig8": lambda: fig8(results, lam, out),
        "fig32": lambda: fig32(results, lam, out),
        "fig35": lambda: fig35(results, out),
        "fig36": lambda: fig36(results, lam, out),
    }
    written: list[Path] = []
    for name in names:
        written += makers[name]()
        log.info("wrote %s.pdf and %s.png", out / name, out / name)
    return written


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jsae figures",
        description="Render the paper's figures (PDF + PNG) from evaluation.json / probes.json files. "
        f"Figures: {', '.join(ALL_FIGURES)}.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--inputs", nargs="+", metavar="FILE",
                   help="evaluation.json / probes.json files (npz siblings are read next to them), and the peer "
                   "methods' baseline_evaluation.json; default: every such file under --eval-root")
    p.add_argument("--eval-root", default="results/eval", help="where to look when --inputs is not given")
    p.add_argument("--runs-root", default="results/runs", help="accepted for symmetry with the workflow; unused")
    p.add_argument("--out-dir", default="results/figures", help="output directory")
    p.add_argument("--only", nargs="+", choices=ALL_FIGURES, metavar="FIG", help="render only these "
                   f"({', '.join(ALL_FIGURES)}; default: the paper's, and fig_recovery where recovery.json is given)")
    p.add_argument("--jsae-lam", type=float, default=None,
                   help="the λ shown as 'JSAE' against λ = 0 (default: the largest trained λ ≤ 1)")
    p.add_argument("--log-file", default=None, help="also write logs here")
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    paths = args.inputs if args.inputs else [*find_results(args.eval_root), *find_baselines(args.eval_root)]
    pair_paths, baseline_paths = split_baseline_paths(paths)
    results, baselines = load_results(pair_paths), load_baselines(baseline_paths)
    default = (FIGURES + (("fig_recovery",) if any(r.has_recovery for r in results) else ())
               + (("fig_methods",) if baselines else ()))
    render(args.only or default, results, args.out_dir, args.jsae_lam, baselines)
    return 0
