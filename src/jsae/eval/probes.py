"""Linearity probes of f_s = e_y . f . d_x (paper section 5.4, appendix B; figs. 8-14).

For a sampled (token, active input latent j, active output latent i) the scalar function

    f_(i,j)|s_x (t) = s_y,i( MLP( x + (t - s_x,j) W_dec,x[j] ) )        (eqs. 30-31)

moves the MLP input along input latent j's decoder direction, the rest of the input fixed, and reads
output latent i. Choices (and why):

* **Base point: the true MLP input x**, not the reconstruction x_hat. The Jacobian is evaluated at x
  (``jsae.nn.pair.EVALUATION_POINT``, appendix D.1), so the probe and J describe the same function at
  the same point, as in the authors' ``linear.py`` / ``ablation.py`` (survey 1.7).
* **Output value: what the output SAE's TopK reports** (``output="topk"``, default): ``s_y,i`` is
  the ReLU'd pre-activation if latent i is among the k largest at that input, else exactly 0.
  f_s includes e_y's TopK, the paper's JumpReLU-shaped functions come from latents entering or
  leaving the top-k set (or crossing the ReLU), and the authors read the same value (a TopK
  ``encode``). ``output="relu"`` reads ``ReLU(pre-activation_i)`` without TopK, for analysis.

**Units.** Every rule below is written with one per-sample *step* ``u`` (in input-latent units) and
two tolerance rules; ``tolerance`` picks both (one option, recorded in probes.json's settings):

* ``tolerance="relative"`` (default, scale-free): ``u_j = q_j / 5`` where ``q_j`` is the 99th
  percentile (``SCALE_QUANTILE``) of input latent j's positive (TopK-selected) activations on the
  evaluation tokens, computed in one batched pass before sampling (:func:`input_latent_scale`); a
  latent never active in that pass falls back to ``q_j = s_x,j``. Tolerances are fractions of the
  curve's own output range. Multiplying the input latents by p and the output latents by q (an
  equivalent pair) changes no label, split or dimensionless statistic (``tests/test_probes.py``).
* ``tolerance="absolute"``: the paper's rule in the paper's (Pythia's) units: ``u = 1`` and the
  authors' absolute tolerances. Kept to reproduce the paper; its labels change with activation scale.

Measurements (all batched: many samples x sweep points per forward, no Python loop per sample):

* **Sampling**: per token ``inputs_per_token`` distinct active input latents j (default one), then
  every active output latent i (default) or at most ``outputs_per_input`` distinct ones: each (j, i)
  of a token is equally likely, as in the authors' uniform draw from the k x k active block. All i of
  one (token, j) share one sweep (that sharing is what makes the batched path fast); the run stops
  after ``n_sweeps`` distinct (token, j) sweeps (``probe/n_sweeps``; ``probe/n_samples`` counts the
  (token, j, i) functions, about k per sweep).
* **Sweep**: ``P = 100`` points ``t`` in ``[0, max(5 u, s_x,j + u)]`` (appendix B footnote 3 with
  ``u = 1``: ``[0, max(5, s_x,j + 1)]``; relative: ``[0, max(q_j, s_x,j + q_j / 5)]``, the latent's
  own range of activity plus one step above the observed value).
* **Classification** (the authors' ``linear.py`` rule): *linear* if the least-squares line through
  all P points fits (below); else *JumpReLU-like* if the exact zeros (``s_y,i == 0``) form one
  contiguous run of sweep points that **includes the first or the last point of the sweep**, at least
  2 points lie outside it, and those points fit one line; else *other*. "Fits" is, relative:
  ``max |residual| <= LINEAR_RTOL x range`` with ``range = max f - min f`` over the whole sweep, for
  the line and the JumpReLU fit alike (one tolerance per curve, as the paper's; a constant function
  fits); absolute: ``max |residual| < 1e-2`` (the authors'). The end condition
  is the paper's definition (section 5.4, footnote 1: ``a JumpReLU(b t + c)``, zero on a half-line,
  so within the sweep the zeros touch an end) and the authors' final ``linear.py`` ("Make sure it
  includes the start or the finish"); a zero run strictly inside the sweep counts as *other*.
* **Subtract one step** (fig. 8c, 10): ``delta = (f(s_x,j - u) - f(s_x,j)) / u``, the change per
  input-latent unit when one step ``u`` of the decoder direction is removed (``u = 1``: the paper's
  and ``ablation.py``'s "subtract 1"; ``s_x,j - u`` may be negative), next to ``J_ij``. Split:
  *on the line* if ``| |delta| - |J_ij| | <= LINE_RTOL_REL x max(|J_ij|, |delta|)`` (relative) or
  ``<= 0.01 + 0.1 |J_ij|`` (absolute); a linear f gives ``delta = -J_ij`` exactly; *cluster* if off
  the line and the output latent is exactly 0 after the subtraction (the paper's explanation of its
  top-left cluster: a JumpReLU-like f whose jump lies within one step below ``s_x,j``); *outlier*
  otherwise.
* **Second derivative** (figs. 13-14): central differences with step ``h = 0.005 u`` (the paper's
  0.005 at ``u = 1``) at every sweep point, ``(f(c+h) - 2 f(c) + f(c-h)) / h^2`` with
  ``c = max(t, h)`` so the stencil stays in the domain; per sample its mean, mean |.| and max |.|
  over the sweep, in output units per input unit squared, and the same made dimensionless
  (:func:`scale_free_d2`: times ``width^2 / range``, width = the sweep's right end, range = the
  curve's output range; a quadratic ``a t^2`` on ``[0, W]`` gives exactly 2).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.cli import tracking_uri
from jsae.eval.inputs import load_inputs, pair_identity, pair_parser, run_field, run_pair_command, write_pair_outputs
from jsae.eval.metrics import probe_frac_key, probe_key
from jsae.nn.pair import EVALUATION_POINT, JSAEPair
from jsae.tracking import log_to_pair_run

log = logging.getLogger("jsae.eval.probes")

N_POINTS = 100  # sweep points per function (appendix B)
TOLERANCES = ("relative", "absolute")
# relative (default): fractions of the curve's own output range / of |J|
LINEAR_RTOL = 0.01  # max |residual| of the line fit <= LINEAR_RTOL x (max f - min f); see docs/metrics.md
LINE_RTOL_REL = 0.1  # "on the line": ||delta| - |J|| <= LINE_RTOL_REL x max(|J|, |delta|) (the paper's 0.1 |J|)
SCALE_QUANTILE = 0.99  # q_j: this quantile of input latent j's positive activations sets its sweep
SWEEP_STEPS = 5  # the sweep's base width in steps u (the paper's [0, 5] with a step of 1)
SCALE_TOKENS = 20_000  # evaluation tokens of the q_j pass (the CLI's default)
# absolute (the paper's, in Pythia's units; u = 1)
LINEAR_TOL = 1e-2  # absolute max residual of the least-squares line (authors' linear.py)
LINE_ATOL, LINE_RTOL = 0.01, 0.1  # "on the line": ||delta| - |J|| <= LINE_ATOL + LINE_RTOL |J|
MIN_OUTSIDE_ZERO = 2  # points outside the zero run for a JumpReLU-like fit (authors' linear.py)
JUMPRELU_RULE = "zero run contiguous and touching an end of the sweep (authors' linear.py)"
FD_STEP = 0.005  # finite-difference step of the second derivative, in steps u (figs. 13-14: 0.005 at u = 1)
N_SWEEPS = 1000  # distinct (token, input latent) sweeps per run (issue 11: >= 1000)
LABELS = ("linear", "jumprelu", "other")
SPLITS = ("on_line", "cluster", "outlier")
OUTPUT_MODES = ("topk", "relu")


def check_tolerance(tolerance: str) -> None:
    if tolerance not in TOLERANCES:
        raise ValueError(f"tolerance={tolerance!r} is invalid; expected one of {', '.join(TOLERANCES)}")


@dataclass
class ProbeSamples:
    """Sampled (token, input latent j, output latent i) triples with their values at the token."""

    x: Tensor  # [S, d] true MLP input of the token
    in_latent: Tensor  # [S] j
    out_latent: Tensor  # [S] i
    s_x: Tensor  # [S] s_x,j at the token
    s_y: Tensor  # [S] s_y,i at the token
    jac: Tensor  # [S] J_ij at the token
    token_row: Tensor  # [S] row of the token in the evaluation stream
    step: Tensor  # [S] the step u in input-latent units (1 under the absolute rule; q_j / 5 relative)

    def __len__(self) -> int:
        return int(self.in_latent.shape[0])

    def select(self, index: Tensor | slice) -> ProbeSamples:
        return ProbeSamples(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def per_group_quantile(values: Tensor, groups: Tensor, n_groups: int, quantile: float) -> Tensor:
    """``[n_groups]`` float64: the ``quantile`` of ``values`` within each group (linear interpolation, as
    ``torch.quantile``); NaN for a group without values. One sort, no loop over groups."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile={quantile!r} is invalid; expected a number in [0, 1]")
    values, groups = values.double().reshape(-1), groups.long().reshape(-1)
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by group, ascending values within each
    v = values[order]
    counts = torch.bincount(groups, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    pos = (counts - 1).clamp_min(0).double() * quantile
    lo, hi = pos.floor().long(), pos.ceil().long()
    last = max(int(v.numel()) - 1, 0)
    v = v if v.numel() else torch.zeros(1, dtype=torch.float64)
    a, b = v[(starts + lo).clamp_max(last)], v[(starts + hi).clamp_max(last)]
    q = torch.lerp(a, b, pos - lo.double())
    return torch.where(counts > 0, q, torch.full_like(q, float("nan")))


@torch.no_grad()
def input_latent_scale(pair: JSAEPair, batches: Iterable[Tensor | tuple[Tensor, Tensor]], *,
                       quantile: float = SCALE_QUANTILE, max_tokens: int | None = None) -> Tensor:
    """``q_j`` per input latent (``[n_latents]``, float64, CPU): the ``quantile`` of latent j's positive
    activations (as the input SAE's TopK reports them) over the first ``max_tokens`` tokens of
    ``batches`` (all with None); NaN for a latent never active there. One batched pass."""
    check_positive_int("max_tokens", max_tokens, allow_none=True)
    dev, dtype = pair.sae_in.W_enc.device, pair.sae_in.W_enc.dtype
    vals, lats, seen = [], [], 0
    for item in batches:
        x = item[0] if isinstance(item, tuple) else item
        if max_tokens is not None:
            x = x[: max_tokens - seen]
        if x.shape[0] == 0:
            break
        v, i = pair.sae_in.encode(x.to(device=dev, dtype=dtype))
        on = v > 0
        vals.append(v[on].double().cpu())
        lats.append(i[on].cpu())
        seen += int(x.shape[0])
        if max_tokens is not None and seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError("no tokens for the input latents' activation scale; expected a non-empty evaluation set")
    empty = torch.zeros(0, dtype=torch.float64)
    return per_group_quantile(torch.cat(vals) if vals else empty, torch.cat(lats) if lats else empty.long(),
                              pair.sae_in.n_latents, quantile)


def latent_step(s_x: Tensor, in_latent: Tensor, input_scale: Tensor) -> Tensor:
    """The relative rule's step ``u = q_j / SWEEP_STEPS`` per sample (``q_j = s_x,j`` where q_j is unknown)."""
    q = input_scale.to(device=s_x.device, dtype=s_x.dtype)[in_latent]
    q = torch.where(torch.isfinite(q) & (q > 0), q, s_x)
    return q / SWEEP_STEPS


def _draw_distinct(mask: Tensor, m: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per row, ``m`` distinct columns drawn uniformly among the True ones (all of them when fewer):
    ``(columns [N, m'], valid [N, m'])``. i.i.d. uniform keys, the largest m win: a uniform subset."""
    keys = torch.rand(mask.shape, generator=generator, dtype=torch.float64)
    keys = torch.where(mask, keys, torch.full_like(keys, -1.0))
    top, col = keys.topk(min(m, mask.shape[1]), dim=1)
    return col, top >= 0


@torch.no_grad()
def sample_probes(
    pair: JSAEPair,
    x: Tensor,
    *,
    inputs_per_token: int = 1,
    outputs_per_input: int | None = None,
    generator: torch.Generator,
    row_offset: int = 0,
    rows: Tensor | None = None,
    input_scale: Tensor | None = None,
) -> ProbeSamples:
    """Draw (token, j, i) triples among the active latents of each token of ``x``.

    Per token, ``inputs_per_token`` distinct input latents j are drawn uniformly among the active
    ones (all when fewer), so every (token, j) is a distinct sweep; per (token, j), every active
    output latent i (``outputs_per_input=None``) or that many distinct ones. Either way each (j, i)
    of a token is equally likely, as in the authors' uniform draw from the k x k active block.
    Samples come grouped by (token, j), so :func:`probe_batch` computes one sweep for all i of it.
    "Active" means selected by TopK with a value > 0; tokens without an active input or output
    latent are skipped. ``rows`` (or ``row_offset + position``) names each token's row in the
    evaluation set. ``input_scale`` (q_j, :func:`input_latent_scale`) sets the relative rule's step
    ``u = q_j / 5``; None: ``u = 1`` (the absolute rule).
    """
    out = pair(x)
    assert out.jacobian is not None
    in_on, out_on = (out.in_vals > 0).cpu(), (out.out_vals > 0).cpu()
    tok = (in_on.any(1) & out_on.any(1)).nonzero().squeeze(1)
    if tok.numel() == 0:
        return _empty_samples(x)
    c, ok = _draw_distinct(in_on[tok], inputs_per_token, generator)
    t, c = tok[:, None].expand_as(c)[ok], c[ok]  # one entry per (token, j), grouped by token
    if outputs_per_input is None:
        pos, a = out_on[t].nonzero(as_tuple=True)  # every active output of that token
    else:
        a, ok = _draw_distinct(out_on[t], outputs_per_input, generator)
        pos = torch.arange(len(t))[:, None].expand_as(a)[ok]
        a = a[ok]
    t, c = t[pos], c[pos]
    dev = x.device
    td, cd, ad = t.to(dev), c.to(dev), a.to(dev)
    s_x, j = out.in_vals[td, cd], out.in_idx[td, cd]
    return ProbeSamples(
        x=x[td],
        in_latent=j,
        out_latent=out.out_idx[td, ad],
        s_x=s_x,
        s_y=out.out_vals[td, ad],
        jac=out.jacobian[td, ad, cd],
        token_row=(t + row_offset) if rows is None else torch.as_tensor(rows).cpu()[t],
        step=torch.ones_like(s_x) if input_scale is None else latent_step(s_x, j, input_scale),
    )


def _empty_samples(x: Tensor) -> ProbeSamples:
    z = torch.zeros(0, dtype=torch.long, device=x.device)
    f = torch.zeros(0, dtype=x.dtype, device=x.device)
    return ProbeSamples(x[:0], z, z, f, f, f, z.cpu(), f)


def sweep_grid(s_x: Tensor, n_points: int = N_POINTS, step: Tensor | None = None) -> Tensor:
    """``[S, P]``: P evenly spaced points in ``[0, max(5 u, s_x + u)]`` per sample (appendix B with u = 1)."""
    u = torch.ones_like(s_x) if step is None else step
    hi = torch.maximum(SWEEP_STEPS * u, s_x + u)
    grid = torch.linspace(0, 1, n_points, dtype=s_x.dtype, device=s_x.device)
    return hi[:, None] * grid[None, :]


def shared_sweeps(samples: ProbeSamples) -> tuple[Tensor, Tensor]:
    """Samples with the same (token, input latent j) share one sweep.

    Returns ``(first sample of each sweep, sweep index of each sample)``.
    """
    n_in = int(samples.in_latent.max()) + 1 if len(samples) else 1
    key = samples.token_row.to(samples.in_latent.device) * n_in + samples.in_latent
    uniq, inv = torch.unique(key, return_inverse=True)
    first = torch.full((len(uniq),), len(samples), dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inv, torch.arange(len(samples), device=key.device), reduce="amin")
    return first, inv
def kth_largest(values: Tensor, k: int, group: int = 16) -> Tensor:
    """``[R]``: the k-th largest entry of each row of ``values [R, N]``, exactly ``topk(k).values.min()``.

    About twice as fast as a full-width top-k on CPU (the probes' hot spot): split the columns into
    ``N / group`` sets of ``group``; the k sets with the largest maxima hold the k largest entries (any
    other set's maximum is at most the k-th largest set maximum, itself at most the k-th largest
    entry), so the top-k runs on ``k x group`` candidates. Set g is columns g, g + G, g + 2G, ... so
    the set maxima are an elementwise max of ``group`` contiguous slices.
    """
    R, N = values.shape
    G = N // group
    if G <= k or N % group:
        return values.topk(k, dim=-1, sorted=False).values.amin(-1)
    sets = values.reshape(R, group, G)
    best = sets.amax(1).topk(k, dim=-1, sorted=False).indices  # [R, k]
    cand = torch.gather(sets, 2, best[:, None, :].expand(R, group, k)).reshape(R, group * k)
    return cand.topk(k, dim=-1, sorted=False).values.amin(-1)


@torch.no_grad()
def output_latent_at(
    pair: JSAEPair,
    x: Tensor,
    in_latent: Tensor,
    s_x: Tensor,
    t: Tensor,
    out_latent: Tensor,
    *,
    sweep: Tensor | None = None,
    output: str = "topk",
    max_elements: int = 1 << 25,
) -> Tensor:
    """``f_(i,j)|s_x(t)`` at every point of ``U`` sweeps, read for ``S`` samples: ``[S, Q]``.

    Sweep u moves ``x[u]`` along ``W_dec[in_latent[u]]`` to the points ``t[u]`` (``[U, Q]``); sample s
    reads output latent ``out_latent[s]`` on sweep ``sweep[s]`` (default: sweep s). The ``U*Q``
    inputs go through the MLP and the output encoder in chunks of at most ``max_elements`` output
    pre-activations, so memory is bounded at any n_latents.
    """
    if output not in OUTPUT_MODES:
        raise ValueError(f"output={output!r} is invalid; expected one of {', '.join(OUTPUT_MODES)}")
    U, Q = t.shape
    sweep = torch.arange(U, device=x.device) if sweep is None else sweep.to(x.device)
    order = torch.argsort(sweep, stable=True)  # samples grouped by sweep, so chunks are contiguous
    bounds = torch.searchsorted(sweep[order], torch.arange(U + 1, device=x.device))
    w = pair.sae_in.W_dec[in_latent]  # [U, d]
    sweeps_per_chunk = max(1, max_elements // (Q * max(1, pair.sae_out.n_latents)))
    result = torch.empty(sweep.shape[0], Q, dtype=x.dtype, device=x.device)
    for u0 in range(0, U, sweeps_per_chunk):
        u1 = min(U, u0 + sweeps_per_chunk)
        xs = x[u0:u1, None, :] + (t[u0:u1] - s_x[u0:u1, None])[:, :, None] * w[u0:u1, None, :]  # [n, Q, d]
        y = pair.mlp(xs.reshape(-1, xs.shape[-1]).to(pair.mlp.W_out.dtype)).to(x.dtype)
        who = order[bounds[u0] : bounds[u1]]  # samples reading these sweeps
        local = sweep[who] - u0
        target = out_latent[who]
        if output == "topk":
            # as TopKSAE.encode: latent i is in the top k iff its pre-activation reaches the k-th largest
            # (ties at the k-th value, of measure zero, would all count); reading it there beats gathering
            # the [samples, Q, k] top-k lists
            pre = torch.addmm(pair.sae_out.b_enc, y.to(pair.sae_out.W_enc.dtype), pair.sae_out.W_enc.t())
            kth = kth_largest(pre, pair.sae_out.k).reshape(u1 - u0, Q)
            v = pre.reshape(u1 - u0, Q, -1)[local[:, None], torch.arange(Q, device=x.device)[None, :], target[:, None]]
            v = torch.where(v >= kth[local], v.clamp_min(0), torch.zeros_like(v))
        else:
            y = y.reshape(u1 - u0, Q, -1)[local]  # [m, Q, d]
            pre = (y * pair.sae_out.W_enc[target][:, None, :]).sum(-1) + pair.sae_out.b_enc[target][:, None]
            v = pre.clamp_min(0)
        result[who] = v
    return result


def _line_fit_max_residual(xs: Tensor, ys: Tensor, w: Tensor) -> Tensor:
    """Max |residual| (over points with weight 1) of the weighted least-squares line, per row; float64."""
    xs, ys, w = xs.double(), ys.double(), w.double()
    n = w.sum(1).clamp_min(1)
    mx, my = (w * xs).sum(1) / n, (w * ys).sum(1) / n
    dx, dy = xs - mx[:, None], ys - my[:, None]
    sxx = (w * dx * dx).sum(1)
    slope = torch.where(sxx > 0, (w * dx * dy).sum(1) / sxx.clamp_min(1e-300), torch.zeros_like(sxx))
    resid = (dy - slope[:, None] * dx).abs() * w
    return resid.amax(1)


def _fits_line(xs: Tensor, ys: Tensor, keep: Tensor, tolerance: str, tol: float) -> Tensor:
    """Per row: do the points with ``keep`` lie on one line (module docstring, "fits")?

    Relative: within ``tol`` x the whole curve's range, for the line and the JumpReLU fit alike (one
    tolerance per curve, as the paper's one absolute 1e-2); a constant curve fits.
    """
    resid = _line_fit_max_residual(xs, ys, keep)
    if tolerance == "absolute":
        return resid < tol
    spread = ys.double().amax(1) - ys.double().amin(1)
    return (spread == 0) | (resid <= tol * spread)  # spread 0: the residual is rounding only


def _check_rule(tolerance: str, tol: float | None, relative: float, absolute: float) -> float:
    check_tolerance(tolerance)
    tol = (relative if tolerance == "relative" else absolute) if tol is None else tol
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol={tol!r} is invalid; expected a finite number > 0")
    return float(tol)


def classify_curves(xs: Tensor, ys: Tensor, *, tolerance: str = "relative", tol: float | None = None) -> Tensor:
    """Label per row of ``[S, P]`` curves: 0 linear, 1 JumpReLU-like, 2 other (module docstring).

    ``tol``: the fraction of the range (relative, default ``LINEAR_RTOL``) or the absolute residual
    (absolute, default ``LINEAR_TOL``).
    """
    tol = _check_rule(tolerance, tol, LINEAR_RTOL, LINEAR_TOL)
    S, P = ys.shape
    linear = _fits_line(xs, ys, torch.ones_like(ys, dtype=torch.bool), tolerance, tol)
    zero = ys == 0
    pos = torch.arange(P, device=ys.device)
    any_zero = zero.any(1)
    first = torch.where(zero, pos, P).amin(1)
    last = torch.where(zero, pos, -1).amax(1)
    contiguous = zero.sum(1) == (last - first + 1)
    at_end = zero[:, 0] | zero[:, -1]  # the zeros of a JumpReLU are a half-line: they reach an end
    outside = (pos[None, :] < first[:, None]) | (pos[None, :] > last[:, None])
    enough = outside.sum(1) >= MIN_OUTSIDE_ZERO
    jump = any_zero & contiguous & at_end & enough & _fits_line(xs, ys, outside, tolerance, tol)
    labels = torch.full((S,), 2, dtype=torch.long, device=ys.device)
    labels[jump] = 1
    labels[linear] = 0
    return labels


def classify_line_split(delta: Tensor, jac: Tensor, after: Tensor, *, tolerance: str = "relative") -> Tensor:
    """0 on the line, 1 cluster, 2 outlier, for the subtract-one-step check (module docstring).

    ``delta`` is the change per input unit (``(f(s_x - u) - f(s_x)) / u``), in J's units.
    """
    check_tolerance(tolerance)
    gap = (delta.abs() - jac.abs()).abs()
    if tolerance == "relative":
        on = gap <= LINE_RTOL_REL * torch.maximum(jac.abs(), delta.abs())
    else:
        on = gap <= LINE_ATOL + LINE_RTOL * jac.abs()
    split = torch.full(delta.shape, 2, dtype=torch.long, device=delta.device)
    split[(~on) & (after == 0)] = 1
    split[on] = 0
    return split


def second_derivative_stats(fm: Tensor, f0: Tensor, fp: Tensor, h: float | Tensor = FD_STEP) -> Tensor:
    """``[S, 3]``: mean, mean |.| and max |.| over the sweep of ``(f(c+h) - 2 f(c) + f(c-h)) / h^2``.

    ``h``: one step for all rows or one per row (``[S]``); output units per input unit squared.
    """
    h = torch.as_tensor(h, dtype=torch.float64, device=fm.device)
    h2 = (h * h).reshape(-1, 1) if h.ndim else h * h
    d2 = (fp.double() - 2 * f0.double() + fm.double()) / h2
    return torch.stack([d2.mean(1), d2.abs().mean(1), d2.abs().amax(1)], dim=1)


def scale_free_d2(d2: Tensor, width: Tensor, spread: Tensor) -> Tensor:
    """Second-derivative statistics made dimensionless: ``d2 x width^2 / spread`` per row.

    ``width``: the sweep's right end (it starts at 0); ``spread``: max f - min f over the sweep.
    NaN where the curve is constant (spread 0): no scale to measure curvature against.
    """
    w, s = width.double()[:, None], spread.double()[:, None]
    return torch.where(s > 0, d2 * w * w / torch.where(s > 0, s, 1.0), torch.full_like(d2, float("nan")))


@dataclass
class ProbeResult:
    """Per-sample outcomes (arrays of length S) and the sweep curves."""

    xs: Tensor  # [S, P]
    ys: Tensor  # [S, P]
    label: Tensor  # [S]
    delta: Tensor  # [S] (f(s_x - u) - f(s_x)) / u, J's units
    after: Tensor  # [S] f(s_x - u)
    at_point: Tensor  # [S] f(s_x), equals s_y for output="topk"
    split: Tensor  # [S]
    spread: Tensor  # [S] max f - min f over the sweep (output units)
    d2: Tensor  # [S, 3] (mean, mean_abs, max_abs), output units / input units^2
    d2_rel: Tensor  # [S, 3] the same, dimensionless (scale_free_d2)


def check_folded(pair: JSAEPair) -> None:
    """The probes read the SAEs on raw activations: the pair's activation scales must be folded (1)."""
    if pair.input_scale != 1.0 or pair.output_scale != 1.0:
        raise ValueError(f"the pair has activation scales ({pair.input_scale}, {pair.output_scale}); expected "
                         "1 and 1 (call pair.fold_activation_scales_() first, as exported pairs are)")


@torch.no_grad()
def probe_batch(
    pair: JSAEPair,
    samples: ProbeSamples,
    *,
    n_points: int = N_POINTS,
    output: str = "topk",
    second_derivative: bool = True,
    max_elements: int = 1 << 25,
    tolerance: str = "relative",
) -> ProbeResult:
    """Sweep, classify, subtract one step and second derivatives for all samples at once.

    Samples that share (token, input latent j) share one sweep (the MLP and encoder run once and
    every sample reads its own output latent i from it); all points of all sweeps of the batch go
    through the MLP and the encoder together. The step u of each sample is ``samples.step``.
    """
    check_tolerance(tolerance)
    check_folded(pair)
    S = len(samples)
    u = samples.step
    xs = sweep_grid(samples.s_x, n_points, u)
    h = FD_STEP * u
    centre = torch.maximum(xs, h[:, None])
    pieces = [xs, torch.stack([samples.s_x, samples.s_x - u], 1)]
    if second_derivative:
        pieces += [centre - h[:, None], centre[:, :1], centre + h[:, None]]  # f(c) = f(t) except at t = 0
    t = torch.cat(pieces, 1)
    first, sweep = shared_sweeps(samples)  # one sweep per (token, j), read for every i
    f = output_latent_at(pair, samples.x[first], samples.in_latent[first], samples.s_x[first], t[first],
                         samples.out_latent, sweep=sweep, output=output, max_elements=max_elements)
    P = n_points
    ys, at_point, after = f[:, :P], f[:, P], f[:, P + 1]
    delta = (after - at_point) / u
    spread = ys.amax(1) - ys.amin(1)
    if second_derivative:
        fm, f_c0, fp = f[:, P + 2 : 2 * P + 2], f[:, 2 * P + 2], f[:, 2 * P + 3 :]
        f0 = ys.clone()
        f0[:, 0] = f_c0
        d2 = second_derivative_stats(fm, f0, fp, h)
    else:
        d2 = torch.full((S, 3), float("nan"), dtype=torch.float64, device=f.device)
    return ProbeResult(
        xs=xs, ys=ys, label=classify_curves(xs, ys, tolerance=tolerance), delta=delta, after=after,
        at_point=at_point, split=classify_line_split(delta, samples.jac, after, tolerance=tolerance),
        spread=spread, d2=d2, d2_rel=scale_free_d2(d2, xs[:, -1], spread),
    )


def classify_one(xs: Tensor, ys: Tensor, *, tolerance: str = "relative", tol: float | None = None) -> int:
    """One curve, written as the authors' ``linear.py`` (lstsq + ``.item()``): the reference."""
    tol = _check_rule(tolerance, tol, LINEAR_RTOL, LINEAR_TOL)
    spread = (ys.max() - ys.min()).item()  # the whole curve's, for both fits

    def is_linear(x: Tensor, y: Tensor) -> bool:
        A = torch.stack([x, torch.ones_like(x)], dim=1).double()
        sol = torch.linalg.lstsq(A, y.double().unsqueeze(1)).solution
        slope, intercept = sol[0].item(), sol[1].item()
        worst = torch.abs(y.double() - (slope * x.double() + intercept)).max().item()
        if tolerance == "absolute":
            return worst < tol
        return spread == 0 or worst <= tol * spread

    if is_linear(xs, ys):
        return 0
    zero = ys == 0
    if not bool(zero.any()):
        return 2
    where = torch.where(zero)[0]
    first, last = int(where[0]), int(where[-1])
    if not bool((ys[first : last + 1] == 0).all()):
        return 2
    if not (bool(zero[0]) or bool(zero[-1])):  # the authors' "includes the start or the finish"
        return 2
    keep = torch.ones_like(zero)
    keep[first : last + 1] = False
    if int(keep.sum()) < MIN_OUTSIDE_ZERO:
        return 2
    return 1 if is_linear(xs[keep], ys[keep]) else 2


@torch.no_grad()
def probe_loop(pair: JSAEPair, samples: ProbeSamples, *, n_points: int = N_POINTS, output: str = "topk",
               tolerance: str = "relative") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The straightforward per-sample loop (one forward of P points per sample, as ``linear.py``).

    The reference for tests and the baseline for ``benchmarks/bench_probes.py``; returns
    ``(labels, ys [S, P], delta, split)``, the split written out per sample.
    """
    labels, curves, deltas, splits = [], [], [], []
    for s in range(len(samples)):
        x, j, i, sx = samples.x[s], int(samples.in_latent[s]), int(samples.out_latent[s]), float(samples.s_x[s])
        u, jac = float(samples.step[s]), abs(float(samples.jac[s]))
        w = pair.sae_in.W_dec[j]
        ts = torch.linspace(0, max(SWEEP_STEPS * u, sx + u), n_points, dtype=x.dtype, device=x.device)
        xs_in = (x - sx * w)[None, :] + ts[:, None] * w[None, :]
        pts = torch.cat([xs_in, x[None], (x - u * w)[None]])
        y = pair.mlp(pts)
        if output == "topk":
            vals, idx = pair.sae_out.encode(y)
            v = (vals * (idx == i)).sum(-1)
        else:
            v = (y @ pair.sae_out.W_enc[i] + pair.sae_out.b_enc[i]).clamp_min(0)
        curve = v[:n_points]
        labels.append(classify_one(ts, curve, tolerance=tolerance))
        curves.append(curve)
        after = v[n_points + 1].item()
        delta = (after - v[n_points].item()) / u
        bar = LINE_RTOL_REL * max(jac, abs(delta)) if tolerance == "relative" else LINE_ATOL + LINE_RTOL * jac
        on = abs(abs(delta) - jac) <= bar
        splits.append(0 if on else (1 if after == 0 else 2))
        deltas.append(delta)
    return np.array(labels), torch.stack(curves).cpu().numpy(), np.array(deltas), np.array(splits)


# --------------------------------------------------------------------------------------------------
# Running the probes over a cache
# --------------------------------------------------------------------------------------------------


def random_blocks(cache: Any, *, seed: int, block: int = 16, batch: int = 1024) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, rows)`` from blocks of ``block`` consecutive cache rows in a random order (seeded), ~``batch`` rows each.

    Spreads the probed tokens over the whole cache (many contexts: ~1000 sweeps come from ~60 places)
    while reading contiguous rows. The same seed gives the same stream, so the q_j pass
    (:func:`input_latent_scale`) over its first tokens sees the tokens that are then sampled.
    """
    n = int(cache.n_tokens)
    if n <= 0:
        raise ValueError("the evaluation cache holds 0 tokens; expected a non-empty validation cache")
    starts = np.random.default_rng(seed).permutation(np.arange(0, n, block))
    per = max(1, batch // block)
    for i in range(0, len(starts), per):
        chosen = np.sort(starts[i : i + per])
        xs = [cache.read(int(s0), int(min(n, s0 + block))) for s0 in chosen]
        rows = np.concatenate([np.arange(s0, min(n, s0 + block)) for s0 in chosen])
        yield torch.cat(xs), torch.from_numpy(rows)


def _sweep_ordinal(samples: ProbeSamples) -> Tensor:
    """Per sample, the ordinal of its (token, j) sweep in the batch (samples come grouped by sweep)."""
    row, j = samples.token_row.cpu(), samples.in_latent.cpu()
    new = torch.ones(len(samples), dtype=torch.bool)
    new[1:] = (row[1:] != row[:-1]) | (j[1:] != j[:-1])
    return torch.cumsum(new.long(), 0) - 1


def run_probes(
    pair: JSAEPair,
    batches: Iterable[Tensor | tuple[Tensor, Tensor]],
    *,
    n_sweeps: int = N_SWEEPS,
    n_samples: int | None = None,
    inputs_per_token: int = 1,
    outputs_per_input: int | None = None,
    seed: int = 0,
    n_points: int = N_POINTS,
    n_curves: int = 300,
    samples_per_forward: int = 512,
    output: str = "topk",
    second_derivative: bool = True,
    progress: bool = True,
    tolerance: str = "relative",
    input_scale: Tensor | None = None,
    scale_tokens: int | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Probe the functions of ``n_sweeps`` distinct (token, j) sweeps drawn from the token batches
    (at most ``n_samples`` functions when given); metrics and arrays.

    ``batches`` yields ``x [T, d]`` (rows counted from 0) or ``(x, rows)`` (see :func:`random_blocks`).
    Under ``tolerance="relative"``, ``input_scale`` holds q_j per input latent
    (:func:`input_latent_scale`); None: computed here from the first ``scale_tokens`` tokens of
    ``batches`` (all with None; the batches are then held in memory).

    ``arrays`` holds, per sample: ``label``, ``split``, ``jac``, ``delta``, ``step``, ``sweep_hi``,
    ``spread``, ``s_x``, ``s_y``, ``in_latent``, ``out_latent``, ``token_row``, ``d2_mean``,
    ``d2_mean_abs``, ``d2_max_abs`` and their dimensionless ``d2_rel_*``; and ``curve_xs`` /
    ``curve_ys`` / ``curve_index`` for up to ``n_curves`` samples (one random function of each of
    ``n_curves`` sweeps chosen at random).
    """
    for name, v in (("n_sweeps", n_sweeps), ("inputs_per_token", inputs_per_token),
                    ("samples_per_forward", samples_per_forward)):
        check_positive_int(name, v)
    check_positive_int("n_samples", n_samples, allow_none=True)  # None: no cap on the functions
    check_positive_int("n_points", n_points, minimum=3)  # a line fit needs at least 3 sweep points
    check_positive_int("outputs_per_input", outputs_per_input, allow_none=True)  # None: every active one
    check_positive_int("n_curves", n_curves, minimum=0)
    if output not in OUTPUT_MODES:
        raise ValueError(f"output={output!r} is invalid; expected one of {', '.join(OUTPUT_MODES)}")
    check_tolerance(tolerance)
    check_folded(pair)
    if tolerance == "absolute" and input_scale is not None:
        raise ValueError("input_scale was given with tolerance='absolute'; expected None (the paper's step is 1)")
    if tolerance == "relative" and input_scale is None:
        batches = list(batches)
        input_scale = input_latent_scale(pair, batches, max_tokens=scale_tokens)
    device = pair.sae_in.W_enc.device
    gen = torch.Generator().manual_seed(seed)
    # the sweeps that keep one curve each (and a random position within the sweep), fixed up front
    chosen_sweeps = torch.randperm(n_sweeps, generator=gen)[: min(n_curves, n_sweeps)].sort().values
    chosen_at = torch.rand(len(chosen_sweeps), generator=gen, dtype=torch.float64)
    collected: dict[str, list[np.ndarray]] = {}
    curves_x: list[Tensor] = []
    curves_y: list[Tensor] = []
    curve_index: list[Tensor] = []
    n_done = sweeps_done = row = 0
    bar = tqdm(total=n_sweeps, desc="probes", unit="sweep", disable=not progress, leave=False)
    for item in batches:
        if sweeps_done >= n_sweeps or (n_samples is not None and n_done >= n_samples):
            break
        x, rows = item if isinstance(item, tuple) else (item, None)
        x = x.to(device=device, dtype=pair.sae_in.W_enc.dtype)
        samples = sample_probes(pair, x, inputs_per_token=inputs_per_token, outputs_per_input=outputs_per_input,
                                generator=gen, row_offset=row, rows=rows, input_scale=input_scale)
        row += x.shape[0]
        ordinal = _sweep_ordinal(samples) + sweeps_done  # global sweep ordinal of each sample
        keep = ordinal < n_sweeps
        if n_samples is not None:
            keep &= torch.arange(len(samples)) < n_samples - n_done
        samples, ordinal = samples.select(keep.to(samples.s_x.device)), ordinal[keep]
        if not len(samples):
            continue
        # one sample of each chosen sweep in this batch: its global index
        mine = (chosen_sweeps >= int(ordinal[0])) & (chosen_sweeps <= int(ordinal[-1]))
        start = torch.searchsorted(ordinal, chosen_sweeps[mine])
        count = torch.searchsorted(ordinal, chosen_sweeps[mine], right=True) - start
        picked = n_done + start + (chosen_at[mine] * count).long().clamp_max(count - 1)
        for s in range(0, len(samples), samples_per_forward):
            part = samples.select(slice(s, s + samples_per_forward))
            r = probe_batch(pair, part, n_points=n_points, output=output, second_derivative=second_derivative,
                            tolerance=tolerance)
            cols = {
                "label": r.label, "split": r.split, "jac": part.jac, "delta": r.delta, "step": part.step,
                "sweep_hi": r.xs[:, -1], "spread": r.spread, "s_x": part.s_x, "s_y": part.s_y,
                "in_latent": part.in_latent, "out_latent": part.out_latent, "token_row": part.token_row,
                "d2_mean": r.d2[:, 0], "d2_mean_abs": r.d2[:, 1], "d2_max_abs": r.d2[:, 2],
                "d2_rel_mean": r.d2_rel[:, 0], "d2_rel_mean_abs": r.d2_rel[:, 1], "d2_rel_max_abs": r.d2_rel[:, 2],
            }
            for k, v in cols.items():
                collected.setdefault(k, []).append(v.detach().cpu().numpy())
            here = picked[(picked >= n_done) & (picked < n_done + len(part))]
            if here.numel():
                local = (here - n_done).to(r.xs.device)
                curves_x.append(r.xs[local].float().cpu())
                curves_y.append(r.ys[local].float().cpu())
                curve_index.append(here)
            n_done += len(part)
        bar.update(int(ordinal[-1]) + 1 - sweeps_done)
        sweeps_done = int(ordinal[-1]) + 1
    bar.close()
    if n_done == 0:
        raise ValueError("no probe samples were drawn (empty evaluation set or no active latents); "
                         "expected tokens with active input and output latents")
    if sweeps_done < n_sweeps and (n_samples is None or n_done < n_samples):
        log.warning("the evaluation set gave only %d of the %d requested sweeps", sweeps_done, n_sweeps)
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    if input_scale is not None:
        fallback = int(np.isnan(input_scale.cpu().numpy()[arrays["in_latent"]]).sum())
        if fallback:
            log.warning("%d samples' input latents were never active in the q_j pass; their step is s_x / %d",
                        fallback, SWEEP_STEPS)
    label, split = arrays["label"], arrays["split"]
    metrics = {probe_frac_key(name): float((label == i).mean()) for i, name in enumerate(LABELS)}
    metrics.update({probe_frac_key(name): float((split == i).mean()) for i, name in enumerate(SPLITS)})
    metrics[probe_key("n_samples")] = float(n_done)
    sweeps = np.unique(np.stack([arrays["token_row"], arrays["in_latent"]], axis=1), axis=0)
    metrics[probe_key("n_sweeps")] = float(len(sweeps))  # distinct (token, j), counted, not assumed
    if second_derivative:
        metrics[probe_key("d2_rel_mean_abs_median")] = _nanmedian(arrays["d2_rel_mean_abs"])
        metrics[probe_key("d2_rel_max_abs_median")] = _nanmedian(arrays["d2_rel_max_abs"])
        if tolerance == "absolute":  # in the paper's units; under the relative rule only the dimensionless ones
            metrics[probe_key("d2_mean_abs_median")] = float(np.median(arrays["d2_mean_abs"]))
            metrics[probe_key("d2_max_abs_median")] = float(np.median(arrays["d2_max_abs"]))
    arrays["curve_index"] = torch.cat(curve_index).numpy() if curve_index else np.zeros(0, dtype=np.int64)
    arrays["curve_xs"] = torch.cat(curves_x).numpy() if curves_x else np.zeros((0, n_points), dtype=np.float32)
    arrays["curve_ys"] = torch.cat(curves_y).numpy() if curves_y else np.zeros((0, n_points), dtype=np.float32)
    return metrics, arrays


def _nanmedian(a: np.ndarray) -> float:
    """Median over the non-NaN entries (NaN when there are none, without numpy's warning)."""
    a = a[~np.isnan(a)]
    return float(np.median(a)) if a.size else float("nan")


def write_probes(out_json: str | Path, metrics: dict[str, float], arrays: dict[str, np.ndarray],
                 identity: dict[str, Any], settings: dict[str, Any]) -> Path:
    """``probes.json`` (metrics, pair identity, settings) and ``probe_curves.npz`` next to it."""
    return write_pair_outputs(out_json, "probe_curves.npz", metrics, arrays, identity, settings)


def probe_settings(tolerance: str = "relative", **extra: Any) -> dict[str, Any]:
    """The rule a probes.json was made with (its constants), for the reader of the file."""
    check_tolerance(tolerance)
    if tolerance == "relative":
        rule = {"linear_rtol": LINEAR_RTOL, "line_rtol": LINE_RTOL_REL, "scale_quantile": SCALE_QUANTILE,
                "step": f"u = q_j / {SWEEP_STEPS}, q_j = quantile {SCALE_QUANTILE} of latent j's positive activations",
                "sweep": f"[0, max({SWEEP_STEPS} u, s_x + u)]",
                "linear_rule": "max |residual| <= linear_rtol x (max f - min f over the sweep), line and JumpReLU fit",
                "line_rule": "||delta| - |J|| <= line_rtol x max(|J|, |delta|)"}
    else:
        rule = {"linear_tol": LINEAR_TOL, "line_atol": LINE_ATOL, "line_rtol": LINE_RTOL, "step": "u = 1",
                "sweep": "[0, max(5, s_x + 1)]", "linear_rule": "max |residual| < linear_tol",
                "line_rule": "||delta| - |J|| <= line_atol + line_rtol |J|"}
    return {
        "tolerance": tolerance, **rule, "n_points": N_POINTS, "min_outside_zero": MIN_OUTSIDE_ZERO,
        "jumprelu_rule": JUMPRELU_RULE, "fd_step": f"{FD_STEP} u", "labels": list(LABELS), "splits": list(SPLITS),
        "base_point": EVALUATION_POINT, **extra,
    }


def cli(argv: list[str]) -> int:
    p = pair_parser(
        "python -m jsae probes",
        "Linearity probes of f_s (paper section 5.4, appendix B): classify the scalar functions "
        "s_x,j -> s_y,i as linear / JumpReLU-like / other, the subtract-one-step check against J, and second "
        "derivatives. Writes probes.json and probe_curves.npz.",
    )
    p.add_argument("--out", required=True, help="output path of probes.json (probe_curves.npz goes next to it)")
    p.add_argument("--n-sweeps", type=int, default=N_SWEEPS,
                   help="distinct (token, input latent) sweeps to probe; every function of a sweep is kept")
    p.add_argument("--n-samples", type=int, default=None,
                   help="at most this many (token, j, i) functions (default: no cap)")
    p.add_argument("--tolerance", choices=TOLERANCES, default="relative",
                   help="relative: scale-free sweep and tolerances (default); absolute: the paper's, in its units")
    p.add_argument("--scale-tokens", type=int, default=SCALE_TOKENS,
                   help="evaluation tokens of the pass that sets each input latent's sweep (relative rule)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: %(default)s)")
    p.add_argument("--inputs-per-token", type=int, default=1, help="distinct active input latents j drawn per token")
    p.add_argument("--outputs-per-input", default="all",
                   help="output latents i per (token, j): 'all' active ones (one shared sweep) or at most this many")
    p.add_argument("--n-curves", type=int, default=300, help="sweep curves kept for plotting")
    p.add_argument("--samples-per-forward", type=int, default=512, help="functions probed per batched forward")
    p.add_argument("--output", choices=OUTPUT_MODES, default="topk",
                   help="read s_y,i as the output SAE's TopK reports it (topk) or as ReLU(pre-activation) (relu)")
    p.add_argument("--no-second-derivative", action="store_true", help="skip the second-derivative statistics")
    return run_pair_command(p, argv, _probes_cli)


def _probes_cli(args: argparse.Namespace) -> int:
    check_positive_int("--n-sweeps", args.n_sweeps)
    check_positive_int("--n-samples", args.n_samples, allow_none=True)
    check_positive_int("--scale-tokens", args.scale_tokens)
    if args.outputs_per_input == "all":
        outputs_per_input = None
    elif args.outputs_per_input.isdigit() and int(args.outputs_per_input) > 0:
        outputs_per_input = int(args.outputs_per_input)
    else:
        raise ValueError(f"--outputs-per-input={args.outputs_per_input!r} is invalid; "
                         "expected 'all' or a positive integer")
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    input_scale = None
    if args.tolerance == "relative":  # one pass over the head of the same stream the samples come from
        input_scale = input_latent_scale(inputs.pair, random_blocks(inputs.cache, seed=args.seed),
                                         max_tokens=args.scale_tokens)
    metrics, arrays = run_probes(
        inputs.pair, random_blocks(inputs.cache, seed=args.seed), n_sweeps=args.n_sweeps, n_samples=args.n_samples,
        inputs_per_token=args.inputs_per_token, outputs_per_input=outputs_per_input, seed=args.seed,
        n_curves=args.n_curves, samples_per_forward=args.samples_per_forward, output=args.output,
        second_derivative=not args.no_second_derivative, progress=not args.no_progress,
        tolerance=args.tolerance, input_scale=input_scale,
    )
    settings = probe_settings(args.tolerance, seed=args.seed, inputs_per_token=args.inputs_per_token,
                              outputs_per_input=args.outputs_per_input, output=args.output,
                              n_sweeps_requested=args.n_sweeps, n_samples_cap=args.n_samples,
                              scale_tokens=args.scale_tokens if args.tolerance == "relative" else None,
                              cache=str(args.cache), run=str(args.run))
    npz = write_probes(args.out, metrics, arrays, pair_identity(inputs.run, inputs.pair), settings)
    log.info("wrote %s and %s (%s rule, %d sweeps, %d functions): linear %.3f, JumpReLU %.3f, other %.3f, "
             "on the line %.3f", args.out, npz, args.tolerance, metrics[probe_key("n_sweeps")],
             metrics[probe_key("n_samples")],
             *(metrics[probe_frac_key(name)] for name in ("linear", "jumprelu", "other", "on_line")))
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), metrics, [args.out],
                    step=run_field(inputs.run, "n_steps"))
    return 0
