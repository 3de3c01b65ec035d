"""Evaluation metrics of a JSAE pair, each defined once (paper appendix E, F; docs/metrics.md), and their keys.

Every metric has a pure function on tensors (the definition, tested against brute force) and, where
the evaluation runs over more tokens than fit in memory, a streaming accumulator whose ``update``
takes one batch and whose result equals the pure function on the concatenated batches.

Conventions:

* reconstruction: ``x`` / ``x_hat`` are ``[T, d]``; explained variance is a *ratio of sums* over the
  evaluation tokens (not the legacy mean of per-token ratios, which is kept as ``*_legacy``);
* Jacobian: ``J`` is ``[T, k_out, k_in]`` as :meth:`jsae.nn.pair.JSAEPair.jacobian` returns it (rows of
  output latents the ReLU switched off are zero). Per-token shares use ``k_out * k_in`` (= k^2) as
  100%, as the paper's fig. 2 / 7 do.

The metric keys (the names in evaluation.json, probes.json, summary.csv and MLflow) are built here
and only here: the key functions and constants below are what every other module uses. The
exceptions are keys of files of their own, each owned by the only module that computes them: the planted
ground truth's ``recovery/…`` (:mod:`jsae.eval.recovery`), the SCALAR-style ``interaction/…``
(:mod:`jsae.eval.interaction`) and SAEBench's core-eval JSONs (:mod:`jsae.eval.core`, in SAEBench's names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

#: Thresholds tau of the "share of |J| > tau" sparsity metric (paper fig. 2, 7).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.005, 0.01, 0.015, 0.02, 0.04)
#: p of the per-token Lp norms of the flattened k x k Jacobian (paper F.1, fig. 35).
LP_NORMS: tuple[float, ...] = (1.0, 2.0, 4.0, math.inf)
#: A latent firing fewer than this many times per token is "rare" (appendix E: < once per 1M tokens).
RARE_RATE = 1e-6
#: Default |J| histogram: 1500 linear bins on [0, 1.5] plus an explicit overflow bin (fig. 32, 34).
DEFAULT_HIST_MAX = 1.5
DEFAULT_HIST_BINS = 1500
#: Per-token statistics (``token_*`` arrays of jacobian_stats.npz) are kept for this many evaluation
#: tokens, the first ones of the validation cache: what the claims' bootstrap intervals resample.
DEFAULT_TOKEN_STATS = 20_000
#: The log grid on which each token's count of |J| > tau is kept, so a share can be read at any tau
#: afterwards (the headline tau is only known once the site's lambda = 0 pair is evaluated):
#: tau_g = 10 ** (g / TAU_GRID_PER_DECADE) for integer g, from 1e-8 to 1e4 (steps of 7.5%). A log grid
#: is scale-free: multiplying J by 10 shifts every count by exactly one decade of the grid.
TAU_GRID_PER_DECADE = 32
TAU_GRID_DECADES = (-8, 4)
#: The headline tau of a site is this quantile of the non-zero |J| of its trained lambda = 0 pair (the median).
HEADLINE_QUANTILE = 0.5


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Thresholds must be a non-empty sequence of finite numbers > 0; returned as floats."""
    values = tuple(thresholds) if not isinstance(thresholds, (int, float)) else (thresholds,)
    if not values:
        raise ValueError("thresholds is empty; expected at least one positive number such as 0.01")
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"threshold {t!r} is invalid; expected finite numbers > 0 (e.g. 0.005, 0.01)")
    return tuple(float(t) for t in values)


# --------------------------------------------------------------------------------------------------
# Metric keys
# --------------------------------------------------------------------------------------------------

#: The two SAEs of a pair: ``in`` (on the MLP input x) and ``out`` (on y = MLP(x)).
SIDES = ("in", "out")
#: Per-SAE reconstruction metrics, as :meth:`ReconstructionAccumulator.result` names them.
RECONSTRUCTION_METRICS = ("explained_variance", "explained_variance_legacy", "cosine", "mse", "sse_per_token")
#: Prefix of the linearity-probe metrics (probes.json).
PROBE_PREFIX = "probe/"


def side_key(side: str, name: str) -> str:
    """``{side}/{name}``: a metric of one SAE, e.g. ``in/explained_variance``, ``out/ce_loss_score``."""
    return f"{side}/{name}"


def threshold_key(tau: float) -> str:
    """``jac/frac_above_{tau}`` with tau written as in the contract (``0.005``, ``0.01``, ``0.04``)."""
    return f"jac/frac_above_{tau:g}"


def global_threshold_key(tau: float) -> str:
    """``jac/global_frac_above_{tau}``: the share of the global mean-|J| matrix above tau (fig. 36)."""
    return f"jac/global_frac_above_{tau:g}"


def lp_key(p: float) -> str:
    """``jac/l1``, ``jac/l2``, ``jac/l4``, ``jac/linf``: the mean per-token Lp norm of J."""
    return "jac/linf" if math.isinf(p) else f"jac/l{p:g}"


def splice_key(measure: str, variant: str) -> str:
    """``ce/{variant}`` or ``kl/{variant}``: mean CE / KL of the spliced LM (``clean``, ``recon_in``, ...)."""
    return f"{measure}/{variant}"


def probe_key(name: str) -> str:
    """``probe/{name}``: a linearity-probe metric, e.g. ``probe/n_samples``."""
    return f"{PROBE_PREFIX}{name}"


def probe_frac_key(label: str) -> str:
    """``probe/{label}_frac``: the share of probed functions with this class or split (``linear``, ``on_line``, ...)."""
    return probe_key(f"{label}_frac")


