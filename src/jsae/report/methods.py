"""The JSAE beside its peer methods on the same activations: one row per method and site, and its figure.

Every method at a site is trained from the same activation cache with the same width, k, recipe and tokens
(:mod:`jsae.train.baseline`), and evaluated on the same validation tokens. What each column is, per method:

* **fidelity** — the method's replacement of the MLP output spliced into the LM: ``out/ce_loss_score``
  (CE loss score, 1 = as the clean model, 0 = as zero-ablating the MLP output), ``kl/recon_out`` (nats per token)
  and ``1 − out/explained_variance`` (FVU of y = MLP(x)). For a transcoder ``ŷ = T(x)``: it predicts the MLP's
  output from its input. For a pair (JSAE at λ > 0, a pair of traditional SAEs at λ = 0) ``ŷ = sae_out(y)``: it
  reconstructs the output from the output. A transcoder's task is the harder one, so the table compares what
  each method offers a circuit analysis, not two reconstructions of one quantity.
* **computation per token** — how many latent-to-latent connections carry the MLP's computation for one token.
  A pair: the effective number of Jacobian entries among the ``k_in × k_out`` active pairs of latents,
  ``jac/effective_share × k_in × k_out`` (a participation ratio: scale-free, so rescaled activations do not change
  it). A transcoder: its ``k`` active latents, each one input-to-output route (its edges join each latent only to
  itself; :mod:`jsae.eval.baseline`). A skip transcoder adds a dense linear path (``W_skip``, ``d_in × d_out``)
  that no count of latents sees: its row is marked so.

Means are over training seeds (``n_seeds``); a refused CE score (zero-ablation below evaluation's floor) is NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from jsae.eval.baseline import EVALUATION_FILENAME
from jsae.eval.metrics import (
    EFFECTIVE_SHARE_KEY,
    OUT_CE_SCORE_KEY,
    OUT_CE_SCORE_REFUSED_KEY,
    OUT_EV_KEY,
    splice_key,
)
from jsae.io import read_json
from jsae.report.results import PairResult
from jsae.train.baseline import RUN_PATH

#: Where the workflow puts a baseline's evaluation: ``<model>/L<layer>/<control>/<method>/seed<seed>/<file>``.
BASELINE_PATH = re.compile(RUN_PATH + r"/[^/]+$")
#: The methods, in table order, with their labels (pairs: by λ).
METHOD_LABELS = {"transcoder": "transcoder", "skip_transcoder": "skip transcoder"}
KL_KEY = splice_key("kl", "recon_out")
#: The columns of the methods table (means over seeds), with their units.
COLUMNS = {
    "edges_per_token": "computation per token (latent connections)",
    "ce_loss_score": "CE loss score (output spliced)",
    "kl": "KL (nats/token)",
    "fvu": "FVU of y",
    "dead_fraction": "dead latents (share)",
}


@dataclass
class BaselineResult:
    """One evaluated baseline: identity and its scalar metrics (``baseline_evaluation.json``)."""

    model: str
    layer: int
    control: str
    method: str
    seed: int
    k: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def site(self) -> tuple[str, int]:
        return (self.model, self.layer)


def split_baseline_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(the pairs' files, the baselines' ``baseline_evaluation.json``) of one list of inputs."""
    paths = [Path(p) for p in paths]
    return [p for p in paths if p.name != EVALUATION_FILENAME], [p for p in paths if p.name == EVALUATION_FILENAME]


def find_baselines(eval_root: str | Path) -> list[Path]:
    """Every ``baseline_evaluation.json`` under ``eval_root``."""
    return sorted(Path(eval_root).rglob(EVALUATION_FILENAME))


