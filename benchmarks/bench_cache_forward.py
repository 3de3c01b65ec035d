"""Caching throughput: one truncated LM forward for every cached layer, and bfloat16 forwards, against the
one-forward-per-layer float32 baseline in the same run.

Variants (tokens/s of MLP inputs cached for ALL the layers, i.e. a token counts once however many layers):

* ``per layer, float32`` — baseline: one forward per layer, each ending at that layer's MLP (what a cache job per
  (model, layer) costs);
* ``one forward, float32`` — :func:`jsae.data.cache.capture_mlp_inputs`: one forward ending at the deepest layer;
* ``one forward, bfloat16`` — the same with the model in bfloat16 (``cache.forward_dtype``), plus its error
  against float32: the median relative L2 of a row and the error's share of the activations' variance.

Variants are interleaved ``--repeats`` times and the median is reported. Model: ``smollm2-135m`` when the optional
package is installed (layers 5, 15, 25 of 30), else a tiny random Llama (``--model`` takes any SPEC).

Usage: ``python benchmarks/bench_cache_forward.py [--model smollm2-135m] [--layers 5 15 25] [--batch 16]
[--context 128] [--repeats 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from jsae.data.cache import capture_mlp_inputs
from jsae.data.hooks import capture_mlp_input
from jsae.data.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", type=int, nargs="+", default=[5, 15, 25])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm, _ = load_model(a.model)
    vocab = lm.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (a.batch, a.context), generator=torch.Generator().manual_seed(0))
    tokens = a.batch * (a.context - 1)

    def per_layer() -> None:
        for layer in a.layers:
            capture_mlp_input(lm, layer, ids)

    def one_forward() -> None:
        capture_mlp_inputs(lm, a.layers, ids)

    variants = {"per layer, float32": (per_layer, torch.float32), "one forward, float32": (one_forward, torch.float32),
                "one forward, bfloat16": (one_forward, torch.bfloat16)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(a.repeats + 1):  # the first round warms up and is dropped
        for name, (fn, dtype) in variants.items():
            lm.to(dtype)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    lm.to(torch.float32)
    ref = capture_mlp_inputs(lm, a.layers, ids)
    lm.to(torch.bfloat16)
    low = capture_mlp_inputs(lm, a.layers, ids)
    print(f"{a.model}, layers {a.layers}, {a.batch} x {a.context} tokens per forward, {a.threads} thread(s), "
          f"{platform.processor() or platform.machine()}; median of {a.repeats}")
    base = statistics.median(times["per layer, float32"][1:])
    for name, ts in times.items():
        t = statistics.median(ts[1:])
        print(f"  {name:<24} {tokens / t:8.0f} tokens/s   x{base / t:5.2f} vs per layer, float32")
    for layer in a.layers:
        x, y = ref[layer][:, 1:].reshape(-1, ref[layer].shape[-1]), low[layer][:, 1:].reshape(-1, ref[layer].shape[-1])
        rel = ((y.float() - x).norm(dim=-1) / x.norm(dim=-1)).median()
        share = ((y.float() - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        print(f"  bfloat16 error, layer {layer}: median relative L2 {rel:.4f}, share of variance {share:.2e}")


if __name__ == "__main__":
    main()
