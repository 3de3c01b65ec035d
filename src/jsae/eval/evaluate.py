"""Evaluate a trained JSAE pair on held-out tokens (paper appendix E, F; definitions in docs/metrics.md).

Two passes, both bounded in memory:

1. over ``n_tokens`` rows of a validation activation cache: reconstruction quality of ``sae_in``
   (on x) and ``sae_out`` (on y = MLP(x)), dead / rare latents, and the Jacobian statistics (per-tau
   shares, |J| histogram and CDF, per-token Lp norms, the sparse global mean-|J| matrix), and each
   token's own statistics for the first ``--token-stats`` tokens (``token_*`` arrays);
2. over the cache's token contexts: the LM's next-token CE and KL with the reconstruction spliced in
   (``x_hat`` into the MLP input for ``sae_in``; ``y_hat = sae_out(MLP(x))`` into the MLP output for
   ``sae_out``) and with the same activation zero-ablated, giving the CE loss and KL scores (and the
   per-token CE, ``ce_token_*``, bounded by ``--ce-tokens``).

The per-token arrays are what the claims' bootstrap intervals resample (:mod:`jsae.report.claims`).

Outputs: ``evaluation.json`` (``metrics`` with the contract's keys, ``pair`` identity, settings) and
``jacobian_stats.npz`` next to it; all scalars are also logged to the pair's MLflow run when asked
(:func:`jsae.tracking.log_to_pair_run`). Loading and the belong-together checks: :mod:`jsae.eval.inputs`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.cli import tracking_uri
from jsae.data.hooks import mlp_module, replace_mlp_input, replace_mlp_output
from jsae.eval.inputs import (
    cache_rows,
    check_tokenizer_covers,
    load_inputs,
    pair_identity,
    pair_parser,
    run_field,
    run_pair_command,
    token_count,
    write_pair_outputs,
)
from jsae.eval.metrics import (
    CE_SCORE_MIN_ABLATION_NATS,
    CE_TOKENS_KEY,
    DEFAULT_HIST_BINS,
    DEFAULT_HIST_MAX,
    DEFAULT_THRESHOLDS,
    DEFAULT_TOKEN_STATS,
    IN_CE_SCORE_KEY,
    IN_EV_KEY,
    JAC_FRAC_KEY,
    JAC_GLOBAL_PAIRS_KEY,
    N_TOKENS_KEY,
    OUT_CE_SCORE_KEY,
    OUT_EV_KEY,
    RECONSTRUCTION_METRICS,
    SIDES,
    GlobalJacobianAccumulator,
    JacobianAccumulator,
    ReconstructionAccumulator,
    ce_ablation_delta,
    ce_score_refused,
    ce_splice_metrics,
    check_min_ablation,
    check_thresholds,
    dead_and_rare,
    firing_counts,
    global_threshold_key,
    histogram_edges,
    recovered_score,
    side_key,
    splice_key,
    token_cross_entropy,
    token_kl,
)
from jsae.nn.pair import EVALUATION_POINT, JSAEPair
from jsae.tracking import log_to_pair_run

log = logging.getLogger("jsae.eval.evaluate")

#: Tokens for the CE / KL splice evaluation by default (appendix E: ~160K tokens, 10 x 8 x 2048).
DEFAULT_CE_TOKENS = 160_000


@dataclass
class Evaluation:
    """Scalars (``metrics``, the contract's keys and a few extras) and distributions (``arrays``)."""

    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Pass 1: reconstruction, dead latents, Jacobian statistics over cached activations
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def activation_metrics(
    pair: JSAEPair,
    batches: Iterable[Tensor],
    *,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    edges: np.ndarray | None = None,
    max_global_entries: int | None = 20_000_000,
    token_stats: int = DEFAULT_TOKEN_STATS,
    total: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray], GlobalJacobianAccumulator]:
    """Reconstruction quality of both SAEs, dead/rare latents and the Jacobian statistics.

    Each batch goes through one pair forward at the true MLP input (``EVALUATION_POINT``):
    ``sae_in`` is scored on ``x``, ``sae_out`` on ``y = MLP(x)``. The first ``token_stats`` tokens, in
    the order the batches give them, also get per-token arrays (``token_*``, ``token_row`` = that order).
    """
    thresholds = check_thresholds(thresholds)
    device = pair.sae_in.W_enc.device
    rec_in, rec_out = ReconstructionAccumulator(pair.sae_in.d_in), ReconstructionAccumulator(pair.sae_out.d_in)
    jac = JacobianAccumulator(thresholds, histogram_edges() if edges is None else np.asarray(edges),
                              token_stats=token_stats)
    glob = GlobalJacobianAccumulator(pair.sae_out.n_latents, pair.sae_in.n_latents, max_entries=max_global_entries)
    fired_in = torch.zeros(pair.sae_in.n_latents, dtype=torch.int64, device=device)
    fired_out = torch.zeros(pair.sae_out.n_latents, dtype=torch.int64, device=device)
    n = 0
    bar = tqdm(total=total, desc="evaluate", unit="tok", disable=not progress, leave=False)
    for x in batches:
        x = x.to(device=device, dtype=pair.sae_in.W_enc.dtype)
        if x.shape[0] == 0:
            continue
        out = pair(x)
        assert out.jacobian is not None
        rec_in.update(x, out.x_hat)
        rec_out.update(out.y, out.y_hat)
        fired_in += firing_counts(out.in_vals, out.in_idx, pair.sae_in.n_latents)
        fired_out += firing_counts(out.out_vals, out.out_idx, pair.sae_out.n_latents)
        jac.update(out.jacobian)
        glob.update(out.jacobian, out.out_idx, out.in_idx, out.out_vals)
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    if n == 0:
        raise ValueError("the evaluation set is empty; expected at least one token")
    metrics: dict[str, float] = {}
    for side, rec, fired in zip(SIDES, (rec_in, rec_out), (fired_in, fired_out)):
        r = rec.result()
        metrics.update({side_key(side, name): r[name] for name in RECONSTRUCTION_METRICS})
        metrics.update({side_key(side, name): v for name, v in dead_and_rare(fired.cpu(), n).items()})
    metrics.update(jac.metrics())
    metrics[JAC_GLOBAL_PAIRS_KEY] = float(len(glob.keys))
    # 100% = alive outputs x alive inputs (fired on >= 1 evaluation token), as fig. 36
    for tau, share in zip(thresholds, glob.sparsity_shares(fired_out > 0, fired_in > 0, thresholds)):
        metrics[global_threshold_key(tau)] = float(share)
    metrics[N_TOKENS_KEY] = float(n)
    arrays = jac.arrays()
    arrays.update(glob.arrays())
    arrays["in_fired_count"] = fired_in.cpu().numpy()
    arrays["out_fired_count"] = fired_out.cpu().numpy()
    return metrics, arrays, glob