def load_baselines(paths: Iterable[str | Path]) -> list[BaselineResult]:
    """Read ``baseline_evaluation.json`` files; the workflow's path names the model, the JSON the rest."""
    out = []
    for p in map(Path, paths):
        doc = read_json(p)
        ident, metrics = doc.get("baseline"), doc.get("metrics")
        if not isinstance(ident, dict) or not isinstance(metrics, dict):
            raise ValueError(f"{p} has no 'baseline' and 'metrics' objects; expected a baseline_evaluation.json "
                             "from python -m jsae evaluate-baseline")
        m = BASELINE_PATH.search(p.as_posix())
        model = m["model"] if m else Path(str(ident.get("model", "model"))).name
        values = {k: math.nan if v is None else float(v) for k, v in metrics.items()
                  if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        out.append(BaselineResult(model=model, layer=int(ident["layer"]), control=str(ident["control"]),
                                  method=str(ident["method"]), seed=int(ident.get("seed", 0)), k=int(ident["k"]),
                                  metrics=values))
    return sorted(out, key=lambda b: (b.model, b.layer, b.control, b.method, b.seed))


def pair_label(lam: float) -> str:
    return "SAE pair (λ = 0)" if lam == 0 else f"JSAE (λ = {lam:g})"


def _ce_score(metrics: dict[str, float]) -> float:
    if metrics.get(OUT_CE_SCORE_REFUSED_KEY, 0.0) == 1.0:
        return math.nan
    return metrics.get(OUT_CE_SCORE_KEY, math.nan)


def pair_edges_per_token(r: PairResult) -> float:
    """The effective number of Jacobian entries a pair's computation uses per token (module docstring)."""
    k_in = r.identity.get("k_in", r.identity.get("k"))
    k_out = r.identity.get("k_out", r.identity.get("k"))
    share = r.metrics.get(EFFECTIVE_SHARE_KEY, math.nan)
    return float(share) * int(k_in) * int(k_out) if k_in and k_out else math.nan


def method_rows(pairs: Sequence[PairResult], baselines: Sequence[BaselineResult]) -> pd.DataFrame:
    """One row per trained pair and baseline (every seed): site, control, method, λ (pairs), seed and the
    :data:`COLUMNS` values."""
    rows = []
    for r in pairs:
        rows.append({"model": r.model, "layer": r.layer, "control": r.control, "method": pair_label(r.lam),
                     "lam": r.lam, "seed": r.seed, "edges_per_token": pair_edges_per_token(r),
                     "ce_loss_score": _ce_score(r.metrics), "kl": r.metrics.get(KL_KEY, math.nan),
                     "fvu": 1.0 - r.metrics.get(OUT_EV_KEY, math.nan),
                     "dead_fraction": r.metrics.get("out/dead_fraction", math.nan)})
    for b in baselines:
        rows.append({"model": b.model, "layer": b.layer, "control": b.control,
                     "method": METHOD_LABELS.get(b.method, b.method), "lam": math.nan, "seed": b.seed,
                     "edges_per_token": float(b.k), "ce_loss_score": _ce_score(b.metrics),
                     "kl": b.metrics.get(KL_KEY, math.nan), "fvu": 1.0 - b.metrics.get(OUT_EV_KEY, math.nan),
                     "dead_fraction": b.metrics.get("out/dead_fraction", math.nan)})
    return pd.DataFrame(rows, columns=["model", "layer", "control", "method", "lam", "seed", *COLUMNS])


def methods_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (site, control, method), with ``n_seeds``; pairs by λ first, then the baselines."""
    if rows.empty:
        return pd.DataFrame(columns=["model", "layer", "control", "method", "n_seeds", *COLUMNS])
    order = rows["lam"].fillna(np.inf)  # pairs by λ, then the baselines in label order
    grouped = (rows.assign(_order=order)
               .groupby(["model", "layer", "control", "method"], sort=False)
               .agg(_order=("_order", "first"), n_seeds=("seed", "nunique"),
                    **{c: (c, "mean") for c in COLUMNS}).reset_index())
    control = grouped["control"].map({"trained": 0, "reinit": 1}).fillna(2)
    return (grouped.assign(_control=control)
            .sort_values(["model", "layer", "_control", "_order", "method"], kind="stable")
            .drop(columns=["_order", "_control"]).reset_index(drop=True))


def methods_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its columns named with their units, a skip transcoder's computation marked."""
    out = table.copy()
    if not out.empty:
        skip = out["method"] == METHOD_LABELS["skip_transcoder"]
        out["edges_per_token"] = [f"{v:.3g} + dense skip" if s else (f"{v:.3g}" if math.isfinite(v) else "")
                                  for v, s in zip(out["edges_per_token"], skip)]
    return out.rename(columns=COLUMNS)


def fig_methods(pairs: Sequence[PairResult], baselines: Sequence[BaselineResult], out_dir: Path) -> list[Path]:
    """Computation per token against the CE loss score, every method, one panel per site (trained models):
    the pairs as a line over λ (λ = 0: traditional SAEs), each baseline a marker; every seed a dot, the mean
    over seeds a large marker."""
    from matplotlib.ticker import FuncFormatter

    from jsae.report.figures import _caption, _plt, _save, _site_title

    rows = method_rows([r for r in pairs if r.control == "trained"],
                       [b for b in baselines if b.control == "trained"])
    if rows.empty or not baselines:
        raise ValueError("fig_methods needs the baselines' baseline_evaluation.json and the pairs' evaluation.json; "
                         "set baselines.enabled: true")
    plt = _plt()
    sites = sorted({(m, int(layer)) for m, layer in zip(rows["model"], rows["layer"])})
    fig, axes = plt.subplots(1, len(sites), figsize=(5.2 * len(sites), 4.2), squeeze=False)
    markers = {METHOD_LABELS["transcoder"]: ("s", "#2ca02c"), METHOD_LABELS["skip_transcoder"]: ("D", "#9467bd")}
    for ax, site in zip(axes[0], sites):
        at = rows[(rows["model"] == site[0]) & (rows["layer"] == site[1])].copy()
        # a site without a CE score (a planted model has no LM) plots the explained variance of y instead
        at["y"] = at["ce_loss_score"] if at["ce_loss_score"].notna().any() else 1.0 - at["fvu"]
        ylabel = ("CE loss score, output spliced (1 = clean)" if at["ce_loss_score"].notna().any()
                  else "explained variance of y = MLP(x) (1 − FVU; no LM here)")
        pair_rows = at[at["lam"].notna()]
        pair_means = pair_rows.groupby("lam")[["edges_per_token", "y"]].mean().reset_index().sort_values("lam")
        ax.scatter(pair_rows["edges_per_token"], pair_rows["y"], color="#d62728", s=10, alpha=0.4)
        ax.plot(pair_means["edges_per_token"], pair_means["y"], "-o", color="#d62728",
                label="SAE pairs over λ (λ = 0 … JSAEs)")
        for _, p in pair_means.iterrows():
            if math.isfinite(p["edges_per_token"]) and math.isfinite(p["y"]):
                ax.annotate(f"λ={p['lam']:g}", (p["edges_per_token"], p["y"]), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")
        for label, (marker, color) in markers.items():
            b = at[at["method"] == label]
            if b.empty:
                continue
            ax.scatter(b["edges_per_token"], b["y"], color=color, marker=marker, s=12, alpha=0.4)
            ax.scatter([b["edges_per_token"].mean()], [b["y"].mean()], color=color, marker=marker, s=60,
                       label=label + (" (+ dense skip path)" if label == METHOD_LABELS["skip_transcoder"] else ""))
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 16 and 100, not 1.6 x 10^1
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("computation per token (latent connections; log)")
        ax.set_ylabel(ylabel)
        ax.set_title(_site_title(site))
        ax.legend(frameon=False, fontsize=7, loc="best")
    fig.suptitle("The JSAE and its peers on the same activations: sparsity of computation vs downstream fidelity",
                 fontweight="bold")
    fig.tight_layout()
    notes = ["Pairs: effective Jacobian entries (jac/effective_share × k_in × k_out), output SAE spliced (ŷ = "
             "sae_out(y)). Transcoders: their k active latents, T(x) spliced in place of the MLP output.",
             "Small dots: one training seed each; large markers: mean over seeds. Upper left is better. "
             "Definitions: docs/metrics.md, 'Methods'."]
    _caption(fig, notes)
    return _save(fig, out_dir, "fig_methods")
