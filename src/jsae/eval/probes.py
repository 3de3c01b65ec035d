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

Measurements (all batched: many samples x sweep points per forward, no Python loop per sample):

* **Sampling**: per token one (or more) active input latent j, then every active output latent i
  (or a number drawn with replacement): each (j, i) of a token is equally likely, as in the
  authors' uniform draw from the k x k active block, and all i of one (token, j) share one sweep.
* **Sweep**: ``P = 100`` points ``t`` in ``[0, max(5, s_x,j + 1)]`` (appendix B footnote 3).
* **Classification** (tolerances as the authors' ``linear.py``): *linear* if the least-squares line
  through all P points has every ``|residual| < 1e-2`` (absolute; constant functions count as
  linear); else *JumpReLU-like* if the exact zeros (``s_y,i == 0``) form one contiguous run of
  sweep points, at least 2 points lie outside it, and those points fit one line within the same
  ``1e-2``; else *other*. (Like ``linear.py`` the zero run may lie anywhere in the sweep.)
* **Subtract 1** (fig. 8c, 10): ``delta = f(s_x,j - 1) - f(s_x,j)`` next to ``J_ij`` (one unit of the
  decoder direction is removed, as ``ablation.py``; ``s_x,j - 1`` may be negative). Split:
  *on the line* if ``| |delta| - |J_ij| | <= 0.01 + 0.1 |J_ij|`` (the paper plots |J| against
  |delta|; a linear f gives ``delta = -J_ij`` exactly); *cluster* if off the line and the output
  latent is exactly 0 after the subtraction (the paper's explanation of its top-left cluster: a
  JumpReLU-like f whose jump lies within 1 below ``s_x,j``); *outlier* otherwise.
* **Second derivative** (figs. 13-14): central differences with step ``h = 0.005`` (as the paper)
  at every sweep point, ``(f(c+h) - 2 f(c) + f(c-h)) / h^2`` with ``c = max(t, h)`` so the stencil
  stays in the domain; per sample its mean, mean |.| and max |.| over the sweep.
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
LINEAR_TOL = 1e-2  # absolute max residual of the least-squares line (authors' linear.py)
MIN_OUTSIDE_ZERO = 2  # points outside the zero run for a JumpReLU-like fit (authors' linear.py)
LINE_ATOL, LINE_RTOL = 0.01, 0.1  # "on the line": ||delta| - |J|| <= LINE_ATOL + LINE_RTOL |J|
FD_STEP = 0.005  # finite-difference step of the second derivative (figs. 13-14)
LABELS = ("linear", "jumprelu", "other")
SPLITS = ("on_line", "cluster", "outlier")
OUTPUT_MODES = ("topk", "relu")


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

    def __len__(self) -> int:
        return int(self.in_latent.shape[0])

    def select(self, index: Tensor | slice) -> ProbeSamples:
        return ProbeSamples(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


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
) -> ProbeSamples:
    """Draw (token, j, i) triples among the active latents of each token of ``x``.

    Per token, ``inputs_per_token`` input latents j are drawn uniformly with replacement from the
    active ones; per (token, j), either every active output latent i (``outputs_per_input=None``)
    or that many drawn uniformly with replacement. Either way each (j, i) of a token is equally
    likely, as in the authors' uniform draw from the k x k active block. Sharing j across several i
    lets :func:`probe_batch` compute one sweep for all of them. "Active" means selected by TopK
    with a value > 0; tokens without an active input or output latent are skipped. ``rows`` (or
    ``row_offset + position``) names each token's row in the evaluation set.
    """
    out = pair(x)
    assert out.jacobian is not None
    in_on, out_on = out.in_vals > 0, out.out_vals > 0
    tok = (in_on.any(1) & out_on.any(1)).nonzero().squeeze(1)
    if tok.numel() == 0:
        return _empty_samples(x)
    c = torch.multinomial(in_on[tok].float().cpu(), inputs_per_token, replacement=True, generator=generator)
    t = tok.cpu().repeat_interleave(inputs_per_token)  # one entry per (token, j)
    c = c.reshape(-1)
    if outputs_per_input is None:
        mask = out_on.cpu()[t]  # every active output of that token
        pos, a = mask.nonzero(as_tuple=True)
        t, c = t[pos], c[pos]
    else:
        a = torch.multinomial(out_on.cpu()[t].float(), outputs_per_input, replacement=True, generator=generator)
        t, c = t.repeat_interleave(outputs_per_input), c.repeat_interleave(outputs_per_input)
        a = a.reshape(-1)
    dev = x.device
    td, cd, ad = t.to(dev), c.to(dev), a.to(dev)
    return ProbeSamples(
        x=x[td],
        in_latent=out.in_idx[td, cd],
        out_latent=out.out_idx[td, ad],
        s_x=out.in_vals[td, cd],
        s_y=out.out_vals[td, ad],
        jac=out.jacobian[td, ad, cd],
        token_row=(t + row_offset) if rows is None else torch.as_tensor(rows).cpu()[t],
    )


def _empty_samples(x: Tensor) -> ProbeSamples:
    z = torch.zeros(0, dtype=torch.long, device=x.device)
    f = torch.zeros(0, dtype=x.dtype, device=x.device)
    return ProbeSamples(x[:0], z, z, f, f, f, z.cpu())


def sweep_grid(s_x: Tensor, n_points: int = N_POINTS) -> Tensor:
    """``[S, P]``: P evenly spaced points in ``[0, max(5, s_x + 1)]`` per sample (appendix B)."""
    hi = torch.clamp(s_x + 1, min=5.0)
    u = torch.linspace(0, 1, n_points, dtype=s_x.dtype, device=s_x.device)
    return hi[:, None] * u[None, :]


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
            vals, idx = pair.sae_out.encode(y)  # [n*Q, k]
            vals, idx = vals.reshape(u1 - u0, Q, -1), idx.reshape(u1 - u0, Q, -1)
            v = (vals[local] * (idx[local] == target[:, None, None])).sum(-1)
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


def classify_curves(xs: Tensor, ys: Tensor, tol: float = LINEAR_TOL) -> Tensor:
    """Label per row of ``[S, P]`` curves: 0 linear, 1 JumpReLU-like, 2 other (module docstring)."""
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol={tol!r} is invalid; expected a finite number > 0")
    S, P = ys.shape
    ones = torch.ones_like(ys, dtype=torch.float64)
    linear = _line_fit_max_residual(xs, ys, ones) < tol
    zero = ys == 0
    pos = torch.arange(P, device=ys.device)
    any_zero = zero.any(1)
    first = torch.where(zero, pos, P).amin(1)
    last = torch.where(zero, pos, -1).amax(1)
    contiguous = zero.sum(1) == (last - first + 1)
    outside = (pos[None, :] < first[:, None]) | (pos[None, :] > last[:, None])
    enough = outside.sum(1) >= MIN_OUTSIDE_ZERO
    jump = any_zero & contiguous & enough & (_line_fit_max_residual(xs, ys, outside.double()) < tol)
    labels = torch.full((S,), 2, dtype=torch.long, device=ys.device)
    labels[jump] = 1
    labels[linear] = 0
    return labels


def classify_line_split(delta: Tensor, jac: Tensor, after: Tensor) -> Tensor:
    """0 on the line, 1 cluster, 2 outlier, for the subtract-1 check (module docstring)."""
    on = (delta.abs() - jac.abs()).abs() <= LINE_ATOL + LINE_RTOL * jac.abs()
    split = torch.full(delta.shape, 2, dtype=torch.long, device=delta.device)
    split[(~on) & (after == 0)] = 1
    split[on] = 0
    return split


def second_derivative_stats(fm: Tensor, f0: Tensor, fp: Tensor, h: float = FD_STEP) -> Tensor:
    """``[S, 3]``: mean, mean |.| and max |.| over the sweep of ``(f(c+h) - 2 f(c) + f(c-h)) / h^2``."""
    d2 = (fp.double() - 2 * f0.double() + fm.double()) / (h * h)
    return torch.stack([d2.mean(1), d2.abs().mean(1), d2.abs().amax(1)], dim=1)


@dataclass
class ProbeResult:
    """Per-sample outcomes (arrays of length S) and the sweep curves."""

    xs: Tensor  # [S, P]
    ys: Tensor  # [S, P]
    label: Tensor  # [S]
    delta: Tensor  # [S] f(s_x - 1) - f(s_x)
    after: Tensor  # [S] f(s_x - 1)
    at_point: Tensor  # [S] f(s_x), equals s_y for output="topk"
    split: Tensor  # [S]
    d2: Tensor  # [S, 3] (mean, mean_abs, max_abs)


@torch.no_grad()
def probe_batch(
    pair: JSAEPair,
    samples: ProbeSamples,
    *,
    n_points: int = N_POINTS,
    output: str = "topk",
    second_derivative: bool = True,
    max_elements: int = 1 << 25,
) -> ProbeResult:
    """Sweep, classify, subtract-1 and second derivatives for all samples at once.

    Samples that share (token, input latent j) share one sweep (the MLP and encoder run once and
    every sample reads its own output latent i from it); all points of all sweeps of the batch go
    through the MLP and the encoder together.
    """
    S = len(samples)
    xs = sweep_grid(samples.s_x, n_points)
    h = FD_STEP
    centre = xs.clamp_min(h)
    pieces = [xs, torch.stack([samples.s_x, samples.s_x - 1], 1)]
    if second_derivative:
        pieces += [centre - h, centre[:, :1], centre + h]  # f(c) = f(t) except at t = 0 (c = h)
    t = torch.cat(pieces, 1)
    first, sweep = shared_sweeps(samples)  # one sweep per (token, j), read for every i
    f = output_latent_at(pair, samples.x[first], samples.in_latent[first], samples.s_x[first], t[first],
                         samples.out_latent, sweep=sweep, output=output, max_elements=max_elements)
    P = n_points
    ys, at_point, after = f[:, :P], f[:, P], f[:, P + 1]
    delta = after - at_point
    if second_derivative:
        fm, f_c0, fp = f[:, P + 2 : 2 * P + 2], f[:, 2 * P + 2], f[:, 2 * P + 3 :]
        f0 = ys.clone()
        f0[:, 0] = f_c0
        d2 = second_derivative_stats(fm, f0, fp, h)
    else:
        d2 = torch.full((S, 3), float("nan"), dtype=torch.float64, device=f.device)
    return ProbeResult(
        xs=xs, ys=ys, label=classify_curves(xs, ys), delta=delta, after=after, at_point=at_point,
        split=classify_line_split(delta, samples.jac, after), d2=d2,
    )


def classify_one(xs: Tensor, ys: Tensor, tol: float = LINEAR_TOL) -> int:
    """One curve, written as the authors' ``linear.py`` (lstsq + ``.item()``): the reference."""

    def is_linear(x: Tensor, y: Tensor) -> bool:
        A = torch.stack([x, torch.ones_like(x)], dim=1).double()
        sol = torch.linalg.lstsq(A, y.double().unsqueeze(1)).solution
        slope, intercept = sol[0].item(), sol[1].item()
        return bool(torch.all(torch.abs(y.double() - (slope * x.double() + intercept)) < tol).item())

    if is_linear(xs, ys):
        return 0
    zero = ys == 0
    if not bool(zero.any()):
        return 2
    where = torch.where(zero)[0]
    first, last = int(where[0]), int(where[-1])
    if not bool((ys[first : last + 1] == 0).all()):
        return 2
    keep = torch.ones_like(zero)
    keep[first : last + 1] = False
    if int(keep.sum()) < MIN_OUTSIDE_ZERO:
        return 2
    return 1 if is_linear(xs[keep], ys[keep]) else 2


@torch.no_grad()
def probe_loop(pair: JSAEPair, samples: ProbeSamples, *, n_points: int = N_POINTS,
               output: str = "topk") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The straightforward per-sample loop (one forward of P points per sample, as ``linear.py``).

    The reference for tests and the baseline for ``benchmarks/bench_probes.py``; returns
    ``(labels, ys [S, P], delta)``.
    """
    labels, curves, deltas = [], [], []
    for s in range(len(samples)):
        x, j, i, sx = samples.x[s], int(samples.in_latent[s]), int(samples.out_latent[s]), float(samples.s_x[s])
        w = pair.sae_in.W_dec[j]
        ts = torch.linspace(0, max(5.0, sx + 1), n_points, dtype=x.dtype, device=x.device)
        xs_in = (x - sx * w)[None, :] + ts[:, None] * w[None, :]
        pts = torch.cat([xs_in, x[None], (x - w)[None]])
        y = pair.mlp(pts)
        if output == "topk":
            vals, idx = pair.sae_out.encode(y)
            v = (vals * (idx == i)).sum(-1)
        else:
            v = (y @ pair.sae_out.W_enc[i] + pair.sae_out.b_enc[i]).clamp_min(0)
        curve = v[:n_points]
        labels.append(classify_one(ts, curve))
        curves.append(curve)
        deltas.append((v[n_points + 1] - v[n_points]).item())
    return np.array(labels), torch.stack(curves).cpu().numpy(), np.array(deltas)


# --------------------------------------------------------------------------------------------------
# Running the probes over a cache
# --------------------------------------------------------------------------------------------------


def random_blocks(cache: Any, *, seed: int, block: int = 64, batch: int = 1024) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, rows)`` from blocks of ``block`` consecutive cache rows in a random order (seeded), ~``batch`` rows each.

    Spreads the probed tokens over the whole cache (many contexts) while reading contiguous rows.
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


def run_probes(
    pair: JSAEPair,
    batches: Iterable[Tensor | tuple[Tensor, Tensor]],
    *,
    n_samples: int = 10_000,
    inputs_per_token: int = 1,
    outputs_per_input: int | None = None,
    seed: int = 0,
    n_points: int = N_POINTS,
    n_curves: int = 300,
    samples_per_forward: int = 512,
    output: str = "topk",
    second_derivative: bool = True,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Probe ``n_samples`` (token, j, i) triples drawn from the token batches; metrics and arrays.

    ``batches`` yields ``x [T, d]`` (rows counted from 0) or ``(x, rows)`` (see :func:`random_blocks`).

    ``arrays`` holds, per sample: ``label``, ``split``, ``jac``, ``delta``, ``s_x``, ``s_y``,
    ``in_latent``, ``out_latent``, ``token_row``, ``d2_mean``, ``d2_mean_abs``, ``d2_max_abs``;
    and ``curve_xs`` / ``curve_ys`` / ``curve_index`` for ``n_curves`` samples chosen at random.
    """
    for name, v in (("n_samples", n_samples), ("inputs_per_token", inputs_per_token),
                    ("samples_per_forward", samples_per_forward)):
        check_positive_int(name, v)
    check_positive_int("n_points", n_points, minimum=3)  # a line fit needs at least 3 sweep points
    check_positive_int("outputs_per_input", outputs_per_input, allow_none=True)  # None: every active one
    check_positive_int("n_curves", n_curves, minimum=0)
    if output not in OUTPUT_MODES:
        raise ValueError(f"output={output!r} is invalid; expected one of {', '.join(OUTPUT_MODES)}")
    device = pair.sae_in.W_enc.device
    gen = torch.Generator().manual_seed(seed)
    # which samples keep their curve, fixed up front so memory stays O(n_curves)
    chosen = torch.randperm(n_samples, generator=gen)[: min(n_curves, n_samples)].sort().values
    collected: dict[str, list[np.ndarray]] = {}
    curves_x: list[Tensor] = []
    curves_y: list[Tensor] = []
    curve_index: list[Tensor] = []
    n_done, row = 0, 0
    bar = tqdm(total=n_samples, desc="probes", unit="fn", disable=not progress, leave=False)
    for item in batches:
        if n_done >= n_samples:
            break
        x, rows = item if isinstance(item, tuple) else (item, None)
        x = x.to(device=device, dtype=pair.sae_in.W_enc.dtype)
        samples = sample_probes(pair, x, inputs_per_token=inputs_per_token, outputs_per_input=outputs_per_input,
                                generator=gen, row_offset=row, rows=rows)
        row += x.shape[0]
        samples = samples.select(slice(0, n_samples - n_done))
        for s in range(0, len(samples), samples_per_forward):
            part = samples.select(slice(s, s + samples_per_forward))
            r = probe_batch(pair, part, n_points=n_points, output=output, second_derivative=second_derivative)
            cols = {
                "label": r.label, "split": r.split, "jac": part.jac, "delta": r.delta, "s_x": part.s_x,
                "s_y": part.s_y, "in_latent": part.in_latent, "out_latent": part.out_latent,
                "token_row": part.token_row, "d2_mean": r.d2[:, 0], "d2_mean_abs": r.d2[:, 1], "d2_max_abs": r.d2[:, 2],
            }
            for k, v in cols.items():
                collected.setdefault(k, []).append(v.detach().cpu().numpy())
            here = chosen[(chosen >= n_done) & (chosen < n_done + len(part))]
            if here.numel():
                local = (here - n_done).to(r.xs.device)
                curves_x.append(r.xs[local].float().cpu())
                curves_y.append(r.ys[local].float().cpu())
                curve_index.append(here)
            n_done += len(part)
            bar.update(len(part))
    bar.close()
    if n_done == 0:
        raise ValueError("no probe samples were drawn (empty evaluation set or no active latents); "
                         "expected tokens with active input and output latents")
    if n_done < n_samples:
        log.warning("the evaluation set gave only %d of the %d requested samples", n_done, n_samples)
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    label, split = arrays["label"], arrays["split"]
    metrics = {probe_frac_key(name): float((label == i).mean()) for i, name in enumerate(LABELS)}
    metrics.update({probe_frac_key(name): float((split == i).mean()) for i, name in enumerate(SPLITS)})
    metrics[probe_key("n_samples")] = float(n_done)
    if second_derivative:
        metrics[probe_key("d2_mean_abs_median")] = float(np.median(arrays["d2_mean_abs"]))
        metrics[probe_key("d2_max_abs_median")] = float(np.median(arrays["d2_max_abs"]))
    arrays["curve_index"] = torch.cat(curve_index).numpy() if curve_index else np.zeros(0, dtype=np.int64)
    arrays["curve_xs"] = torch.cat(curves_x).numpy() if curves_x else np.zeros((0, n_points), dtype=np.float32)
    arrays["curve_ys"] = torch.cat(curves_y).numpy() if curves_y else np.zeros((0, n_points), dtype=np.float32)
    return metrics, arrays


def write_probes(out_json: str | Path, metrics: dict[str, float], arrays: dict[str, np.ndarray],
                 identity: dict[str, Any], settings: dict[str, Any]) -> Path:
    """``probes.json`` (metrics, pair identity, settings) and ``probe_curves.npz`` next to it."""
    return write_pair_outputs(out_json, "probe_curves.npz", metrics, arrays, identity, settings)


def probe_settings(**extra: Any) -> dict[str, Any]:
    return {
        "n_points": N_POINTS, "linear_tol": LINEAR_TOL, "min_outside_zero": MIN_OUTSIDE_ZERO,
        "line_atol": LINE_ATOL, "line_rtol": LINE_RTOL, "fd_step": FD_STEP, "labels": list(LABELS),
        "splits": list(SPLITS), "base_point": EVALUATION_POINT, **extra,
    }


def cli(argv: list[str]) -> int:
    p = pair_parser(
        "python -m jsae probes",
        "Linearity probes of f_s (paper section 5.4, appendix B): classify the scalar functions "
        "s_x,j -> s_y,i as linear / JumpReLU-like / other, the subtract-1 check against J, and second "
        "derivatives. Writes probes.json and probe_curves.npz.",
    )
    p.add_argument("--out", required=True, help="output path of probes.json (probe_curves.npz goes next to it)")
    p.add_argument("--n-samples", type=int, default=10_000, help="(token, j, i) functions to probe")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: %(default)s)")
    p.add_argument("--inputs-per-token", type=int, default=1, help="active input latents j drawn per token")
    p.add_argument("--outputs-per-input", default="all",
                   help="output latents i per (token, j): 'all' active ones (one shared sweep) or a number drawn")
    p.add_argument("--n-curves", type=int, default=300, help="sweep curves kept for plotting")
    p.add_argument("--samples-per-forward", type=int, default=512, help="functions probed per batched forward")
    p.add_argument("--output", choices=OUTPUT_MODES, default="topk",
                   help="read s_y,i as the output SAE's TopK reports it (topk) or as ReLU(pre-activation) (relu)")
    p.add_argument("--no-second-derivative", action="store_true", help="skip the second-derivative statistics")
    return run_pair_command(p, argv, _probes_cli)


