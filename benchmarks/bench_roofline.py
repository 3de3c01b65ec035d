"""Roofline of the JSAE pair step: FLOPs counted by torch, achieved GFLOP/s against the machine's dense matmul.

For two independent TopK SAEs, our JSAE pair and the paper authors' formulation (bench_step.py's variants, same
sizes), one full training step (forward, backward, Adam, decoder renorm) is

* counted: ``torch.utils.flop_counter.FlopCounterMode`` adds up every matmul-like op the step dispatches
  (mm, addmm, bmm, baddbmm, einsum's kernels; inside our autograd Functions too), an oracle independent of our own
  FLOP formulas; gathers, TopK and Adam are memory-bound and not counted;
* timed: median of interleaved repeats (``--clock process --threads 1``: CPU seconds, robust to other load);
* set against the machine: dense ``torch.mm`` GFLOP/s at the step's two big shapes (an encoder, ``[B, d] @ [d, n]``,
  and a weight product, ``[n, d] @ [d, d_mlp]``), timed the same way.

The FLOP ratio pair / two SAEs is the floor any implementation of the same formulation meets at equal
efficiency; the time ratio above it is implementation overhead (gathers, memory traffic).

    python benchmarks/bench_roofline.py --threads 1 --clock process --repeats 3 --json roofline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import build, median_step_times, sync  # noqa: E402  (a sibling script, not a package)

from jsae.devices import resolve_device  # noqa: E402

VARIANTS = ("two_saes", "pair", "pair_authors")


def count_flops(step, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        step(x)
    return int(counter.get_total_flops())


def matmul_gflops(m: int, k: int, n: int, device: torch.device, clock, repeats: int) -> float:
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        a @ b
        sync(device)
        times.append(clock() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--d-mlp", type=int, default=2048)
    p.add_argument("--expansion", type=int, default=32)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "process"), default="wall")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    n = args.d * args.expansion
    peaks = {"encoder [B, d] @ [d, n]": matmul_gflops(max(args.tokens), args.d, n, device, clock, args.repeats),
             "product [n, d] @ [d, d_mlp]": matmul_gflops(n, args.d, args.d_mlp, device, clock, args.repeats)}
    peak = max(peaks.values())
    rows = []
    for tokens in args.tokens:
        steps = {v: build(v, args.d, args.d_mlp, n, args.k, device) for v in VARIANTS}
        x = torch.randn(tokens, args.d, device=device)
        flops = {v: count_flops(steps[v], x) for v in VARIANTS}  # also a first warm-up
        medians = median_step_times(steps, x, device, clock, args.warmup, args.repeats)
        for v in VARIANTS:
            t = medians[v]
            rows.append({"tokens": tokens, "variant": v, "gflop": flops[v] / 1e9, "seconds": t,
                         "gflop_per_s": flops[v] / t / 1e9, "of_matmul_peak": flops[v] / t / 1e9 / peak})
        del steps
    print(f"device {device}, threads {torch.get_num_threads()}, clock {args.clock}; dense matmul: "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    print("| tokens | variant | GFLOP (counted) | step s | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['variant']} | {r['gflop']:.1f} | {r['seconds']:.2f} | {r['gflop_per_s']:.1f} | "
              f"{100 * r['of_matmul_peak']:.0f}% |")
    for tokens in args.tokens:
        by = {r["variant"]: r for r in rows if r["tokens"] == tokens}
        print(f"{tokens} tokens: pair / two SAEs = {by['pair']['gflop'] / by['two_saes']['gflop']:.2f} by FLOPs, "
              f"{by['pair']['seconds'] / by['two_saes']['seconds']:.2f} by time; pair / authors' = "
              f"{by['pair']['gflop'] / by['pair_authors']['gflop']:.2f} by FLOPs, "
              f"{by['pair']['seconds'] / by['pair_authors']['seconds']:.2f} by time")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "clock": args.clock, "matmul_gflop_per_s": peaks, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
