"""Evaluate a trained JSAE pair on held-out tokens (paper appendix E, F; DESIGN "Metric definitions").

Two passes, both bounded in memory:

1. over ``n_tokens`` rows of a validation activation cache: reconstruction quality of ``sae_in``
   (on x) and ``sae_out`` (on y = MLP(x)), dead / rare latents, and the Jacobian statistics (per-tau
   shares, |J| histogram and CDF, per-token Lp norms, the sparse global mean-|J| matrix);
2. over the cache's token contexts: the LM's next-token CE and KL with the reconstruction spliced in
   (``x_hat`` into the MLP input for ``sae_in``; ``y_hat = sae_out(MLP(x))`` into the MLP output for
   ``sae_out``) and with the same activation zero-ablated, giving the CE loss and KL scores.

Outputs: ``evaluation.json`` (``metrics`` with the contract's keys, ``pair`` identity, settings) and
``jacobian_stats.npz`` next to it; all scalars are also logged to the pair's MLflow run when asked.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from jsae.checks import check_positive_int, same_model
from jsae.data.hooks import mlp_module, replace_mlp_input, replace_mlp_output
from jsae.io import atomic_path, setup_logging, write_json
from jsae.eval.metrics import (
    DEFAULT_HIST_BINS,
    DEFAULT_HIST_MAX,
    DEFAULT_THRESHOLDS,
    GlobalJacobianAccumulator,
    JacobianAccumulator,
    ReconstructionAccumulator,
    check_thresholds,
    dead_and_rare,
    firing_counts,
    histogram_edges,
    recovered_score,
    token_cross_entropy,
    token_kl,
)
from jsae.nn.pair import EVALUATION_POINT, JSAEPair

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
# Input checks: the pair, the cache and the model must belong together
# --------------------------------------------------------------------------------------------------


def run_field(run: dict, name: str) -> Any:
    """A field of run.json, looked up at the top level, then under ``params``, ``pair`` and ``cache``."""
    if name in run:
        return run[name]
    for section in ("params", "pair", "config", "cache", "cache_attrs"):
        sub = run.get(section)
        if isinstance(sub, dict) and name in sub:
            return sub[name]
    return None


def check_pair_matches(
    run: dict,
    cache_attrs: dict,
    *,
    model_spec: str | None = None,
    layer: int | None = None,
    d_model: int | None = None,
) -> None:
    """One-line ``ValueError`` when the pair (run.json), the cache and the requested model/layer differ.

    Compared where recorded: model spec, layer, hook, tokenizer identity and corpus of the training
    cache vs the evaluation cache (a tokenizer is identified by the model it ships with and, when
    written, ``tokenizer`` / ``tokenizer_sha256``), and the width of the cached activations.
    """
    run_model, cache_model = run_field(run, "model"), cache_attrs.get("model")
    if not same_model(run_model, cache_model):
        raise ValueError(f"the pair was trained on model {run_model!r} but the cache holds model {cache_model!r}; "
                         "expected a cache of the same model")
    if model_spec is not None and not same_model(run_model, model_spec):
        raise ValueError(f"--model {model_spec!r} differs from the model the pair was trained on ({run_model!r}); "
                         "expected the same model")
    run_layer, cache_layer = run_field(run, "layer"), cache_attrs.get("layer")
    for name, value in (("the cache", cache_layer), ("--layer", layer)):
        if run_layer is not None and value is not None and int(value) != int(run_layer):
            raise ValueError(f"the pair was trained on layer {run_layer} but {name} is layer {value}; "
                             "expected the same layer")
    for key in ("hook", "tokenizer", "tokenizer_sha256", "bos_token_id", "model_class", "first_position"):
        a, b = run_field(run, key), cache_attrs.get(key)
        if a is not None and b is not None and str(a) != str(b):
            raise ValueError(f"the pair was trained with {key}={a!r} but the cache has {key}={b!r}; expected equal")
    d_cache = cache_attrs.get("d_model")
    if d_model is not None and d_cache is not None and int(d_cache) != int(d_model):
        raise ValueError(f"the cache holds activations of width {d_cache} but the pair expects {d_model}; "
                         "expected a cache of the MLP input of the same model and layer")


def check_tokenizer_covers(contexts: np.ndarray, vocab_size: int) -> None:
    """Every cached token id must exist in the evaluating model's vocabulary (another tokenizer fails here)."""
    if contexts.size and int(contexts.max()) >= vocab_size:
        raise ValueError(f"the cache holds token id {int(contexts.max())} but the model's vocabulary has "
                         f"{vocab_size} entries; expected a cache tokenized with this model's tokenizer")


