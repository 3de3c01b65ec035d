"""What evaluate, probes and tables share: a trained pair loaded with its model and cache, checked to belong
together, read in batches, identified in the outputs, and the command line that names them.

The checks fail fast, before any model weight is loaded where possible: the pair (its ``run.json``), the
validation cache and the requested model/layer must agree on model, layer, hook, tokenizer and width.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from jsae.checks import same_model
from jsae.cli import MLFLOW_URI_ENV, HelpFormatter, default_tracking_uri, run_cli
from jsae.io import atomic_path, setup_logging, write_json
from jsae.nn.pair import JSAEPair

#: run.json keys that must equal the cache's attribute of the same name, where both are recorded.
MATCHED_KEYS = ("hook", "tokenizer", "tokenizer_sha256", "bos_token_id", "model_class", "first_position")


def run_field(run: dict, name: str) -> Any:
    """A field of run.json, looked up at the top level, then under ``params``, ``pair`` and ``cache``."""
    if name in run:
        return run[name]
    for section in ("params", "pair", "config", "cache", "cache_attrs"):
        sub = run.get(section)
        if isinstance(sub, dict) and name in sub:
            return sub[name]
    return None


# --------------------------------------------------------------------------------------------------
# The pair, the cache and the model must belong together
# --------------------------------------------------------------------------------------------------


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
    for key in MATCHED_KEYS:
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
# Loading and reading
# --------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """A pair with its model, cache and run.json, checked to belong together (``model`` and ``tokenizer`` are None
    for a planted model: its MLP is the pair's)."""

    model: nn.Module | None
    tokenizer: Any
    pair: JSAEPair
    cache: Any
    run: dict
    layer: int


def load_inputs(model_spec: str, layer: int, run_dir: str, cache_path: str, *, device: str = "cpu") -> Inputs:
    """Load the model, the pair (from ``run_dir``) and the cache, failing fast on any mismatch."""
    from jsae.data.cache import ActivationCache
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.data.planted import is_planted_dir, planted_mlp
    from jsae.devices import resolve_device
    from jsae.export import load_pair, read_run
    from jsae.nn.mlp import mlp_from_module

    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; "
                                "expected a trained pair (run.json, sae_in/, sae_out/)")
    if not Path(cache_path).is_file():
        raise FileNotFoundError(f"cache {cache_path} does not exist; expected an HDF5 activation cache")
    run = read_run(run_dir)
    cache = ActivationCache.open(cache_path)
    check_pair_matches(run, dict(cache.attrs), model_spec=model_spec, layer=layer)
    dev = resolve_device(device)
    if is_planted_dir(model_spec):  # the planted MLP only: no LM (CE/KL skipped), no tokenizer
        model, tokenizer, mlp = None, None, planted_mlp(model_spec, layer)
    else:
        model, tokenizer = load_model(model_spec, device=str(dev))
        mlp = mlp_from_module(mlp_module(model, layer))
    pair = load_pair(run_dir, mlp).to(dev)
    check_pair_matches(run, dict(cache.attrs), d_model=pair.sae_in.d_in)
    if tokenizer is not None:
        check_tokenizer(tokenizer, dict(cache.attrs), np.asarray(cache.contexts()))
    return Inputs(model, tokenizer, pair.eval(), cache, run, layer)


def token_count(cache: Any, n_tokens: int | None) -> int:
    """How many cache rows an analysis reads: ``n_tokens``, or all with ``None``. Asking for more than the cache
    holds is an error, not a silent clamp (the outputs would report fewer tokens than were asked for)."""
    total = int(cache.n_tokens)
    if total == 0:
        raise ValueError("the evaluation cache holds 0 tokens; expected a non-empty validation cache")
    if n_tokens is None:
        return total
    if not 1 <= int(n_tokens) <= total:
        raise ValueError(f"n_tokens={n_tokens} is invalid for an evaluation cache of {total} tokens; expected "
                         f"1..{total} (or a larger validation cache: cache.eval_tokens)")
    return int(n_tokens)


def cache_rows(cache: Any, n_tokens: int | None, batch_size: int) -> Iterator[Tensor]:
    """The first ``n_tokens`` rows of an activation cache (all with ``None``), in order, in batches."""
    n = token_count(cache, n_tokens)
    for start in range(0, n, batch_size):
        yield cache.read(start, min(n, start + batch_size))


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


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


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], identity: dict[str, Any]) -> None:
    """Compressed npz of ``arrays`` plus ``pair_json`` (the pair's identity), written atomically."""
    pair_json = np.array(json.dumps(identity, sort_keys=True, default=str))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays, pair_json=pair_json)


def write_pair_outputs(out_json: str | os.PathLike[str], npz_name: str, metrics: dict[str, float],
                       arrays: dict[str, np.ndarray], identity: dict[str, Any], settings: dict[str, Any]) -> Path:
    """``out_json`` (metrics, pair identity, settings, the npz's name) and the npz ``npz_name`` next to it.

    Both are written atomically; the npz carries the identity too (``pair_json``), so it stands alone.
    """
    out_json = Path(out_json)
    npz = out_json.with_name(npz_name)
    write_npz(npz, arrays, identity)
    write_json(out_json, {"metrics": metrics, "pair": identity, "settings": settings, "arrays": npz.name})
    return npz


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def pair_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the arguments every per-pair command (evaluate, probes, tables) takes."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="model SPEC the pair was trained on (directory, HF id, smollm2-135m)")
    p.add_argument("--layer", type=int, required=True, help="layer index of the MLP")
    p.add_argument("--run", required=True, help="run directory of the trained pair (run.json, sae_in/, sae_out/)")
    p.add_argument("--cache", required=True, help="validation activation cache (.h5) of the same model and layer")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    p.add_argument("--mlflow-uri", default=default_tracking_uri(None),
                   help=f"MLflow tracking URI ('none': off; default: ${MLFLOW_URI_ENV}); logs to the run id in "
                   "run.json")
    p.add_argument("--log-file", default=None, help="also write the log to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run_pair_command(p: argparse.ArgumentParser, argv: list[str],
                     body: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse ``argv``, start logging (to ``--log-file`` too) and run ``body`` (bad input: exit status 2)."""
    args = p.parse_args(argv)
    setup_logging(log_file=args.log_file)
    return run_cli(body, args)
