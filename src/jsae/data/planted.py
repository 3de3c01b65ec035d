"""A synthetic MLP with a known sparse computation: the planted ground truth of a JSAE positive control.

In the JSAE paper's notation (Farnik et al. 2025): sparse input features ``s_x`` (``[n_x]``, each firing
with probability ``p`` and a random positive magnitude) are embedded in the MLP's input space,
``x = D_x s_x`` (``D_x [d, n_x]``, unit-norm columns; ``n_x > d`` puts them in superposition). A real
transformer-style MLP ``y = W_out phi(W_in x + b_in)`` (:class:`~jsae.nn.mlp.PlainMLP`, or a
:class:`~jsae.nn.mlp.GatedMLP`) is built so that ``y = D_y s_y`` with

    s_y,i = sum over planted edges (j -> i) of  w_ij f_kind(a_j),      a_j = <D_x[:, j], x>

and ``D_y [d, n_y]`` unit-norm columns. Output feature i reads only its ``fan_in`` planted inputs
``E_i``; the kinds of edge (labels as the probes', :data:`KINDS`) are

* ``linear``: ``f(a) = a`` (plain: the unit pair ``(phi(g a) - phi(-g a)) / g``; gated: a constant gate);
* ``jumprelu``: ``f(a) = relu(a - theta)`` — zero below a threshold, then linear (the paper's
  "JumpReLU-like" shape, with a zero jump);
* ``other``: a curved response, zero below theta: ``q(u) = u^2 / (2 kappa)`` of ``u = relu(a - theta)``,
  ``kappa = OTHER_KAPPA * scale`` (gated: exactly, one gate-times-up unit; plain: its piecewise-linear
  interpolant with knots at ``u = 0, kappa, 2 kappa, 3 kappa``, linear beyond the last).

**What is exact and what is approximate.**

* Exact (to float rounding): ``y = D_y true_s_y(s_x)`` (:meth:`PlantedModel.true_s_y` is the MLP's own
  feature-space output, ``V h`` with ``W_out = D_y V``); its Jacobian :meth:`PlantedModel.true_jacobian`
  ``= d s_y / d s_x`` (J of the paper, here over *all* features) is the MLP's, checked against autograd; with
  ``n_y <= d`` also ``s_y = D_y^+ y``. The Jacobian factorises exactly as ``J = J_read @ G`` with
  ``G = D_x^T D_x`` and ``J_read = d s_y / d a`` (:meth:`PlantedModel.readout_jacobian`) supported on the
  planted edges only.
* Approximate: (1) **superposition** — the units read ``a_j = s_j + sum_{l != j} G_jl s_l``, not ``s_j``,
  so off the planted edges ``|J_il| <= mu_x sum_j |J_read,ij|`` (``mu_x``: the coherence
  ``max_{j != l} |G_jl|``; :meth:`PlantedModel.offedge_bound`), zero when ``n_x <= d`` (then ``D_x`` is
  orthonormal); (2) **activation** — ``relu`` realises the kinks exactly; ``gelu`` (plain) and ``silu``
  (``gated``) realise ``relu(u)`` as ``phi(g u) / g`` (error <= 0.17 / g for GELU, 0.28 / g for SiLU per unit, a
  kink smoothed over ~1/g; the gated curved unit's error is <= 0.49 / (2 kappa g^2)); the linear kind is exact
  under every activation (``GELU(z) - GELU(-z) = z``). :meth:`PlantedModel.ideal_s_y`
  is the formula above with ``a_j = s_j`` and exact ReLUs, to measure both.

A consequence worth knowing: a linear edge passes its readout's interference through, so an output feature
with a linear edge is never exactly 0 (``w sum_l G_jl s_l`` when its input is silent, of either sign). The
thresholds of the other kinds gate that noise away while it stays below theta.

The truth functions are dense (``true_jacobian`` is ``[T, n_y, n_x]``): sized for toy models, not real ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from jsae.io import atomic_dir, read_json, write_json
from jsae.nn.mlp import MLP, GatedMLP, PlainMLP, activation_from
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE

#: Edge kinds, in the order (and with the codes 0, 1, 2) of the probes' labels (jsae.eval.probes.LABELS).
KINDS = ("linear", "jumprelu", "other")
#: ``relu`` / ``gelu``: a plain MLP with that activation; ``gated``: a Llama-style gated MLP with SiLU.
ACTIVATIONS = ("relu", "gelu", "gated")
#: ``uniform``: magnitudes uniform on [scale / 2, 3 scale / 2]; ``exponential``: scale x Exp(1).
MAGNITUDES = ("uniform", "exponential")
#: The curvature of the ``other`` kind, ``q(u) = u^2 / (2 kappa)``, ``kappa = OTHER_KAPPA x scale`` (slope 1 at kappa).
OTHER_KAPPA = 0.5
#: Knots of the plain MLP's piecewise-linear ``other`` response, at ``u = r kappa``, r = 0 .. OTHER_KNOTS - 1.
OTHER_KNOTS = 4
#: The gated MLP's constant gate pre-activation for the linear kind (any value works: the output divides by it).
GATE_OPEN = 8.0
GATE_OPEN_VALUE = float(F.silu(torch.tensor(GATE_OPEN, dtype=torch.float64)))  # in float64: the MLP's dtype
FORMAT = "jsae-planted"
FORMAT_VERSION = 1
CONFIG_FILENAME = "config.json"
MLP_FILENAME = "mlp.safetensors"
TRUTH_FILENAME = "truth.safetensors"
EDGES_FILENAME = "edges.json"
#: Every file of a planted model directory (written together by save_planted; config.json names the format).
PLANTED_FILES = (MLP_FILENAME, TRUTH_FILENAME, EDGES_FILENAME, CONFIG_FILENAME)
#: The hook name recorded in caches and run.json: a planted model has one MLP and no transformer around it.
PLANTED_HOOK = "planted.mlp.input"
#: Rows drawn per call of :meth:`PlantedModel.sample` when caching (the draws depend on it: see sample_split).
SAMPLE_CHUNK = 8192
#: Splits of a planted data stream, each drawn with its own seed (:func:`split_seed`).
SPLIT_OFFSETS = {"train": 0, "validation": 1}


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _int(value: object, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


@dataclass(frozen=True)
class PlantedConfig:
    """Everything that determines a planted model (and nothing else: equal configs build equal models)."""

    d: int = 32  # model width (the MLP's input and output width)
    n_x: int = 64  # input features; > d puts them in superposition
    n_y: int = 32  # output features; <= d lets s_y be read back exactly as D_y^+ y
    p: float = 0.04  # firing probability of each input feature, per token
    magnitude: str = "uniform"  # MAGNITUDES
    scale: float = 1.0  # magnitude scale (the mean magnitude of a firing feature)
    fan_in: int = 2  # planted inputs per output feature
    kind_shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # shares of edges by KINDS
    activation: str = "gelu"  # ACTIVATIONS
    threshold: float = 0.5  # mean theta of jumprelu / other edges in units of scale (each: x U[0.5, 1.5])
    weight_range: tuple[float, float] = (0.75, 1.25)  # edge weights w_ij ~ U[lo, hi]
    gain: float = 20.0  # g: phi(g u) / g stands for relu(u) (GELU / SiLU kinks smoothed over ~1/g)
    frame_steps: int = 300  # steps lowering the coherence of D_x, D_y (n > d; 0: plain random unit columns)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d", "n_x", "n_y", "fan_in"):
            if not _int(getattr(self, name), 1):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; expected a positive integer")
        for name, minimum in (("frame_steps", 0), ("seed", 0)):
            if not _int(getattr(self, name), minimum):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; expected an integer >= {minimum}")
        if self.fan_in > self.n_x:
            raise ValueError(f"fan_in={self.fan_in} is invalid; expected at most n_x={self.n_x} inputs per output")
        if not _number(self.p) or not 0 < self.p <= 1:
            raise ValueError(f"p={self.p!r} is invalid; expected a firing probability in (0, 1]")
        if self.magnitude not in MAGNITUDES:
            raise ValueError(f"magnitude={self.magnitude!r} is invalid; expected one of {', '.join(MAGNITUDES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is invalid; expected one of {', '.join(ACTIVATIONS)}")
        for name in ("scale", "gain"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; expected a positive finite number")
        if not _number(self.threshold) or self.threshold < 0:
            raise ValueError(f"threshold={self.threshold!r} is invalid; expected a finite number >= 0 (units of scale)")
        shares = tuple(self.kind_shares) if isinstance(self.kind_shares, (tuple, list)) else None
        if (shares is None or len(shares) != len(KINDS) or not all(_number(s) and s >= 0 for s in shares)
                or abs(sum(shares) - 1) > 1e-6):
            raise ValueError(f"kind_shares={self.kind_shares!r} is invalid; expected {len(KINDS)} non-negative "
                             f"shares of {'/'.join(KINDS)} summing to 1")
        w = tuple(self.weight_range) if isinstance(self.weight_range, (tuple, list)) else None
        if w is None or len(w) != 2 or not all(_number(v) for v in w) or not 0 < w[0] <= w[1]:
            raise ValueError(f"weight_range={self.weight_range!r} is invalid; expected (lo, hi) with 0 < lo <= hi")
        # JSON gives lists: store tuples, so a loaded config equals the one it was saved from
        object.__setattr__(self, "kind_shares", tuple(float(s) for s in shares))
        object.__setattr__(self, "weight_range", (float(w[0]), float(w[1])))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PlantedConfig:
        """A checked config from a JSON mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown planted config keys {', '.join(unknown)}; "
                             f"expected some of {', '.join(sorted(known))}")
        return cls(**values)