def check_tokenizer(tokenizer: Any, cache_attrs: dict, contexts: np.ndarray) -> None:
    """The evaluating tokenizer must be the cache's: same BOS id and every cached id in its vocabulary."""
    check_tokenizer_covers(contexts, len(tokenizer))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cached_bos = cache_attrs.get("bos_token_id")
    if cached_bos is not None and bos is not None and int(cached_bos) != int(bos):
        raise ValueError(f"the cache's contexts start with token {cached_bos} but this tokenizer's BOS is {bos}; "
                         "expected the tokenizer the cache was built with")


# --------------------------------------------------------------------------------------------------
# Pass 1: reconstruction, dead latents, Jacobian statistics over cached activations
# --------------------------------------------------------------------------------------------------


def cache_rows(cache: Any, n_tokens: int | None, batch_size: int) -> Iterator[Tensor]:
    """The first ``n_tokens`` rows of an activation cache (all with ``None``), in order, in batches."""
    total = int(cache.n_tokens)
    n = total if n_tokens is None else min(int(n_tokens), total)
    if n <= 0:
        raise ValueError(f"the evaluation set is empty (cache has {total} tokens, n_tokens={n_tokens}); "
                         "expected at least one token")
    for start in range(0, n, batch_size):
        yield cache.read(start, min(n, start + batch_size))


@torch.no_grad()
def activation_metrics(
    pair: JSAEPair,
    batches: Iterable[Tensor],
    *,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    edges: np.ndarray | None = None,
    max_global_entries: int | None = 20_000_000,
    total: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray], GlobalJacobianAccumulator]:
    """Reconstruction quality of both SAEs, dead/rare latents and the Jacobian statistics.

    Each batch goes through one pair forward at the true MLP input (``EVALUATION_POINT``):
    ``sae_in`` is scored on ``x``, ``sae_out`` on ``y = MLP(x)``.
    """
    thresholds = check_thresholds(thresholds)
    device = pair.sae_in.W_enc.device
    rec_in, rec_out = ReconstructionAccumulator(pair.sae_in.d_in), ReconstructionAccumulator(pair.sae_out.d_in)
    jac = JacobianAccumulator(thresholds, histogram_edges() if edges is None else np.asarray(edges))
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
    for prefix, rec, fired in (("in", rec_in, fired_in), ("out", rec_out, fired_out)):
        r = rec.result()
        metrics[f"{prefix}/explained_variance"] = r["explained_variance"]
        metrics[f"{prefix}/explained_variance_legacy"] = r["explained_variance_legacy"]
        metrics[f"{prefix}/cosine"] = r["cosine"]
        metrics[f"{prefix}/mse"] = r["mse"]
        metrics[f"{prefix}/sse_per_token"] = r["sse_per_token"]
        for key, value in dead_and_rare(fired.cpu(), n).items():
            metrics[f"{prefix}/{key}"] = value
    metrics.update(jac.metrics())
    metrics["jac/global_pairs"] = float(len(glob.keys))
    for tau, share in zip(thresholds, glob.sparsity_shares(thresholds)):
        metrics[f"jac/global_frac_above_{tau:g}"] = float(share)
    metrics["eval/n_tokens"] = float(n)
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


