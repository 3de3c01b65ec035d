"""Interaction sparsity, SCALAR-style: how few input-latent -> output-latent edges of a pair carry the MLP's effect.

**Source.** SCALAR (Gordon, Quarel, Lai, Fillingham, Heimersheim, Poncini 2025, "SCALAR: Benchmarking SAE
Interaction Sparsity in Toy LLMs", arXiv 2511.07572). Its abstract defines the benchmark as ranking the
connections between an upstream and a downstream SAE, ablating edges and reading the downstream KL divergence,
summarised by an area under that curve. The paper's body was not available to us; every detail below was read
from the authors' code, github.com/Stefan-Heimersheim/gpt-circuits (the fork of peterlai/gpt-circuits that holds
SCALAR; branch ``main`` at eaa0b18, branch ``neurips`` at 91fd8ae, the paper's snapshot), for the MLP
("feedforward layer") pairs the paper compares JSAEs on:

1. **Pruned computation** — ``circuits/search/edges.py``, ``compute_batched_downstream_magnitudes_from_edges_mlp``
   with ``circuits/search/divergence.py``, ``compute_downstream_magnitudes_mlp``: for each downstream (output)
   feature i, the upstream (input) features without a kept edge into i are **zero-ablated**
   (``circuits/search/ablation.py``, ``ResampleAblator.patch`` with ``k_nearest=0``), the kept ones decoded by the
   input SAE, the MLP run on that reconstruction and feature i read from the output SAE's pre-activation; an
   output feature with no kept edge is zero (the "empty circuit"); TopK is applied to the assembled vector. With
   every edge kept this is the **circuit**: both SAEs spliced, the output SAE reading ``MLP(x_hat)``.
2. **Splice and curve** — ``xavier/experiments/ablation_magnitudes_FF_layer.py`` (``main``;
   ``ablation/ablation_magnitudes_FF_layer.py`` on ``neurips``): the pruned output reconstruction replaces the MLP
   output and the curve is the mean per-position KL(full model || pruned) (``kl_divergence_full_model``, the
   output ``ablation/plot_FF_layer.py`` plots) against the number of edges kept, log-spaced 1 ... 512^2
   (``ablation_FF_layer.sh``).
3. **Edges** — token-independent (``TokenlessEdge``, the same edge set at every position), ranked once by an
   attribution matrix (``get_attribution_rankings``: descending, zero scores shuffled) from
   ``attributions/attributor.py`` (``neurips``; ``Andy/attributor_new.py`` on ``main``),
   ``IntegratedGradientAttributor``: per (input a, output i), the gradient of the output SAE's encoding wrt the
   input latents, summed over ``steps = 4`` points of the straight path from 0 and scaled by ``||s_x|| / steps``,
   squared, summed over tokens, square-rooted.
4. **Area** — ``ablation/utils.py`` (``neurips``), ``compute_auc_values``: ``np.trapz(mean KL, number of edges)``,
   a linear edge-count axis; lower is sparser.

**Ours** (one function per definition below; docs/metrics.md, "Interaction sparsity"):

* The pruned computation is (1) exactly, with zero ablation, at the circuit (``MLP(x_hat)``), except that only the
  circuit's active output latents (TopK-selected and > 0 at ``MLP(x_hat)``) are computed and the output SAE's
  own ReLU is applied (SCALAR computes every output feature and keeps the top k pre-activations without a ReLU).
  An edge is an (input slot, output slot) pair of the TopK codes, whether or not the input latent is > 0 (an
  edge from a silent latent carries nothing, but keeps its output latent alive as in SCALAR).
* Attribution: ``|J_ic s_x,c|`` with ``J = d s_y / d s_x`` the pair's Jacobian between active latents evaluated
  at the circuit's input ``x_hat`` — the first-order (gradient x input) term where SCALAR integrates the gradient
  along the path from 0 (its ``||s_x||`` scaling makes edges from silent latents score too; ours score 0).
* Edges ``token`` (the default): the top-m edges of each token by its own attribution — what the JSAE's
  per-token Jacobian sparsity is about; ``global``: SCALAR's token-independent edge set, ranked by the
  root-sum-square of the attribution over tokens (as SCALAR aggregates its attributions). Ties go to the lower
  (output, input) index (SCALAR shuffles zero-score edges).
* Curve: the loss (KL(clean || pruned) with an LM, as SCALAR; the fraction of ``y``'s variance *not* recovered
  without one) against the share of edges kept, m / (k_out k_in) per token (``token``) or M / (n_out n_in)
  (``global``). The fraction of the MLP's effect recovered is ``1 - loss / loss_ref`` with ``loss_ref`` the KL of
  the zero-ablated MLP (the KL score's convention) or the variance of ``y``; the circuit-normalised recovery
  ``(loss(0) - loss(m)) / (loss(0) - loss(all))`` isolates interaction sparsity from reconstruction quality
  (0 with no edge, 1 with every edge).
* Areas: trapezoids over the share axis, which is [0, 1] because budgets 0 and all are always evaluated; SCALAR's
  AUC is ``loss_area`` times the total number of edges (on the same budgets).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.eval.metrics import ReconstructionAccumulator, token_kl
from jsae.nn.jacobian import active_jacobian
from jsae.nn.pair import JSAEPair

log = logging.getLogger("jsae.eval.interaction")

#: ``token``: the top-m edges of each token by its own attribution; ``global``: one edge set for every token (SCALAR).
EDGE_MODES = ("token", "global")
#: Loss kinds of a curve: ``kl`` (KL(clean || pruned) of the LM, nats per position), ``fvu`` (fraction of the
#: variance of y unexplained by the pruned reconstruction).
LOSS_KINDS = ("kl", "fvu")
#: Fractions of the circuit's effect at which the edges needed are reported (``edges_for_{f}``).
FRACTIONS = (0.5, 0.9, 0.99)
#: The dense n_out x n_in score matrix of ``global`` edges is refused beyond this many entries (512 MiB of float64).
GLOBAL_MAX_ENTRIES = 1 << 26
#: Tokens x output slots x width per chunk of the pruned computation (bounds its memory to ~128 MiB of float64).
CHUNK_ELEMENTS = 1 << 24
#: Predicted LM tokens the KL curve reads by default (the CLI's ``--n-tokens`` for a language model).
DEFAULT_LM_TOKENS = 16_384
#: Cache rows the ``global`` ranking reads by default.
DEFAULT_SCORE_TOKENS = 65_536
PREFIX = "interaction/"


def interaction_key(name: str) -> str:
    """``interaction/{name}``: a key of interaction.json's ``metrics`` (and of the pair's MLflow run)."""
    return f"{PREFIX}{name}"


def _check_mode(edges: str) -> str:
    if edges not in EDGE_MODES:
        raise ValueError(f"edges={edges!r} is invalid; expected one of {', '.join(EDGE_MODES)}")
    return edges


# --------------------------------------------------------------------------------------------------
# The circuit of one batch: codes, the circuit's output latents and the edge attributions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """A batch of tokens through the pair as a circuit, SCALAR's "full circuit" (module docstring, 1).

    ``in_vals``/``in_idx`` ``[T, k_in]``: the input SAE's TopK code of the true MLP input x; ``out_vals``/``out_idx``
    ``[T, k_out]``: the output SAE's code of ``MLP(x_hat)``; ``attribution`` ``[T, k_out, k_in]``:
    ``|J[t, a, c] * in_vals[t, c]|`` (0 in the rows of output latents the ReLU switched off). Latents are in the
    SAEs' (scaled) units, as the pair's J.
    """

    in_vals: Tensor
    in_idx: Tensor
    out_vals: Tensor
    out_idx: Tensor
    attribution: Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.in_vals.shape[0])


def _mlp(pair: JSAEPair, x: Tensor) -> Tensor:
    """``MLP(x)`` in the SAEs' dtype (the MLP runs in its own)."""
    return pair.mlp_terms(x, with_terms=False)[0]