@dataclass(frozen=True)
class PlantedEdges:
    """The planted edges ``(j -> i)``, one entry each: ``s_y,i += weight f_kind(a_j; threshold)``."""

    out_feature: Tensor  # [E] long, i
    in_feature: Tensor  # [E] long, j
    kind: Tensor  # [E] long, index into KINDS
    weight: Tensor  # [E] float64, w_ij > 0
    threshold: Tensor  # [E] float64, theta (0 for linear edges)

    def __len__(self) -> int:
        return int(self.out_feature.shape[0])

    def kind_matrix(self, n_y: int, n_x: int) -> Tensor:
        """``[n_y, n_x]`` long: the kind code of edge (j -> i) at ``[i, j]``, -1 where there is none."""
        m = torch.full((n_y, n_x), -1, dtype=torch.long)
        m[self.out_feature, self.in_feature] = self.kind
        return m

    def to_json(self) -> list[dict[str, Any]]:
        return [{"out": int(i), "in": int(j), "kind": KINDS[int(k)], "weight": float(w), "threshold": float(t)}
                for i, j, k, w, t in zip(self.out_feature, self.in_feature, self.kind, self.weight, self.threshold)]


def coherence(D: Tensor) -> float:
    """``mu = max_{j != l} |<D_j, D_l>|`` of unit-norm columns (0 for a single column)."""
    if D.shape[1] < 2:
        return 0.0
    G = D.T @ D
    G.fill_diagonal_(0)
    return float(G.abs().max())


