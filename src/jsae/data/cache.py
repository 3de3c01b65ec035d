"""HDF5 cache of MLP inputs x for one (model, layer, corpus split), and its shuffled batch reader.

Layout of ``FILE.h5``:

* ``x`` ``[n_tokens, d_model]`` — the MLP input (what the MLP module receives, see :mod:`jsae.data.hooks`),
  float32, float16, or bfloat16 stored as its raw uint16 bits; chunked by rows (~1 MiB chunks).
  y = MLP(x) is recomputed from x when needed, never cached.
* ``token_ids``, ``context_index``, ``position``, ``document`` ``[n_tokens]`` — for each row, its token,
  its context, its position in that context and the document (in the corpus split's stored order) it
  comes from, so every row maps back to text.
* ``contexts`` ``[n_contexts, context_length]`` — the full token ids of every context, BOS included.

Every context is ``[BOS] + context_length - 1`` consecutive corpus tokens (documents joined by EOS).
Position 0 (the BOS, an attention sink with outlier activations) is never stored as a row of x:
attrs ``first_position = "excluded"``. The file records model, layer, hook, corpus sha256, context
length, dtype, token count, d_model, seed, split and package version in its attributes.

A planted model (a directory from ``python -m jsae planted``) is cached by :func:`build_planted_cache`: rows
are sampled (``x = D_x s_x``), not read from text, so there is no corpus or tokenizer; the token-level datasets
hold dummy zeros (same shapes as an LM cache) and the attributes say ``source = "planted"``.

Integrity (cache ``format`` 2): ``x_crc32`` ``[n_blocks]`` holds the CRC-32 of each block of
``checksum_rows`` rows of x (one HDF5 chunk) as stored, and every other dataset carries a ``crc32``
attribute. Each block is verified the first time it is read (not every epoch); a mismatch is a one-line
``ValueError`` naming the file and the rows, with the remedy (delete the file and re-run to rebuild it).
A cache written before checksums existed (no ``format`` attribute) is read with a warning, unverified.

Writing goes to ``.FILE.h5.partial`` next to the output, flushed after every batch with the number of
contexts done; a re-run with the same request resumes from there (another request starts afresh), and
only a complete file is renamed onto ``FILE.h5``. A killed job therefore never leaves a file that looks
complete. (``jsae.io.atomic_path`` is not used because its temporary name is random and deleted on
failure, which would make resuming impossible.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.cli import HelpFormatter, run_cli
from jsae.data.corpus import SPLITS, context_windows, corpus_info, make_contexts, tokenize_split
from jsae.data.hooks import check_layer, mlp_module
from jsae.data.pretrain import set_threads
from jsae.devices import CACHE_DTYPES, resolve_device
from jsae.io import disk_full_error, free_bytes, setup_logging
from jsae.nn.mlp import mlp_from_module

log = logging.getLogger("jsae.data.cache")

_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 kept as raw bits
FIRST_POSITION = "excluded"
REQUIRED_ATTRS = ("model", "layer", "hook", "corpus_sha256", "context_length", "dtype", "n_tokens", "d_model", "seed",
                  "split", "jsae_version", "first_position")
_DATASETS = ("x", "token_ids", "context_index", "position", "document", "contexts")
_METADATA = _DATASETS[1:]  # checksummed whole (crc32 attribute); x is checksummed per block
_CHUNK_BYTES = 1 << 20
#: Version of the file layout: 2 added the checksums (x_crc32, checksum_rows, each dataset's crc32).
CACHE_FORMAT = 2
CHECKSUMS = "x_crc32"


def _version() -> str:
    from jsae import __version__

    return __version__


def _partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _bf16_bits(x: Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _from_storage(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows -> float32 (bf16 bits shifted into the high half of a float32)."""
    if dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32, copy=False)