@torch.no_grad()
def circuit(pair: JSAEPair, x: Tensor) -> Circuit:
    """The circuit of ``x`` ``[T, d]`` (raw MLP inputs) and its edge attributions ``|J s_x|`` at ``x_hat``."""
    sae_in, sae_out = pair.sae_in, pair.sae_out
    x = x.reshape(-1, sae_in.d_in).to(sae_in.W_enc.dtype)
    in_vals, in_idx = sae_in.encode(x * pair.input_scale)
    x_hat = sae_in.decode(in_vals, in_idx) / pair.input_scale
    y_c, terms = pair.mlp_terms(x_hat)
    out_vals, out_idx = sae_out.encode(y_c * pair.output_scale)
    dtype = sae_in.W_dec.dtype
    J = active_jacobian(sae_out.W_enc, pair.mlp.W_out.to(dtype), [(W.to(dtype), d) for W, d in terms],
                        sae_in.W_dec, out_idx, in_idx, chunk_elements=pair.chunk_elements)
    # the pair's row factor: an output latent the ReLU switched off has a zero row; the scales' chain rule
    J = J * (out_vals > 0).to(dtype).unsqueeze(-1) * (pair.output_scale / pair.input_scale)
    return Circuit(in_vals, in_idx, out_vals, out_idx, (J * in_vals.unsqueeze(1)).abs())