def _probes_cli(args: argparse.Namespace) -> int:
    check_positive_int("--n-samples", args.n_samples)
    if args.outputs_per_input == "all":
        outputs_per_input = None
    elif args.outputs_per_input.isdigit() and int(args.outputs_per_input) > 0:
        outputs_per_input = int(args.outputs_per_input)
    else:
        raise ValueError(f"--outputs-per-input={args.outputs_per_input!r} is invalid; "
                         "expected 'all' or a positive integer")
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    metrics, arrays = run_probes(
        inputs.pair, random_blocks(inputs.cache, seed=args.seed), n_samples=args.n_samples,
        inputs_per_token=args.inputs_per_token, outputs_per_input=outputs_per_input, seed=args.seed,
        n_curves=args.n_curves, samples_per_forward=args.samples_per_forward, output=args.output,
        second_derivative=not args.no_second_derivative, progress=not args.no_progress,
    )
    settings = probe_settings(seed=args.seed, inputs_per_token=args.inputs_per_token,
                              outputs_per_input=args.outputs_per_input, output=args.output,
                              cache=str(args.cache), run=str(args.run))
    npz = write_probes(args.out, metrics, arrays, pair_identity(inputs.run, inputs.pair), settings)
    log.info("wrote %s and %s: linear %.3f, JumpReLU %.3f, other %.3f, on the line %.3f", args.out, npz,
             *(metrics[probe_frac_key(name)] for name in ("linear", "jumprelu", "other", "on_line")))
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), metrics, [args.out])
    return 0