def _to_storage(x: Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _bf16_bits(x)
    return x.to(torch.float32).numpy().astype(_STORAGE[dtype], copy=False)


def _chunk_rows(d_model: int, itemsize: int, n_rows: int) -> int:
    return max(1, min(n_rows, _CHUNK_BYTES // max(1, d_model * itemsize)))


def crc32(arr: np.ndarray) -> int:
    """CRC-32 of an array's bytes in little-endian order (the same value on any machine)."""
    return zlib.crc32(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).view(np.uint8))


def _rebuild_hint(path: Path) -> str:
    return f"delete {path} and re-run to rebuild it (python -m jsae cache, or the workflow rule that writes it)"


def store_block_checksums(f: h5py.File, rows_done: int) -> None:
    """Checksum every block of x that ``rows_done`` written rows complete (the last block once all are written).

    Blocks are read back from the file, so a resumed build checksums what an earlier process wrote.
    """
    x, sums = f["x"], f[CHECKSUMS]
    block = int(f.attrs["checksum_rows"])
    n = x.shape[0]
    first = int(f.attrs.get("blocks_checksummed", 0))
    last = math.ceil(n / block) if rows_done >= n else rows_done // block
    for k in range(first, last):
        sums[k] = crc32(x[k * block : min(n, (k + 1) * block)])
    f.attrs["blocks_checksummed"] = max(first, last)


def hook_name(model: torch.nn.Module, layer: int) -> str:
    """The module path of the hooked MLP plus ``.input`` (e.g. ``gpt_neox.layers.2.mlp.input``)."""
    target = mlp_module(model, layer)
    for name, module in model.named_modules():
        if module is target:
            return f"{name}.input"
    return f"layers.{layer}.mlp.input"


def build_cache(model: str, layer: int, corpus: str | os.PathLike[str] | None, split: str, n_tokens: int,
                context_length: int | None, out: str | os.PathLike[str], **kwargs) -> dict:
    """Cache the MLP inputs of ``model`` block ``layer`` over ``n_tokens`` tokens of a corpus split; returns the attrs.
    One layer of :func:`build_caches` (same keyword arguments)."""
    return build_caches(model, [layer], corpus, split, n_tokens, context_length, [out], **kwargs)[0]


#: dtypes the LM may run its caching forwards in: bfloat16 is ~3-4x faster on CPUs with AMX / AVX-512 BF16 and
#: within ~1.5% (relative L2 per row) of float32 on SmolLM2-135M (README, "SmolLM2"); float32 is the default.
FORWARD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def capture_mlp_inputs(lm: torch.nn.Module, layers: list[int], input_ids: Tensor) -> dict[int, Tensor]:
    """The MLP inputs of several blocks ``{layer: [batch, seq, d]}`` from ONE forward that ends at the deepest
    of them (no later blocks, no LM head): caching k layers costs one truncated forward, not k."""
    from jsae.data.hooks import StopForward, replace_mlp_input

    captured: dict[int, Tensor] = {}
    deepest = max(layers)

    def grab(layer: int):
        def fn(x: Tensor) -> Tensor:
            captured[layer] = x.detach()
            if layer == deepest:
                raise StopForward
            return x
        return fn

    with contextlib.ExitStack() as stack, torch.no_grad():
        for layer in layers:
            stack.enter_context(replace_mlp_input(mlp_module(lm, layer), grab(layer)))
        try:
            lm(input_ids=input_ids, use_cache=False)
        except StopForward:
            pass
    missing = [layer for layer in layers if layer not in captured]
    if missing:
        raise RuntimeError(f"the MLP of layer {missing[0]} was never called during the forward of {type(lm).__name__}")
    return captured


def build_caches(model: str, layers: list[int], corpus: str | os.PathLike[str] | None, split: str, n_tokens: int,
                 context_length: int | None, outs: list[str | os.PathLike[str]], *, dtype: str = "float32",
                 batch_size: int = 16, seed: int = 0, device: str = "auto", progress: bool = True,
                 forward_dtype: str = "float32") -> list[dict]:
    """Cache the MLP inputs of ``model`` blocks ``layers`` (one file each, ``outs[i]`` for ``layers[i]``) over
    ``n_tokens`` tokens of a corpus split, from one forward per batch; returns each file's attrs.

    ``n_tokens`` rows come from ``ceil(n_tokens / (context_length - 1))`` non-overlapping contexts drawn
    (with ``seed``) from the split; each context is BOS + ``context_length - 1`` tokens. Every layer's file holds
    the same rows. ``forward_dtype`` is the dtype of the LM's forwards (the stored dtype is ``dtype``).
    """
    from jsae.data.models import load_model, max_context_length
    from jsae.data.planted import is_planted_dir

    layers, outs = list(layers), [Path(o) for o in outs]
    if not layers or len(layers) != len(outs):
        raise ValueError(f"{len(layers)} layers and {len(outs)} output files; expected one output per layer "
                         "(--layer L1 L2 ... --out F1 F2 ...)")
    if len(set(layers)) != len(layers) or len(set(map(str, outs))) != len(outs):
        raise ValueError(f"layers {layers} / outputs {[str(o) for o in outs]} repeat; expected distinct values")
    if is_planted_dir(model):  # synthetic data: no corpus, no tokenizer, no forwards through an LM
        if len(layers) != 1:
            raise ValueError(f"layers {layers} for a planted model; expected one layer (0): it is one MLP")
        return [build_planted_cache(model, layers[0], split, n_tokens, outs[0], dtype=dtype, seed=seed,
                                    context_length=context_length)]
    # Cheap checks first, then the model (still no heavy compute), then tokenisation and the forwards.
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid; expected one of {', '.join(SPLITS)}")
    if corpus is None:
        raise ValueError(f"no corpus was given for model {model!r}; expected --corpus DIR (python -m jsae corpus)")
    if context_length is None:
        raise ValueError("no context length was given; expected --context-length N (tokens per context incl. BOS)")
    check_positive_int("n_tokens", n_tokens)
    check_positive_int("context_length", context_length, minimum=2)
    check_positive_int("batch_size", batch_size)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid; expected one of {', '.join(CACHE_DTYPES)}")
    if forward_dtype not in FORWARD_DTYPES:
        raise ValueError(f"forward_dtype={forward_dtype!r} is invalid; expected one of {', '.join(FORWARD_DTYPES)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is invalid; expected an integer")
    info = corpus_info(corpus)
    if info["splits"].get(split, {}).get("documents", 0) == 0:
        raise ValueError(f"corpus {corpus} split {split!r} is empty; expected at least one document")
    for out in outs:
        if out.suffix not in (".h5", ".hdf5"):
            raise ValueError(f"out={str(out)!r} is invalid; expected a path ending in .h5")
    dev = resolve_device(device)
    lm, tokenizer = load_model(model, device=dev)
    if forward_dtype != "float32":
        lm = lm.to(FORWARD_DTYPES[forward_dtype])
    d_models = {}
    for layer in layers:
        check_layer(lm, layer)
        d_models[layer] = mlp_from_module(mlp_module(lm, layer)).d_in  # TypeError here for an unsupported MLP type
    limit = max_context_length(lm)
    if limit is not None and context_length > limit:
        raise ValueError(f"context_length={context_length} exceeds the model's maximum of {limit} positions; "
                         f"expected <= {limit}")
    if tokenizer is None:
        raise ValueError(f"model {model!r} has no tokenizer; expected a model directory with tokenizer files")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError(f"the tokenizer of {model!r} has neither a BOS nor an EOS token; "
                         "expected one to start contexts")
    n_vocab = lm.get_input_embeddings().weight.shape[0]
    # the files share one file system in practice: ask for all of them at the first one
    _check_free_space(outs[0], n_tokens * len(layers), max(d_models.values()), dtype, context_length)

    stream = tokenize_split(tokenizer, corpus, split)
    if int(stream.ids.max()) >= n_vocab:
        raise ValueError(f"the tokenizer produces id {int(stream.ids.max())} but {model!r} has {n_vocab} embeddings; "
                         "expected the model's own tokenizer")
    body = context_length - 1
    n_ctx = math.ceil(n_tokens / body)
    available = context_windows(len(stream), context_length)
    if n_ctx > available:
        raise ValueError(f"n_tokens={n_tokens} needs {n_ctx} contexts of length {context_length} but corpus split "
                         f"{split!r} has {len(stream)} tokens ({available} contexts); "
                         f"expected n_tokens <= {available * body}")
    windows = np.sort(np.random.default_rng(seed).choice(available, size=n_ctx, replace=False))
    contexts, ctx_docs = make_contexts(stream, windows, context_length, bos)
    all_attrs = []
    for layer in layers:
        attrs = {
            "model": str(model), "layer": int(layer), "hook": hook_name(lm, layer), "corpus_sha256": info["sha256"],
            "context_length": int(context_length), "dtype": dtype, "n_tokens": int(n_tokens),
            "d_model": int(d_models[layer]), "seed": int(seed), "split": split, "jsae_version": _version(),
            "first_position": FIRST_POSITION, "bos_token_id": int(bos), "n_contexts": int(n_ctx),
            "model_class": type(lm).__name__, "forward_dtype": forward_dtype,
        }
        all_attrs.append(attrs)

    partials = [_partial_path(out) for out in outs]
    files: list[h5py.File | None] = [None] * len(layers)
    finished = False
    try:
        dones = []
        for i, (partial, attrs) in enumerate(zip(partials, all_attrs)):
            request = json.dumps(attrs, sort_keys=True)
            files[i], done = _open_partial(partial, request)
            if files[i] is None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                files[i] = h5py.File(partial, "w")  # opened here so that a failure while creating still closes it
                _create(files[i], attrs, request, contexts, ctx_docs, n_tokens, d_models[layers[i]], dtype)
                done = 0
            dones.append(done)
        # every file resumes from the least advanced one; rows from there on are written again (a GPU forward need
        # not repeat bit for bit), and their blocks checksummed again too
        done = min(dones)
        for f in files:
            f.attrs["blocks_checksummed"] = min(int(f.attrs["blocks_checksummed"]),
                                                min(n_tokens, done * body) // int(f.attrs["checksum_rows"]))
        where = f"L{layers[0]}" if len(layers) == 1 else "L" + ",".join(map(str, layers))
        bar = tqdm(total=n_tokens, initial=min(n_tokens, done * body), unit="tok", unit_scale=True,
                   desc=f"cache {where} {split}", disable=not progress, dynamic_ncols=True)
        t0, rows0 = time.perf_counter(), done * body
        # one handle per dataset for the whole loop: a handle freed right after a failed write (disk full) makes
        # HDF5 flush into the full disk from its destructor and crash at exit; these live until the space is given
        # back below
        x_dsets = [f["x"] for f in files]
        for c0 in range(done, n_ctx, batch_size):
            c1 = min(n_ctx, c0 + batch_size)
            ids = torch.from_numpy(contexts[c0:c1]).to(dev)
            xs = capture_mlp_inputs(lm, layers, ids)
            r0, r1 = c0 * body, min(n_tokens, c1 * body)
            for layer, f, x_ds in zip(layers, files, x_dsets):
                x = xs[layer][:, 1:].reshape(-1, d_models[layer]).float()  # drop position 0 (BOS)
                x_ds[r0:r1] = _to_storage(x[: r1 - r0].cpu(), dtype)
                store_block_checksums(f, r1)  # before contexts_done: a resumed build never skips a block
                f.attrs["contexts_done"] = c1
                f.flush()
            bar.update(r1 - r0)
        bar.close()
        rate = (n_tokens - rows0) / max(time.perf_counter() - t0, 1e-9)
        for f in files:
            f.attrs["complete"] = True
            f.attrs["tokens_per_second"] = float(rate)
        finished = True
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(exc, partials[0])
        if full is None:
            raise
        # HDF5 cannot close a file whose metadata it cannot write, and crashes at exit; give the space back first
        # (the partial files are lost: their unwritten metadata would not let a re-run resume from them anyway).
        for partial in partials:
            with contextlib.suppress(OSError):
                os.truncate(partial, 0)
        raise full from None
    finally:
        for f in files:
            if f is not None:
                try:
                    f.close()
                except (OSError, RuntimeError):
                    if finished:
                        raise  # otherwise the error already on its way out is the one to report
    for partial, out in zip(partials, outs):
        os.replace(partial, out)
    log.info("cached %d tokens of %s layer(s) %s (%s, %s, forwards in %s) at %.0f tokens/s -> %s", n_tokens, model,
             ", ".join(map(str, layers)), split, dtype, forward_dtype, rate, ", ".join(map(str, outs)))
    return all_attrs


#: Context length of the dummy contexts of a planted cache when none is given (a BOS and one row).
PLANTED_CONTEXT_LENGTH = 2


def build_planted_cache(model: str, layer: int, split: str, n_tokens: int, out: str | os.PathLike[str], *,
                        dtype: str = "float32", seed: int = 0, context_length: int | None = None) -> dict:
    """Cache ``n_tokens`` MLP inputs ``x = D_x s_x`` of a planted model (:mod:`jsae.data.planted`) in the same
    format as an LM's cache (checksums included), so training and evaluation read it unchanged.

    Rows are :func:`jsae.data.planted.sample_split` (one generator per split: seed ``2 seed`` for train,
    ``2 seed + 1`` for validation, so the splits never share tokens). There is no text: the token-level datasets
    exist because :class:`ActivationCache` requires them, and hold dummies — ``contexts`` all zeros (shape
    ``[ceil(n_tokens / (context_length - 1)), context_length]``, the layout of an LM cache; ``context_length``
    only groups rows), ``token_ids`` and ``document`` zeros. Attributes mark the file: ``source = "planted"``,
    ``hook = "planted.mlp.input"``, ``corpus_sha256 = "none"``, ``split_seed``, ``mean_active_features`` (the
    measured mean number of firing input features per row) and ``planted_config`` (the PlantedConfig as JSON).
    """
    from dataclasses import asdict

    from jsae.data.planted import PLANTED_HOOK, load_planted, sample_split, split_seed

    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid; expected one of {', '.join(SPLITS)}")
    check_positive_int("n_tokens", n_tokens)
    context_length = PLANTED_CONTEXT_LENGTH if context_length is None else context_length
    check_positive_int("context_length", context_length, minimum=2)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is invalid; expected one of {', '.join(CACHE_DTYPES)}")
    if layer != 0:
        raise ValueError(f"layer={layer!r} is out of range for planted model {model}; expected 0 (one MLP)")
    out = Path(out)
    if out.suffix not in (".h5", ".hdf5"):
        raise ValueError(f"out={str(out)!r} is invalid; expected a path ending in .h5")
    s_seed = split_seed(seed, split)  # checks the seed
    planted = load_planted(model)
    d_model = planted.d
    _check_free_space(out, n_tokens, d_model, dtype, context_length)
    body = context_length - 1
    n_ctx = math.ceil(n_tokens / body)
    contexts = np.zeros((n_ctx, context_length), dtype=np.int32)
    attrs = {
        "model": str(model), "layer": 0, "hook": PLANTED_HOOK, "corpus_sha256": "none",
        "context_length": context_length, "dtype": dtype, "n_tokens": int(n_tokens), "d_model": int(d_model),
        "seed": int(seed), "split": split,
        "jsae_version": _version(), "first_position": FIRST_POSITION, "bos_token_id": 0, "n_contexts": int(n_ctx),
        "model_class": "PlantedModel", "source": "planted", "split_seed": s_seed,
        "planted_config": json.dumps(asdict(planted.config), sort_keys=True),
    }
    t0 = time.perf_counter()
    partial = _partial_path(out)
    partial.unlink(missing_ok=True)  # seconds to rebuild: no resuming, a stale partial file is dropped
    partial.parent.mkdir(parents=True, exist_ok=True)
    active = 0
    try:
        with h5py.File(partial, "w") as f:
            _create(f, attrs, json.dumps(attrs, sort_keys=True), contexts, np.zeros_like(contexts), n_tokens, d_model,
                    dtype)
            x_ds, r0 = f["x"], 0
            for s_x, x in sample_split(planted, n_tokens, seed, split):
                r1 = r0 + x.shape[0]
                x_ds[r0:r1] = _to_storage(x, dtype)
                active += int((s_x > 0).sum())
                r0 = r1
            store_block_checksums(f, n_tokens)
            f.attrs["contexts_done"] = n_ctx
            f.attrs["mean_active_features"] = active / n_tokens
            f.attrs["complete"] = True
            f.attrs["tokens_per_second"] = n_tokens / max(time.perf_counter() - t0, 1e-9)
        os.replace(partial, out)
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(exc, partial)
        partial.unlink(missing_ok=True)
        if full is None:
            raise
        raise full from None
    log.info("cached %d planted rows x %d dims of %s (%s, split seed %d, %.2f features firing per row) -> %s",
             n_tokens, d_model, model, split, s_seed, active / n_tokens, out)
    return {**attrs, "mean_active_features": active / n_tokens}


def _check_free_space(out: Path, n_tokens: int, d_model: int, dtype: str, context_length: int) -> None:
    """``OSError(ENOSPC)`` before any forward when the file system of ``out`` cannot hold the cache."""
    need = n_tokens * (d_model * np.dtype(_STORAGE[dtype]).itemsize + 4 * 4)  # x and four int32 row datasets
    need += math.ceil(n_tokens / max(1, context_length - 1)) * context_length * 4 + (1 << 20)  # contexts, headers
    where = out.parent.resolve()
    while not where.exists() and where != where.parent:  # the folder is created later: ask its nearest ancestor
        where = where.parent
    free = free_bytes(where)
    partial = _partial_path(out)
    if free is None:
        return
    free += partial.stat().st_size if partial.is_file() else 0  # reused or replaced
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device: the cache needs about {need / 2**20:,.0f} MiB but "
                      f"{where} has {free / 2**20:,.0f} MiB free", str(out))


def refresh_checksums(path: str | os.PathLike[str]) -> None:
    """Recompute every checksum of a cache file in place, making it cache format 2.

    Only for files edited on purpose (tests, synthetic benchmark caches): it blesses whatever the file
    holds, corrupt rows included.
    """
    with h5py.File(path, "r+") as f:
        n, d = f["x"].shape
        block = int((f["x"].chunks or (_chunk_rows(d, f["x"].dtype.itemsize, n),))[0])
        if CHECKSUMS in f:
            del f[CHECKSUMS]
        f.create_dataset(CHECKSUMS, shape=(math.ceil(n / block),), dtype=np.uint32)
        for name in _METADATA:
            f[name].attrs["crc32"] = crc32(f[name][()])
        f.attrs.update({"format": CACHE_FORMAT, "checksum": "crc32", "checksum_rows": block, "blocks_checksummed": 0})
        store_block_checksums(f, n)


def _open_partial(partial: Path, request: str) -> tuple[h5py.File | None, int]:
    """An existing partial file of the same request (to resume), else ``(None, 0)`` after removing a stale one."""
    if not partial.exists():
        return None, 0
    try:
        f = h5py.File(partial, "r+")
        if f.attrs.get("request") == request and "x" in f and CHECKSUMS in f:
            done = int(f.attrs.get("contexts_done", 0))
            log.info("resuming %s from context %d", partial, done)
            return f, done
        f.close()
        log.info("discarding %s: it was written for another request", partial)
    except (OSError, KeyError, ValueError):
        log.info("discarding unreadable partial cache %s", partial)
    partial.unlink()
    return None, 0


def _create(f: h5py.File, attrs: dict, request: str, contexts: np.ndarray, ctx_docs: np.ndarray, n_tokens: int,
            d_model: int, dtype: str) -> None:
    storage = np.dtype(_STORAGE[dtype])
    chunks = (_chunk_rows(d_model, storage.itemsize, n_tokens), d_model)
    f.create_dataset("x", shape=(n_tokens, d_model), dtype=storage, chunks=chunks)
    f.create_dataset(CHECKSUMS, shape=(math.ceil(n_tokens / chunks[0]),), dtype=np.uint32)
    body = contexts.shape[1] - 1
    row_ctx = np.repeat(np.arange(len(contexts)), body)[:n_tokens]
    row_pos = np.tile(np.arange(1, body + 1), len(contexts))[:n_tokens]
    metadata = {
        "token_ids": contexts[:, 1:].reshape(-1)[:n_tokens],
        "context_index": row_ctx,
        "position": row_pos,
        "document": ctx_docs[:, 1:].reshape(-1)[:n_tokens],
        "contexts": contexts,
    }
    for name, values in metadata.items():
        data = np.ascontiguousarray(values, dtype=np.int32)
        f.create_dataset(name, data=data).attrs["crc32"] = crc32(data)
    for key, value in attrs.items():
        f.attrs[key] = value
    f.attrs["format"] = CACHE_FORMAT
    f.attrs["checksum"] = "crc32"
    f.attrs["checksum_rows"] = chunks[0]
    f.attrs["blocks_checksummed"] = 0
    f.attrs["request"] = request
    f.attrs["contexts_done"] = 0
    f.attrs["complete"] = False


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ActivationCache:
    """Read access to a complete cache file (see the module docstring); use :meth:`open`."""

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path = path
        self._file = file
        self._x = file["x"]
        self.attrs: dict = {k: _plain(v) for k, v in file.attrs.items() if k != "request"}
        self.dtype: str = self.attrs["dtype"]
        self.d_model: int = int(self.attrs["d_model"])
        self.n_tokens: int = int(self.attrs["n_tokens"])
        self.context_length: int = int(self.attrs["context_length"])
        self.chunk_rows: int = int((self._x.chunks or (4096,))[0])
        # Checksums (None: a cache from before format 2, read unverified); set by open() after its checks.
        self._sums: np.ndarray | None = None
        self._block_rows = self.chunk_rows
        self._verified = np.zeros(0, dtype=bool)
        self._verified_metadata: set[str] = set()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, expect: dict | None = None) -> ActivationCache:
        """Open a cache; one-line errors for a missing, corrupt or incomplete file or an ``expect`` mismatch."""
        p = Path(path)
        if not p.is_file():
            hint = (" (an interrupted run left a .partial file: re-run `python -m jsae cache` to resume)"
                    if _partial_path(p).exists() else "")
            raise FileNotFoundError(f"activation cache {p} does not exist{hint}; "
                                    "expected the output of `python -m jsae cache`")
        try:
            f = h5py.File(p, "r")
        except OSError as e:
            raise ValueError(f"activation cache {p} is not a readable HDF5 file, e.g. truncated ({_first_line(e)}); "
                             f"expected a complete cache: {_rebuild_hint(p)}") from None
        missing = [k for k in REQUIRED_ATTRS if k not in f.attrs] + [d for d in _DATASETS if d not in f]
        if missing or not bool(f.attrs.get("complete", False)):
            f.close()
            what = f"lacks {', '.join(missing)}" if missing else "is marked incomplete"
            raise ValueError(f"activation cache {p} {what}; "
                             "expected a complete cache written by `python -m jsae cache`")
        try:
            cache = cls(p, f)
        except (TypeError, ValueError, KeyError, OSError) as e:
            f.close()
            raise ValueError(f"activation cache {p} has unreadable attributes or datasets ({_first_line(e)}); "
                             f"{_rebuild_hint(p)}") from None
        if cache._x.shape != (cache.n_tokens, cache.d_model):
            cache.close()
            raise ValueError(f"activation cache {p} has x of shape {cache._x.shape}; "
                             f"expected ({cache.n_tokens}, {cache.d_model}) from its attrs")
        try:
            cache._load_checksums()
        except ValueError:
            cache.close()
            raise
        if expect:
            cache.check(expect)
        return cache

    def _load_checksums(self) -> None:
        """Read the per-block checksums of x (and check the others exist); warn for a pre-checksum cache."""
        fmt = self.attrs.get("format")
        if fmt is None:
            log.warning("activation cache %s has no checksums (written before cache format %d), so corrupt rows "
                        "would go unnoticed; %s", self.path, CACHE_FORMAT, _rebuild_hint(self.path))
            return
        if not isinstance(fmt, int) or fmt > CACHE_FORMAT:
            raise ValueError(f"activation cache {self.path} has format {fmt!r}; expected <= {CACHE_FORMAT} "
                             "(written by a newer jsae: upgrade jsae, or delete it and re-run to rebuild it)")
        block = self.attrs.get("checksum_rows")
        n_blocks = math.ceil(self.n_tokens / block) if isinstance(block, int) and block > 0 else -1
        missing = [d for d in _METADATA if "crc32" not in self._file[d].attrs]
        sums = self._file.get(CHECKSUMS)
        if n_blocks < 0 or sums is None or sums.shape != (n_blocks,) or missing:
            what = f"no crc32 on {', '.join(missing)}" if missing else f"no valid {CHECKSUMS} / checksum_rows"
            raise ValueError(f"activation cache {self.path} has {what}; expected the checksums of cache format "
                             f"{CACHE_FORMAT}: {_rebuild_hint(self.path)}")
        self._sums = self._read("its checksums", sums.__getitem__, ())
        self._block_rows = int(block)
        self._verified = np.zeros(n_blocks, dtype=bool)

    def check(self, expect: dict) -> None:
        """``ValueError`` naming the first attribute that differs from ``expect`` (e.g. another model or layer)."""
        for key, want in expect.items():
            if key not in self.attrs:
                self.close()
                raise ValueError(f"activation cache {self.path} has no attribute {key!r}; "
                                 f"expected one of {', '.join(sorted(self.attrs))}")
            have = self.attrs[key]
            numbers = isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(want, bool)
            same = float(have) == float(want) if numbers else str(have) == str(want)
            if not same:
                self.close()
                raise ValueError(f"activation cache {self.path} belongs to {key}={have!r}; "
                                 f"expected {key}={want!r} (rebuild the cache or fix the paths)")

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> ActivationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"ActivationCache({self.path}, model={self.attrs['model']!r}, layer={self.attrs['layer']}, "
                f"n_tokens={self.n_tokens}, d_model={self.d_model}, dtype={self.dtype})")

    def _read(self, what: str, fn, *args):
        """``fn(*args)``, an HDF5 read; a damaged or truncated file becomes one line with the remedy."""
        try:
            return fn(*args)
        except (OSError, RuntimeError) as e:  # h5py: "Can't read data", "truncated file", a bad checksum ...
            raise ValueError(f"activation cache {self.path} cannot be read at {what} ({_first_line(e)}); "
                             f"{_rebuild_hint(self.path)}") from None

    def _check_block(self, k: int, raw: np.ndarray) -> None:
        """Verify block ``k`` (its stored rows ``raw``) against its checksum, once."""
        if self._sums is None or self._verified[k]:
            return
        if crc32(raw) != int(self._sums[k]):
            a = k * self._block_rows
            b = min(self.n_tokens, a + self._block_rows)
            raise ValueError(f"activation cache {self.path} is corrupt: rows {a}:{b} (block {k}) do not match "
                             f"their crc32 checksum; {_rebuild_hint(self.path)}")
        self._verified[k] = True

    def _raw(self, start: int, stop: int) -> np.ndarray:
        """Stored rows ``[start, stop)``; any block among them read for the first time is verified."""
        rows = lambda a, b: self._read(f"rows {a}:{b}", self._x.__getitem__, np.s_[a:b])
        if self._sums is None or start >= stop:
            return rows(start, stop)
        size = self._block_rows
        k0, k1 = start // size, math.ceil(stop / size)
        if self._verified[k0:k1].all():
            return rows(start, stop)
        a, b = k0 * size, min(self.n_tokens, k1 * size)  # whole blocks: one read serves both
        raw = rows(a, b)
        for k in range(k0, k1):
            self._check_block(k, raw[k * size - a : min(b, (k + 1) * size) - a])
        return raw[start - a : stop - a]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        return _from_storage(self._raw(start, stop), self.dtype)

    def _metadata(self, name: str) -> np.ndarray:
        """A whole row-metadata dataset, verified against its crc32 attribute the first time."""
        ds = self._file[name]
        data = self._read(f"dataset {name!r}", ds.__getitem__, ())
        if self._sums is not None and name not in self._verified_metadata:
            if crc32(data) != int(ds.attrs["crc32"]):
                raise ValueError(f"activation cache {self.path} is corrupt: dataset {name!r} does not match its "
                                 f"crc32 checksum; {_rebuild_hint(self.path)}")
            self._verified_metadata.add(name)
        return data

    def read(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Rows ``[start, stop)`` of x as a float32 tensor ``[rows, d_model]``."""
        stop = self.n_tokens if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= self.n_tokens):
            raise ValueError(f"read({start!r}, {stop!r}) is out of range; "
                             f"expected 0 <= start <= stop <= n_tokens={self.n_tokens}")
        return torch.from_numpy(np.ascontiguousarray(self._rows(start, stop)))

    def contexts(self) -> np.ndarray:
        """Token ids of every context ``[n_contexts, context_length]`` (position 0 is the BOS)."""
        return self._metadata("contexts")

    @cached_property
    def token_ids(self) -> np.ndarray:
        return self._metadata("token_ids")

    @cached_property
    def context_index(self) -> np.ndarray:
        return self._metadata("context_index")

    @cached_property
    def position(self) -> np.ndarray:
        return self._metadata("position")

    @cached_property
    def document(self) -> np.ndarray:
        return self._metadata("document")

    # ---- shuffled training stream -------------------------------------------------------------------------
    def _groups(self, epoch: int, seed: int, buffer_chunks: int) -> list[np.ndarray]:
        n_chunks = math.ceil(self.n_tokens / self.chunk_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_chunks)
        return [np.sort(order[i : i + buffer_chunks]) for i in range(0, n_chunks, buffer_chunks)]

    def _group_size(self, chunks: np.ndarray) -> int:
        last = math.ceil(self.n_tokens / self.chunk_rows) - 1
        tail = self.n_tokens - last * self.chunk_rows
        return len(chunks) * self.chunk_rows - (self.chunk_rows - tail if last in chunks else 0)

    def _load_group(self, chunks: np.ndarray, epoch: int, group: int, seed: int) -> np.ndarray:
        """The rows of ``chunks`` (read straight into one array), shuffled: one copy besides the read."""
        spans = [(int(c) * self.chunk_rows, min(self.n_tokens, (int(c) + 1) * self.chunk_rows)) for c in chunks]
        raw = np.empty((sum(b - a for a, b in spans), self.d_model), dtype=self._x.dtype)
        offset = 0
        for a, b in spans:
            dest = np.s_[offset : offset + b - a]
            self._read(f"rows {a}:{b}", self._x.read_direct, raw, np.s_[a:b], dest)
            if self._sums is not None:
                k = a // self._block_rows
                if a % self._block_rows == 0 and b == min(self.n_tokens, a + self._block_rows):
                    self._check_block(k, raw[dest])  # a whole block: verified from the buffer itself
                elif not self._verified[k : math.ceil(b / self._block_rows)].all():
                    self._raw(a, b)  # spans that are not blocks (chunk_rows was changed): read them again
            offset += b - a
        perm = np.random.default_rng([seed, epoch, group, 1]).permutation(len(raw))
        return _from_storage(raw[perm], self.dtype)

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0, buffer_rows: int = 1 << 16,
                prefetch: bool = True) -> Iterator[Tensor]:
        """An infinite, deterministic stream of shuffled float32 batches ``[batch_size, d_model]``.

        Each pass over the cache (a new chunk permutation per pass, from ``seed`` and the pass number)
        loads ``buffer_rows`` rows of random chunks at a time, shuffles them, and cuts batches from the
        row stream; batches may straddle buffers and passes, and every row appears once per pass.
        ``start_batch`` skips exactly that many batches without reading them (resuming training), and
        the next buffer is read in a background thread while the caller works on the current one.
        """
        check_positive_int("batch_size", batch_size)
        check_positive_int("buffer_rows", buffer_rows)
        check_positive_int("start_batch", start_batch, minimum=0)
        buffer_chunks = max(1, math.ceil(max(buffer_rows, batch_size) / self.chunk_rows))
        skip = start_batch * batch_size
        epoch, skip = divmod(skip, self.n_tokens)
        groups = self._groups(epoch, seed, buffer_chunks)
        g = 0
        while skip >= (size := self._group_size(groups[g])):  # whole buffers skipped unread
            skip, g = skip - size, g + 1

        def schedule() -> Iterator[tuple[np.ndarray, int, int]]:
            nonlocal epoch, groups, g
            while True:
                yield groups[g], epoch, g
                g += 1
                if g == len(groups):
                    epoch, g = epoch + 1, 0
                    groups = self._groups(epoch, seed, buffer_chunks)

        plan = schedule()
        pool = (concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsae-cache")
                if prefetch else None)

        def submit(item):
            return pool.submit(self._load_group, *item, seed) if pool else self._load_group(*item, seed)

        try:
            pending = submit(next(plan))
            buf, pos = None, skip
            parts: list[np.ndarray] = []
            have = 0
            while True:
                if buf is None or pos == len(buf):
                    buf, pos = (pending.result() if pool else pending), (pos if buf is None else 0)
                    pending = submit(next(plan))
                if not parts and len(buf) - pos >= batch_size:  # the common case: a view, no copy
                    yield torch.from_numpy(buf[pos : pos + batch_size])
                    pos += batch_size
                    continue
                take = min(batch_size - have, len(buf) - pos)  # a batch straddling buffers (or passes)
                parts.append(buf[pos : pos + take])
                have, pos = have + take, pos + take
                if have == batch_size:
                    yield torch.from_numpy(np.concatenate(parts))
                    parts, have = [], 0
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae cache",
        description="Cache the MLP inputs x of (model, layer) over N tokens of a corpus split to HDF5 (with token ids, "
        "contexts and positions). Interrupted runs resume; only a complete file appears at --out.",
    )
    p.add_argument("--model", required=True, help="model SPEC: local directory, Hugging Face id or smollm2-135m")
    p.add_argument("--layer", type=int, nargs="+", required=True,
                   help="transformer block(s) whose MLP input is cached (0-based); several: one forward for all")
    p.add_argument("--corpus", default=None, help="corpus directory (python -m jsae corpus); required unless --model "
                   "is a planted model directory (python -m jsae planted), whose rows are sampled, not read from text")
    p.add_argument("--split", choices=SPLITS, required=True, help="corpus split")
    p.add_argument("--n-tokens", type=int, required=True, help="rows to cache (BOS positions excluded)")
    p.add_argument("--context-length", type=int, default=None, help="tokens per context including the BOS; required "
                   "for a language model (a planted model's dummy contexts default to 2)")
    p.add_argument("--out", nargs="+", required=True, help="output FILE.h5, one per --layer, in the same order")
    p.add_argument("--forward-dtype", choices=sorted(FORWARD_DTYPES), default="float32",
                   help="dtype of the LM forwards (bfloat16: faster on CPUs with AMX / AVX-512 BF16, ~1.5%% relative "
                   "error on SmolLM2-135M)")
    p.add_argument("--dtype", choices=CACHE_DTYPES, default="float32", help="storage dtype of x")
    p.add_argument("--batch-size", type=int, default=16, help="contexts per forward")
    p.add_argument("--seed", type=int, default=0, help="which contexts are drawn from the split; for a planted "
                   "model, the split's sample stream is seeded 2 seed (train) / 2 seed + 1 (validation) "
                   "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: $OMP_NUM_THREADS, else 1)")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    set_threads(a.threads)
    return run_cli(_cache_cli, a)


def _cache_cli(a: argparse.Namespace) -> int:
    build_caches(a.model, a.layer, a.corpus, a.split, a.n_tokens, a.context_length, a.out, dtype=a.dtype,
                 batch_size=a.batch_size, seed=a.seed, device=a.device, forward_dtype=a.forward_dtype)
    return 0