#: The paper's headline Jacobian sparsity: share of the k x k elements with |J| > 0.01 (figs. 4, 5, 29).
JAC_FRAC_KEY = threshold_key(0.01)
#: Metric name of :func:`effective_share` averaged over tokens.
EFFECTIVE_SHARE_KEY = "jac/effective_share"
JAC_L1_KEY, JAC_LINF_KEY = lp_key(1.0), lp_key(math.inf)
JAC_MEAN_ABS_KEY = "jac/mean_abs"
JAC_MAX_ABS_KEY = "jac/max_abs"
JAC_HIST_OVERFLOW_KEY = "jac/hist_overflow_frac"
JAC_GLOBAL_PAIRS_KEY = "jac/global_pairs"
IN_EV_KEY, OUT_EV_KEY = (side_key(s, "explained_variance") for s in SIDES)
IN_CE_SCORE_KEY, OUT_CE_SCORE_KEY = (side_key(s, "ce_loss_score") for s in SIDES)
#: Per SAE, the splice's CE numbers beside the score (nats per token; docs/metrics.md):
#: CE_recon - CE_clean, CE_zero - CE_clean, and 1.0 where the score was refused (0.0 otherwise).
IN_CE_LOSS_DELTA_KEY, OUT_CE_LOSS_DELTA_KEY = (side_key(s, "ce_loss_delta") for s in SIDES)
IN_CE_ABLATION_DELTA_KEY, OUT_CE_ABLATION_DELTA_KEY = (side_key(s, "ce_ablation_delta") for s in SIDES)
IN_CE_SCORE_REFUSED_KEY, OUT_CE_SCORE_REFUSED_KEY = (side_key(s, "ce_score_refused") for s in SIDES)
#: What :func:`ce_splice_metrics` returns per SAE, as ``{side}/{name}``.
CE_SPLICE_METRICS = ("ce_loss_score", "ce_loss_delta", "ce_ablation_delta", "ce_score_refused")
#: The report's fig. 5 y-axis: the mean of the two SAEs' CE loss scores (summary.csv).
CE_SCORE_MEAN_KEY = "ce/score_mean"
#: Scale-free Jacobian sparsity (summary.csv; computed by jsae.report.claims from the per-token arrays):
#: the site's headline tau* (the HEADLINE_QUANTILE of the trained lambda = 0 pair's non-zero |J|, units
#: of J) and each pair's share of k^2 with |J| > it; the lambda = 0 tau* of the pair's OWN model and the
#: share above that (a re-init pair's unit-free reading; for a trained pair both coincide).
HEADLINE_TAU_KEY = "jac/headline_tau"
HEADLINE_FRAC_KEY = "jac/frac_above_headline_tau"
OWN_HEADLINE_TAU_KEY = "jac/own_headline_tau"
HEADLINE_FRAC_OWN_KEY = "jac/frac_above_own_headline_tau"
#: Tokens behind the activation metrics and behind the CE/KL scores.
N_TOKENS_KEY = "eval/n_tokens"
CE_TOKENS_KEY = "eval/ce_tokens"


# --------------------------------------------------------------------------------------------------
# Reconstruction quality
# --------------------------------------------------------------------------------------------------


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens (ratio of sums)."""
    x, x_hat = x.detach().double(), x_hat.detach().double()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0)).pow(2).sum()
    return float(1.0 - resid / total)


def explained_variance_legacy(x: Tensor, x_hat: Tensor) -> float:
    """The authors' per-token formula ``mean_t (1 - ||x_t - x_hat_t||^2 / ||x_t - mean(x)||^2)``.

    ``mean(x)`` is the mean of the given batch, as in the authors' ``evals.py``, so the value
    depends on the batch size. Kept only to compare with published numbers (survey 1.6); the
    conventional value is :func:`explained_variance`.
    """
    x, x_hat = x.detach().double(), x_hat.detach().double()
    resid = (x - x_hat).pow(2).sum(-1)
    total = (x - x.mean(dim=0)).pow(2).sum(-1)
    return float((1.0 - resid / total).mean())


def mean_cosine_similarity(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of ``cos(x_t, x_hat_t)`` (a zero vector has cosine 0)."""
    cos = torch.nn.functional.cosine_similarity(x.detach().double(), x_hat.detach().double(), dim=-1, eps=1e-12)
    return float(cos.mean())