def incoherent_unit_columns(d: int, n: int, steps: int, generator: torch.Generator) -> Tensor:
    """``[d, n]`` float64 unit-norm columns: orthonormal when ``n <= d``, else random and then ``steps`` of
    projected gradient descent on ``sum_{j != l} G_jl^8`` (a smooth stand-in for the coherence).

    Why: a random frame's coherence (~0.6 at d = 32, n = 64) sets the off-edge interference of J; 300 steps
    bring it to ~0.16, near the Welch bound sqrt((n - d) / (d (n - 1))) = 0.13.
    """
    D = torch.randn(d, n, generator=generator, dtype=torch.float64)
    if n <= d:
        Q, R = torch.linalg.qr(D)
        return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(n, dtype=torch.float64))
    D = D / D.norm(dim=0)
    eye = torch.eye(n, dtype=torch.float64)
    for _ in range(steps):
        G = D.T @ D - eye
        grad = D @ G.pow(7)
        grad -= D * (grad * D).sum(0)  # tangent to the unit sphere of each column
        D = D - 0.05 * grad / G.abs().max().pow(6)  # step scaled to the current coherence
        D = D / D.norm(dim=0)
    return D


def _kind_counts(n_edges: int, shares: tuple[float, ...]) -> list[int]:
    """Edges per kind: ``n_edges x share`` rounded by largest remainder (the counts sum to ``n_edges``)."""
    raw = [n_edges * s for s in shares]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n_edges - sum(counts)]:
        counts[i] += 1
    return counts


