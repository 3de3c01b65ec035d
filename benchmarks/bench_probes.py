"""Batched linearity probes vs the straightforward per-sample loop, in the same run.

The loop (``jsae.eval.probes.probe_loop``) does what the authors' ``linear.py`` does per sample: one
forward of the 100 sweep points through MLP -> output encoder and a CPU ``lstsq`` + ``.item()``
classification. The batched path (``jsae.eval.probes.probe_batch``) sweeps many samples per forward and
classifies them with closed-form masked least squares; samples sharing (token, input latent j) share
one sweep (with the default sampling, one distinct input latent j per token and every active output latent
of it, as ``python -m jsae probes``). Both probe the same samples under the same rule (default: the
scale-free relative rule, its per-latent sweep set by one batched quantile pass, timed on its own); the
script checks that their labels and splits agree and prints samples/s and the ratio (goal: >= 50x).

    .venv/bin/python benchmarks/bench_probes.py [--d 128 --d-mlp 512 --n-latents 4096 --k 32]
        [--samples 4096 --loop-samples 256 --device cpu --threads N --rounds 3 --tolerance relative]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor
from transformers import GPTNeoXConfig
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

from jsae.devices import resolve_device
from jsae.eval.probes import TOLERANCES, input_latent_scale, probe_batch, probe_loop, sample_probes, shared_sweeps
from jsae.nn.pair import JSAEPair
from jsae.nn.sae import TopKSAE


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--d-mlp", type=int, default=512)
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--samples", type=int, default=4096, help="samples for the batched probe")
    p.add_argument("--loop-samples", type=int, default=256, help="samples for the per-sample loop (timed per sample)")
    p.add_argument("--samples-per-forward", type=int, default=512)
    p.add_argument("--outputs-per-input", type=int, default=None,
                   help="output latents per (token, j) (default: all active; they share one sweep)")
    p.add_argument("--tolerance", choices=TOLERANCES, default="relative")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds; each path's best round counts")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = GPTNeoXConfig(hidden_size=args.d, intermediate_size=args.d_mlp, hidden_act="gelu", num_attention_heads=4)
    module = GPTNeoXMLP(config)
    sae_in = TopKSAE(args.d, args.n_latents, args.k, seed=1)
    sae_out = TopKSAE(args.d, args.n_latents, args.k, seed=2)
    pair = JSAEPair(sae_in, sae_out, module).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    n_tokens = max(1, args.samples // (args.outputs_per_input or args.k))
    x = torch.randn(n_tokens, args.d, device=device)
    sync(device)
    t0 = time.perf_counter()
    scale = input_latent_scale(pair, [x]) if args.tolerance == "relative" else None
    sync(device)
    scale_s = time.perf_counter() - t0
    samples = sample_probes(pair, x, inputs_per_token=1, outputs_per_input=args.outputs_per_input, generator=gen,
                            input_scale=scale)
    n = len(samples)
    rule = args.tolerance
    print(f"device={device} d={args.d} d_mlp={args.d_mlp} n_latents={args.n_latents} k={args.k} "
          f"threads={torch.get_num_threads()} samples={n} sweeps={len(shared_sweeps(samples)[0])} tolerance={rule}")
    if scale is not None:
        print(f"q_j pass over {n_tokens} tokens (once per run, not in the ratio): {scale_s * 1e3:.1f} ms")

    # warm-up both paths
    probe_batch(pair, samples.select(slice(0, 64)), second_derivative=False, tolerance=rule)
    probe_loop(pair, samples.select(slice(0, 4)), tolerance=rule)

    m = min(args.loop_samples, n)

    def run_loop() -> tuple[float, tuple]:
        sync(device)
        t0 = time.perf_counter()
        out = probe_loop(pair, samples.select(slice(0, m)), tolerance=rule)
        sync(device)
        return (time.perf_counter() - t0) / m, out

    def run_batched(d2: bool) -> tuple[float, Tensor, Tensor]:
        labels, splits = [], []
        sync(device)
        t0 = time.perf_counter()
        for s in range(0, n, args.samples_per_forward):
            r = probe_batch(pair, samples.select(slice(s, s + args.samples_per_forward)), second_derivative=d2,
                            tolerance=rule)
            labels.append(r.label)
            splits.append(r.split)
        sync(device)
        return (time.perf_counter() - t0) / n, torch.cat(labels).cpu(), torch.cat(splits).cpu()

    # rounds alternate the paths and each keeps its best time, so a shared, loaded machine hurts neither more
    loop_s, results = float("inf"), {}
    for _ in range(args.rounds):
        per, (loop_labels, _, _, loop_split) = run_loop()
        loop_s = min(loop_s, per)
        for d2 in (False, True):
            got = run_batched(d2)
            if d2 not in results or got[0] < results[d2][0]:
                results[d2] = got
    agree = bool((results[False][1][:m].numpy() == loop_labels).all()) and bool(
        (results[False][2][:m].numpy() == loop_split).all())
    frac = [float((results[False][1] == i).float().mean()) for i in range(3)]
    print(f"labels and splits agree with the loop on {m} samples: {agree}; linear/jumprelu/other = "
          + "/".join(f"{f:.3f}" for f in frac))
    print(f"per-sample loop            : {1 / loop_s:10.1f} samples/s")
    for d2, (per, _, _) in results.items():
        name = "batched + 2nd derivative  " if d2 else "batched (same work)       "
        print(f"{name} : {1 / per:10.1f} samples/s   ratio vs loop: {loop_s / per:7.1f}x")


if __name__ == "__main__":
    main()