def mse_per_element(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens and features of ``(x - x_hat)^2``: the scale of the training loss's MSE terms."""
    return float((x.detach().double() - x_hat.detach().double()).pow(2).mean())


def sse_per_token(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of ``||x_t - x_hat_t||^2`` (summed over features)."""
    return float((x.detach().double() - x_hat.detach().double()).pow(2).sum(-1).mean())


class ReconstructionAccumulator:
    """Streaming :func:`explained_variance`, cosine, MSE and SSE over batches of ``[T, d]``.

    The total variance uses Chan et al.'s pairwise update of (count, mean, M2) in float64, so it
    equals the two-pass value on the concatenated tokens without storing them. The legacy EV is,
    as in the authors' code, computed per batch with the batch mean and averaged over tokens.
    """

    def __init__(self, d: int) -> None:
        self.d = d
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.m2 = 0.0  # sum over tokens and features of (x - mean)^2
        self.sse = 0.0
        self.cos_sum = 0.0
        self.legacy_sum = 0.0

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x, x_hat = x.detach().double().cpu(), x_hat.detach().double().cpu()
        if x.shape != x_hat.shape or x.dim() != 2 or x.shape[-1] != self.d:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must both be [T, {self.d}]")
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(dim=0)
        centred = (x - mb).pow(2).sum(-1)
        delta = mb - self.mean
        n = self.n + nb
        self.m2 += float(centred.sum()) + float(delta.pow(2).sum()) * self.n * nb / n
        self.mean += delta * (nb / n)
        self.n = n
        resid = (x - x_hat).pow(2).sum(-1)
        self.sse += float(resid.sum())
        self.cos_sum += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).sum())
        self.legacy_sum += float((1.0 - resid / centred).sum())

    def result(self) -> dict[str, float]:
        """``explained_variance``, ``explained_variance_legacy``, ``cosine``, ``mse``, ``sse_per_token``."""
        if self.n == 0:
            raise ValueError("no tokens were accumulated; expected a non-empty evaluation set")
        return {
            "explained_variance": 1.0 - self.sse / self.m2 if self.m2 > 0 else float("nan"),
            "explained_variance_legacy": self.legacy_sum / self.n,
            "cosine": self.cos_sum / self.n,
            "mse": self.sse / (self.n * self.d),
            "sse_per_token": self.sse / self.n,
        }


# --------------------------------------------------------------------------------------------------
# Model-performance preservation (CE loss score, KL score)
# --------------------------------------------------------------------------------------------------


def recovered_score(zero: float, recon: float, clean: float = 0.0) -> float:
    """``(zero - recon) / (zero - clean)``: 1 for a perfect splice, 0 for the zero ablation.

    With means of CE losses this is the CE loss score (evaluated through :func:`ce_loss_score`,
    which refuses an ill-conditioned one); with means of KL(clean || spliced) and ``clean = 0`` it is
    the KL score (appendix E; ratio of means, not a mean of per-token ratios). The KL score needs no
    floor: KL >= 0 per token, so the score is <= 1 and its denominator is precise even when small
    (re-initialised tiny-neox: KL_zero = 0.0082 nats, standard error 0.00001).
    """
    denom = zero - clean
    if denom == 0:
        return float("nan")
    return (zero - recon) / denom


#: The CE loss score is refused (NaN) when zero-ablating the hooked activation costs less than this
#: many nats per token: the score is then a ratio of two differences dominated by sampling noise.
#: Measured on the default study (tiny-neox L2, ~20K tokens, per-token paired differences): the
#: trained model's ablation costs 0.050 (in) / 0.044 (out) nats, standard error 0.002, score SE
#: 0.006; the re-initialised model's costs 0.0015 nats, SE 0.0009 (not distinguishable from 0), and
#: its "scores" 1.33 / 1.20 have SE 0.27 / 0.20. 0.01 nats is ~5 SEs at that token count.
CE_SCORE_MIN_ABLATION_NATS = 0.01


def ce_loss_delta(recon: float, clean: float) -> float:
    """``CE_recon - CE_clean``: what splicing the reconstruction in costs, nats per token (< 0: it helps)."""
    return recon - clean


def ce_ablation_delta(zero: float, clean: float) -> float:
    """``CE_zero - CE_clean``: what zero-ablating the hooked activation costs, nats per token."""
    return zero - clean


def ce_score_refused(zero: float, clean: float, min_ablation: float = CE_SCORE_MIN_ABLATION_NATS) -> bool:
    """True when the ablation costs less than ``min_ablation`` nats, nothing at all, or is not finite: no score."""
    check_min_ablation(min_ablation)
    delta = ce_ablation_delta(zero, clean)
    return not (math.isfinite(delta) and delta >= min_ablation and delta > 0)


def ce_loss_score(zero: float, recon: float, clean: float,
                  min_ablation: float = CE_SCORE_MIN_ABLATION_NATS) -> float:
    """:func:`recovered_score` of the CE means, or NaN when :func:`ce_score_refused` (ill-conditioned)."""
    if ce_score_refused(zero, clean, min_ablation):
        return float("nan")
    return recovered_score(zero, recon, clean)


def ce_splice_metrics(side: str, clean: float, recon: float, zero: float,
                      min_ablation: float = CE_SCORE_MIN_ABLATION_NATS) -> dict[str, float]:
    """The ``{side}/…`` keys of :data:`CE_SPLICE_METRICS` from one SAE's mean CEs (nats per token)."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} is invalid; expected one of {', '.join(SIDES)}")
    return {
        side_key(side, "ce_loss_score"): ce_loss_score(zero, recon, clean, min_ablation),
        side_key(side, "ce_loss_delta"): ce_loss_delta(recon, clean),
        side_key(side, "ce_ablation_delta"): ce_ablation_delta(zero, clean),
        side_key(side, "ce_score_refused"): float(ce_score_refused(zero, clean, min_ablation)),
    }


def check_min_ablation(min_ablation: float) -> float:
    """The CE score's floor must be a finite number of nats >= 0; returned as a float."""
    if isinstance(min_ablation, bool) or not isinstance(min_ablation, (int, float)) \
            or not math.isfinite(min_ablation) or min_ablation < 0:
        raise ValueError(f"min_ablation={min_ablation!r} is invalid; expected a finite number of nats >= 0 "
                         f"(default {CE_SCORE_MIN_ABLATION_NATS})")
    return float(min_ablation)


def _at_least_float32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def token_cross_entropy(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Next-token CE per position ``[B, S-1]`` (float32/64 log-softmax over the vocabulary)."""
    logp = torch.log_softmax(_at_least_float32(logits[:, :-1]), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def token_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(p_clean || p)`` per position ``[B, S]`` over the full vocabulary."""
    lp_clean = torch.log_softmax(_at_least_float32(clean_logits), dim=-1)
    lp = torch.log_softmax(_at_least_float32(logits), dim=-1)
    return (lp_clean.exp() * (lp_clean - lp)).sum(-1)


# --------------------------------------------------------------------------------------------------
# Dead and rare latents
# --------------------------------------------------------------------------------------------------


def firing_counts(vals: Tensor, idx: Tensor, n_latents: int) -> Tensor:
    """How many tokens each latent fired on (selected by TopK *and* > 0 after the ReLU), int64 ``[n]``."""
    counts = torch.zeros(n_latents, dtype=torch.int64, device=idx.device)
    active = vals > 0
    counts.index_add_(0, idx[active].reshape(-1), torch.ones_like(idx[active].reshape(-1)))
    return counts


def dead_and_rare(counts: Tensor | np.ndarray, n_tokens: int, rare_rate: float = RARE_RATE) -> dict[str, float]:
    """``dead_fraction``: latents that never fired over the ``n_tokens``; ``rare_fraction``: latents
    that fired on fewer than ``rare_rate * n_tokens`` tokens (dead ones included; with fewer than
    1/rare_rate tokens the two coincide)."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens={n_tokens} is invalid; expected a positive number of evaluation tokens")
    c = torch.as_tensor(counts).double()
    return {
        "dead_fraction": float((c == 0).double().mean()),
        "rare_fraction": float((c < rare_rate * n_tokens).double().mean()),
    }


# --------------------------------------------------------------------------------------------------
# Jacobian statistics
# --------------------------------------------------------------------------------------------------


def frac_above(J: Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Tensor:
    """Per token, the share of the k_out*k_in elements with ``|J| > tau``: ``[T, len(thresholds)]``.

    Each tau is compared in its own iteration with its own value (the authors' metric dict bound
    the loop variable late, so every key measured tau = 0.04; survey 1.6).
    """
    taus = check_thresholds(thresholds)
    a = J.detach().abs().flatten(1)
    return torch.stack([(a > tau).double().mean(dim=1) for tau in taus], dim=1)


def lp_norms(J: Tensor, ps: Sequence[float] = LP_NORMS) -> Tensor:
    """Per-token Lp norms of the flattened k x k Jacobian, ``[T, len(ps)]`` (paper F.1, fig. 35)."""
    a = J.detach().double().flatten(1)
    return torch.stack([torch.linalg.vector_norm(a, ord=p, dim=1) for p in ps], dim=1)


def effective_share(J: Tensor) -> Tensor:
    """Per-token ``(sum |J|)^2 / (k_out k_in sum J^2)``, ``[T]``: a scale-free sparsity in (0, 1].

    The share of the k x k elements that effectively carry J (a participation ratio): 1 when all
    |J| are equal, 1 / k^2 when one element holds everything; 0 for an all-zero J. Unlike the
    shares above a threshold (fig. 2) it does not fall when J merely shrinks (appendix F.1).
    """
    a = J.detach().double().flatten(1)
    l1, sq = a.abs().sum(dim=1), a.pow(2).sum(dim=1)
    ratio = l1.pow(2) / (a.shape[1] * sq.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(sq > 0, ratio, torch.zeros_like(l1))


def tau_grid_exponents(per_decade: int = TAU_GRID_PER_DECADE,
                       decades: tuple[int, int] = TAU_GRID_DECADES) -> np.ndarray:
    """The integer grid exponents g of tau_g = 10 ** (g / per_decade), from ``decades[0]`` to ``decades[1]``."""
    if not (isinstance(per_decade, int) and per_decade >= 1):
        raise ValueError(f"per_decade={per_decade!r} is invalid; expected a positive integer such as 32")
    lo, hi = decades
    if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
        raise ValueError(f"decades={decades!r} is invalid; expected two integers lo < hi such as (-8, 4)")
    return np.arange(lo * per_decade, hi * per_decade + 1, dtype=np.int64)


def tau_grid(exponents: np.ndarray, per_decade: int = TAU_GRID_PER_DECADE) -> np.ndarray:
    """tau_g = 10 ** (g / per_decade) for each grid exponent g (float64, units of J)."""
    return 10.0 ** (np.asarray(exponents, dtype=np.float64) / per_decade)


def counts_above_grid(J: Tensor, exponents: np.ndarray, per_decade: int = TAU_GRID_PER_DECADE) -> Tensor:
    """Per token, how many of the k_out*k_in elements have ``|J| > tau_g``, for each grid tau_g: ``[T, G]``.

    Equal to ``(|J| > tau_g).sum()`` per token and g (the float64 tau_g of :func:`tau_grid`), computed
    with one log and one scatter per element instead of G comparisons.
    """
    exps = np.asarray(exponents, dtype=np.int64)
    n_grid = len(exps)
    if n_grid == 0 or np.any(np.diff(exps) != 1):
        raise ValueError("exponents must be consecutive integers; expected tau_grid_exponents()")
    a = J.detach().abs().flatten(1).double()
    tau = torch.as_tensor(tau_grid(exps, per_decade), device=a.device)
    # column of the largest tau_g below |J| (-1: none, i.e. |J| <= tau_0, zeros included) ...
    v = torch.where(a > 0, per_decade * torch.log10(a.clamp_min(torch.finfo(torch.float64).tiny)),
                    torch.full_like(a, -math.inf))
    col = (torch.ceil(v) - 1 - int(exps[0])).clamp(-1, n_grid - 1)
    col = torch.where(torch.isfinite(col), col, torch.full_like(col, -1)).long()
    # ... corrected by one step where the log rounded across a grid point, so the count is exact
    up = (col + 1 <= n_grid - 1) & (a > tau[(col + 1).clamp(max=n_grid - 1)])
    col = col + up.long()
    down = (col >= 0) & (a <= tau[col.clamp(min=0)])
    col = col - down.long()
    counted = col >= 0
    hist = torch.zeros(a.shape[0], n_grid, dtype=torch.int64, device=a.device)
    hist.scatter_add_(1, col.clamp(min=0), counted.long())
    return hist.flip(1).cumsum(1).flip(1)  # count above tau_g = elements whose column is >= g


def _grid_value(counts: np.ndarray, nonzero: np.ndarray, j: np.ndarray) -> np.ndarray:
    """counts[..., j] per row, extended below the stored columns by ``nonzero`` and above by 0 where the
    stored edge column shows the extension is exact (else NaN)."""
    n_grid = counts.shape[-1]
    inside = np.take_along_axis(counts, np.clip(j, 0, n_grid - 1)[..., None], axis=-1)[..., 0]
    below_ok = counts[..., 0] == nonzero  # every element above the first stored tau: all counted below it
    above_ok = counts[..., -1] == 0
    out = np.where(j < 0, np.where(below_ok, nonzero, np.nan), inside)
    return np.where(j > n_grid - 1, np.where(above_ok, 0.0, np.nan), out)


def grid_count_above(counts: np.ndarray, exponents: np.ndarray, nonzero: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The count of ``|J| > 10 ** (x / per_decade)`` from counts above consecutive grid points.

    ``counts [..., G]`` (summed over tokens, any weights), ``nonzero [...]`` the count of non-zero
    elements with the same weights, ``x [...]`` in grid units (``per_decade * log10(tau)``). Exact at grid
    points; between two, linear in log tau (the true count lies between the two neighbours). NaN where
    tau is outside the stored grid and the edge column cannot vouch for the value there.
    """
    counts = np.asarray(counts, dtype=np.float64)
    nonzero = np.asarray(nonzero, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    pos = x - float(np.asarray(exponents)[0])
    j = np.floor(np.where(np.isfinite(pos), pos, 0)).astype(np.int64)
    frac = pos - j
    lo, hi = _grid_value(counts, nonzero, j), _grid_value(counts, nonzero, j + 1)
    return np.where(np.isfinite(pos), lo + (hi - lo) * frac, np.nan)


def grid_quantile(counts: np.ndarray, exponents: np.ndarray, nonzero: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-quantile of the non-zero |J|, in grid units (``per_decade * log10``), per row of ``counts``.

    The smallest x at which :func:`grid_count_above` falls to ``(1 - q) * nonzero``; consistent with it,
    so the share of non-zero elements above the returned tau is exactly ``1 - q``. NaN when the
    quantile lies outside the stored grid or there is no non-zero element.
    """
    if not 0 < q < 1:
        raise ValueError(f"q={q!r} is invalid; expected a quantile strictly between 0 and 1 (0.5: the median)")
    counts = np.asarray(counts, dtype=np.float64)
    nonzero = np.asarray(nonzero, dtype=np.float64)
    target = (1 - q) * nonzero
    n_grid = counts.shape[-1]
    below = counts <= target[..., None]
    j = np.where(below.any(-1), below.argmax(-1), n_grid)  # first column at or below the target
    prev = _grid_value(counts, nonzero, j - 1)
    cur = _grid_value(counts, nonzero, j)
    step = prev - cur
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (j - 1) + np.where(step > 0, (prev - target) / step, 1.0)
    ok = (nonzero > 0) & np.isfinite(prev) & np.isfinite(cur) & (prev > target)
    return np.where(ok, x + float(np.asarray(exponents)[0]), np.nan)


def histogram_edges(max_value: float = DEFAULT_HIST_MAX, bins: int = DEFAULT_HIST_BINS) -> np.ndarray:
    """``bins + 1`` linear edges on ``[0, max_value]``; values above the last edge go to the overflow bin."""
    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins={bins!r} is invalid; expected a positive integer")
    if not (math.isfinite(max_value) and max_value > 0):
        raise ValueError(f"max_value={max_value!r} is invalid; expected a finite number > 0")
    return np.linspace(0.0, max_value, bins + 1)


def abs_histogram(values: Tensor, edges: np.ndarray | Tensor) -> tuple[np.ndarray, int]:
    """Counts of ``|values|`` per bin ``[edges[i], edges[i+1])`` (last bin closed) and the overflow count.

    Nothing is dropped: ``counts.sum() + overflow == values.numel()`` (values > ``edges[-1]`` land
    in the overflow bin; NaNs are an error).
    """
    a = values.detach().abs().reshape(-1).double()
    if bool(torch.isnan(a).any()):
        raise ValueError("values contain NaN; expected finite Jacobian values")
    e_np = np.asarray(edges, dtype=np.float64)
    e = torch.as_tensor(e_np, device=a.device)
    over = a > e[-1]
    inside = a[~over]
    # bucketize with right=True puts v in bin i when e[i] <= v < e[i+1]; clamp the closed last edge.
    b = torch.bucketize(inside, e, right=True) - 1
    b = b.clamp_(0, len(e) - 2)
    counts = torch.bincount(b, minlength=len(e) - 1)
    return counts.cpu().numpy().astype(np.int64), int(over.sum())


def histogram_cdf(counts: np.ndarray, overflow: int) -> np.ndarray:
    """CDF at each upper bin edge, ``P(|J| <= edges[i+1])``; the overflow mass makes it end below 1."""
    total = counts.sum() + overflow
    if total == 0:
        return np.zeros(len(counts))
    return np.cumsum(counts) / total


@dataclass
class JacobianAccumulator:
    """Streaming Jacobian statistics over batches of ``J [T, k_out, k_in]``.

    Accumulates: per-tau shares (summed over tokens), per-token Lp norms (sum and sum of squares),
    the |J| histogram with overflow, the sum of |J| and the token count; and, for the first
    ``token_stats`` tokens in the order given, each token's own statistics (the ``token_*`` arrays:
    shares above the thresholds, effective share, Lp norms, non-zero count and counts above the log
    tau grid), which the claims' bootstrap resamples and the headline tau is read from.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    edges: np.ndarray = field(default_factory=histogram_edges)
    ps: tuple[float, ...] = LP_NORMS
    token_stats: int = DEFAULT_TOKEN_STATS
    tau_per_decade: int = TAU_GRID_PER_DECADE
    tau_decades: tuple[int, int] = TAU_GRID_DECADES

    def __post_init__(self) -> None:
        self.thresholds = check_thresholds(self.thresholds)
        if isinstance(self.token_stats, bool) or not isinstance(self.token_stats, int) or self.token_stats < 0:
            raise ValueError(f"token_stats={self.token_stats!r} is invalid; expected a number of tokens >= 0 "
                             "(0: no per-token arrays)")
        self.tau_exponents = tau_grid_exponents(self.tau_per_decade, self.tau_decades)
        self._tok: dict[str, list[Tensor]] = {k: [] for k in ("frac_above", "effective", "lp", "nonzero", "counts")}
        self._tok_n = 0
        self.n_elements_per_token = 0
        self.n_tokens = 0
        self.n_elements = 0
        self.frac_sum = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self.norm_sum = torch.zeros(len(self.ps), dtype=torch.float64)
        self.norm_sumsq = torch.zeros(len(self.ps), dtype=torch.float64)
        self.abs_sum = 0.0
        self.effective_sum = 0.0
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.overflow = 0
        self.max_abs = 0.0

    @torch.no_grad()
    def update(self, J: Tensor) -> None:
        J = J.detach()
        if J.dim() != 3:
            raise ValueError(f"J has shape {tuple(J.shape)}; expected [tokens, k_out, k_in]")
        if J.shape[0] == 0:
            return
        self.n_tokens += J.shape[0]
        self.n_elements += J.numel()
        self.n_elements_per_token = J.shape[1] * J.shape[2]
        fa = frac_above(J, self.thresholds)
        self.frac_sum += fa.sum(0).cpu()
        norms = lp_norms(J, self.ps).cpu()
        self.norm_sum += norms.sum(0)
        self.norm_sumsq += norms.pow(2).sum(0)
        eff = effective_share(J)
        self.effective_sum += float(eff.sum())
        keep = min(J.shape[0], self.token_stats - self._tok_n)
        if keep > 0:
            Jk = J[:keep]
            self._tok["frac_above"].append(fa[:keep].float().cpu())
            self._tok["effective"].append(eff[:keep].float().cpu())
            self._tok["lp"].append(norms[:keep].float())
            self._tok["nonzero"].append((Jk.flatten(1) != 0).sum(1).cpu())
            self._tok["counts"].append(counts_above_grid(Jk, self.tau_exponents, self.tau_per_decade).cpu())
            self._tok_n += keep
        a = J.abs()
        self.abs_sum += float(a.double().sum())
        self.max_abs = max(self.max_abs, float(a.max()))
        c, o = abs_histogram(a, self.edges)
        self.counts += c
        self.overflow += o

    def metrics(self) -> dict[str, float]:
        if self.n_tokens == 0:
            raise ValueError("no Jacobians were accumulated; expected a non-empty evaluation set")
        out = {threshold_key(t): float(v) / self.n_tokens for t, v in zip(self.thresholds, self.frac_sum)}
        for p, s in zip(self.ps, self.norm_sum):
            out[lp_key(p)] = float(s) / self.n_tokens
        out[EFFECTIVE_SHARE_KEY] = self.effective_sum / self.n_tokens
        out[JAC_MEAN_ABS_KEY] = self.abs_sum / self.n_elements
        out[JAC_MAX_ABS_KEY] = self.max_abs
        out[JAC_HIST_OVERFLOW_KEY] = self.overflow / self.n_elements
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        mean = (self.norm_sum / max(self.n_tokens, 1)).numpy()
        var = (self.norm_sumsq / max(self.n_tokens, 1)).numpy() - mean**2
        return {
            "hist_edges": np.asarray(self.edges, dtype=np.float64),
            "hist_counts": self.counts.copy(),
            "hist_overflow": np.array(self.overflow, dtype=np.int64),
            "cdf": histogram_cdf(self.counts, self.overflow),
            "thresholds": np.array(self.thresholds),
            "frac_above": (self.frac_sum / max(self.n_tokens, 1)).numpy(),
            "lp_ps": np.array(self.ps),
            "lp_mean": mean,
            "lp_std": np.sqrt(np.maximum(var, 0.0)),
            **self.token_arrays(),
        }

    def token_arrays(self) -> dict[str, np.ndarray]:
        """The per-token arrays of the first ``token_stats`` tokens (empty when none were kept).

        ``token_count_above [T, G]``: per token the count of |J| > tau_g for the grid exponents
        ``token_tau_exponents`` (tau_g = 10 ** (g / token_tau_per_decade)), trimmed to the columns that
        vary plus one guard column each side: every token's count is ``token_nonzero`` below the first
        stored tau and 0 above the last (unless that column is the grid's own end).
        """
        if self._tok_n == 0:
            return {}
        counts = torch.cat(self._tok["counts"]).numpy()
        nonzero = torch.cat(self._tok["nonzero"]).numpy()
        n_grid = counts.shape[1]
        below = (counts == nonzero[:, None]).all(0)  # a prefix: every non-zero element is above tau_g
        above = (counts == 0).all(0)  # a suffix: nothing above tau_g
        n_below = int(np.argmin(below)) if not below.all() else n_grid
        n_above = int(np.argmin(above[::-1])) if not above.all() else n_grid
        start = max(min(n_below, n_grid - 1) - 1, 0)
        stop = max(min(n_grid - n_above, n_grid - 1), start)
        count_dtype = np.uint16 if self.n_elements_per_token <= np.iinfo(np.uint16).max else np.uint32
        return {
            "token_row": np.arange(self._tok_n, dtype=np.int64),
            "token_frac_above": torch.cat(self._tok["frac_above"]).numpy(),
            "token_effective_share": torch.cat(self._tok["effective"]).numpy(),
            "token_lp": torch.cat(self._tok["lp"]).numpy(),
            "token_nonzero": nonzero.astype(count_dtype),
            "token_count_above": np.ascontiguousarray(counts[:, start : stop + 1]).astype(count_dtype),
            "token_tau_exponents": self.tau_exponents[start : stop + 1].astype(np.int32),
            "token_tau_per_decade": np.array(self.tau_per_decade, dtype=np.int64),
            "token_n_elements": np.array(self.n_elements_per_token, dtype=np.int64),
        }


def global_shares(mean_abs: Tensor | np.ndarray, out_latent: Tensor | np.ndarray, in_latent: Tensor | np.ndarray,
                  alive_out: Tensor | np.ndarray, alive_in: Tensor | np.ndarray,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Share of the global mean-|J| matrix's alive entries above each tau (fig. 36; ``jac/global_frac_above_*``).

    ``mean_abs`` holds the stored entries (output latent ``out_latent``, input latent ``in_latent``);
    ``alive_out`` / ``alive_in`` mark the latents that fired on >= 1 evaluation token (the firing counts
    behind ``dead_fraction``). 100% = alive outputs x alive inputs, and only entries between two alive
    latents count: a dead latent has no entries, so counting it in the denominator would make an SAE
    with more dead latents look sparser. NaN for every tau when no latent is alive on one side.
    """
    taus = check_thresholds(thresholds)
    m = np.asarray(torch.as_tensor(mean_abs).detach().cpu(), dtype=np.float64)
    ao = np.asarray(torch.as_tensor(alive_out).detach().cpu()).astype(bool)
    ai = np.asarray(torch.as_tensor(alive_in).detach().cpu()).astype(bool)
    o = np.asarray(torch.as_tensor(out_latent).detach().cpu(), dtype=np.int64)
    i = np.asarray(torch.as_tensor(in_latent).detach().cpu(), dtype=np.int64)
    if not (len(m) == len(o) == len(i)):
        raise ValueError(f"mean_abs, out_latent, in_latent have lengths {len(m)}, {len(o)}, {len(i)}; "
                         "expected one entry each")
    if len(m) and (o.max() >= len(ao) or i.max() >= len(ai) or o.min() < 0 or i.min() < 0):
        raise ValueError(f"latent indices exceed the alive masks ({len(ao)} outputs, {len(ai)} inputs); "
                         "expected masks over every latent of each SAE")
    total = float(ao.sum()) * float(ai.sum())
    if total == 0:
        return np.full(len(taus), np.nan)
    m = m[ao[o] & ai[i]]
    return np.array([float((m > t).sum()) / total for t in taus])


class GlobalJacobianAccumulator:
    """The global mean-|J| matrix (fig. 36) and per-pair statistics (appendix C), held sparsely.

    For every (output latent i, input latent j) seen active together it keeps, as coalesced COO
    arrays sorted by the key ``i * n_in + j``: the number of tokens with non-zero ``J_ij``, the sum
    of ``|J_ij|`` and the sum of ``J_ij^2``; and, per output latent, the number of tokens on which it
    was active. Memory grows with the number of distinct active pairs, never ``n_out * n_in``.

    Bounded memory: when the number of pairs exceeds ``max_entries`` the pairs with the smallest
    sum of |J| are dropped (heavy-hitter pruning); ``pruned_mass`` records the |J| mass dropped so a
    reader can tell how approximate the kept tail is. With ``max_entries=None`` it is exact.
    """

    def __init__(self, n_out: int, n_in: int, *, max_entries: int | None = 20_000_000) -> None:
        self.n_out, self.n_in = n_out, n_in
        self.max_entries = max_entries
        self.device = torch.device("cpu")  # moves to the device of the first batch (GPU sorts are fast)
        self._keys = torch.zeros(0, dtype=torch.int64)
        self._count = torch.zeros(0, dtype=torch.int64)
        self._sum_abs = torch.zeros(0, dtype=torch.float64)
        self._sum_sq = torch.zeros(0, dtype=torch.float64)
        self._out_active = torch.zeros(n_out, dtype=torch.int64)
        self.pruned_mass = 0.0
        self.pruned_pairs = 0
        self.n_tokens = 0
        # raw (key, |J|) entries of recent batches, merged into the sorted arrays only once they
        # outnumber the stored pairs: one sort per doubling (amortised O(N log N)), not per batch
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_n = 0

    @torch.no_grad()
    def update(self, J: Tensor, out_idx: Tensor, in_idx: Tensor, out_vals: Tensor) -> None:
        """Add one batch: ``J [T, k_out, k_in]``, indices ``[T, k]`` and the output values ``[T, k_out]``."""
        if self.n_tokens == 0 and not self._pending:
            self._to(J.device)
        dev = self.device
        J, out_idx, in_idx = J.detach().to(dev), out_idx.to(dev), in_idx.to(dev)
        active = out_vals.detach().to(dev) > 0  # [T, k_out]: the output latent fired on this token
        self.n_tokens += J.shape[0]
        self._out_active.index_add_(0, out_idx[active], torch.ones_like(out_idx[active]))
        a = J.abs()
        nz = (a > 0) & active[:, :, None]
        keys = (out_idx[:, :, None] * self.n_in + in_idx[:, None, :])[nz]
        self._pending.append((keys, a[nz]))
        self._pending_n += keys.numel()
        if self._pending_n >= max(1 << 22, len(self._keys)):
            self._flush()

    def _to(self, device: torch.device) -> None:
        self.device = device
        for name in ("_keys", "_count", "_sum_abs", "_sum_sq", "_out_active"):
            setattr(self, name, getattr(self, name).to(device))

    def _flush(self) -> None:
        if not self._pending:
            return
        raw_keys = torch.cat([k for k, _ in self._pending])
        raw_vals = torch.cat([v for _, v in self._pending]).double()
        self._pending, self._pending_n = [], 0
        uniq, inv = torch.unique(torch.cat([self._keys, raw_keys]), return_inverse=True)  # sorted
        n, dev = len(uniq), self.device
        ones = torch.ones(len(raw_keys), dtype=torch.int64, device=dev)
        self._count = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, inv, torch.cat([self._count, ones]))
        self._sum_abs = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(
            0, inv, torch.cat([self._sum_abs, raw_vals]))
        self._sum_sq = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(
            0, inv, torch.cat([self._sum_sq, raw_vals * raw_vals]))
        self._keys = uniq
        if self.max_entries is not None and n > self.max_entries:
            keep = torch.topk(self._sum_abs, self.max_entries).indices.sort().values
            drop = torch.ones(n, dtype=torch.bool, device=dev)
            drop[keep] = False
            self.pruned_mass += float(self._sum_abs[drop].sum())
            self.pruned_pairs += int(drop.sum())
            self._keys, self._count = self._keys[keep], self._count[keep]
            self._sum_abs, self._sum_sq = self._sum_abs[keep], self._sum_sq[keep]

    # Accessors flush pending entries and return CPU tensors.
    @property
    def keys(self) -> Tensor:
        """Sorted keys ``i * n_in + j`` of the stored pairs."""
        self._flush()
        return self._keys.cpu()

    @property
    def count(self) -> Tensor:
        self._flush()
        return self._count.cpu()

    @property
    def sum_abs(self) -> Tensor:
        self._flush()
        return self._sum_abs.cpu()

    @property
    def sum_sq(self) -> Tensor:
        self._flush()
        return self._sum_sq.cpu()

    @property
    def out_active(self) -> Tensor:
        """Tokens on which each output latent was active (selected and > 0), ``[n_out]``."""
        return self._out_active.cpu()

    @property
    def out_latent(self) -> Tensor:
        return self.keys // self.n_in

    @property
    def in_latent(self) -> Tensor:
        return self.keys % self.n_in

    def mean_abs_given_output_active(self) -> Tensor:
        """Fig. 36's entries: ``sum_t |J_ij| / #tokens where output i was active``, per stored pair."""
        return self.sum_abs / self.out_active[self.out_latent].clamp_min(1).double()

    def pair_mean_std(self) -> tuple[Tensor, Tensor]:
        """Mean and (population) std of the non-zero ``|J_ij|`` per stored pair (appendix C tables)."""
        c = self.count.double().clamp_min(1)
        mean = self.sum_abs / c
        std = (self.sum_sq / c - mean**2).clamp_min(0).sqrt()
        return mean, std

    def output_mean_abs(self) -> tuple[Tensor, Tensor]:
        """Per output latent: mean |J| over its non-zero elements (appendix C ranking) and their count."""
        o = self.out_latent
        s = torch.zeros(self.n_out, dtype=torch.float64).index_add_(0, o, self.sum_abs)
        c = torch.zeros(self.n_out, dtype=torch.int64).index_add_(0, o, self.count)
        return s / c.clamp_min(1).double(), c

    def top_inputs(self, out_latent: int, n: int = 10) -> dict[str, np.ndarray]:
        """The ``n`` input latents with the largest mean non-zero |J_ij| for output ``out_latent``."""
        rows = (self.out_latent == out_latent).nonzero().squeeze(1)
        mean, std = self.pair_mean_std()
        order = rows[torch.argsort(mean[rows], descending=True)][:n]
        return {
            "in_latent": self.in_latent[order].numpy(),
            "count": self.count[order].numpy(),
            "mean": mean[order].numpy(),
            "std": std[order].numpy(),
        }

    def sparsity_shares(self, alive_out: Tensor | np.ndarray, alive_in: Tensor | np.ndarray,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
        """:func:`global_shares` of this matrix: fig. 36's y-axis, 100% = alive outputs x alive inputs."""
        return global_shares(self.mean_abs_given_output_active(), self.out_latent, self.in_latent,
                             alive_out, alive_in, thresholds)

    def arrays(self, prefix: str = "global_") -> dict[str, np.ndarray]:
        return {
            f"{prefix}out_latent": self.out_latent.numpy().astype(np.int32),
            f"{prefix}in_latent": self.in_latent.numpy().astype(np.int32),
            f"{prefix}count": self.count.numpy(),
            f"{prefix}sum_abs": self.sum_abs.numpy(),
            f"{prefix}sum_sq": self.sum_sq.numpy(),
            f"{prefix}mean_abs": self.mean_abs_given_output_active().numpy(),
            f"{prefix}out_active_count": self.out_active.numpy(),
            f"{prefix}shape": np.array([self.n_out, self.n_in], dtype=np.int64),
            f"{prefix}pruned_mass": np.array(self.pruned_mass),
            f"{prefix}pruned_pairs": np.array(self.pruned_pairs, dtype=np.int64),
        }