def _plant_edges(cfg: PlantedConfig, g: torch.Generator) -> PlantedEdges:
    """``fan_in`` distinct inputs per output, drawn from concatenated random permutations of the inputs (so
    every input feeds about ``n_y fan_in / n_x`` outputs); kinds shuffled in exact proportions."""
    ins: list[int] = []
    pool: list[int] = []
    for _ in range(cfg.n_y):
        chosen: list[int] = []
        skipped: list[int] = []
        while len(chosen) < cfg.fan_in:
            if not pool:
                pool = torch.randperm(cfg.n_x, generator=g).tolist()
            j = pool.pop()
            # a repeat (only across a permutation boundary) waits for the next output
            (skipped if j in chosen else chosen).append(j)
        pool += skipped
        ins += chosen
    n_edges = len(ins)
    kind = torch.cat([torch.full((c,), k, dtype=torch.long)
                      for k, c in enumerate(_kind_counts(n_edges, cfg.kind_shares))])
    kind = kind[torch.randperm(n_edges, generator=g)]
    lo, hi = cfg.weight_range
    weight = lo + (hi - lo) * torch.rand(n_edges, generator=g, dtype=torch.float64)
    theta = cfg.threshold * cfg.scale * (0.5 + torch.rand(n_edges, generator=g, dtype=torch.float64))
    theta = torch.where(kind == KINDS.index("linear"), torch.zeros_like(theta), theta)
    out = torch.arange(cfg.n_y).repeat_interleave(cfg.fan_in)
    return PlantedEdges(out, torch.tensor(ins, dtype=torch.long), kind, weight, theta)


def _other_knots(cfg: PlantedConfig) -> tuple[Tensor, Tensor]:
    """Knots ``u_r = r kappa`` and slope increments of the piecewise-linear interpolant of u^2 / (2 kappa)."""
    kappa = OTHER_KAPPA * cfg.scale
    r = torch.arange(OTHER_KNOTS, dtype=torch.float64)
    slopes = (2 * r + 1) / 2  # slope of the interpolant on [r kappa, (r + 1) kappa]: ((r+1)^2 - r^2) kappa / (2 kappa)
    return r * kappa, torch.diff(slopes, prepend=torch.zeros(1, dtype=torch.float64))