@torch.no_grad()
def splice_scores(
    model: nn.Module,
    layer: int,
    pair: JSAEPair,
    contexts: Tensor,
    *,
    batch_size: int = 8,
    first_position_clean: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """CE loss score and KL score of both SAEs spliced into the LM (ratio of means, appendix E).

    Per batch of contexts, five forwards: clean; ``sae_in``: MLP input replaced by ``x_hat`` /
    by zeros; ``sae_out``: MLP output replaced by ``y_hat = sae_out(y)`` with ``y`` the MLP's output
    on its true input / by zeros. CE is the next-token CE over every position; KL is
    ``KL(p_clean || p_spliced)`` over every position.
    """
    check_positive_int("batch_size", batch_size)
    if contexts.dim() != 2 or contexts.shape[0] == 0 or contexts.shape[1] < 2:
        raise ValueError(f"contexts has shape {tuple(contexts.shape)}; expected [n_contexts >= 1, length >= 2] token ids")
    module = mlp_module(model, layer)
    device = next(model.parameters()).device
    sae_dtype = pair.sae_in.W_enc.dtype

    def recon_in(x: Tensor) -> Tensor:
        return pair.sae_in(x.to(sae_dtype)).to(x.dtype)

    def recon_out(_x: Tensor, y: Tensor) -> Tensor:
        return pair.sae_out(y.to(sae_dtype)).to(y.dtype)

    variants = {
        "recon_in": (replace_mlp_input, _splice(first_position_clean, recon_in)),
        "zero_in": (replace_mlp_input, _splice(first_position_clean, torch.zeros_like)),
        "recon_out": (replace_mlp_output, _splice(first_position_clean, recon_out)),
        "zero_out": (replace_mlp_output, _splice(first_position_clean, lambda _x, y: torch.zeros_like(y))),
    }
    ce_sum = dict.fromkeys(["clean", *variants], 0.0)
    kl_sum = dict.fromkeys(variants, 0.0)
    n_ce = n_kl = 0
    for start in tqdm(range(0, contexts.shape[0], batch_size), desc="CE/KL", disable=not progress, leave=False):
        ids = contexts[start : start + batch_size].to(device=device, dtype=torch.long)
        clean = model(input_ids=ids, use_cache=False).logits
        ce_sum["clean"] += float(token_cross_entropy(clean, ids).double().sum())
        for name, (ctx, fn) in variants.items():
            with ctx(module, fn):
                logits = model(input_ids=ids, use_cache=False).logits
            ce_sum[name] += float(token_cross_entropy(logits, ids).double().sum())
            kl_sum[name] += float(token_kl(clean, logits).double().sum())
        n_ce += ids.shape[0] * (ids.shape[1] - 1)
        n_kl += ids.numel()
    ce = {k: v / n_ce for k, v in ce_sum.items()}
    kl = {k: v / n_kl for k, v in kl_sum.items()}
    out = {f"ce/{k}": v for k, v in ce.items()}
    out.update({f"kl/{k}": v for k, v in kl.items()})
    for side in ("in", "out"):
        out[f"{side}/ce_loss_score"] = recovered_score(ce[f"zero_{side}"], ce[f"recon_{side}"], ce["clean"])
        out[f"{side}/kl_score"] = recovered_score(kl[f"zero_{side}"], kl[f"recon_{side}"], 0.0)
    out["eval/ce_tokens"] = float(n_ce)
    return out


# --------------------------------------------------------------------------------------------------
# The whole evaluation, outputs and tracking
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
    progress: bool = True,
) -> Evaluation:
    """Every appendix-E / F metric of ``pair`` on a validation cache (and the LM, for CE/KL).

    ``cache`` is a :class:`jsae.data.cache.ActivationCache` (``read``, ``n_tokens``, ``contexts()``,
    ``attrs``). Without ``model`` the CE/KL scores are skipped.
    """
    thresholds = check_thresholds(thresholds)
    check_positive_int("n_tokens", n_tokens, allow_none=True)
    check_positive_int("batch_size", batch_size)
    check_positive_int("ce_tokens", ce_tokens)
    edges = histogram_edges(hist_max, hist_bins)
    n_avail = int(cache.n_tokens)
    if n_avail == 0:
        raise ValueError("the evaluation cache holds 0 tokens; expected a non-empty validation cache")
    n_eval = n_avail if n_tokens is None else min(n_tokens, n_avail)
    log.info("activation metrics over %d tokens (batch %d)", n_eval, batch_size)
    metrics, arrays, _ = activation_metrics(
        pair,
        cache_rows(cache, n_eval, batch_size),
        thresholds=thresholds,
        edges=edges,
        max_global_entries=max_global_entries,
        total=n_eval,
        progress=progress,
    )
    settings: dict[str, Any] = {
        "n_tokens": n_eval,
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
        metrics.update(
            splice_scores(
                model, layer, pair, torch.as_tensor(contexts[:n_ctx]),
                batch_size=ce_batch_size, first_position_clean=first_clean, progress=progress,
            )
        )
        settings.update({"ce_contexts": n_ctx, "first_position_clean": first_clean})
    return Evaluation(metrics, arrays, settings)


def pair_identity(run: dict, pair: JSAEPair) -> dict[str, Any]:
    """``pair`` section of the outputs: model, layer, control, lam, k, n_latents (from run.json)."""
    ident = {key: run_field(run, key) for key in ("model", "layer", "control", "lam", "k", "n_latents")}
    if ident["k"] is None:
        ident["k"] = pair.sae_in.k
    if ident["n_latents"] is None:
        ident["n_latents"] = pair.sae_in.n_latents
    for key in ("mlflow_run_id", "seed", "hook"):
        if run_field(run, key) is not None:
            ident[key] = run_field(run, key)
    return ident


def write_evaluation(out_json: str | os.PathLike[str], evaluation: Evaluation, identity: dict[str, Any]) -> Path:
    """``evaluation.json`` and, next to it, ``jacobian_stats.npz`` (both written atomically).

    The npz carries the pair's identity too (``pair_json``, a JSON string), so it stands alone.
    """
    out_json = Path(out_json)
    npz = out_json.with_name("jacobian_stats.npz")
    write_npz(npz, evaluation.arrays, identity)
    write_json(out_json, {"metrics": evaluation.metrics, "pair": identity, "settings": evaluation.settings,
                          "arrays": npz.name})
    return npz


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], identity: dict[str, Any]) -> None:
    """Compressed npz of ``arrays`` plus ``pair_json`` (the pair's identity), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays, pair_json=np.array(json.dumps(identity, sort_keys=True, default=str)))


def log_to_mlflow(
    tracking_uri: str | None,
    run_id: str | None,
    metrics: dict[str, float],
    artifacts: Iterable[str | os.PathLike[str]] = (),
) -> bool:
    """Log scalars (and files) to the pair's existing MLflow run; warn and return False if it cannot."""
    from jsae.tracking import Tracker

    if not tracking_uri:
        return False
    if not run_id:
        warnings.warn("no mlflow_run_id in run.json; the evaluation is written to files only", stacklevel=2)
        return False
    tracker = Tracker(tracking_uri)
    if tracker.attach(run_id):
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
        for path in artifacts:
            tracker.log_artifact(path, "evaluation")
    if tracker.error is not None:
        warnings.warn(f"MLflow logging to {tracking_uri} (run {run_id}) failed: {tracker.error}; the files are written", stacklevel=2)
        return False
    return True


