"""SAEBench "core" metrics of each SAE of a pair, written as SAEBench's core-eval JSON (docs/metrics.md, last section).

SAEBench (github.com/adamkarvonen/SAEBench, PyPI ``sae-bench``) defines the core metrics most SAE papers report
and one JSON per SAE to hold them. The definitions and the JSON layout here are transcribed from its source at
:data:`SAE_BENCH_COMMIT` (the files in :data:`SAE_BENCH_FILES`); ``sae-bench`` itself is not a dependency (it pins
``datasets<4`` and ``numpy<2``).

* One pure function per metric, on tensors, named as SAEBench names the metric. Where our evaluation
  (:mod:`jsae.eval.metrics`) defines a metric of the same name differently, the function here is SAEBench's and
  its docstring says how it differs; where the definitions agree, ours is reused.
* Several SAEBench metrics depend on how the tokens were batched (per-batch means, then a mean of those), so the
  functions take ``batch``: the batch id of each token (``None``: one batch). :class:`CoreAccumulator` streams
  batches and equals the pure functions on the concatenated tokens with those batch ids.
* :func:`core_eval_json` assembles SAEBench's ``CoreEvalOutput`` layout: the same nesting and key names; what
  we cannot compute is null, with the reason in ``eval_result_unstructured``.
* ``python -m jsae core`` writes ``<out>/sae_in_eval_results.json`` and ``<out>/sae_out_eval_results.json``
  (SAEBench's ``{release}_{sae_id}_eval_results.json`` naming with ``sae_id`` = the SAE's directory in the run:
  its graphing tools find them by that suffix).

SAEBench's evaluation masks BOS/EOS/PAD tokens out of every mean; so does this one (``ignore_token_ids``). The
cache never holds position 0 (the BOS) as a row, and the CE/KL splice of :mod:`jsae.eval.evaluate` (reused here)
leaves position 0 clean.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from jsae.eval import metrics as ours
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKCoder

log = logging.getLogger("jsae.eval.core")

#: The SAEBench commit whose definitions and output schema this module follows (tag 0.6.0), and the files read.
SAE_BENCH_COMMIT = "8042bb3828c6340da8d12062324e92b2077c571c"
SAE_BENCH_FILES = ("sae_bench/evals/core/main.py", "sae_bench/evals/core/eval_output.py",
                   "sae_bench/evals/core/eval_config.py", "sae_bench/evals/base_eval_output.py")

#: ``eval_type_id`` of a core evaluation.
EVAL_TYPE_ID = "core"
#: SAEBench's ``CoreEvalConfig`` fields, in its order, with its defaults.
EVAL_CONFIG_DEFAULTS: dict[str, Any] = {
    "model_name": "",
    "llm_dtype": "float32",
    "batch_size_prompts": 16,
    "n_eval_reconstruction_batches": 10,
    "n_eval_sparsity_variance_batches": 1,
    "dataset": "Skylion007/openwebtext",
    "context_size": 128,
    "compute_kl": False,
    "compute_ce_loss": False,
    "compute_l2_norms": False,
    "compute_sparsity_metrics": False,
    "compute_variance_metrics": False,
    "compute_featurewise_density_statistics": False,
    "compute_featurewise_weight_based_metrics": False,
    "exclude_special_tokens_from_reconstruction": False,
    "verbose": False,
}
#: ``eval_result_metrics``: SAEBench's ``CoreMetricCategories`` groups and their metrics, in its order.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": ("ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"),
    "reconstruction_quality": ("explained_variance", "explained_variance_legacy", "mse", "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
    "misc_metrics": ("freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
                     "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
                     "average_max_decoder_cosine_sim", "frac_alive"),
}
#: Integer-typed metrics (the rest are floats).
INT_METRICS = frozenset(METRIC_GROUPS["token_stats"])
#: ``eval_result_details``: SAEBench's ``CoreFeatureMetric`` fields, one entry per latent.
FEATURE_FIELDS = ("index", "feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
                  "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim")
#: The top-level keys of SAEBench's ``CoreEvalOutput`` (``BaseEvalOutput``'s field order).
TOP_LEVEL_KEYS = ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                  "eval_result_details", "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id",
                  "sae_lens_version", "sae_cfg_dict", "eval_result_unstructured")

#: SAEBench's l2_ratio divides by 1 instead of an input norm below this.
L2_RATIO_MIN_NORM = 1e-4
#: SAEBench's misc-metric thresholds on a latent's firing frequency.
FREQ_THRESHOLDS = {"1_percent": 0.01, "10_percent": 0.1}
#: Edges of the feature-density histogram, in log10(firing frequency): half-decade bins from 1e-10 to 1.
DENSITY_LOG10_EDGES: tuple[float, ...] = tuple(np.arange(-10.0, 0.25, 0.5).tolist())
#: Rows of W per block in :func:`max_cosine_sim` (a block x n_latents similarity matrix at a time).
MAX_COSINE_CHUNK = 1024
#: The output file of each SAE of the pair (its directory name in the run + SAEBench's suffix).
SAE_ROLES = ("sae_in", "sae_out")
RESULT_SUFFIX = "_eval_results.json"


def result_filename(role: str) -> str:
    """``{role}_eval_results.json`` for ``role`` in :data:`SAE_ROLES`."""
    if role not in SAE_ROLES:
        raise ValueError(f"role={role!r} is invalid; expected one of {', '.join(SAE_ROLES)}")
    return f"{role}{RESULT_SUFFIX}"


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _recon(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    x, x_hat = torch.as_tensor(x), torch.as_tensor(x_hat)
    if x.dim() != 2 or x.shape != x_hat.shape or x.shape[0] == 0:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} are invalid; expected equal shapes "
                         "[tokens >= 1, d]")
    return x.detach().double(), x_hat.detach().double()


def _acts(acts: Tensor) -> Tensor:
    acts = torch.as_tensor(acts)
    if acts.dim() != 2 or acts.shape[0] == 0:
        raise ValueError(f"acts has shape {tuple(acts.shape)}; expected a dense code [tokens >= 1, n_latents]")
    return acts.detach().double()


def _groups(n: int, batch: Tensor | np.ndarray | Sequence[int] | None) -> list[Tensor]:
    """The token indices of each batch (``batch``: an id per token; None: one batch)."""
    if batch is None:
        return [torch.arange(n)]
    b = torch.as_tensor(np.asarray(batch)).reshape(-1)
    if b.shape[0] != n or b.dtype.is_floating_point:
        raise ValueError(f"batch has shape {tuple(b.shape)} and dtype {b.dtype}; expected one integer id per token "
                         f"({n})")
    return [torch.nonzero(b == u).squeeze(1) for u in torch.unique(b)]


def _density(density: Tensor | np.ndarray) -> Tensor:
    d = torch.as_tensor(np.asarray(density, dtype=np.float64))
    if d.dim() != 1 or d.shape[0] == 0 or bool(((d < 0) | (d > 1) | ~torch.isfinite(d)).any()):
        raise ValueError("density is invalid; expected per-latent firing frequencies in [0, 1], [n_latents >= 1]")
    return d


# --------------------------------------------------------------------------------------------------
# Reconstruction quality (SAEBench: reconstruction_quality)
# --------------------------------------------------------------------------------------------------


def explained_variance(x: Tensor, x_hat: Tensor, batch: Tensor | None = None) -> float:
    """SAEBench's ``explained_variance``, exactly as its code computes it: ``1 - A / (B - C^2)`` with, over the
    batches b (each term a per-batch mean over tokens, then an unweighted mean over batches),
    ``A = mean_b mean_t ||x_t - x_hat_t||^2``, ``B = mean_b mean_t ||x_t||^2`` and
    ``C = mean_b mean_i mean_t x_ti^2`` (= B / d).

    Differs from ours (:func:`jsae.eval.metrics.explained_variance`, ``1 - sum ||x - x_hat||^2 / sum ||x - mean
    x||^2``): SAEBench meant the total variance ``E||x||^2 - ||E x||^2`` but squares before averaging and averages
    over dimensions (``.pow(2).mean(0)``, then ``torch.cat(...).mean()``), so it subtracts ``(E||x||^2 / d)^2``
    instead: for real activations (E||x||^2 << d^2) nearly the variance about 0, not about the mean, so it reads
    higher than ours wherever the mean is large (and the denominator goes negative if E||x||^2 > d^2). SAELens fixed
    the same code (issue #659, PR #665); SAEBench had not at :data:`SAE_BENCH_COMMIT`. Kept as is so the numbers
    compare with SAEBench's.
    """
    x, x_hat = _recon(x, x_hat)
    groups = _groups(x.shape[0], batch)
    A = torch.stack([(x[g] - x_hat[g]).pow(2).sum(-1).mean() for g in groups]).mean()
    B = torch.stack([x[g].pow(2).sum(-1).mean() for g in groups]).mean()
    C = torch.cat([x[g].pow(2).mean(0) for g in groups]).mean()
    return float(1.0 - A / (B - C**2))


def explained_variance_legacy(x: Tensor, x_hat: Tensor, batch: Tensor | None = None) -> float:
    """SAEBench's ``explained_variance_legacy``: ``mean_t (1 - ||x_t - x_hat_t||^2 / ||x_t - mean_b(x)||^2)`` with
    ``mean_b(x)`` the mean of the token's own batch, averaged over all tokens.

    The same formula as ours (:func:`jsae.eval.metrics.explained_variance_legacy`, reused per batch); it depends on
    the batch size, as there.
    """
    x, x_hat = _recon(x, x_hat)
    groups = _groups(x.shape[0], batch)
    return sum(len(g) * ours.explained_variance_legacy(x[g], x_hat[g]) for g in groups) / x.shape[0]


def mse(x: Tensor, x_hat: Tensor, batch: Tensor | None = None) -> float:
    """SAEBench's ``mse``: each token's ``||x_t - x_hat_t||^2`` divided by the number of tokens N_b of its batch,
    averaged over all tokens, i.e. ``sum_b sse_per_token(b) / N``.

    Differs from ours: our ``mse`` (:func:`jsae.eval.metrics.mse_per_element`) divides the squared error by the
    width d, not by the batch's token count; with one batch of N tokens SAEBench's value is ours x d / N (the two
    agree only when N = d). ``sse_per_token`` (ours) is the batch-size-free quantity.
    """
    x, x_hat = _recon(x, x_hat)
    groups = _groups(x.shape[0], batch)
    return sum(ours.sse_per_token(x[g], x_hat[g]) for g in groups) / x.shape[0]


def cossim(x: Tensor, x_hat: Tensor) -> float:
    """SAEBench's ``cossim``: ``mean_t <x_t / ||x_t||, x_hat_t / ||x_hat_t||>``.

    The same as ours (:func:`jsae.eval.metrics.mean_cosine_similarity`) except for a zero vector: SAEBench divides
    by its norm, so the metric is NaN (SAEBench then writes -1; we write null), where ours counts cosine 0.
    """
    x, x_hat = _recon(x, x_hat)
    return float((x / x.norm(dim=-1, keepdim=True) * (x_hat / x_hat.norm(dim=-1, keepdim=True))).sum(-1).mean())


# --------------------------------------------------------------------------------------------------
# Shrinkage (SAEBench: shrinkage)
# --------------------------------------------------------------------------------------------------


def mean_l2_norm(v: Tensor) -> float:
    """``mean_t ||v_t||``: SAEBench's ``l2_norm_in`` with v = the SAE's input, ``l2_norm_out`` with v = its
    reconstruction."""
    v = torch.as_tensor(v)
    if v.dim() != 2 or v.shape[0] == 0:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected [tokens >= 1, d]")
    return float(v.detach().double().norm(dim=-1).mean())


def l2_ratio(x: Tensor, x_hat: Tensor) -> float:
    """SAEBench's ``l2_ratio``: ``mean_t ||x_hat_t|| / ||x_t||``, dividing by 1 where ``||x_t|| <``
    :data:`L2_RATIO_MIN_NORM` (a mean of per-token ratios, not ``l2_norm_out / l2_norm_in``)."""
    x, x_hat = _recon(x, x_hat)
    n_in = x.norm(dim=-1)
    n_in = torch.where(n_in.abs() < L2_RATIO_MIN_NORM, torch.ones_like(n_in), n_in)
    return float((x_hat.norm(dim=-1) / n_in).mean())


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor, batch: Tensor | None = None) -> float:
    """SAEBench's ``relative_reconstruction_bias`` (Rajamanoharan et al. 2024, eq. 10): per batch
    ``mean_t ||x_hat_t||^2 / mean_t <x_t, x_hat_t>``, averaged over batches. 1 = no shrinkage, < 1 = the
    reconstruction is systematically too short (it is the scale gamma minimising ``E||x_hat / gamma - x||^2``)."""
    x, x_hat = _recon(x, x_hat)
    groups = _groups(x.shape[0], batch)
    per = [x_hat[g].pow(2).sum(-1).mean() / (x[g] * x_hat[g]).sum(-1).mean() for g in groups]
    return float(torch.stack(per).mean())


# --------------------------------------------------------------------------------------------------
# Sparsity and feature density (SAEBench: sparsity, misc_metrics, eval_result_details)
# --------------------------------------------------------------------------------------------------


def l0(acts: Tensor) -> float:
    """SAEBench's ``l0``: ``mean_t #{latents j : s_tj != 0}`` on the dense code ``acts [T, n_latents]``."""
    return float((_acts(acts) != 0).sum(-1).double().mean())


def l1(acts: Tensor) -> float:
    """SAEBench's ``l1``: ``mean_t sum_j s_tj`` — the plain sum, no absolute value (equal to the L1 norm for a
    ReLU/TopK code, whose values are >= 0)."""
    return float(_acts(acts).sum(-1).mean())


def feature_density(acts: Tensor) -> Tensor:
    """SAEBench's per-latent ``feature_density``: the fraction of tokens on which the latent fires (``s_tj > 0``),
    float64 ``[n_latents]``. "Fires" is ours too (:func:`jsae.eval.metrics.firing_counts`: selected and > 0)."""
    return (_acts(acts) > 0).double().mean(0)


def consistent_activation_heuristic(acts: Tensor, prompt: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    """SAEBench's per-latent ``consistent_activation_heuristic``: tokens the latent fires on / prompts (contexts)
    it fires in at least once — its mean number of firings per prompt where it fires; NaN for a latent that never
    fires. ``prompt``: the context id of each token."""
    a = _acts(acts)
    p = torch.as_tensor(np.asarray(prompt)).reshape(-1)
    if p.shape[0] != a.shape[0] or p.dtype.is_floating_point:
        raise ValueError(f"prompt has shape {tuple(p.shape)}; expected one integer context id per token "
                         f"({a.shape[0]})")
    fired = a > 0
    prompts = torch.stack([fired[p == u].any(0) for u in torch.unique(p)]).sum(0).double()
    return fired.sum(0).double() / prompts


def frac_alive(density: Tensor | np.ndarray) -> float:
    """SAEBench's ``frac_alive``: the share of latents that fired at least once (density > 0); 1 - our
    ``dead_fraction`` (:func:`jsae.eval.metrics.dead_and_rare`) on the same tokens."""
    return float((_density(density) > 0).double().mean())


def freq_over(density: Tensor | np.ndarray, threshold: float) -> float:
    """SAEBench's ``freq_over_{1,10}_percent`` (threshold 0.01 / 0.1): the share of latents firing on more than
    ``threshold`` of the tokens."""
    return float((_density(density) > threshold).double().mean())


def normalized_freq_over(density: Tensor | np.ndarray, threshold: float) -> float:
    """SAEBench's ``normalized_freq_over_{1,10}_percent``: the densities of the latents above ``threshold``
    summed, over the sum of all densities — the share of all firings made by those latents (0 when none fire)."""
    d = _density(density)
    total = d.sum()
    return float(d[d > threshold].sum() / total) if total > 0 else 0.0


def feature_density_histogram(density: Tensor | np.ndarray,
                              edges: Sequence[float] = DENSITY_LOG10_EDGES) -> tuple[np.ndarray, int]:
    """Histogram of log10(feature density) over the latents that fired, and the count that never fired.

    ``(counts [len(edges) - 1], n_zero)``: bins ``[e_i, e_i+1)``, the last closed (numpy's convention); a
    log10 density below ``edges[0]`` counts in the first bin. Not a SAEBench metric (its UI draws this histogram
    from ``eval_result_details``); written to ``eval_result_unstructured``.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0) or e[-1] < 0:
        raise ValueError(f"edges={list(edges)!r} are invalid; expected >= 2 increasing log10 edges ending >= 0")
    d = _density(density).numpy()
    alive = d[d > 0]
    counts, _ = np.histogram(np.clip(np.log10(alive), e[0], e[-1]), bins=e)
    return counts.astype(np.int64), int((d == 0).sum())


# --------------------------------------------------------------------------------------------------
# Weight-based metrics (SAEBench: misc_metrics, eval_result_details)
# --------------------------------------------------------------------------------------------------


def max_cosine_sim(W: Tensor, chunk: int = MAX_COSINE_CHUNK) -> Tensor:
    """SAEBench's per-latent ``max_encoder_cosine_sim`` / ``max_decoder_cosine_sim``: for each row of ``W
    [n_latents, d]`` (one latent's encoder or decoder vector), its largest cosine with any *other* row; -inf with
    a single latent. ``average_max_*_cosine_sim`` is its mean. Blocks of ``chunk`` rows: never an n x n matrix."""
    W = torch.as_tensor(W).detach()
    if W.dim() != 2 or W.shape[0] == 0:
        raise ValueError(f"W has shape {tuple(W.shape)}; expected one row per latent [n_latents >= 1, d]")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} is invalid; expected a positive integer")
    U = torch.nn.functional.normalize(W.to(torch.promote_types(W.dtype, torch.float32)), p=2, dim=1)
    out = torch.empty(U.shape[0], dtype=U.dtype, device=U.device)
    for start in range(0, U.shape[0], chunk):
        sims = U[start : start + chunk] @ U.T
        rows = torch.arange(sims.shape[0], device=U.device)
        sims[rows, rows + start] = -math.inf  # not a latent's similarity with itself
        out[start : start + chunk] = sims.max(dim=1).values
    return out


def encoder_decoder_cosine_sim(W_enc: Tensor, W_dec: Tensor) -> Tensor:
    """SAEBench's per-latent ``encoder_decoder_cosine_sim``: cosine of each latent's encoder and decoder vectors
    (rows of ``W_enc`` and ``W_dec``, both ``[n_latents, d]`` here; SAEBench's W_enc is the transpose)."""
    W_enc, W_dec = torch.as_tensor(W_enc).detach(), torch.as_tensor(W_dec).detach()
    if W_enc.shape != W_dec.shape or W_enc.dim() != 2:
        raise ValueError(f"W_enc {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)} are invalid; expected equal "
                         "shapes [n_latents, d]")
    e, d = W_enc.double(), W_dec.double()
    return (e / e.norm(dim=1, keepdim=True) * (d / d.norm(dim=1, keepdim=True))).sum(1)


def weight_features(sae: TopKCoder, *, encoder_decoder: bool = True) -> dict[str, np.ndarray]:
    """The weight-based ``eval_result_details`` of ``sae``: ``encoder_bias``, ``encoder_norm`` (the L2 norm of
    each latent's encoder vector), ``encoder_decoder_cosine_sim``, ``max_encoder_cosine_sim``,
    ``max_decoder_cosine_sim`` (float64 ``[n_latents]``). ``encoder_decoder=False`` (a transcoder: its encoder
    reads x and its decoder writes y, two different spaces) leaves ``encoder_decoder_cosine_sim`` out."""
    with torch.no_grad():
        out = {
            "encoder_bias": sae.b_enc.detach().double().cpu().numpy(),
            "encoder_norm": sae.W_enc.detach().double().norm(dim=1).cpu().numpy(),
            "encoder_decoder_cosine_sim": (encoder_decoder_cosine_sim(sae.W_enc, sae.W_dec).cpu().numpy()
                                           if encoder_decoder else None),
            "max_encoder_cosine_sim": max_cosine_sim(sae.W_enc).double().cpu().numpy(),
            "max_decoder_cosine_sim": max_cosine_sim(sae.W_dec).double().cpu().numpy(),
        }
    return {k: v for k, v in out.items() if v is not None}


def misc_metrics(density: Tensor | np.ndarray, max_encoder_cos: Tensor | np.ndarray,
                 max_decoder_cos: Tensor | np.ndarray) -> dict[str, float]:
    """SAEBench's ``misc_metrics`` group from the per-latent density and max cosines."""
    out = {f"freq_over_{name}": freq_over(density, t) for name, t in FREQ_THRESHOLDS.items()}
    for name, t in FREQ_THRESHOLDS.items():
        out[f"normalized_freq_over_{name}"] = normalized_freq_over(density, t)
    out["average_max_encoder_cosine_sim"] = float(np.mean(np.asarray(max_encoder_cos, dtype=np.float64)))
    out["average_max_decoder_cosine_sim"] = float(np.mean(np.asarray(max_decoder_cos, dtype=np.float64)))
    out["frac_alive"] = frac_alive(density)
    return out


# --------------------------------------------------------------------------------------------------
# Model behaviour / performance preservation (SAEBench: CE and KL)
# --------------------------------------------------------------------------------------------------


def ce_loss_score(ce_with_ablation: float, ce_with_sae: float, ce_without_sae: float) -> float:
    """SAEBench's ``ce_loss_score``: ``(CE_ablation - CE_sae) / (CE_ablation - CE_clean)`` from mean CEs.

    Ours (:func:`jsae.eval.metrics.recovered_score`, reused) without our refusal: our ``ce_loss_score`` is NaN when
    the ablation costs under :data:`jsae.eval.metrics.CE_SCORE_MIN_ABLATION_NATS`; SAEBench reports any ratio.
    NaN when the denominator is 0 (SAEBench would raise).
    """
    return ours.recovered_score(ce_with_ablation, ce_with_sae, ce_without_sae)


def kl_div_score(kl_div_with_ablation: float, kl_div_with_sae: float) -> float:
    """SAEBench's ``kl_div_score``: ``(KL_ablation - KL_sae) / KL_ablation`` from mean KL(p_clean || p_spliced);
    the same as our ``kl_score`` (:func:`jsae.eval.metrics.recovered_score` with clean = 0, reused)."""
    return ours.recovered_score(kl_div_with_ablation, kl_div_with_sae, 0.0)


def splice_core_metrics(losses: dict[str, Tensor], contexts: Tensor | np.ndarray,
                        ignore_token_ids: Iterable[int] = ()) -> dict[str, dict[str, float]]:
    """Per SAE role, SAEBench's CE / KL metrics from :func:`jsae.eval.evaluate.splice_token_losses`' per-token
    losses on ``contexts [n, L]``, averaging only the positions SAEBench keeps: CE at position p (predicting p+1)
    and KL at p unless the token *at* p is in ``ignore_token_ids`` (SAEBench: BOS, EOS, PAD)."""
    ctx = torch.as_tensor(np.asarray(contexts)).long()
    if ctx.dim() != 2 or ctx.shape[1] < 2:
        raise ValueError(f"contexts has shape {tuple(ctx.shape)}; expected [n_contexts, length >= 2] token ids")
    ignore = torch.tensor(sorted({int(t) for t in ignore_token_ids}), dtype=torch.long)
    keep = ~torch.isin(ctx, ignore)
    keep_ce, keep_kl = keep[:, :-1].reshape(-1), keep.reshape(-1)
    for key, mask in (("ce/clean", keep_ce), ("kl/recon_in", keep_kl)):
        if losses[key].shape != mask.shape:
            raise ValueError(f"losses[{key!r}] has shape {tuple(losses[key].shape)}; expected {tuple(mask.shape)} "
                             "from splice_token_losses on these contexts")
    if not bool(keep_ce.any()):
        raise ValueError("every position of the contexts holds an ignored token; expected some ordinary tokens")

    def mean(key: str, mask: Tensor) -> float:
        return float(losses[key].double()[mask].mean())

    clean = mean("ce/clean", keep_ce)
    out = {}
    for role, side in zip(SAE_ROLES, ours.SIDES):
        ce_sae, ce_abl = mean(f"ce/recon_{side}", keep_ce), mean(f"ce/zero_{side}", keep_ce)
        kl_sae, kl_abl = mean(f"kl/recon_{side}", keep_kl), mean(f"kl/zero_{side}", keep_kl)
        out[role] = {"kl_div_score": kl_div_score(kl_abl, kl_sae), "kl_div_with_ablation": kl_abl,
                     "kl_div_with_sae": kl_sae, "ce_loss_score": ce_loss_score(ce_abl, ce_sae, clean),
                     "ce_loss_with_ablation": ce_abl, "ce_loss_with_sae": ce_sae, "ce_loss_without_sae": clean}
    return out


# --------------------------------------------------------------------------------------------------
# Streaming over batches
# --------------------------------------------------------------------------------------------------


class CoreAccumulator:
    """SAEBench's activation metrics of one SAE, streamed: :meth:`update` takes one SAEBench batch (its input
    ``x``, reconstruction ``x_hat``, TopK code ``vals``/``idx`` and the context id of each token); :meth:`result`
    equals the pure functions above on the concatenated tokens with one batch id per update.

    Also feeds our :class:`jsae.eval.metrics.ReconstructionAccumulator` (whose per-batch legacy EV is SAEBench's
    ``explained_variance_legacy`` on the same batches) and our firing counts (dead / rare latents).
    """

    def __init__(self, d: int, n_latents: int) -> None:
        self.d, self.n_latents = d, n_latents
        self.n_tokens = 0
        self.n_batches = 0
        self._batch: dict[str, list[float]] = {"resid": [], "sq": [], "sq_dim": [], "rrb": []}
        self._sum = dict.fromkeys(("mse", "cos", "norm_in", "norm_out", "ratio", "l0", "l1"), 0.0)
        self.fired: Tensor | None = None  # tokens each latent fired on
        self.prompts: Tensor | None = None  # contexts each latent fired in
        self.ours = ours.ReconstructionAccumulator(d)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, vals: Tensor, idx: Tensor, prompt: Tensor) -> None:
        if x.shape[0] == 0:
            return
        if vals.shape != idx.shape or vals.shape[0] != x.shape[0] or prompt.shape != (x.shape[0],):
            raise ValueError(f"vals {tuple(vals.shape)}, idx {tuple(idx.shape)} and prompt {tuple(prompt.shape)} "
                             f"are invalid for {x.shape[0]} tokens; expected [T, k], [T, k] and [T]")
        self.ours.update(x, x_hat)
        x, x_hat = _recon(x, x_hat)
        nb = x.shape[0]
        sse = (x - x_hat).pow(2).sum(-1)
        sq = x.pow(2).sum(-1)
        self._batch["resid"].append(float(sse.mean()))
        self._batch["sq"].append(float(sq.mean()))
        self._batch["sq_dim"].append(float(x.pow(2).mean()))
        self._batch["rrb"].append(float(x_hat.pow(2).sum(-1).mean() / (x * x_hat).sum(-1).mean()))
        n_in, n_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        s = self._sum
        s["mse"] += float(sse.sum()) / nb
        s["cos"] += float((x / n_in[:, None] * (x_hat / n_out[:, None])).sum(-1).sum())  # NaN for a zero vector
        s["norm_in"] += float(n_in.sum())
        s["norm_out"] += float(n_out.sum())
        s["ratio"] += float((n_out / torch.where(n_in.abs() < L2_RATIO_MIN_NORM, torch.ones_like(n_in), n_in)).sum())
        s["l0"] += float((vals != 0).sum())
        s["l1"] += float(vals.double().sum())
        fired = ours.firing_counts(vals, idx, self.n_latents)
        active = vals > 0
        # one count per (context, latent) that fired in that context: SAEBench's "prompts"
        keys = torch.unique(prompt.to(idx.device)[:, None].expand_as(idx)[active] * self.n_latents + idx[active])
        prompts = torch.bincount(keys % self.n_latents, minlength=self.n_latents)
        self.fired = fired if self.fired is None else self.fired + fired
        self.prompts = prompts if self.prompts is None else self.prompts + prompts
        self.n_tokens += nb
        self.n_batches += 1

    def result(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """SAEBench's metrics (reconstruction, shrinkage, sparsity, frac/freq) and per-latent ``feature_density``,
        ``consistent_activation_heuristic`` and ``fired_count``."""
        if self.n_tokens == 0 or self.fired is None or self.prompts is None:
            raise ValueError("no tokens were accumulated; expected a non-empty evaluation set")
        b, s, n = self._batch, self._sum, self.n_tokens
        fired = self.fired.cpu().double()
        density = (fired / n).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            cah = (fired / self.prompts.cpu().double()).numpy()
        A, B, C = np.mean(b["resid"]), np.mean(b["sq"]), np.mean(b["sq_dim"])
        metrics = {
            "explained_variance": float(1.0 - A / (B - C**2)),
            "explained_variance_legacy": self.ours.result()["explained_variance_legacy"],
            "mse": s["mse"] / n,
            "cossim": s["cos"] / n,
            "l2_norm_in": s["norm_in"] / n,
            "l2_norm_out": s["norm_out"] / n,
            "l2_ratio": s["ratio"] / n,
            "relative_reconstruction_bias": float(np.mean(b["rrb"])),
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
        }
        return metrics, {"feature_density": density, "consistent_activation_heuristic": cah,
                         "fired_count": self.fired.cpu().numpy()}


@torch.no_grad()
def pair_activation_metrics(pair: JSAEPair, batches: Iterable[tuple[Tensor, Tensor]], *, total: int | None = None,
                            progress: bool = True) -> dict[str, CoreAccumulator]:
    """Both SAEs over ``batches`` of ``(x [T, d], context id [T])``, one pair forward each at the true MLP input:
    ``sae_in`` on x, ``sae_out`` on y = MLP(x). Returns the accumulators by role."""
    acc = {"sae_in": CoreAccumulator(pair.sae_in.d_in, pair.sae_in.n_latents),
           "sae_out": CoreAccumulator(pair.sae_out.d_in, pair.sae_out.n_latents)}
    device, dtype = pair.sae_in.W_enc.device, pair.sae_in.W_enc.dtype
    bar = tqdm(total=total, desc="core", unit="tok", disable=not progress, leave=False)
    for x, prompt in batches:
        if x.shape[0] == 0:
            continue
        x = x.to(device=device, dtype=dtype)
        prompt = torch.as_tensor(prompt, device=device).long()
        out = pair(x, with_jacobian=False)
        acc["sae_in"].update(x, out.x_hat, out.in_vals, out.in_idx, prompt)
        acc["sae_out"].update(out.y, out.y_hat, out.out_vals, out.out_idx, prompt)
        bar.update(x.shape[0])
    bar.close()
    if acc["sae_in"].n_tokens == 0:
        raise ValueError("no tokens to evaluate (all were ignored special tokens?); expected at least one token")
    return acc


# --------------------------------------------------------------------------------------------------
# SAEBench's JSON
# --------------------------------------------------------------------------------------------------


def _json_value(v: Any, key: str = "") -> Any:
    """A JSON value: NaN / inf (SAEBench writes -1 for NaN) become null; numpy scalars plain numbers."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        if not math.isfinite(f):
            return None
        return int(f) if key in INT_METRICS else f
    raise ValueError(f"{key or 'value'}={v!r} is invalid; expected a number or None")


def core_eval_config(**fields: Any) -> dict[str, Any]:
    """SAEBench's ``CoreEvalConfig`` as a dict, in its field order: its defaults overridden by ``fields``."""
    unknown = sorted(set(fields) - set(EVAL_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown CoreEvalConfig fields {unknown}; expected some of {', '.join(EVAL_CONFIG_DEFAULTS)}")
    return {k: fields.get(k, v) for k, v in EVAL_CONFIG_DEFAULTS.items()}


def core_eval_json(
    metrics: dict[str, float | int | None],
    features: dict[str, Sequence[float] | np.ndarray],
    *,
    eval_config: dict[str, Any],
    sae_cfg_dict: dict[str, Any] | None = None,
    unstructured: Any = None,
    eval_id: str | None = None,
    datetime_epoch_millis: int | None = None,
) -> dict[str, Any]:
    """One SAE's evaluation as SAEBench's ``CoreEvalOutput`` (``to_json``'s dict): the same keys, nesting and order.

    ``metrics``: flat, SAEBench's metric names (see :data:`METRIC_GROUPS`); a metric absent or NaN is null.
    ``features``: per-latent arrays named as :data:`FEATURE_FIELDS` (``index`` is added); an absent one is null.
    The SAELens identity (``sae_lens_id``, ``sae_lens_release_id``, ``sae_lens_version``) and
    ``sae_bench_commit_hash`` are null: no SAELens release holds these SAEs and SAEBench did not run (the
    commit whose definitions we follow is in ``eval_result_unstructured``).
    """
    known = {k for keys in METRIC_GROUPS.values() for k in keys}
    unknown = sorted(set(metrics) - known)
    if unknown:
        raise ValueError(f"unknown core metrics {unknown}; expected SAEBench's names ({', '.join(sorted(known))})")
    bad_features = sorted(set(features) - set(FEATURE_FIELDS[1:]))
    if bad_features:
        raise ValueError(f"unknown feature fields {bad_features}; expected some of {', '.join(FEATURE_FIELDS[1:])}")
    lengths = {len(v) for v in features.values()}
    if len(lengths) > 1:
        raise ValueError(f"feature arrays have lengths {sorted(lengths)}; expected one value per latent each")
    if set(eval_config) != set(EVAL_CONFIG_DEFAULTS):
        raise ValueError("eval_config does not have CoreEvalConfig's fields; expected core_eval_config(...)")
    n = lengths.pop() if lengths else 0
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in features.items()}
    details = [{f: i if f == "index" else (_json_value(cols[f][i], f) if f in cols else None) for f in FEATURE_FIELDS}
               for i in range(n)]
    now = int(time.time() * 1000) if datetime_epoch_millis is None else int(datetime_epoch_millis)
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": dict(eval_config),
        "eval_id": str(uuid.uuid4()) if eval_id is None else eval_id,
        "datetime_epoch_millis": now,
        "eval_result_metrics": {group: {k: _json_value(metrics.get(k), k) for k in keys}
                                for group, keys in METRIC_GROUPS.items()},
        "eval_result_details": details,
        "sae_bench_commit_hash": None,
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg_dict,
        "eval_result_unstructured": unstructured,
    }


def write_core_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Write ``doc`` atomically as strict JSON (no NaN), keys in SAEBench's order."""
    from jsae.io import atomic_path

    text = json.dumps(doc, indent=2, allow_nan=False, default=_json_default)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, (np.generic,)):
        return _json_value(v.item())
    return str(v)


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------------
# A pair, end to end
# --------------------------------------------------------------------------------------------------


@dataclass
class CoreResult:
    """One SAE's results: SAEBench's flat ``metrics`` and per-latent ``features``, and ours (``extra``)."""

    metrics: dict[str, float | int | None]
    features: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


def sae_results(acc: CoreAccumulator, sae: TopKCoder, *, prompts_meaningful: bool = True,
                edges: Sequence[float] = DENSITY_LOG10_EDGES, encoder_decoder: bool = True) -> CoreResult:
    """One SAE's (or transcoder's: ``encoder_decoder=False``, :func:`weight_features`) :class:`CoreResult` from its
    accumulator and weights (no CE/KL: :func:`add_splice_results`)."""
    metrics, per_latent = acc.result()
    weights = weight_features(sae, encoder_decoder=encoder_decoder)
    density = per_latent["feature_density"]
    metrics.update(misc_metrics(density, weights["max_encoder_cosine_sim"], weights["max_decoder_cosine_sim"]))
    metrics["total_tokens_eval_sparsity_variance"] = acc.n_tokens
    features = {"feature_density": density, **weights}
    null_reasons = {}
    if prompts_meaningful:
        features["consistent_activation_heuristic"] = per_latent["consistent_activation_heuristic"]
    else:
        null_reasons["consistent_activation_heuristic"] = "the cache's rows are sampled, not contexts of text"
    counts, n_zero = feature_density_histogram(density, edges)
    reconstruction = acc.ours.result()
    extra = {
        **ours.dead_and_rare(torch.as_tensor(per_latent["fired_count"]), acc.n_tokens),
        "rare_rate": ours.RARE_RATE,
        "feature_density_histogram": {"log10_edges": [float(e) for e in edges], "counts": counts.tolist(),
                                      "n_never_fired": n_zero},
        "jsae_metrics": {k: _finite_or_none(float(v)) for k, v in reconstruction.items()},
        "null_reasons": null_reasons,
    }
    return CoreResult(metrics, features, extra)


#: Why a metric is NaN, where the cause is known (any other non-finite value: :data:`NOT_FINITE`).
NAN_CAUSES = {"cossim": "a zero input or reconstruction vector (SAEBench divides by its norm)"}
NOT_FINITE = "not finite (SAEBench writes -1 for NaN)"


def non_finite_reasons(metrics: dict[str, Any]) -> dict[str, str]:
    """For each metric that is NaN or infinite (written as null), why."""
    return {k: f"{NOT_FINITE}: {NAN_CAUSES[k]}" if k in NAN_CAUSES else NOT_FINITE for k, v in metrics.items()
            if isinstance(v, float) and not math.isfinite(v)}


def row_batches(cache: Any, n_rows: int, batch_rows: int, ignore_token_ids: Iterable[int] = ()
                ) -> Iterable[tuple[Tensor, Tensor]]:
    """``(x, context id)`` of the first ``n_rows`` cache rows in batches of ``batch_rows``, rows holding an ignored
    token dropped (SAEBench masks BOS/EOS/PAD)."""
    ignore = np.asarray(sorted({int(t) for t in ignore_token_ids}), dtype=np.int64)
    token_ids = np.asarray(cache.token_ids[:n_rows]) if ignore.size else None
    context = np.asarray(cache.context_index[:n_rows]).astype(np.int64)
    for start in range(0, n_rows, batch_rows):
        stop = min(n_rows, start + batch_rows)
        x = cache.read(start, stop)
        ctx = context[start:stop]
        if token_ids is not None:
            keep = ~np.isin(token_ids[start:stop], ignore)
            x, ctx = x[torch.from_numpy(keep)], ctx[keep]
        yield x, torch.from_numpy(ctx)


def ignored_tokens(tokenizer: Any) -> list[int]:
    """SAEBench's ``ignore_tokens``: the tokenizer's PAD, EOS and BOS ids (those it has)."""
    if tokenizer is None:
        return []
    ids = (getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id", "bos_token_id"))
    return sorted({int(i) for i in ids if i is not None})


def add_splice_results(res: CoreResult, spliced: dict[str, Any], ours_splice: dict[str, float], side: str,
                       n_tokens: int) -> None:
    """Add one SAE's CE / KL metrics to ``res``: SAEBench's (:func:`splice_core_metrics`' entry for it) and ours
    (:func:`jsae.eval.evaluate.splice_metrics`' ``{side}/…``), over ``n_tokens`` spliced tokens."""
    res.metrics.update(spliced)
    res.metrics["total_tokens_eval_reconstruction"] = n_tokens
    res.extra["jsae_metrics"].update({k.split("/", 1)[1]: _finite_or_none(v) for k, v in ours_splice.items()
                                      if k.startswith(f"{side}/")})


def skip_splice_results(res: CoreResult, reason: str) -> None:
    """Record why ``res`` has no CE / KL metrics (they are written as null)."""
    res.extra["null_reasons"].update(dict.fromkeys(
        (*METRIC_GROUPS["model_behavior_preservation"], *METRIC_GROUPS["model_performance_preservation"],
         "total_tokens_eval_reconstruction"), reason))


@dataclass(frozen=True)
class CoreRun:
    """What a core command reads, from its arguments and the cache: rows, batches and CE contexts (checked)."""

    n_rows: int
    n_contexts: int
    context_length: int
    batch_rows: int  # --batch-size-prompts contexts of cache rows
    ce_contexts: int
    first_clean: bool  # the cache excludes position 0: the splice leaves it clean

    @staticmethod
    def check_args(args: argparse.Namespace) -> None:
        """The numeric arguments of a core command (one-line ``ValueError``), checked before anything loads."""
        from jsae.checks import check_positive_int

        check_positive_int("n_tokens", args.n_tokens, allow_none=True)
        check_positive_int("batch_size_prompts", args.batch_size_prompts)
        check_positive_int("ce_contexts", args.ce_contexts, minimum=0, allow_none=True)
        check_positive_int("ce_batch_size", args.ce_batch_size)

    @classmethod
    def from_cache(cls, args: argparse.Namespace, cache: Any) -> CoreRun:
        """The cache's layout for the (checked: :meth:`check_args`) arguments; ``--ce-contexts`` checked against it."""
        from jsae.eval.inputs import token_count

        n_rows = token_count(cache, args.n_tokens)
        n_contexts, context_length = int(cache.contexts().shape[0]), cache.context_length
        rows_per_context = context_length - 1 if str(cache.attrs.get("first_position")) == "excluded" \
            else context_length
        default_ce = 10 * args.batch_size_prompts
        ce_contexts = min(default_ce, n_contexts) if args.ce_contexts is None else args.ce_contexts
        if ce_contexts > n_contexts:
            raise ValueError(f"ce_contexts={ce_contexts} is invalid for a cache of {n_contexts} contexts; expected "
                             f"0..{n_contexts}")
        first_clean = str(cache.attrs.get("first_position", "excluded")) == "excluded"
        return cls(n_rows, n_contexts, context_length, args.batch_size_prompts * rows_per_context, ce_contexts,
                   first_clean)

    def ce_reason(self, model: Any) -> str | None:
        """Why CE / KL are not computed, or None to compute them."""
        if model is None:
            return "a planted model has no language model to splice into"
        return "skipped: --ce-contexts 0" if self.ce_contexts == 0 else None

    def eval_config(self, args: argparse.Namespace, model: Any, cache: Any, *, ce_reason: str | None,
                    n_batches: int) -> dict[str, Any]:
        """SAEBench's ``eval_config`` of this run (:func:`core_eval_config`)."""
        model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else None
        return core_eval_config(
            model_name=str(args.model), llm_dtype=model_dtype,
            batch_size_prompts=args.batch_size_prompts,
            n_eval_reconstruction_batches=(math.ceil(self.ce_contexts / args.batch_size_prompts)
                                           if ce_reason is None else 0),
            n_eval_sparsity_variance_batches=n_batches,
            dataset=f"corpus_sha256={cache.attrs.get('corpus_sha256')} split={cache.attrs.get('split')}",
            context_size=self.context_length, compute_kl=ce_reason is None, compute_ce_loss=ce_reason is None,
            compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
            compute_featurewise_density_statistics=True, compute_featurewise_weight_based_metrics=True,
            # our splice keeps position 0 (the BOS) clean; SAEBench's flag keeps every BOS/EOS/PAD position clean
            exclude_special_tokens_from_reconstruction=self.first_clean and ce_reason is None,
        )

    def settings(self, args: argparse.Namespace, *, layer: int, ignore: list[int], ce_reason: str | None
                 ) -> dict[str, Any]:
        """``eval_result_unstructured.jsae``'s entries on what was read and how."""
        return {
            "run": str(args.run), "cache": str(args.cache), "layer": layer,
            "definitions": {"sae_bench_commit": SAE_BENCH_COMMIT, "sae_bench_files": list(SAE_BENCH_FILES),
                            "docs": "docs/metrics.md, 'SAEBench core metrics'"},
            "ignore_token_ids": ignore,
            "rows_read": self.n_rows,
            "ce_contexts": self.ce_contexts if ce_reason is None else 0,
            "first_position_clean": self.first_clean,
        }


def write_core_result(path: str | os.PathLike[str], res: CoreResult, *, head: dict[str, Any],
                      settings: dict[str, Any], eval_config: dict[str, Any], sae_cfg_dict: Any, eval_id: str) -> None:
    """One SAE's SAEBench core-eval JSON: ``res`` with ``head`` (what the SAE is) and ``settings``
    (:meth:`CoreRun.settings`) under ``eval_result_unstructured.jsae``; non-finite metrics get a null reason."""
    res.extra["null_reasons"].update(non_finite_reasons(res.metrics))
    unstructured = {"jsae": {**head, **settings, **res.extra}}
    doc = core_eval_json(res.metrics, res.features, eval_config=eval_config, sae_cfg_dict=sae_cfg_dict,
                         unstructured=unstructured, eval_id=eval_id)
    write_core_json(path, doc)


# --------------------------------------------------------------------------------------------------
# Command line: python -m jsae core
# --------------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    from jsae.eval.inputs import pair_parser, run_pair_command

    p = pair_parser(
        "python -m jsae core",
        "SAEBench's core metrics (reconstruction, shrinkage, sparsity, feature density, encoder/decoder cosines, "
        "CE/KL scores) of both SAEs of a trained pair, each written as SAEBench's core-eval JSON: "
        f"OUT/sae_in{RESULT_SUFFIX} (the SAE on the MLP input x) and OUT/sae_out{RESULT_SUFFIX} (on y = MLP(x)).")
    for action in p._actions:  # the layer is the pair's own (run.json) unless given; nothing goes to MLflow
        if action.dest == "layer":
            action.required = False
            action.help = "layer index of the MLP (default: the pair's, from run.json)"
        elif action.dest == "mlflow_uri":
            action.help = "ignored: this command logs nothing to MLflow"
    p.add_argument("--out", required=True, help="output directory of the two JSON files")
    p.add_argument("--n-tokens", type=int, default=None,
                   help="cache rows for the activation metrics (default: all); BOS/EOS/PAD rows are then dropped")
    p.add_argument("--batch-size-prompts", type=int, default=EVAL_CONFIG_DEFAULTS["batch_size_prompts"],
                   help="contexts per batch (SAEBench's batch_size_prompts; its batch-dependent metrics — "
                   "explained_variance, mse, relative_reconstruction_bias — use these batches)")
    p.add_argument("--ce-contexts", type=int, default=None,
                   help="contexts for CE/KL (default: SAEBench's 10 batches x --batch-size-prompts, at most the "
                   "cache's contexts; 0: no CE/KL)")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per LM forward for CE/KL")
    return run_pair_command(p, argv, _core_cli)


def _core_cli(args: argparse.Namespace) -> int:
    from jsae.data.cache import ActivationCache
    from jsae.data.planted import is_planted_dir
    from jsae.eval.evaluate import splice_metrics, splice_token_losses
    from jsae.eval.inputs import load_inputs, pair_identity, run_field
    from jsae.export import read_run, read_sae_config

    # every argument is checked before the model loads
    CoreRun.check_args(args)
    layer = args.layer
    if layer is None:
        layer = run_field(read_run(args.run), "layer")
        if layer is None:
            raise ValueError(f"{args.run}/run.json records no layer; expected --layer L")
        layer = int(layer)
    if not Path(args.cache).is_file():
        raise FileNotFoundError(f"cache {args.cache} does not exist; expected an HDF5 activation cache")
    with ActivationCache.open(args.cache) as cache:
        run = CoreRun.from_cache(args, cache)
    planted = is_planted_dir(args.model)

    inputs = load_inputs(args.model, layer, args.run, args.cache, device=args.device)
    pair, cache = inputs.pair, inputs.cache
    ignore = ignored_tokens(inputs.tokenizer)
    log.info("core metrics over %d cache rows (batches of %d contexts = %d rows; ignoring token ids %s)", run.n_rows,
             args.batch_size_prompts, run.batch_rows, ignore)
    acc = pair_activation_metrics(pair, row_batches(cache, run.n_rows, run.batch_rows, ignore), total=run.n_rows,
                                  progress=not args.no_progress)
    saes = {"sae_in": pair.sae_in, "sae_out": pair.sae_out}
    results = {role: sae_results(acc[role], saes[role], prompts_meaningful=not planted) for role in SAE_ROLES}

    ce_reason = run.ce_reason(inputs.model)
    if ce_reason is None:
        contexts = torch.as_tensor(np.asarray(cache.contexts()[:run.ce_contexts]))
        log.info("CE/KL splice over %d contexts of %d tokens", run.ce_contexts, run.context_length)
        losses = splice_token_losses(inputs.model, layer, pair, contexts, batch_size=args.ce_batch_size,
                                     first_position_clean=run.first_clean, progress=not args.no_progress)
        spliced = splice_core_metrics(losses, contexts, ignore)
        ours_splice = splice_metrics(losses)
        for role, side in zip(SAE_ROLES, ours.SIDES):
            add_splice_results(results[role], spliced[role], ours_splice, side, run.ce_contexts * run.context_length)
    else:
        for role in SAE_ROLES:
            skip_splice_results(results[role], ce_reason)

    config = run.eval_config(args, inputs.model, cache, ce_reason=ce_reason, n_batches=acc["sae_in"].n_batches)
    identity = pair_identity(inputs.run, pair)
    settings = run.settings(args, layer=layer, ignore=ignore, ce_reason=ce_reason)
    eval_id = str(uuid.uuid4())
    out_dir = Path(args.out)
    for role in SAE_ROLES:
        res = results[role]
        head = {"sae": role, "reconstructs": "MLP input x" if role == "sae_in" else "MLP output y = MLP(x)",
                "pair": identity}
        write_core_result(out_dir / result_filename(role), res, head=head, settings=settings, eval_config=config,
                          sae_cfg_dict=read_sae_config(Path(args.run) / role), eval_id=eval_id)
        m = res.metrics
        log.info("%s: explained_variance %.4f (ours: %s), l0 %.2f, frac_alive %.3f, ce_loss_score %s", role,
                 m["explained_variance"], res.extra["jsae_metrics"]["explained_variance"], m["l0"],
                 m["frac_alive"], m.get("ce_loss_score"))
    log.info("wrote %s and %s", out_dir / result_filename("sae_in"), out_dir / result_filename("sae_out"))
    return 0