class PlantedModel:
    """A built planted model: the dictionaries, the edges, the MLP and the truth functions (module docstring).

    ``V [n_y, H]`` maps the MLP's hidden activations ``h`` to output features (``W_out = D_y V``);
    ``unit_edge [H]`` names the edge each hidden unit serves (each unit reads one input feature).
    """

    def __init__(self, config: PlantedConfig, D_x: Tensor, D_y: Tensor, edges: PlantedEdges, mlp: MLP, V: Tensor,
                 unit_edge: Tensor) -> None:
        self.config, self.D_x, self.D_y, self.edges, self.mlp = config, D_x, D_y, edges, mlp
        self.V, self.unit_edge = V, unit_edge
        self.unit_feature = edges.in_feature[unit_edge]
        self.G = D_x.T @ D_x  # [n_x, n_x] Gram: a_j = (G s_x)_j
        self.coherence_x, self.coherence_y = coherence(D_x), coherence(D_y)

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.config.d

    @property
    def n_x(self) -> int:
        return self.config.n_x

    @property
    def n_y(self) -> int:
        return self.config.n_y

    @property
    def n_hidden(self) -> int:
        return int(self.V.shape[1])

    # -- data -------------------------------------------------------------------------------------
    def sample(self, n_tokens: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(s_x [T, n_x], x [T, d])`` float64: each feature fires w.p. p with a magnitude (``config.magnitude``)."""
        if not _int(n_tokens, 1):
            raise ValueError(f"n_tokens={n_tokens!r} is invalid; expected a positive integer")
        cfg = self.config
        on = torch.rand(n_tokens, cfg.n_x, generator=generator, dtype=torch.float64) < cfg.p
        u = torch.rand(n_tokens, cfg.n_x, generator=generator, dtype=torch.float64)
        mag = cfg.scale * (0.5 + u) if cfg.magnitude == "uniform" else -cfg.scale * torch.log1p(-u)
        s_x = torch.where(on, mag, torch.zeros_like(mag))
        return s_x, self.embed(s_x)

    def embed(self, s_x: Tensor) -> Tensor:
        """``x = D_x s_x`` per token."""
        return s_x.to(self.D_x.dtype) @ self.D_x.T

    def edge_mask(self) -> Tensor:
        """``[n_y, n_x]`` bool: the planted support of J."""
        return self.edges.kind_matrix(self.n_y, self.n_x) >= 0

    # -- truth ------------------------------------------------------------------------------------
    def _x(self, s_x: Tensor) -> Tensor:
        if s_x.dim() != 2 or s_x.shape[1] != self.n_x:
            raise ValueError(f"s_x has shape {tuple(s_x.shape)}; expected [tokens, {self.n_x}]")
        return self.embed(s_x).to(self.mlp.W_out.dtype)

    def hidden(self, x: Tensor) -> Tensor:
        """The MLP's hidden activations ``[T, H]``: ``phi(W_in x + b)`` or ``phi(gate) * up``."""
        m = self.mlp
        if isinstance(m, GatedMLP):
            return m.activation.fn(F.linear(x, m.W_gate, m.b_gate)) * F.linear(x, m.W_up, m.b_up)
        assert isinstance(m, PlainMLP)
        return m.activation.fn(F.linear(x, m.W_in, m.b_in))

    def true_s_y(self, s_x: Tensor) -> Tensor:
        """``[T, n_y]``: the output features the MLP computes, ``V h(D_x s_x)`` (exact: ``y = D_y s_y``)."""
        return self.hidden(self._x(s_x)) @ self.V.T.to(self.mlp.W_out.dtype)

    def true_jacobian(self, s_x: Tensor) -> Tensor:
        """``[T, n_y, n_x]``: ``d s_y / d s_x`` of the MLP (exact), ``V sum_m diag(d_m) W_m D_x`` (eqs. 12, 29)."""
        _, terms = self.mlp.jacobian_terms(self._x(s_x))
        V = self.V.to(self.mlp.W_out.dtype)
        return sum((V[None] * dm[:, None, :]) @ (Wm @ self.D_x.to(Wm.dtype)) for Wm, dm in terms)  # type: ignore[return-value]

    def readout_jacobian(self, s_x: Tensor) -> Tensor:
        """``[T, n_y, n_x]``: ``d s_y / d a`` with ``a = D_x^T x`` the units' readouts; zero off the planted
        edges by construction, and ``true_jacobian = readout_jacobian @ G`` exactly."""
        _, terms = self.mlp.jacobian_terms(self._x(s_x))
        V = self.V.to(self.mlp.W_out.dtype)
        sel = F.one_hot(self.unit_feature, self.n_x).to(V.dtype)  # [H, n_x]
        out = 0
        for Wm, dm in terms:
            # W_m's row u is gain_u D_x[:, j(u)]^T, so W_m D_x = diag(gain) S G: the gain is the row's length
            # along its feature (0 for the gated linear unit's constant gate)
            gain = (Wm * self.D_x.T.to(Wm.dtype)[self.unit_feature]).sum(1)
            out = out + (V[None] * (dm * gain)[:, None, :]) @ sel
        return out  # type: ignore[return-value]

    def offedge_bound(self, s_x: Tensor) -> Tensor:
        """``[T, n_y]``: ``mu_x sum_j |J_read,ij|``, the bound on ``|J_il|`` for every l off output i's edges."""
        return self.coherence_x * self.readout_jacobian(s_x).abs().sum(-1)

    def ideal_s_y(self, s_x: Tensor) -> Tensor:
        """``[T, n_y]``: the planted formula with ``a_j = s_j`` (no interference) and exact ReLUs."""
        if s_x.dim() != 2 or s_x.shape[1] != self.n_x:
            raise ValueError(f"s_x has shape {tuple(s_x.shape)}; expected [tokens, {self.n_x}]")
        e = self.edges
        a = s_x.double()[:, e.in_feature]  # [T, E]
        u = torch.relu(a - e.threshold)
        kappa = OTHER_KAPPA * self.config.scale
        if self.config.activation == "gated":
            curved = u * u / (2 * kappa)
        else:
            knots, inc = _other_knots(self.config)
            curved = (torch.relu(u[..., None] - knots) * inc).sum(-1)
        f = torch.where(e.kind == 0, a, torch.where(e.kind == 1, u, curved))
        out = torch.zeros(s_x.shape[0], self.n_y, dtype=torch.float64)
        return out.index_add_(1, e.out_feature, f * e.weight)


def build_planted(config: PlantedConfig) -> PlantedModel:
    """Draw the dictionaries and edges from ``config.seed`` and build the MLP realising them (float64)."""
    cfg = config
    g = torch.Generator().manual_seed(cfg.seed)
    D_x = incoherent_unit_columns(cfg.d, cfg.n_x, cfg.frame_steps, g)
    D_y = incoherent_unit_columns(cfg.d, cfg.n_y, cfg.frame_steps, g)
    edges = _plant_edges(cfg, g)
    gated = cfg.activation == "gated"
    c = cfg.gain
    knots, inc = _other_knots(cfg)
    kappa = OTHER_KAPPA * cfg.scale
    # per hidden unit: (edge, gate/in gain, gate/in bias, up gain, up bias, output coefficient before w)
    units: list[tuple[int, float, float, float, float, float]] = []
    for e in range(len(edges)):
        kind, theta = KINDS[int(edges.kind[e])], float(edges.threshold[e])
        if kind == "linear" and gated:  # phi(GATE_OPEN) * a / phi(GATE_OPEN) = a
            units.append((e, 0.0, GATE_OPEN, 1.0, 0.0, 1.0 / GATE_OPEN_VALUE))
        elif kind == "linear":  # (phi(g a) - phi(-g a)) / g = a exactly for relu and the erf GELU
            units += [(e, c, 0.0, 0.0, 0.0, 1.0 / c), (e, -c, 0.0, 0.0, 0.0, -1.0 / c)]
        elif kind == "jumprelu" and gated:  # phi(g (a - theta)) * (1 / g) ~ relu(a - theta)
            units.append((e, c, -c * theta, 0.0, 1.0, 1.0 / c))
        elif kind == "jumprelu":
            units.append((e, c, -c * theta, 0.0, 0.0, 1.0 / c))
        elif gated:  # phi(g (a - theta)) (a - theta) / (2 kappa g) ~ relu(a - theta)^2 / (2 kappa)
            units.append((e, c, -c * theta, 1.0, -theta, 1.0 / (2 * kappa * c)))
        else:  # sum_r inc_r relu(a - theta - u_r): the interpolant of u^2 / (2 kappa)
            units += [(e, c, -c * (theta + float(k)), 0.0, 0.0, float(s) / c) for k, s in zip(knots, inc)]
    unit_edge = torch.tensor([u[0] for u in units], dtype=torch.long)
    col = lambda i: torch.tensor([u[i] for u in units], dtype=torch.float64)
    read = D_x.T[edges.in_feature[unit_edge]]  # [H, d]: unit u reads a_j(u)
    V = torch.zeros(cfg.n_y, len(units), dtype=torch.float64)
    V[edges.out_feature[unit_edge], torch.arange(len(units))] = col(5) * edges.weight[unit_edge]
    W_out = D_y @ V
    if gated:
        mlp: MLP = GatedMLP(col(1)[:, None] * read, col(2), col(3)[:, None] * read, col(4), W_out, None,
                            activation_from("silu"))
    else:
        mlp = PlainMLP(col(1)[:, None] * read, col(2), W_out, None, activation_from(cfg.activation))
    return PlantedModel(cfg, D_x, D_y, edges, mlp, V, unit_edge)


def oracle_pair(planted: PlantedModel, *, k_in: int, k_out: int, bias_in: float = 0.0,
                bias_out: float = 0.0) -> JSAEPair:
    """A :class:`~jsae.nn.pair.JSAEPair` built from the TRUE dictionaries: decoders ``D_x^T`` / ``D_y^T``, encoders
    reading them (``D_x^T``: no linear readout is exact under superposition; ``D_y^+``: exact for
    ``n_y <= d``), encoder biases ``-bias_in`` / ``-bias_out`` (a margin against interference).

    Its J between active latents is exactly ``true_jacobian`` at those (output, input) features (n_y <= d).
    """
    dtype = planted.mlp.W_out.dtype
    saes = []
    for D, enc, k, bias in ((planted.D_x, planted.D_x.T, k_in, bias_in),
                            (planted.D_y, torch.linalg.pinv(planted.D_y), k_out, bias_out)):
        sae = TopKSAE(planted.d, D.shape[1], k, dtype=dtype)
        with torch.no_grad():
            sae.W_dec.copy_(D.T)
            sae.W_enc.copy_(enc)
            sae.b_enc.fill_(-float(bias))
            sae.b_dec.zero_()
        saes.append(sae)
    return JSAEPair(saes[0], saes[1], planted.mlp)


# --------------------------------------------------------------------------------------------------
# Files: config.json, mlp.safetensors, truth.safetensors, edges.json (written together, atomically)
# --------------------------------------------------------------------------------------------------


def save_planted(planted: PlantedModel, path: str | os.PathLike[str]) -> Path:
    """Write the model to the directory ``path`` atomically (replacing one that exists); returns ``path``."""
    m = planted.mlp
    names = ("W_gate", "b_gate", "W_up", "b_up", "W_out") if isinstance(m, GatedMLP) else ("W_in", "b_in", "W_out")
    mlp_tensors = {n: getattr(m, n).detach().contiguous() for n in names}
    e = planted.edges
    truth = {"D_x": planted.D_x, "D_y": planted.D_y, "V": planted.V, "unit_edge": planted.unit_edge,
             "edge_out": e.out_feature, "edge_in": e.in_feature, "edge_kind": e.kind, "edge_weight": e.weight,
             "edge_threshold": e.threshold}
    final = Path(path)
    with atomic_dir(final) as tmp:
        save_file(mlp_tensors, str(tmp / MLP_FILENAME))
        save_file({k: v.contiguous() for k, v in truth.items()}, str(tmp / TRUTH_FILENAME))
        write_json(tmp / EDGES_FILENAME, {"kinds": list(KINDS), "edges": e.to_json()})
        write_json(tmp / CONFIG_FILENAME, {
            "format": FORMAT, "version": FORMAT_VERSION, "config": asdict(planted.config),
            "mlp_kind": m.kind, "activation": m.activation.name, "d_hidden": planted.n_hidden,
            "coherence_x": planted.coherence_x, "coherence_y": planted.coherence_y, "n_edges": len(e),
        })
    return final


def load_planted(path: str | os.PathLike[str]) -> PlantedModel:
    """Read a directory written by :func:`save_planted`; one-line errors for a missing or foreign one."""
    root = Path(path)
    for name in (CONFIG_FILENAME, MLP_FILENAME, TRUTH_FILENAME):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} does not exist; expected a planted model directory (save_planted)")
    meta = read_json(root / CONFIG_FILENAME)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{root / CONFIG_FILENAME} is not a {FORMAT} v{FORMAT_VERSION} config; "
                         "expected a directory written by save_planted")
    cfg = PlantedConfig.from_dict(meta["config"])
    w, t = load_file(str(root / MLP_FILENAME)), load_file(str(root / TRUTH_FILENAME))
    expected = {"D_x": (cfg.d, cfg.n_x), "D_y": (cfg.d, cfg.n_y), "W_out": (cfg.d, None)}
    for name, shape in expected.items():
        have = tuple((w | t)[name].shape) if name in (w | t) else None
        if have is None or have[0] != shape[0] or (shape[1] is not None and have[1] != shape[1]):
            raise ValueError(f"{root}: tensor {name} has shape {have}; expected {shape} from config.json")
    if tuple(t["V"].shape) != (cfg.n_y, w["W_out"].shape[1]):
        raise ValueError(f"{root}: tensor V has shape {tuple(t['V'].shape)}; "
                         f"expected ({cfg.n_y}, {w['W_out'].shape[1]})")
    edges = PlantedEdges(t["edge_out"], t["edge_in"], t["edge_kind"], t["edge_weight"], t["edge_threshold"])
    if cfg.activation == "gated":
        mlp: MLP = GatedMLP(w["W_gate"], w["b_gate"], w["W_up"], w["b_up"], w["W_out"], None, activation_from("silu"))
    else:
        mlp = PlainMLP(w["W_in"], w["b_in"], w["W_out"], None, activation_from(cfg.activation))
    return PlantedModel(cfg, t["D_x"], t["D_y"], edges, mlp, t["V"], t["unit_edge"])


