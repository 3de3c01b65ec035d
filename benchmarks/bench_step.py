"""One training step (forward + backward + Adam + decoder renorm), four variants, same run.

(a) one TopK SAE, (b) two independent TopK SAEs, (c) our JSAE pair, (d) the same pair with the
paper authors' formulation of the Jacobian term (both [n, d_mlp] products for every latent each
step, per-token gathers, einsum). Default sizes are Pythia-70m's (d 512, d_mlp 2048,
expansion 32, k 32) at 2048 and 4096 tokens per batch.

Timings are interleaved (a, b, c, d, a, b, ...) so machine load drifts hit every variant alike;
the median of the repeats is reported. ``--clock process`` measures this process's CPU time
instead of wall time: with ``--threads 1`` it is nearly immune to other load on a shared machine.
Peak memory is measured in a fresh subprocess per variant
(CPU: peak RSS above the process's RSS after set-up; CUDA: torch.cuda.max_memory_allocated).

    python benchmarks/bench_step.py                 # Pythia-70m sizes, CPU or CUDA (auto)
    python benchmarks/bench_step.py --tokens 1024 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from jsae import JSAEPair, TopKSAE
from jsae.devices import resolve_device
from jsae.nn.mlp import PlainMLP, activation_from

VARIANTS = ("one_sae", "two_saes", "pair", "pair_authors")


def build(variant: str, d: int, d_mlp: int, n: int, k: int, device: torch.device, seed: int = 0):
    """A step closure for one variant on random Pythia-like weights."""
    g = torch.Generator().manual_seed(seed)
    mlp = PlainMLP(
        torch.randn(d_mlp, d, generator=g) / d**0.5,
        torch.zeros(d_mlp),
        torch.randn(d, d_mlp, generator=g) / d_mlp**0.5,
        torch.zeros(d),
        activation_from("gelu"),
    ).to(device)
    sae_in = TopKSAE(d, n, k, seed=seed, device=device)
    sae_out = TopKSAE(d, n, k, seed=seed + 1, device=device)
    if variant == "one_sae":
        saes = [sae_in]
    elif variant == "two_saes":
        saes = [sae_in, sae_out]
    else:
        pair = JSAEPair(sae_in, sae_out, mlp, jacobian_impl="authors" if variant == "pair_authors" else "active")
        saes = [pair]
    opt = torch.optim.Adam([p for m in saes for p in m.parameters()], lr=5e-4, fused=True)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        if variant.startswith("pair"):
            loss, _ = pair.loss(x, lam=1.0)
        else:
            with torch.no_grad():
                y = mlp(x)
            targets = [x, y]
            loss = sum(((s(t) - t) ** 2).mean() for s, t in zip(saes, targets))
        loss.backward()
        opt.step()
        for m in saes:
            if isinstance(m, JSAEPair):
                m.normalize_decoders_()
            else:
                m.normalize_decoder_()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_step_times(steps: dict, x: torch.Tensor, device: torch.device, clock, warmup: int,
                      repeats: int) -> dict[str, float]:
    """Warm each step up, then time them interleaved (a, b, c, a, b, c, ...); the median per step."""
    for step in steps.values():
        for _ in range(warmup):
            step(x)
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(repeats):
        for v, step in steps.items():
            sync(device)
            t0 = clock()
            step(x)
            sync(device)
            times[v].append(clock() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def time_variants(args, device) -> dict[int, dict[str, float]]:
    clock = time.process_time if args.clock == "process" else time.perf_counter
    out: dict[int, dict[str, float]] = {}
    for tokens in args.tokens:
        steps = {v: build(v, args.d, args.d_mlp, args.d * args.expansion, args.k, device) for v in VARIANTS}
        out[tokens] = median_step_times(steps, torch.randn(tokens, args.d, device=device), device, clock,
                                        args.warmup, args.repeats)
        del steps
    return out


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process. ``ru_maxrss`` would not do: Linux keeps it across
    ``exec``, so a child would report its parent's peak; ``VmHWM`` belongs to the new image."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def child_main(args) -> None:
    device = resolve_device(args.device)
    step = build(args.child_variant, args.d, args.d_mlp, args.d * args.expansion, args.k, device)
    x = torch.randn(args.child_tokens, args.d, device=device)
    if device.type == "cuda":
        step(x)
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(x)
        sync(device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _proc_status_bytes("VmRSS")
        step(x)  # the first step allocates Adam state: count it, a real run holds it too
        step(x)
        peak = _proc_status_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(args) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for tokens in args.tokens:
        out[tokens] = {}
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--child-variant", v, "--child-tokens", str(tokens),
                   "--device", args.device, "--d", str(args.d),
                   *(["--threads", str(args.threads)] if args.threads else []),
                   "--d-mlp", str(args.d_mlp), "--expansion", str(args.expansion), "--k", str(args.k)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[tokens][v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--d-mlp", type=int, default=2048)
    p.add_argument("--expansion", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child-variant", help=argparse.SUPPRESS)
    p.add_argument("--child-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_variant:
        child_main(args)
        return
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    print(f"device: {device} ({machine}); d={args.d} d_mlp={args.d_mlp} n={args.d * args.expansion} k={args.k}; "
          f"clock={args.clock}")
    times = time_variants(args, device)
    mem = {} if args.no_memory else measure_memory(args)
    rows = []
    for tokens, t in times.items():
        print(f"\n{tokens} tokens/batch       step (s)   vs one SAE   vs two SAEs   peak extra mem (MiB)")
        for v in VARIANTS:
            m = mem.get(tokens, {}).get(v, float("nan"))
            print(f"  {v:<14} {t[v]:10.3f}   {t[v] / t['one_sae']:9.2f}x   {t[v] / t['two_saes']:10.2f}x   {m:12.0f}")
        ratio = t["pair"] / t["pair_authors"]
        print(f"  pair / pair_authors = {ratio:.3f}  (goal <= 0.77)")
        rows.append({"tokens": tokens, "seconds": t, "peak_mib": mem.get(tokens), "pair_over_authors": ratio})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "machine": machine, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