# --------------------------------------------------------------------------------------------------
# Pass 2: CE / KL scores by splicing into the language model
# --------------------------------------------------------------------------------------------------


def _splice(first_position_clean: bool, fn):
    """Apply ``fn`` to the hooked activation ``[B, S, d]``, leaving position 0 untouched when asked.

    The cache excludes position 0 (attention sink) from the SAEs' training data, so by default the
    splice leaves that position clean in every run (zero and reconstruction alike); with a ratio of
    means this does not change the scores, only the absolute CE values.
    """

    def apply(h: Tensor, *rest: Tensor) -> Tensor:
        new = fn(h, *rest)
        if first_position_clean and h.dim() == 3:
            base = rest[0] if rest else h
            new = torch.cat([base[:, :1], new[:, 1:]], dim=1)
        return new

    return apply


#: The spliced runs, per SAE side: the reconstruction and the zero-ablation of the hooked activation.
SPLICE_VARIANTS = ("recon_in", "zero_in", "recon_out", "zero_out")


@torch.no_grad()
def splice_token_losses(
    model: nn.Module,
    layer: int,
    pair: JSAEPair,
    contexts: Tensor,
    *,
    batch_size: int = 8,
    first_position_clean: bool = True,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Per token, the LM's next-token CE clean and with each splice, and KL(clean || spliced).

    Returns ``ce/clean`` and ``ce/{variant}`` ``[n_contexts * (length - 1)]`` (every predicted
    position, contexts in order) and ``kl/{variant}`` ``[n_contexts * length]`` (every position),
    float64 on the CPU, in nats; :data:`SPLICE_VARIANTS` are the variants.

    Per batch of contexts, five forwards: clean; ``sae_in``: MLP input replaced by ``x_hat`` /
    by zeros; ``sae_out``: MLP output replaced by ``y_hat = sae_out(y)`` with ``y`` the MLP's output
    on its true input / by zeros.
    """
    sae_dtype = pair.sae_in.W_enc.dtype

    def recon_in(x: Tensor) -> Tensor:
        return pair.sae_in(x.to(sae_dtype)).to(x.dtype)

    def recon_out(_x: Tensor, y: Tensor) -> Tensor:
        return pair.sae_out(y.to(sae_dtype)).to(y.dtype)

    variants = {
        "recon_in": (replace_mlp_input, _splice(first_position_clean, recon_in)),
        "zero_in": (replace_mlp_input, _splice(first_position_clean, torch.zeros_like)),
        "recon_out": (replace_mlp_output, _splice(first_position_clean, recon_out)),
        "zero_out": (replace_mlp_output, zero_output(first_position_clean)),
    }
    return spliced_token_losses(model, layer, contexts, variants, batch_size=batch_size, progress=progress)


def zero_output(first_position_clean: bool):
    """The zero-ablation of the MLP output, as a splice of :func:`jsae.data.hooks.replace_mlp_output`."""
    return _splice(first_position_clean, lambda _x, y: torch.zeros_like(y))


def spliced_token_losses(model: nn.Module, layer: int, contexts: Tensor, variants: Mapping[str, tuple[Any, Any]], *,
                         batch_size: int = 8, progress: bool = True) -> dict[str, Tensor]:
    """Per token, the LM's next-token CE clean and with each of ``variants`` (``name: (replace, fn)``: the hook
    context of :mod:`jsae.data.hooks` and the splice it applies to ``layer``'s MLP), and KL(clean || spliced):
    ``ce/clean``, ``ce/{name}`` ``[n_contexts * (length - 1)]``, ``kl/{name}`` ``[n_contexts * length]``."""
    check_positive_int("batch_size", batch_size)
    if contexts.dim() != 2 or contexts.shape[0] == 0 or contexts.shape[1] < 2:
        raise ValueError(f"contexts has shape {tuple(contexts.shape)}; "
                         "expected [n_contexts >= 1, length >= 2] token ids")
    module = mlp_module(model, layer)
    device = next(model.parameters()).device
    ce: dict[str, list[Tensor]] = {k: [] for k in ["clean", *variants]}
    kl: dict[str, list[Tensor]] = {k: [] for k in variants}
    for start in tqdm(range(0, contexts.shape[0], batch_size), desc="CE/KL", disable=not progress, leave=False):
        ids = contexts[start : start + batch_size].to(device=device, dtype=torch.long)
        clean = model(input_ids=ids, use_cache=False).logits
        ce["clean"].append(token_cross_entropy(clean, ids).double().reshape(-1).cpu())
        for name, (ctx, fn) in variants.items():
            with ctx(module, fn):
                logits = model(input_ids=ids, use_cache=False).logits
            ce[name].append(token_cross_entropy(logits, ids).double().reshape(-1).cpu())
            kl[name].append(token_kl(clean, logits).double().reshape(-1).cpu())
    out = {splice_key("ce", k): torch.cat(v) for k, v in ce.items()}
    out.update({splice_key("kl", k): torch.cat(v) for k, v in kl.items()})
    return out


def splice_metrics(losses: dict[str, Tensor], min_ablation_nats: float = CE_SCORE_MIN_ABLATION_NATS,
                   sides: Sequence[str] = SIDES) -> dict[str, float]:
    """Mean CE / KL per variant, and per SAE side (of ``sides``: a transcoder has ``out`` only) the CE loss score
    (refused below the floor), the CE deltas and the KL score, from :func:`splice_token_losses` (ratio of means,
    appendix E)."""
    check_min_ablation(min_ablation_nats)
    means = {k: float(v.double().mean()) for k, v in losses.items()}
    out = dict(means)
    ce = {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith("ce/")}
    kl = {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith("kl/")}
    for side in sides:
        out.update(ce_splice_metrics(side, ce["clean"], ce[f"recon_{side}"], ce[f"zero_{side}"], min_ablation_nats))
        out[side_key(side, "kl_score")] = recovered_score(kl[f"zero_{side}"], kl[f"recon_{side}"], 0.0)
    out[CE_TOKENS_KEY] = float(len(losses[splice_key("ce", "clean")]))
    return out


def splice_scores(
    model: nn.Module,
    layer: int,
    pair: JSAEPair,
    contexts: Tensor,
    *,
    batch_size: int = 8,
    first_position_clean: bool = True,
    min_ablation_nats: float = CE_SCORE_MIN_ABLATION_NATS,
    progress: bool = True,
) -> dict[str, float]:
    """CE loss score and KL score of both SAEs spliced into the LM (ratio of means, appendix E).

    Beside each CE loss score: the reconstruction's and the ablation's cost in nats per token; the
    score is NaN (refused, ``{side}/ce_score_refused`` = 1) when the ablation costs less than
    ``min_ablation_nats`` (:func:`jsae.eval.metrics.ce_loss_score`). CE is the next-token CE over
    every position; KL is ``KL(p_clean || p_spliced)`` over every position
    (:func:`splice_token_losses`, :func:`splice_metrics`).
    """
    check_min_ablation(min_ablation_nats)
    losses = splice_token_losses(model, layer, pair, contexts, batch_size=batch_size,
                                 first_position_clean=first_position_clean, progress=progress)
    return splice_metrics(losses, min_ablation_nats)


def token_ce_arrays(losses: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """The per-token CE of the clean run and each splice, float32 nats (``ce_token_{variant}`` in the npz):
    what the sweet-spot claim's bootstrap resamples. Every pair of a model is scored on the same contexts."""
    return {f"ce_token_{k.split('/', 1)[1]}": v.float().numpy() for k, v in losses.items() if k.startswith("ce/")}


# --------------------------------------------------------------------------------------------------
# The whole evaluation and its outputs
# --------------------------------------------------------------------------------------------------


def evaluate_pair(
    pair: JSAEPair,
    cache: Any,
    *,
    model: nn.Module | None = None,
    layer: int | None = None,
    n_tokens: int | None = None,
    batch_size: int = 2048,
    ce_tokens: int = DEFAULT_CE_TOKENS,
    ce_batch_size: int = 8,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    hist_max: float = DEFAULT_HIST_MAX,
    hist_bins: int = DEFAULT_HIST_BINS,
    max_global_entries: int | None = 20_000_000,
    min_ablation_nats: float = CE_SCORE_MIN_ABLATION_NATS,
    token_stats: int = DEFAULT_TOKEN_STATS,
    progress: bool = True,
) -> Evaluation:
    """Every appendix-E / F metric of ``pair`` on a validation cache (and the LM, for CE/KL).

    ``cache`` is a :class:`jsae.data.cache.ActivationCache` (``read``, ``n_tokens``, ``contexts()``,
    ``attrs``). Without ``model`` the CE/KL scores are skipped. Per-token arrays (what the claims'
    bootstrap resamples) cover the first ``token_stats`` rows of the cache (``token_row``; ``token_id``
    too when the cache records token ids) and every CE token (``ce_token_*``).
    """
    thresholds = check_thresholds(thresholds)
    check_positive_int("n_tokens", n_tokens, allow_none=True)
    _check_token_stats(token_stats)
    check_positive_int("batch_size", batch_size)
    check_positive_int("ce_tokens", ce_tokens)
    min_ablation_nats = check_min_ablation(min_ablation_nats)
    edges = histogram_edges(hist_max, hist_bins)
    n_eval = token_count(cache, n_tokens)
    log.info("activation metrics over %d tokens (batch %d)", n_eval, batch_size)
    metrics, arrays, _ = activation_metrics(
        pair,
        cache_rows(cache, n_eval, batch_size),
        thresholds=thresholds,
        edges=edges,
        max_global_entries=max_global_entries,
        token_stats=token_stats,
        total=n_eval,
        progress=progress,
    )
    n_kept = len(arrays.get("token_row", ()))
    token_ids = getattr(cache, "token_ids", None)
    if n_kept and token_ids is not None:  # lets the report check that two pairs saw the same tokens
        arrays["token_id"] = np.asarray(token_ids[:n_kept]).astype(np.int64)
    settings: dict[str, Any] = {
        "n_tokens": n_eval,
        "token_stats": n_kept,  # per-token arrays: the first n_kept rows of the validation cache
        "thresholds": list(thresholds),
        "hist_max": hist_max,
        "hist_bins": hist_bins,
        "evaluation_point": EVALUATION_POINT,
        "max_global_entries": max_global_entries,
    }
    if model is not None:
        if layer is None:
            raise ValueError("layer is None; expected the layer index when a model is given for CE/KL")
        contexts = np.asarray(cache.contexts())
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None:
            check_tokenizer_covers(contexts, int(vocab))
        n_ctx = max(1, min(contexts.shape[0], math.ceil(ce_tokens / max(1, contexts.shape[1] - 1))))
        first_clean = str(cache.attrs.get("first_position", "excluded")) == "excluded"
        log.info("CE/KL splice over %d contexts of %d tokens", n_ctx, contexts.shape[1])
        losses = splice_token_losses(model, layer, pair, torch.as_tensor(contexts[:n_ctx]), batch_size=ce_batch_size,
                                     first_position_clean=first_clean, progress=progress)
        metrics.update(splice_metrics(losses, min_ablation_nats))
        arrays.update(token_ce_arrays(losses))
        settings.update({"ce_contexts": n_ctx, "first_position_clean": first_clean,
                         "ce_score_min_ablation_nats": min_ablation_nats,
                         "ce_score_refused": refusal_reasons(metrics, min_ablation_nats)})
        for side, reason in settings["ce_score_refused"].items():
            log.warning("%s CE loss score refused (NaN): %s", side, reason)
    return Evaluation(metrics, arrays, settings)


def _check_token_stats(token_stats: int) -> int:
    if isinstance(token_stats, bool) or not isinstance(token_stats, int) or token_stats < 0:
        raise ValueError(f"token_stats={token_stats!r} is invalid; expected a number of tokens >= 0 (0: none)")
    return token_stats


def refusal_reasons(metrics: dict[str, float], min_ablation_nats: float) -> dict[str, str]:
    """Per refused side, why its CE loss score is NaN (``settings["ce_score_refused"]``; empty if none)."""
    reasons = {}
    for side in SIDES:
        clean, zero = metrics[splice_key("ce", "clean")], metrics[splice_key("ce", f"zero_{side}")]
        if ce_score_refused(zero, clean, min_ablation_nats):
            reasons[side] = (f"ill-conditioned: zero-ablation costs {ce_ablation_delta(zero, clean):.4g} nats/token "
                             f"< floor {min_ablation_nats:g}; see {side_key(side, 'ce_loss_delta')} instead")
    return reasons


def write_evaluation(out_json: str | os.PathLike[str], evaluation: Evaluation, identity: dict[str, Any]) -> Path:
    """``evaluation.json`` and, next to it, ``jacobian_stats.npz`` (both written atomically)."""
    return write_pair_outputs(out_json, "jacobian_stats.npz", evaluation.metrics, evaluation.arrays, identity,
                              evaluation.settings)


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def cli(argv: list[str]) -> int:
    p = pair_parser(
        "python -m jsae evaluate",
        "Evaluate a trained JSAE pair on held-out tokens: reconstruction (EV, cosine, MSE), "
        "CE/KL scores by splicing into the LM, dead/rare latents and Jacobian statistics. "
        "Writes evaluation.json and jacobian_stats.npz.",
    )
    p.add_argument("--out", required=True, help="output path of evaluation.json (jacobian_stats.npz goes next to it)")
    p.add_argument("--n-tokens", type=int, default=None, help="cached tokens for the activation metrics (default: all)")
    p.add_argument("--batch-size", type=int, default=2048, help="tokens per pair forward")
    p.add_argument("--ce-tokens", type=int, default=DEFAULT_CE_TOKENS, help="tokens for the CE/KL scores")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per LM forward for CE/KL")
    p.add_argument("--ce-min-ablation-nats", type=float, default=CE_SCORE_MIN_ABLATION_NATS,
                   help="refuse (NaN) a CE loss score whose zero-ablation costs fewer nats/token than this "
                   "(default: %(default)s)")
    p.add_argument("--thresholds", type=_float_list, default=list(DEFAULT_THRESHOLDS),
                   help="comma-separated tau for jac/frac_above_tau (default: "
                   f"{','.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)})")
    p.add_argument("--hist-max", type=float, default=DEFAULT_HIST_MAX,
                   help="upper edge of the |J| histogram; larger values go to the overflow bin")
    p.add_argument("--hist-bins", type=int, default=DEFAULT_HIST_BINS, help="linear |J| histogram bins")
    p.add_argument("--max-global-entries", type=int, default=20_000_000,
                   help="cap on stored (output, input) pairs of the global mean-|J| matrix (smallest pruned)")
    p.add_argument("--token-stats", type=int, default=DEFAULT_TOKEN_STATS,
                   help="keep per-token Jacobian statistics (what the claims' bootstrap resamples) for this many "
                   "of the first evaluation tokens; 0: none (default: %(default)s)")
    return run_pair_command(p, argv, _evaluate_cli)


def _evaluate_cli(args: argparse.Namespace) -> int:
    thresholds = check_thresholds(args.thresholds)  # every argument is checked before the model loads
    for name in ("n_tokens", "batch_size", "ce_tokens", "ce_batch_size", "max_global_entries"):
        check_positive_int(name, getattr(args, name), allow_none=name == "n_tokens")
    histogram_edges(args.hist_max, args.hist_bins)
    check_min_ablation(args.ce_min_ablation_nats)
    _check_token_stats(args.token_stats)
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    evaluation = evaluate_pair(
        inputs.pair, inputs.cache, model=inputs.model, layer=args.layer, n_tokens=args.n_tokens,
        batch_size=args.batch_size, ce_tokens=args.ce_tokens, ce_batch_size=args.ce_batch_size,
        thresholds=thresholds, hist_max=args.hist_max, hist_bins=args.hist_bins,
        max_global_entries=args.max_global_entries, min_ablation_nats=args.ce_min_ablation_nats,
        token_stats=args.token_stats, progress=not args.no_progress,
    )
    evaluation.settings.update({"cache": str(args.cache), "run": str(args.run)})
    identity = pair_identity(inputs.run, inputs.pair)
    npz = write_evaluation(args.out, evaluation, identity)
    log.info("wrote %s and %s", args.out, npz)
    for key in (IN_EV_KEY, OUT_EV_KEY, IN_CE_SCORE_KEY, OUT_CE_SCORE_KEY, JAC_FRAC_KEY):
        if key in evaluation.metrics:
            log.info("%s = %.4f", key, evaluation.metrics[key])
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), evaluation.metrics,
                    [args.out], step=run_field(inputs.run, "n_steps"))
    return 0