@dataclass
class Inputs:
    """A pair with its model, cache and run.json, checked to belong together."""

    model: nn.Module
    tokenizer: Any
    pair: JSAEPair
    cache: Any
    run: dict
    layer: int


def load_inputs(model_spec: str, layer: int, run_dir: str, cache_path: str, *, device: str = "cpu") -> Inputs:
    """Load the model, the pair (from ``run_dir``) and the cache, failing fast on any mismatch."""
    from jsae.data.cache import ActivationCache
    from jsae.devices import resolve_device
    from jsae.export import load_pair, read_run
    from jsae.nn.mlp import mlp_from_module
    from jsae.data.models import load_model

    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; expected a trained pair (run.json, sae_in/, sae_out/)")
    if not Path(cache_path).is_file():
        raise FileNotFoundError(f"cache {cache_path} does not exist; expected an HDF5 activation cache")
    run = read_run(run_dir)
    cache = ActivationCache.open(cache_path)
    check_pair_matches(run, dict(cache.attrs), model_spec=model_spec, layer=layer)
    dev = resolve_device(device)
    model, tokenizer = load_model(model_spec, device=str(dev))
    mlp = mlp_from_module(mlp_module(model, layer))
    pair = load_pair(run_dir, mlp).to(dev)
    check_pair_matches(run, dict(cache.attrs), d_model=pair.sae_in.d_in)
    if tokenizer is not None:
        check_tokenizer(tokenizer, dict(cache.attrs), np.asarray(cache.contexts()))
    return Inputs(model, tokenizer, pair.eval(), cache, run, layer)


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model SPEC the pair was trained on (directory, HF id, smollm2-135m)")
    p.add_argument("--layer", type=int, required=True, help="layer index of the MLP")
    p.add_argument("--run", required=True, help="run directory of the trained pair (run.json, sae_in/, sae_out/)")
    p.add_argument("--cache", required=True, help="validation activation cache (.h5) of the same model and layer")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (default: auto)")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI ('none': off); logs to the run id in run.json")
    p.add_argument("--log-file", default=None, help="also write the log to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jsae evaluate",
        description="Evaluate a trained JSAE pair on held-out tokens: reconstruction (EV, cosine, MSE), "
        "CE/KL scores by splicing into the LM, dead/rare latents and Jacobian statistics. "
        "Writes evaluation.json and jacobian_stats.npz.",
    )
    add_common_arguments(p)
    p.add_argument("--out", required=True, help="output path of evaluation.json (jacobian_stats.npz goes next to it)")
    p.add_argument("--n-tokens", type=int, default=None, help="cached tokens for the activation metrics (default: all)")
    p.add_argument("--batch-size", type=int, default=2048, help="tokens per pair forward (default: 2048)")
    p.add_argument("--ce-tokens", type=int, default=DEFAULT_CE_TOKENS, help=f"tokens for the CE/KL scores (default: {DEFAULT_CE_TOKENS})")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per LM forward for CE/KL (default: 8)")
    p.add_argument("--thresholds", type=_float_list, default=list(DEFAULT_THRESHOLDS),
                   help="comma-separated tau for jac/frac_above_tau (default: 0.005,0.01,0.015,0.02,0.04)")
    p.add_argument("--hist-max", type=float, default=DEFAULT_HIST_MAX, help="upper edge of the |J| histogram; larger values go to the overflow bin")
    p.add_argument("--hist-bins", type=int, default=DEFAULT_HIST_BINS, help="linear |J| histogram bins")
    p.add_argument("--max-global-entries", type=int, default=20_000_000,
                   help="cap on stored (output, input) pairs of the global mean-|J| matrix (smallest pruned)")
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    return run_cli(_evaluate_cli, args)