def planted_summary(planted: PlantedModel) -> dict[str, Any]:
    """A JSON-able description: sizes, coherences and edges per kind (for logs and reports)."""
    counts = torch.bincount(planted.edges.kind, minlength=len(KINDS)).tolist()
    return {"d": planted.d, "n_x": planted.n_x, "n_y": planted.n_y, "d_hidden": planted.n_hidden,
            "coherence_x": planted.coherence_x, "coherence_y": planted.coherence_y,
            "edges": dict(zip(KINDS, counts)), "config": asdict(planted.config)}


# --------------------------------------------------------------------------------------------------
# Model SPEC detection, data streams and the command line (python -m jsae planted)
# --------------------------------------------------------------------------------------------------


def is_planted_dir(spec: str | os.PathLike[str] | None) -> bool:
    """True when ``spec`` is a directory written by :func:`save_planted` (its config.json says ``jsae-planted``):
    the commands that take a model SPEC (cache, train, evaluate, probes, recovery) then use its MLP, no LM."""
    if spec is None:
        return False
    path = Path(os.path.expanduser(str(spec))) / CONFIG_FILENAME
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def planted_mlp(spec: str | os.PathLike[str], layer: int) -> MLP:
    """The MLP of the planted model at ``spec`` (its only layer, 0): what train, evaluate and probes take where an
    LM's MLP module would be."""
    if layer != 0:
        raise ValueError(f"layer={layer} is out of range for planted model {spec}; expected 0 (one MLP)")
    return load_planted(spec).mlp


