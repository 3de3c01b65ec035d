"""Read throughput of the activation cache's shuffled batch stream, against baselines in the same run.

Writes a synthetic cache with the real file layout (``jsae.data.cache`` datasets and attrs, no model needed),
then measures tokens/s for

* ``in-RAM randperm`` — baseline: the whole x as a float32 tensor, a random permutation indexed per batch
  (the fastest possible shuffled reader, needs all of x in memory);
* ``contiguous read`` — ``ActivationCache.read`` of consecutive batches (sequential HDF5, no shuffling);
* ``batches(prefetch)`` — the training reader: random chunks into a shuffled buffer, next buffer read in
  a background thread;
* ``batches(no prefetch)`` — the same without the background thread;
* ``batches + consumer`` — with a simulated training step of fixed cost per batch, to show whether the
  reader ever makes training wait (its time per batch is compared with the consumer alone);
* ``first pass, verified vs unverified`` — a freshly opened cache (every block checked against its CRC-32
  on first read) against a copy without checksums (read unverified), alternating, median of 3: the cost
  of the checksums on the first epoch (later epochs verify nothing).

Usage: ``python benchmarks/bench_cache_read.py [--tokens 1000000] [--d-model 128] [--batch-size 4096]
[--dtype float32]``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from jsae.data.cache import _STORAGE, FIRST_POSITION, ActivationCache, _chunk_rows, _to_storage, refresh_checksums
from jsae.devices import CACHE_DTYPES


def write_synthetic_cache(path: Path, n_tokens: int, d_model: int, dtype: str, context_length: int = 128) -> None:
    body = context_length - 1
    n_ctx = -(-n_tokens // body)
    rng = np.random.default_rng(0)
    storage = np.dtype(_STORAGE[dtype])
    with h5py.File(path, "w") as f:
        chunks = (_chunk_rows(d_model, storage.itemsize, n_tokens), d_model)
        x = f.create_dataset("x", shape=(n_tokens, d_model), dtype=storage, chunks=chunks)
        step = 1 << 16
        for i in range(0, n_tokens, step):
            block = rng.standard_normal((min(step, n_tokens - i), d_model), dtype=np.float32)
            x[i : i + step] = _to_storage(torch.from_numpy(block), dtype)
        f["contexts"] = rng.integers(0, 4096, (n_ctx, context_length), dtype=np.int32)
        f["token_ids"] = f["contexts"][:, 1:].reshape(-1)[:n_tokens]
        f["context_index"] = np.repeat(np.arange(n_ctx, dtype=np.int32), body)[:n_tokens]
        f["position"] = np.tile(np.arange(1, context_length, dtype=np.int32), n_ctx)[:n_tokens]
        f["document"] = np.zeros(n_tokens, dtype=np.int32)
        attrs = {"model": "synthetic", "layer": 0, "hook": "synthetic.mlp.input", "corpus_sha256": "0" * 64,
                 "context_length": context_length, "dtype": dtype, "n_tokens": n_tokens, "d_model": d_model, "seed": 0,
                 "split": "train", "jsae_version": "bench", "first_position": FIRST_POSITION, "complete": True}
        f.attrs.update(attrs)


def rate(fn, n_batches: int, batch_size: int) -> float:
    fn(2)  # warm-up: file cache, thread start
    t0 = time.perf_counter()
    fn(n_batches)
    return n_batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=CACHE_DTYPES)
    p.add_argument("--batches", type=int, default=200, help="batches timed per reader")
    p.add_argument("--consumer-ms", type=float, default=20.0, help="simulated training step per batch")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    bs, n = a.batch_size, a.batches
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        write_synthetic_cache(path, a.tokens, a.d_model, a.dtype)
        unverified = Path(tmp) / "unverified.h5"
        unverified.write_bytes(path.read_bytes())  # the old format: no checksums, read with a warning
        refresh_checksums(path)  # the format build_cache writes
        first_pass = first_pass_rates(path, unverified, min(n, a.tokens // bs), bs)
        cache = ActivationCache.open(path)
        x = cache.read()

        def in_ram(k: int) -> None:
            g = torch.Generator().manual_seed(0)
            perm = torch.randperm(len(x), generator=g)
            for i in range(k):
                j = (i * bs) % (len(x) - bs)
                _ = x[perm[j : j + bs]]

        def contiguous(k: int) -> None:
            for i in range(k):
                j = (i * bs) % (len(x) - bs)
                _ = cache.read(j, j + bs)

        def stream(prefetch: bool, consumer_s: float = 0.0):
            def run(k: int) -> None:
                for batch in itertools.islice(cache.batches(bs, seed=0, prefetch=prefetch), k):
                    if consumer_s:
                        _busy(consumer_s)
                    _ = batch.sum()
            return run

        def consumer_only(k: int) -> None:
            for _ in range(k):
                _busy(a.consumer_ms / 1e3)

        results = {
            "in-RAM randperm (baseline)": rate(in_ram, n, bs),
            "contiguous read": rate(contiguous, n, bs),
            "batches(no prefetch)": rate(stream(False), n, bs),
            "batches(prefetch)": rate(stream(True), n, bs),
        }
        with_consumer = rate(stream(True, a.consumer_ms / 1e3), n // 4, bs)
        alone = rate(consumer_only, n // 4, bs)
        cache.close()
    base = results["in-RAM randperm (baseline)"]
    print(f"cache read: {a.tokens:,} tokens x d={a.d_model} ({a.dtype}), batch {bs}, chunk rows {cache.chunk_rows}, "
          f"buffer 65536 rows, torch threads {a.threads}")
    print(f"{'reader':<30} {'tokens/s':>14} {'vs in-RAM':>10}")
    for name, r in results.items():
        print(f"{name:<30} {r:>14,.0f} {r / base:>9.2f}x")
    print(f"with a {a.consumer_ms:g} ms/batch consumer: {with_consumer:,.0f} tokens/s "
          f"vs consumer alone {alone:,.0f} tokens/s -> reader overhead {alone / with_consumer - 1:+.1%}")
    for name, (verified, plain) in first_pass.items():
        print(f"first pass, {name}: verified {verified:,.0f} vs unverified {plain:,.0f} tokens/s "
              f"-> checksum overhead {plain / verified - 1:+.1%}")


def first_pass_rates(verified: Path, unverified: Path, n_batches: int, bs: int) -> dict[str, tuple[float, float]]:
    """Median tokens/s of a first pass over a freshly opened cache, with and without checksums, alternating."""
    import logging

    logging.getLogger("jsae").setLevel(logging.ERROR)  # the unverified copy's warning, once per open

    def one(path: Path, mode: str) -> float:
        cache = ActivationCache.open(path)
        t0 = time.perf_counter()
        if mode == "contiguous read":
            for i in range(n_batches):
                cache.read(i * bs, (i + 1) * bs)
        else:
            for _ in itertools.islice(cache.batches(bs, seed=0, prefetch=False), n_batches):
                pass
        rate = n_batches * bs / (time.perf_counter() - t0)
        cache.close()
        return rate

    out = {}
    for mode in ("contiguous read", "batches(no prefetch)"):
        runs = [(one(verified, mode), one(unverified, mode)) for _ in range(3)]
        out[mode] = (float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs])))
    return out


def _busy(seconds: float) -> None:
    """A consumer that holds the GIL part of the time and releases it in torch ops, like a training step."""
    end = time.perf_counter() + seconds
    a = torch.randn(64, 64)
    while time.perf_counter() < end:
        a = torch.tanh(a @ a * 0.01)


if __name__ == "__main__":
    main()
