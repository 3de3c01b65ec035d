"""Evaluate a transcoder baseline as the pairs are evaluated, as far as it applies (docs: the module docstrings).

A transcoder replaces the MLP: it reads the MLP input x and writes the MLP output. Every metric below is the one a
pair's *output* SAE gets, by the same definition and under the same key (:mod:`jsae.eval.metrics` owns them), with
the transcoder's ``T(x)`` where the output SAE's ``sae_out(y)`` stands — so the two compare column by column:

* ``out/explained_variance`` (FVU = 1 - it), ``out/explained_variance_legacy``, ``out/cosine``, ``out/mse``,
  ``out/sse_per_token`` of ``y_hat = T(x)`` against ``y = MLP(x)`` over the validation cache
  (:class:`~jsae.eval.metrics.ReconstructionAccumulator`); ``out/dead_fraction``, ``out/rare_fraction`` of its
  latents (:func:`~jsae.eval.metrics.dead_and_rare`);
* the CE and KL splice into the LM (:func:`~jsae.eval.metrics.ce_splice_metrics`,
  :func:`~jsae.eval.metrics.recovered_score`): the MLP output of ``layer`` replaced by ``T(x)`` (``recon_out``) and
  by zeros (``zero_out``), position 0 left clean when the cache excludes it, as
  :func:`jsae.eval.evaluate.splice_token_losses` splices ``recon_out``. A planted model has no LM: no CE/KL.

What does not apply: the input SAE's metrics (``in/…``: a transcoder does not reconstruct x) and the Jacobian's
(``jac/…``: there is no pair of dictionaries to differentiate between), and SCALAR-style interaction sparsity
(:mod:`jsae.eval.interaction`): its edges join an upstream SAE's latents (on x) to a downstream SAE's latents (on
the output of the real MLP run on the upstream reconstruction). A transcoder has one dictionary, which replaces the
MLP instead of being read through it: the only edges are each latent to itself (k per token, by construction), and
a skip transcoder's dense path has no latents at all; no count of edges would measure anything trained.

Outputs: ``baseline_evaluation.json`` (``metrics``, ``baseline`` identity, ``settings``) and ``baseline_arrays.npz``
(per-token CE of each splice and the latents' firing counts) — named apart from a pair's ``evaluation.json``, which
the report's loader reads as a pair; ``core/transcoder_eval_results.json``: SAEBench's core metrics
(:mod:`jsae.eval.core`), with the reconstruction metrics on ``(y, T(x))`` as SAEBench computes them for a
transcoder's output, and ``encoder_decoder_cosine_sim`` null (its encoder and decoder live in different spaces).
"""

from __future__ import annotations

import argparse
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.eval.metrics import (
    CE_SCORE_MIN_ABLATION_NATS,
    N_TOKENS_KEY,
    OUT_CE_SCORE_KEY,
    OUT_EV_KEY,
    RECONSTRUCTION_METRICS,
    ReconstructionAccumulator,
    check_min_ablation,
    dead_and_rare,
    firing_counts,
    side_key,
    splice_key,
)
from jsae.nn.mlp import MLP
from jsae.nn.transcoder import TopKTranscoder

log = logging.getLogger("jsae.eval.baseline")

#: The side of the pair whose metrics a transcoder gets (it writes the MLP output, as the output SAE).
SIDE = "out"
EVALUATION_FILENAME = "baseline_evaluation.json"
ARRAYS_FILENAME = "baseline_arrays.npz"
#: The spliced runs of a transcoder: its output in place of the MLP's, and the zero-ablated MLP output.
SPLICE_VARIANTS = ("recon_out", "zero_out")
#: SAEBench's ``{sae_id}_eval_results.json``: the transcoder's directory in the run is its sae_id.
CORE_FILENAME = "transcoder_eval_results.json"
#: Tokens for the CE / KL splice by default (as :data:`jsae.eval.evaluate.DEFAULT_CE_TOKENS`).
DEFAULT_CE_TOKENS = 160_000


@dataclass
class BaselineInputs:
    """A trained baseline with its MLP, model, cache and run.json, checked to belong together (``model`` and
    ``tokenizer`` None for a planted model)."""

    model: nn.Module | None
    tokenizer: Any
    transcoder: TopKTranscoder
    mlp: MLP
    cache: Any
    run: dict
    layer: int