# --------------------------------------------------------------------------------------------------
# Which edges are kept: a rank per edge slot; budget m keeps the slots of rank < m
# --------------------------------------------------------------------------------------------------


def _descending_ranks(scores: Tensor) -> Tensor:
    """Rank of each entry of the last dim of ``scores`` in a stable descending sort (ties: lower index first)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks


def token_edge_ranks(attribution: Tensor) -> Tensor:
    """``[T, k_out, k_in]`` long: each edge's rank within its token by attribution; budget m keeps rank < m."""
    T, k_out, k_in = attribution.shape
    return _descending_ranks(attribution.reshape(T, k_out * k_in)).reshape(T, k_out, k_in)


class GlobalEdgeScores:
    """SCALAR's token-independent edge scores, streamed: ``sqrt(sum over tokens of attribution^2)`` per
    (output latent, input latent), dense ``[n_out, n_in]`` float64 (0 for a pair never co-selected)."""

    def __init__(self, n_out: int, n_in: int, device: torch.device | str = "cpu") -> None:
        if n_out * n_in > GLOBAL_MAX_ENTRIES:
            raise ValueError(f"global edges need a dense {n_out} x {n_in} score matrix ({n_out * n_in:,} entries); "
                             f"expected at most {GLOBAL_MAX_ENTRIES:,} (use edges 'token' for dictionaries this wide)")
        self.n_out, self.n_in = n_out, n_in
        self.sumsq = torch.zeros(n_out * n_in, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def update(self, circ: Circuit) -> None:
        flat = circ.out_idx.unsqueeze(-1) * self.n_in + circ.in_idx.unsqueeze(1)  # [T, k_out, k_in]
        self.sumsq.index_add_(0, flat.reshape(-1).to(self.sumsq.device),
                              circ.attribution.reshape(-1).double().pow(2).to(self.sumsq.device))
        self.n_tokens += circ.n_tokens

    def scores(self) -> Tensor:
        return self.sumsq.sqrt().reshape(self.n_out, self.n_in)

    def ranks(self) -> Tensor:
        """``[n_out, n_in]`` long: each edge's global rank (stable descending; ties to the lower flat index)."""
        return _descending_ranks(self.sumsq).reshape(self.n_out, self.n_in)


@torch.no_grad()
def global_edge_ranks(pair: JSAEPair, batches: Iterable[Tensor]) -> Tensor:
    """``[n_out, n_in]`` long: the global ranks of every edge from the attributions over ``batches`` of MLP inputs."""
    acc = GlobalEdgeScores(pair.sae_out.n_latents, pair.sae_in.n_latents, pair.sae_in.W_enc.device)
    for x in batches:
        if x.shape[0]:
            acc.update(circuit(pair, x.to(pair.sae_in.W_enc.device)))
    if acc.n_tokens == 0:
        raise ValueError("the edge-ranking set is empty; expected at least one token")
    return acc.ranks()


def slot_ranks(circ: Circuit, global_ranks: Tensor | None = None) -> Tensor:
    """``[T, k_out, k_in]`` long ranks of the circuit's edge slots: per token (``global_ranks`` None) or the global
    ranks of the slots' (output latent, input latent) pairs."""
    if global_ranks is None:
        return token_edge_ranks(circ.attribution)
    global_ranks = global_ranks.to(circ.out_idx.device)
    return global_ranks[circ.out_idx.unsqueeze(-1), circ.in_idx.unsqueeze(1)]


# --------------------------------------------------------------------------------------------------
# The pruned computation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def pruned_out_vals(pair: JSAEPair, circ: Circuit, keep: Tensor) -> Tensor:
    """``[T, k_out]``: the circuit's output latents computed through the kept edges only (SCALAR, module docstring 1).

    For output slot a of token t: ``x_a = b_dec + sum over kept c of s_x[t, c] W_dec[in_idx[t, c]]`` (the other
    input latents zero-ablated), ``s = ReLU(W_enc[out_idx[t, a]] . MLP(x_a) + b_enc)``; 0 when no edge into a is
    kept or the circuit's latent a is not active. ``keep`` is bool ``[T, k_out, k_in]``. With every edge kept this
    is ``out_vals`` (the circuit), with none 0.
    """
    sae_in, sae_out = pair.sae_in, pair.sae_out
    T, k_out, k_in = circ.attribution.shape
    if keep.shape != (T, k_out, k_in) or keep.dtype != torch.bool:
        raise ValueError(f"keep has shape {tuple(keep.shape)} and dtype {keep.dtype}; "
                         f"expected a bool [{T}, {k_out}, {k_in}] mask")
    dtype = sae_in.W_dec.dtype
    keep = keep & (circ.out_vals > 0).unsqueeze(-1)
    out = torch.zeros(T, k_out, dtype=dtype, device=circ.out_vals.device)
    width = max(sae_in.d_in, pair.mlp.d_hidden, sae_out.d_in, k_in)
    chunk = max(1, CHUNK_ELEMENTS // (k_out * width))
    for s in range(0, T, chunk):
        kp, iv, ii = keep[s:s + chunk], circ.in_vals[s:s + chunk], circ.in_idx[s:s + chunk]
        n = kp.shape[0]
        coef = kp.to(dtype) * iv.unsqueeze(1)  # [n, k_out, k_in]: zero for ablated inputs
        x_a = (torch.bmm(coef, sae_in.W_dec[ii]) + sae_in.b_dec) / pair.input_scale  # [n, k_out, d]
        y_a = _mlp(pair, x_a.reshape(n * k_out, -1)).reshape(n, k_out, -1) * pair.output_scale
        oi = circ.out_idx[s:s + chunk]
        pre = (y_a * sae_out.W_enc[oi]).sum(-1) + sae_out.b_enc[oi]  # only latent a's own pre-activation
        out[s:s + chunk] = F.relu(pre) * kp.any(-1)
    return out


@torch.no_grad()
def pruned_y_hat(pair: JSAEPair, circ: Circuit, keep: Tensor) -> Tensor:
    """``[T, d]`` raw units: the output SAE's reconstruction from :func:`pruned_out_vals` (what replaces y)."""
    vals = pruned_out_vals(pair, circ, keep)
    return pair.sae_out.decode(vals, circ.out_idx) / pair.output_scale


def live_edges(circ: Circuit, keep: Tensor) -> Tensor:
    """``[T]``: kept edges per token between active latents (input > 0, circuit output > 0): the edges that carry."""
    live = keep & (circ.in_vals > 0).unsqueeze(1) & (circ.out_vals > 0).unsqueeze(-1)
    return live.sum((1, 2))


# --------------------------------------------------------------------------------------------------
# The curve and its scalars
# --------------------------------------------------------------------------------------------------


def total_edges(pair: JSAEPair, edges: str) -> int:
    """The 100% of the share axis: ``k_out k_in`` edge slots per token (``token``) or ``n_out n_in`` (``global``)."""
    if _check_mode(edges) == "token":
        return pair.sae_out.k * pair.sae_in.k
    return pair.sae_out.n_latents * pair.sae_in.n_latents


def check_budgets(budgets: Sequence[int] | None, total: int, edges: str = "token") -> tuple[int, ...]:
    """Sorted distinct budgets with 0 and ``total`` added (the area's ends); None: 0, powers of 2 below
    ``total``, and ``total``. A budget must be an integer in 0..total."""
    if budgets is None:
        budgets = [2**p for p in range(max(0, total.bit_length()))]
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b <= total:
            per = "edges per token (k_out x k_in)" if edges == "token" else "edges (n_out x n_in)"
            raise ValueError(f"budget {b!r} is invalid; expected an integer in 0..{total} ({total} {per})")
    return tuple(sorted({0, total, *(int(b) for b in budgets)}))


@dataclass(frozen=True)
class InteractionCurve:
    """Loss against the edges kept (``edges``: budgets, ascending, from 0 to ``total``) and its references."""

    edges: tuple[int, ...]
    total: int
    loss: tuple[float, ...]  # per budget: mean KL(clean || pruned) (kl) or 1 - EV of y (fvu)
    loss_ref: float  # the MLP's whole effect: KL of the zero-ablated MLP (kl) or 1 (fvu: the variance of y)
    live: tuple[float, ...]  # per budget: mean live edges per token (live_edges)
    active_in: float  # mean input latents > 0 per token
    active_out: float  # mean circuit output latents > 0 per token
    loss_kind: str
    mode: str
    n_tokens: int

    @property
    def share(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=np.float64) / self.total

    @property
    def recovered(self) -> np.ndarray:
        """The fraction of the MLP's effect recovered, ``1 - loss / loss_ref`` (KL score / explained variance)."""
        return 1.0 - np.asarray(self.loss) / self.loss_ref if self.loss_ref > 0 else np.full(len(self.loss), np.nan)

    @property
    def circuit_recovered(self) -> np.ndarray:
        """``(loss(0) - loss(m)) / (loss(0) - loss(all))``: 0 with no edge, 1 with every edge kept; NaN when the
        circuit is no better than no edge at all (``loss(all) >= loss(0)``: nothing to normalise by)."""
        loss = np.asarray(self.loss)
        span = loss[0] - loss[-1]
        return (loss[0] - loss) / span if span > 0 else np.full(len(loss), np.nan)


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """``sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` (np.trapz, which SCALAR's AUC uses)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def log_share_area(edges: Sequence[int], total: int, values: np.ndarray) -> float:
    """Area under ``values`` against ``log(m) / log(total)`` over the budgets m >= 1 ([0, 1]: each doubling weighs
    the same; NaN when ``total`` < 2 or fewer than two budgets >= 1)."""
    e = np.asarray(edges, dtype=np.float64)
    sel = e >= 1
    if total < 2 or sel.sum() < 2:
        return float("nan")
    return trapezoid(np.log(e[sel]) / math.log(total), np.asarray(values)[sel])


def edges_needed(edges: Sequence[int], values: np.ndarray, fraction: float) -> float:
    """The smallest evaluated budget whose ``values`` reach ``fraction`` (NaN if none does)."""
    for m, v in zip(edges, values):
        if v >= fraction:
            return float(m)
    return float("nan")


def curve_metrics(curve: InteractionCurve) -> dict[str, float]:
    """The scalars of a curve (docs/metrics.md, "Interaction sparsity"); keys ``interaction/...``."""
    rec, crec = curve.recovered, curve.circuit_recovered
    m: dict[str, float] = {
        "loss_ref": curve.loss_ref,
        "loss_empty": curve.loss[0],
        "loss_full": curve.loss[-1],
        "recovered_full": float(rec[-1]),
        "area": trapezoid(curve.share, rec),
        "circuit_area": trapezoid(curve.share, crec),
        "log_circuit_area": log_share_area(curve.edges, curve.total, crec),
        "loss_area": trapezoid(curve.share, np.asarray(curve.loss)),
        "total_edges": float(curve.total),
        "active_in": curve.active_in,
        "active_out": curve.active_out,
        "n_tokens": float(curve.n_tokens),
    }
    for f in FRACTIONS:
        needed = edges_needed(curve.edges, crec, f)
        m[f"edges_for_{f:g}"] = needed
        m[f"live_edges_for_{f:g}"] = (curve.live[curve.edges.index(int(needed))] if math.isfinite(needed)
                                      else float("nan"))
    return {interaction_key(k): float(v) for k, v in m.items()}


def curve_arrays(curve: InteractionCurve) -> dict[str, list[float]]:
    """The curve as JSON lists: ``edges``, ``share``, ``live_edges``, ``loss``, ``recovered``, ``circuit_recovered``."""
    return {"edges": list(curve.edges), "share": curve.share.tolist(), "live_edges": list(curve.live),
            "loss": list(curve.loss), "recovered": curve.recovered.tolist(),
            "circuit_recovered": curve.circuit_recovered.tolist()}


class _Counts:
    """Per-token means of live edges per budget and of active latents, streamed."""

    def __init__(self, n_budgets: int) -> None:
        self.live = np.zeros(n_budgets)
        self.active_in = self.active_out = 0.0
        self.n = 0

    def update(self, circ: Circuit, masks: list[Tensor]) -> None:
        for b, keep in enumerate(masks):
            self.live[b] += float(live_edges(circ, keep).double().sum())
        self.active_in += float((circ.in_vals > 0).sum())
        self.active_out += float((circ.out_vals > 0).sum())
        self.n += circ.n_tokens

    def result(self) -> tuple[tuple[float, ...], float, float]:
        n = max(self.n, 1)
        return tuple(float(v) / n for v in self.live), self.active_in / n, self.active_out / n


def _masks(circ: Circuit, budgets: Sequence[int], global_ranks: Tensor | None) -> list[Tensor]:
    ranks = slot_ranks(circ, global_ranks)
    return [ranks < m for m in budgets]


@torch.no_grad()
def variance_curve(pair: JSAEPair, batches: Iterable[Tensor], budgets: Sequence[int] | None = None, *,
                   edges: str = "token", global_ranks: Tensor | None = None,
                   progress: bool = False) -> InteractionCurve:
    """Without an LM (a planted model, whose downstream is its own output): per budget, the fraction of the variance
    of ``y = MLP(x)`` (the true input) that the pruned reconstruction leaves unexplained, ``1 - EV`` (ratio of sums
    over all tokens, as ``out/explained_variance``); ``loss_ref`` = 1 (predicting the mean of y)."""
    budgets = check_budgets(budgets, total_edges(pair, edges), edges)
    if _check_mode(edges) == "global" and global_ranks is None:
        raise ValueError("edges='global' needs global_ranks; expected global_edge_ranks(pair, batches)")
    device = pair.sae_in.W_enc.device
    accs = [ReconstructionAccumulator(pair.sae_out.d_in) for _ in budgets]
    counts = _Counts(len(budgets))
    for x in tqdm(batches, desc="interaction", disable=not progress, leave=False):
        if x.shape[0] == 0:
            continue
        x = x.to(device=device, dtype=pair.sae_in.W_enc.dtype)
        y = _mlp(pair, x)
        circ = circuit(pair, x)
        masks = _masks(circ, budgets, global_ranks if edges == "global" else None)
        counts.update(circ, masks)
        for acc, keep in zip(accs, masks):
            acc.update(y, pruned_y_hat(pair, circ, keep))
    if counts.n == 0:
        raise ValueError("the evaluation set is empty; expected at least one token")
    live, a_in, a_out = counts.result()
    loss = tuple(1.0 - acc.result()["explained_variance"] for acc in accs)
    return InteractionCurve(budgets, total_edges(pair, edges), loss, 1.0, live, a_in, a_out, "fvu", edges, counts.n)


def _spliced_kl(model: nn.Module, module: nn.Module, ids: Tensor, clean: Tensor, y_hat: Tensor | None,
                first_position_clean: bool) -> float:
    """Sum over positions of KL(clean || run with the MLP output replaced by ``y_hat``; zeros when None)."""
    from jsae.data.hooks import replace_mlp_output
    from jsae.eval.evaluate import _splice

    def replace(_x: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(y) if y_hat is None else y_hat.to(device=y.device, dtype=y.dtype)

    with replace_mlp_output(module, _splice(first_position_clean, replace)):
        logits = model(input_ids=ids, use_cache=False).logits
    return float(token_kl(clean, logits).double().sum())


@torch.no_grad()
def kl_curve(model: nn.Module, layer: int, pair: JSAEPair, contexts: Tensor, budgets: Sequence[int] | None = None,
             *, edges: str = "token", global_ranks: Tensor | None = None, batch_size: int = 8,
             first_position_clean: bool = True, progress: bool = False) -> InteractionCurve:
    """With an LM (SCALAR's curve): per budget, the mean per-position KL(p_clean || p_pruned) with the MLP output of
    ``layer`` replaced by the pruned reconstruction; ``loss_ref`` = the same KL with the MLP output zeroed.

    Spliced as :func:`jsae.eval.evaluate.splice_token_losses` splices ``recon_out``: every position of
    ``contexts`` ``[n, length]``, position 0 left clean when ``first_position_clean`` (the cache excludes it).
    """
    from jsae.data.hooks import capture_mlp_input, mlp_module

    check_positive_int("batch_size", batch_size)
    if contexts.dim() != 2 or contexts.shape[0] == 0 or contexts.shape[1] < 2:
        raise ValueError(f"contexts has shape {tuple(contexts.shape)}; "
                         "expected [n_contexts >= 1, length >= 2] token ids")
    budgets = check_budgets(budgets, total_edges(pair, edges), edges)
    if _check_mode(edges) == "global" and global_ranks is None:
        raise ValueError("edges='global' needs global_ranks; expected global_edge_ranks(pair, batches)")
    module = mlp_module(model, layer)
    device = next(model.parameters()).device
    first = 1 if first_position_clean else 0
    kl_sum, zero_sum, n_pos = np.zeros(len(budgets)), 0.0, 0
    counts = _Counts(len(budgets))
    for start in tqdm(range(0, contexts.shape[0], batch_size), desc="interaction", disable=not progress,
                      leave=False):
        ids = contexts[start:start + batch_size].to(device=device, dtype=torch.long)
        clean = model(input_ids=ids, use_cache=False).logits
        x = capture_mlp_input(model, layer, ids)  # the MLP input is upstream of every splice: the same in each run
        B, S, d = x.shape
        circ = circuit(pair, x[:, first:].reshape(-1, d).to(pair.sae_in.W_enc.device))
        masks = _masks(circ, budgets, global_ranks if edges == "global" else None)
        counts.update(circ, masks)
        zero_sum += _spliced_kl(model, module, ids, clean, None, first_position_clean)
        for b, keep in enumerate(masks):
            y_hat = torch.zeros(B, S, d, dtype=pair.sae_out.W_dec.dtype, device=circ.out_vals.device)
            y_hat[:, first:] = pruned_y_hat(pair, circ, keep).reshape(B, S - first, d)
            kl_sum[b] += _spliced_kl(model, module, ids, clean, y_hat, first_position_clean)
        n_pos += B * S
    live, a_in, a_out = counts.result()
    return InteractionCurve(budgets, total_edges(pair, edges), tuple(float(v) / n_pos for v in kl_sum),
                            zero_sum / n_pos, live, a_in, a_out, "kl", edges, n_pos)


# --------------------------------------------------------------------------------------------------
# Command line: python -m jsae interaction
# --------------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    from jsae.eval.inputs import pair_parser, run_pair_command

    p = pair_parser("python -m jsae interaction",
                    "SCALAR-style interaction sparsity of a trained pair: the MLP output recomputed through only the "
                    "top input -> output latent edges (the rest zero-ablated), spliced into the LM (KL) or, for a "
                    "planted model, scored against y (explained variance), against the edges kept; writes the "
                    "curve and its areas to one JSON, atomically.")
    for action in p._actions:  # default: the layer the pair was trained on (run.json)
        if action.dest == "layer":
            action.required, action.default = False, None
            action.help = "layer index of the MLP (default: the pair's, from run.json)"
    p.add_argument("--out", required=True, help="output path of interaction.json")
    p.add_argument("--edges", default="token", choices=EDGE_MODES,
                   help="token: top-m edges per token by |J s_x|; global: one edge set for all tokens (SCALAR)")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="edges kept (per token for --edges token, in all for global); 0 and all are always added "
                   "(default: 0, powers of 2, all)")
    p.add_argument("--n-tokens", type=int, default=None,
                   help=f"planted model: cache rows (default: all); LM: predicted tokens of the cached contexts "
                   f"(default: {DEFAULT_LM_TOKENS})")
    p.add_argument("--score-tokens", type=int, default=None,
                   help=f"--edges global: cache rows that rank the edges (default: min(cache, {DEFAULT_SCORE_TOKENS}))")
    p.add_argument("--batch-size", type=int, default=1024, help="cache rows per pair forward")
    p.add_argument("--lm-batch-size", type=int, default=8, help="contexts per LM forward")
    return run_pair_command(p, argv, _interaction_cli)


def _interaction_cli(args: argparse.Namespace) -> int:
    from jsae.cli import tracking_uri
    from jsae.eval.inputs import cache_rows, load_inputs, pair_identity, run_field, token_count
    from jsae.export import read_run
    from jsae.io import write_json
    from jsae.tracking import log_to_pair_run

    for name in ("n_tokens", "score_tokens", "batch_size", "lm_batch_size"):
        check_positive_int(name, getattr(args, name), allow_none=name in ("n_tokens", "score_tokens"))
    layer = args.layer
    if layer is None:
        if not Path(args.run).is_dir():
            raise FileNotFoundError(f"run directory {args.run} does not exist; "
                                    "expected a trained pair (run.json, sae_in/, sae_out/)")
        layer = run_field(read_run(args.run), "layer")
        if layer is None:
            raise ValueError(f"{args.run}/run.json records no layer; expected --layer L")
    inputs = load_inputs(args.model, int(layer), args.run, args.cache, device=args.device)
    pair, cache = inputs.pair, inputs.cache
    budgets = check_budgets(args.budgets, total_edges(pair, args.edges), args.edges)
    settings: dict[str, Any] = {"edges": args.edges, "ablation": "zero", "attribution": "|J s_x| at x_hat",
                                "cache": str(args.cache), "run": str(args.run), "layer": int(layer)}
    global_ranks = None
    if args.edges == "global":
        n_score = min(int(cache.n_tokens), DEFAULT_SCORE_TOKENS) if args.score_tokens is None else args.score_tokens
        n_score = token_count(cache, n_score)
        global_ranks = global_edge_ranks(pair, cache_rows(cache, n_score, args.batch_size))
        settings["score_tokens"] = n_score
    progress = not args.no_progress
    if inputs.model is None:  # a planted model: its downstream is y itself
        n = token_count(cache, args.n_tokens)
        curve = variance_curve(pair, cache_rows(cache, n, args.batch_size), budgets, edges=args.edges,
                               global_ranks=global_ranks, progress=progress)
    else:
        contexts = np.asarray(cache.contexts())
        per_ctx = contexts.shape[1] - 1
        wanted = DEFAULT_LM_TOKENS if args.n_tokens is None else args.n_tokens
        n_ctx = math.ceil(wanted / per_ctx)
        if args.n_tokens is not None and n_ctx > contexts.shape[0]:
            raise ValueError(f"n_tokens={args.n_tokens} is invalid for a cache of {contexts.shape[0]} contexts of "
                             f"{per_ctx} predicted tokens; expected at most {contexts.shape[0] * per_ctx}")
        n_ctx = min(n_ctx, contexts.shape[0])
        first_clean = str(cache.attrs.get("first_position", "excluded")) == "excluded"
        curve = kl_curve(inputs.model, int(layer), pair, torch.as_tensor(contexts[:n_ctx]), budgets,
                         edges=args.edges, global_ranks=global_ranks, batch_size=args.lm_batch_size,
                         first_position_clean=first_clean, progress=progress)
        settings.update({"contexts": n_ctx, "first_position_clean": first_clean})
    settings["loss"] = curve.loss_kind
    metrics = curve_metrics(curve)
    identity = pair_identity(inputs.run, pair)
    write_json(args.out, {"metrics": metrics, "curve": curve_arrays(curve), "pair": identity, "settings": settings})
    log.info("wrote %s: %s edges, recovered %.4f with all %d, circuit area %.4f, edges for 90%% %g", args.out,
             args.edges, metrics[interaction_key("recovered_full")], curve.total,
             metrics[interaction_key("circuit_area")], metrics[interaction_key("edges_for_0.9")])
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), metrics, [args.out],
                    step=run_field(inputs.run, "n_steps"))
    return 0