def run_cli(fn, args: argparse.Namespace) -> int:
    """Run a CLI body; bad input becomes one logged line and exit status 2 (no traceback)."""
    try:
        return int(fn(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


def mlflow_uri(value: str | None) -> str | None:
    return None if value is None or str(value).lower() in ("", "none") else str(value)


def _evaluate_cli(args: argparse.Namespace) -> int:
    thresholds = check_thresholds(args.thresholds)  # every argument is checked before the model loads
    for name in ("n_tokens", "batch_size", "ce_tokens", "ce_batch_size", "max_global_entries"):
        check_positive_int(name, getattr(args, name), allow_none=name == "n_tokens")
    histogram_edges(args.hist_max, args.hist_bins)
    inputs = load_inputs(args.model, args.layer, args.run, args.cache, device=args.device)
    evaluation = evaluate_pair(
        inputs.pair, inputs.cache, model=inputs.model, layer=args.layer, n_tokens=args.n_tokens,
        batch_size=args.batch_size, ce_tokens=args.ce_tokens, ce_batch_size=args.ce_batch_size,
        thresholds=thresholds, hist_max=args.hist_max, hist_bins=args.hist_bins,
        max_global_entries=args.max_global_entries, progress=not args.no_progress,
    )
    evaluation.settings.update({"cache": str(args.cache), "run": str(args.run)})
    identity = pair_identity(inputs.run, inputs.pair)
    npz = write_evaluation(args.out, evaluation, identity)
    log.info("wrote %s and %s", args.out, npz)
    for key in ("in/explained_variance", "out/explained_variance", "in/ce_loss_score", "out/ce_loss_score", "jac/frac_above_0.01"):
        if key in evaluation.metrics:
            log.info("%s = %.4f", key, evaluation.metrics[key])
    log_to_mlflow(mlflow_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), evaluation.metrics, [args.out])
    return 0