def load_baseline_inputs(model_spec: str, layer: int, run_dir: str | Path, cache_path: str | Path, *,
                         device: str = "cpu") -> BaselineInputs:
    """Load the model, the transcoder (``run_dir/transcoder``) and the validation cache, failing fast on a mismatch
    (the pairs' checks: :func:`jsae.eval.inputs.check_pair_matches`)."""
    from jsae.data.cache import ActivationCache
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.data.planted import is_planted_dir, planted_mlp
    from jsae.devices import resolve_device
    from jsae.eval.inputs import check_pair_matches, check_tokenizer
    from jsae.io import read_json
    from jsae.nn.mlp import mlp_from_module
    from jsae.train.baseline import CODER_DIRNAME, load_transcoder
    from jsae.train.run import RUN_FILENAME

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILENAME).is_file():
        raise FileNotFoundError(f"{run_dir / RUN_FILENAME} does not exist; expected a trained baseline "
                                "(python -m jsae train-baseline)")
    if not Path(cache_path).is_file():
        raise FileNotFoundError(f"cache {cache_path} does not exist; expected an HDF5 activation cache")
    run = read_json(run_dir / RUN_FILENAME)
    if "method" not in run:
        raise ValueError(f"{run_dir / RUN_FILENAME} records no method; expected a baseline run (train-baseline), "
                         "not a pair's")
    cache = ActivationCache.open(cache_path)
    check_pair_matches(run, dict(cache.attrs), model_spec=model_spec, layer=layer)
    dev = resolve_device(device)
    tc = load_transcoder(run_dir / CODER_DIRNAME, device=dev)
    check_pair_matches(run, dict(cache.attrs), d_model=tc.d_in)
    if is_planted_dir(model_spec):
        model, tokenizer, mlp = None, None, planted_mlp(model_spec, layer)
    else:
        model, tokenizer = load_model(model_spec, device=str(dev))
        mlp = mlp_from_module(mlp_module(model, layer))
        check_tokenizer(tokenizer, dict(cache.attrs), np.asarray(cache.contexts()))
    if (mlp.d_in, mlp.d_out) != (tc.d_in, tc.d_out):
        raise ValueError(f"the transcoder maps {tc.d_in} -> {tc.d_out} but the MLP of layer {layer} maps {mlp.d_in} -> "
                         f"{mlp.d_out}; expected the MLP it was trained on")
    return BaselineInputs(model, tokenizer, tc.eval(), mlp.to(dev), cache, run, layer)


def baseline_identity(run: dict, tc: TopKTranscoder) -> dict[str, Any]:
    """The ``baseline`` section of the outputs: method, model, layer, control, seed, k, n_latents (no lambda)."""
    from jsae.eval.inputs import run_field

    ident = {key: run_field(run, key) for key in ("method", "model", "layer", "control", "seed")}
    ident.update(k=tc.k, n_latents=tc.n_latents, skip=tc.skip)
    for key in ("mlflow_run_id", "hook"):
        if run_field(run, key) is not None:
            ident[key] = run_field(run, key)
    return ident


def _mlp(mlp: MLP, x: Tensor, dtype: torch.dtype) -> Tensor:
    return mlp(x.to(mlp.W_out.dtype)).to(dtype)