def split_seed(seed: int, split: str) -> int:
    """The generator seed of a split: ``2 seed`` (train) and ``2 seed + 1`` (validation), so the splits never
    share draws and every base seed gets its own pair of streams."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split={split!r} is invalid; expected one of {', '.join(SPLIT_OFFSETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid; expected an integer >= 0")
    return 2 * seed + SPLIT_OFFSETS[split]


def sample_split(planted: PlantedModel, n_tokens: int, seed: int, split: str,
                 chunk: int = SAMPLE_CHUNK) -> Iterator[tuple[Tensor, Tensor]]:
    """``(s_x, x)`` for ``n_tokens`` rows of a split, in chunks of ``chunk`` rows: successive
    :meth:`PlantedModel.sample` calls on one generator seeded with :func:`split_seed` (what the cache stores)."""
    if not _int(n_tokens, 1):
        raise ValueError(f"n_tokens={n_tokens!r} is invalid; expected a positive integer")
    g = torch.Generator().manual_seed(split_seed(seed, split))
    for start in range(0, n_tokens, chunk):
        yield planted.sample(min(chunk, n_tokens - start), g)


def cli(argv: list[str]) -> int:
    from jsae.cli import HelpFormatter, run_cli
    from jsae.io import setup_logging

    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m jsae planted",
        description="Build a planted ground-truth model (a synthetic MLP with known sparse features and edges) and "
        f"write it to a directory ({', '.join(PLANTED_FILES)}), atomically.")
    p.add_argument("--out", required=True, help="output directory (e.g. results/models/planted)")
    p.add_argument("--config-json", default="{}",
                   help="PlantedConfig fields as a JSON object; absent fields take their defaults "
                   f"({', '.join(f.name for f in fields(PlantedConfig))})")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    return run_cli(_planted_cli, a)


def _planted_cli(a: argparse.Namespace) -> int:
    import logging

    try:
        values = json.loads(a.config_json)
    except ValueError as exc:
        raise ValueError(f"--config-json is not valid JSON ({exc}); expected an object of PlantedConfig "
                         "fields") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config-json={a.config_json!r} is invalid; expected a JSON object of PlantedConfig fields")
    planted = build_planted(PlantedConfig.from_dict(values))
    save_planted(planted, a.out)
    info = planted_summary(planted)
    logging.getLogger("jsae.data.planted").info(
        "planted model (d %d, n_x %d, n_y %d, %d hidden units, coherence %.3f / %.3f, edges %s) -> %s", info["d"],
        info["n_x"], info["n_y"], info["d_hidden"], info["coherence_x"], info["coherence_y"], info["edges"], a.out)
    return 0