# --------------------------------------------------------------------------------------------------
# Pass 1: reconstruction of the MLP output over cached activations
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def activation_metrics(tc: TopKTranscoder, mlp: MLP, batches: Iterable[Tensor], *, total: int | None = None,
                       progress: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``out/…`` reconstruction metrics of ``T(x)`` against ``y = MLP(x)`` and the latents' dead / rare fractions."""
    device, dtype = tc.W_enc.device, tc.W_enc.dtype
    rec = ReconstructionAccumulator(tc.d_out)
    fired = torch.zeros(tc.n_latents, dtype=torch.int64, device=device)
    n = 0
    bar = tqdm(total=total, desc="evaluate", unit="tok", disable=not progress, leave=False)
    for x in batches:
        x = x.to(device=device, dtype=dtype)
        if x.shape[0] == 0:
            continue
        vals, idx = tc.encode(x)
        rec.update(_mlp(mlp, x, dtype), tc.decode(vals, idx, x))
        fired += firing_counts(vals, idx, tc.n_latents)
        n += x.shape[0]
        bar.update(x.shape[0])
    bar.close()
    if n == 0:
        raise ValueError("the evaluation set is empty; expected at least one token")
    r = rec.result()
    metrics = {side_key(SIDE, name): r[name] for name in RECONSTRUCTION_METRICS}
    metrics.update({side_key(SIDE, name): v for name, v in dead_and_rare(fired.cpu(), n).items()})
    metrics[N_TOKENS_KEY] = float(n)
    return metrics, {"out_fired_count": fired.cpu().numpy()}


# --------------------------------------------------------------------------------------------------
# Pass 2: CE / KL with the transcoder spliced in place of the MLP
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def splice_token_losses(model: nn.Module, layer: int, tc: TopKTranscoder, contexts: Tensor, *, batch_size: int = 8,
                        first_position_clean: bool = True, progress: bool = True) -> dict[str, Tensor]:
    """Per token, the LM's next-token CE clean and with each of :data:`SPLICE_VARIANTS`, and KL(clean || spliced):
    ``ce/clean``, ``ce/recon_out``, ``ce/zero_out`` ``[n * (length - 1)]``, ``kl/recon_out``, ``kl/zero_out``
    ``[n * length]`` (float64, nats; keys and layout of :func:`jsae.eval.evaluate.splice_token_losses`)."""
    from jsae.data.hooks import replace_mlp_output
    from jsae.eval.evaluate import _splice, spliced_token_losses, zero_output

    dtype = tc.W_enc.dtype

    def recon_out(x: Tensor, y: Tensor) -> Tensor:
        return tc(x.to(dtype)).to(y.dtype)

    variants = {"recon_out": (replace_mlp_output, _splice(first_position_clean, recon_out)),
                "zero_out": (replace_mlp_output, zero_output(first_position_clean))}
    return spliced_token_losses(model, layer, contexts, variants, batch_size=batch_size, progress=progress)


def splice_metrics(losses: dict[str, Tensor], min_ablation_nats: float = CE_SCORE_MIN_ABLATION_NATS
                   ) -> dict[str, float]:
    """Mean CE / KL per variant and the ``out/…`` CE loss score (refused below the floor), CE deltas and KL score
    (ratio of means), by the pairs' definitions (:func:`jsae.eval.evaluate.splice_metrics` on the ``out`` side)."""
    from jsae.eval.evaluate import splice_metrics as pair_splice_metrics

    return pair_splice_metrics(losses, min_ablation_nats, sides=(SIDE,))


def _ce_contexts(cache: Any, ce_tokens: int) -> tuple[np.ndarray, bool]:
    contexts = np.asarray(cache.contexts())
    n_ctx = max(1, min(contexts.shape[0], math.ceil(ce_tokens / max(1, contexts.shape[1] - 1))))
    return contexts[:n_ctx], str(cache.attrs.get("first_position", "excluded")) == "excluded"


# --------------------------------------------------------------------------------------------------
# python -m jsae evaluate-baseline
# --------------------------------------------------------------------------------------------------


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    from jsae.eval.inputs import pair_parser

    p = pair_parser(prog, description)
    for action in p._actions:
        if action.dest == "run":
            action.help = "run directory of the trained baseline (run.json, transcoder/)"
        elif action.dest == "layer":  # the baseline's own (run.json) unless given
            action.required, action.default = False, None
            action.help = "layer index of the MLP (default: the baseline's, from run.json)"
    return p


def _layer(args: argparse.Namespace) -> int:
    from jsae.eval.inputs import run_field
    from jsae.io import read_json

    if args.layer is not None:
        return int(args.layer)
    run_json = Path(args.run) / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(f"{run_json} does not exist; expected a trained baseline "
                                "(python -m jsae train-baseline)")
    layer = run_field(read_json(run_json), "layer")
    if layer is None:
        raise ValueError(f"{run_json} records no layer; expected --layer L")
    return int(layer)


def cli(argv: list[str]) -> int:
    from jsae.eval.inputs import run_pair_command

    p = _parser("python -m jsae evaluate-baseline",
                "Evaluate a trained transcoder baseline as a pair's output SAE is evaluated: reconstruction of the MLP "
                f"output (out/explained_variance, FVU = 1 - it), dead latents, and CE/KL with the transcoder spliced "
                f"in place of the MLP. Writes {EVALUATION_FILENAME} and {ARRAYS_FILENAME} next to it.")
    p.add_argument("--out", required=True, help=f"output path of {EVALUATION_FILENAME}")
    p.add_argument("--n-tokens", type=int, default=None, help="cached tokens for the activation metrics (default: all)")
    p.add_argument("--batch-size", type=int, default=2048, help="tokens per forward")
    p.add_argument("--ce-tokens", type=int, default=DEFAULT_CE_TOKENS, help="tokens for the CE/KL scores")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per LM forward for CE/KL")
    p.add_argument("--ce-min-ablation-nats", type=float, default=CE_SCORE_MIN_ABLATION_NATS,
                   help="refuse (NaN) a CE loss score whose zero-ablation costs fewer nats/token than this")
    return run_pair_command(p, argv, _evaluate_cli)


def _evaluate_cli(args: argparse.Namespace) -> int:
    from jsae.cli import tracking_uri
    from jsae.eval.evaluate import token_ce_arrays
    from jsae.eval.inputs import cache_rows, run_field, token_count
    from jsae.tracking import log_to_pair_run

    for name in ("n_tokens", "batch_size", "ce_tokens", "ce_batch_size"):
        check_positive_int(name, getattr(args, name), allow_none=name == "n_tokens")
    min_ablation = check_min_ablation(args.ce_min_ablation_nats)
    layer = _layer(args)
    inputs = load_baseline_inputs(args.model, layer, args.run, args.cache, device=args.device)
    tc, cache = inputs.transcoder, inputs.cache
    n_eval = token_count(cache, args.n_tokens)
    progress = not args.no_progress
    metrics, arrays = activation_metrics(tc, inputs.mlp, cache_rows(cache, n_eval, args.batch_size), total=n_eval,
                                         progress=progress)
    settings: dict[str, Any] = {"n_tokens": n_eval, "cache": str(args.cache), "run": str(args.run), "layer": layer,
                                "side": SIDE, "reconstructs": "MLP output y = MLP(x) from the MLP input x"}
    if inputs.model is not None:
        contexts, first_clean = _ce_contexts(cache, args.ce_tokens)
        losses = splice_token_losses(inputs.model, layer, tc, torch.as_tensor(contexts), batch_size=args.ce_batch_size,
                                     first_position_clean=first_clean, progress=progress)
        metrics.update(splice_metrics(losses, min_ablation))
        arrays.update(token_ce_arrays(losses))
        settings.update({"ce_contexts": int(contexts.shape[0]), "first_position_clean": first_clean,
                         "ce_score_min_ablation_nats": min_ablation})
    else:
        settings["ce"] = "skipped: a planted model has no language model to splice into"
    out = write_evaluation(args.out, metrics, arrays, baseline_identity(inputs.run, tc), settings)
    log.info("wrote %s: %s = %.4f, %s = %s", out, OUT_EV_KEY, metrics[OUT_EV_KEY], OUT_CE_SCORE_KEY,
             f"{metrics[OUT_CE_SCORE_KEY]:.4f}" if OUT_CE_SCORE_KEY in metrics else "n/a")
    log_to_pair_run(tracking_uri(args.mlflow_uri), run_field(inputs.run, "mlflow_run_id"), metrics, [out],
                    step=run_field(inputs.run, "n_steps"))
    return 0


def write_evaluation(out_json: str | Path, metrics: dict[str, float], arrays: dict[str, np.ndarray],
                     identity: dict[str, Any], settings: dict[str, Any]) -> Path:
    """:data:`EVALUATION_FILENAME` (``metrics``, ``baseline`` identity, ``settings``, the npz's name) and the npz
    :data:`ARRAYS_FILENAME` next to it (carrying the identity too), each written atomically."""
    from jsae.eval.inputs import write_npz
    from jsae.io import write_json

    out = Path(out_json)
    npz = out.with_name(ARRAYS_FILENAME)
    write_npz(npz, arrays, identity)
    write_json(out, {"metrics": metrics, "baseline": identity, "settings": settings, "arrays": npz.name})
    return out


# --------------------------------------------------------------------------------------------------
# python -m jsae core-baseline: SAEBench's core metrics of the transcoder
# --------------------------------------------------------------------------------------------------


def core_splice_metrics(losses: dict[str, Tensor], contexts: Tensor | np.ndarray,
                        ignore_token_ids: Iterable[int] = ()) -> dict[str, float]:
    """SAEBench's CE / KL metrics of the transcoder: :func:`jsae.eval.core.splice_core_metrics` (the one
    definition, with SAEBench's masking) read on the ``out`` side, the input side filled with the same losses."""
    from jsae.eval.core import splice_core_metrics

    filled = dict(losses)
    for measure in ("ce", "kl"):
        for variant in ("recon", "zero"):
            filled[splice_key(measure, f"{variant}_in")] = losses[splice_key(measure, f"{variant}_out")]
    return splice_core_metrics(filled, contexts, ignore_token_ids)["sae_out"]


@torch.no_grad()
def core_accumulate(tc: TopKTranscoder, mlp: MLP, batches: Iterable[tuple[Tensor, Tensor]], *,
                    total: int | None = None, progress: bool = True):
    """SAEBench's activation metrics of the transcoder over ``(x, context id)`` batches: its
    :class:`jsae.eval.core.CoreAccumulator` fed ``(y, T(x))``, the transcoder's target and output."""
    from jsae.eval.core import CoreAccumulator

    acc = CoreAccumulator(tc.d_out, tc.n_latents)
    device, dtype = tc.W_enc.device, tc.W_enc.dtype
    bar = tqdm(total=total, desc="core", unit="tok", disable=not progress, leave=False)
    for x, prompt in batches:
        if x.shape[0] == 0:
            continue
        x = x.to(device=device, dtype=dtype)
        vals, idx = tc.encode(x)
        prompt = torch.as_tensor(prompt, device=device).long()
        acc.update(_mlp(mlp, x, dtype), tc.decode(vals, idx, x), vals, idx, prompt)
        bar.update(x.shape[0])
    bar.close()
    if acc.n_tokens == 0:
        raise ValueError("no tokens to evaluate (all were ignored special tokens?); expected at least one token")
    return acc


def core_cli(argv: list[str]) -> int:
    from jsae.eval.core import EVAL_CONFIG_DEFAULTS
    from jsae.eval.inputs import run_pair_command

    p = _parser("python -m jsae core-baseline",
                "SAEBench's core metrics of a trained transcoder baseline (reconstruction of the MLP output, "
                "shrinkage, sparsity, feature density, encoder/decoder cosines, CE/KL with the transcoder in place of "
                f"the MLP), written as SAEBench's core-eval JSON: OUT/{CORE_FILENAME}.")
    for action in p._actions:
        if action.dest == "mlflow_uri":
            action.help = "ignored: this command logs nothing to MLflow"
    p.add_argument("--out", required=True, help="output directory of the JSON file")
    p.add_argument("--n-tokens", type=int, default=None, help="cache rows for the activation metrics (default: all)")
    p.add_argument("--batch-size-prompts", type=int, default=EVAL_CONFIG_DEFAULTS["batch_size_prompts"],
                   help="contexts per batch (SAEBench's batch_size_prompts)")
    p.add_argument("--ce-contexts", type=int, default=None,
                   help="contexts for CE/KL (default: SAEBench's 10 batches x --batch-size-prompts; 0: no CE/KL)")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per LM forward for CE/KL")
    return run_pair_command(p, argv, _core_cli)


def _core_cli(args: argparse.Namespace) -> int:
    from jsae.eval import core
    from jsae.io import read_json
    from jsae.train.baseline import CODER_DIRNAME, SPARSIFY_CFG

    core.CoreRun.check_args(args)
    layer = _layer(args)
    inputs = load_baseline_inputs(args.model, layer, args.run, args.cache, device=args.device)
    tc, cache = inputs.transcoder, inputs.cache
    run = core.CoreRun.from_cache(args, cache)
    ignore = core.ignored_tokens(inputs.tokenizer)
    acc = core_accumulate(tc, inputs.mlp, core.row_batches(cache, run.n_rows, run.batch_rows, ignore),
                          total=run.n_rows, progress=not args.no_progress)
    res = core.sae_results(acc, tc, prompts_meaningful=inputs.model is not None, encoder_decoder=False)
    res.extra["null_reasons"]["encoder_decoder_cosine_sim"] = ("a transcoder's encoder reads the MLP input and its "
                                                               "decoder writes the MLP output: two different spaces")
    ce_reason = run.ce_reason(inputs.model)
    if ce_reason is None:
        contexts = torch.as_tensor(np.asarray(cache.contexts()[:run.ce_contexts]))
        losses = splice_token_losses(inputs.model, layer, tc, contexts, batch_size=args.ce_batch_size,
                                     first_position_clean=run.first_clean, progress=not args.no_progress)
        core.add_splice_results(res, core_splice_metrics(losses, contexts, ignore), splice_metrics(losses), SIDE,
                                run.ce_contexts * run.context_length)
    else:
        core.skip_splice_results(res, ce_reason)
    head = {"sae": CODER_DIRNAME, "method": tc.method,
            "reconstructs": "MLP output y = MLP(x), from the MLP input x (a transcoder: the reconstruction metrics are "
                            "of y against the transcoder's output)",
            "baseline": baseline_identity(inputs.run, tc)}
    out = Path(args.out) / CORE_FILENAME
    core.write_core_result(out, res, head=head, settings=run.settings(args, layer=layer, ignore=ignore,
                                                                       ce_reason=ce_reason),
                           eval_config=run.eval_config(args, inputs.model, cache, ce_reason=ce_reason,
                                                       n_batches=acc.n_batches),
                           sae_cfg_dict=read_json(Path(args.run) / CODER_DIRNAME / SPARSIFY_CFG),
                           eval_id=str(uuid.uuid4()))
    m = res.metrics
    log.info("wrote %s: explained_variance %.4f, l0 %.2f, frac_alive %.3f, ce_loss_score %s", out,
             m["explained_variance"], m["l0"], m["frac_alive"], m.get("ce_loss_score"))
    return 0
