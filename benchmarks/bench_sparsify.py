"""Our TopK SAE against EleutherAI's sparsify (``SparseCoder``): step time and quality, same run.

**Step time.** One training step (forward, loss, backward, optimiser step, bookkeeping) of

* ``ours``: :class:`jsae.nn.sae.TopKSAE` trained as :meth:`jsae.train.trainer.Trainer.train_step` trains
  each SAE of a pair (the trainer has no single-SAE path: a lam = 0 pair trains two SAEs plus an MLP
  forward, so this is that step for one SAE, line by line): LR from ``lr_at``, forward, eq. 5's MSE,
  ``zero_grad``, backward, fused Adam, ``normalize_decoder_``, ``DeadLatentTracker.update``;
* ``sparsify_adam``: ``sparsify.SparseCoder`` stepped as ``sparsify.trainer.Trainer.fit`` steps it with
  ``optimizer="adam"`` (decoder renormalised before the forward, the batch's total variance, FVU loss,
  backward, ``remove_gradient_parallel_to_decoder_directions``, ``torch.optim.Adam`` built as its trainer
  builds it (not fused; bitsandbytes' 8-bit Adam when installed, not here), linear warm-up/decay
  schedule, ``did_fire`` / ``num_tokens_since_fired`` bookkeeping);
* ``sparsify_adam_fused``: the same with ``torch.optim.Adam(fused=True)``, as ours, so the ratio
  against it compares the SAE code alone;
* ``sparsify_signum``: sparsify's default optimiser (``ScheduleFreeWrapper(SignSGD, momentum=0.95)``,
  LR ``5e-3 / sqrt(n / 2**14)``).

The two Adam variants use the same LR as ours (5e-4). Sizes: Pythia-70m's (d 512, expansion 32 ->
16,384 latents, k 32) and the default study's (d 128, 1,024 latents, k 16), at 1,024 and 4,096 tokens
per batch. Variants are interleaved (a, b, c, d, a, b, ...); medians of the repeats, of this process's
CPU time (``time.process_time``; with ``--threads 1`` nearly immune to other load) and of wall time.
Each step is also split into phases (forward, backward, optimiser, ...), and the top operators of one
step of ours and of sparsify's (fused Adam) are printed for the first size and batch (``torch.profiler``;
``--no-profile`` skips it).

**Quality at equal tokens.** Both train on the same real LM activations (default: the default
study's tiny-neox layer-2 cache, 400k training tokens x d 128; held-out: its validation cache), one
epoch in the same shuffled order, batch 256 (the default study's), at expansion 8 / k 16 and
expansion 32 / k 32, with

* ``A, our recipe for both``: Adam (0.9, 0.999), LR 2e-3 with the trainer's warm-up/decay schedule
  (the default study's settings), inputs scaled to mean norm sqrt(d) (``expected_norm``);
* ``B, sparsify's recipe for both``: schedule-free SignSGD, LR ``5e-3 / sqrt(n / 2**14)``, raw inputs;
* ``sparsify, its Adam option``: Adam, LR ``2e-4 / sqrt(n / 2**14)``, 1,000 warm-up steps, linear decay.

Each SAE keeps its own model: initialisation, loss (MSE vs FVU), decoder handling (ours: renormalise
after each step; sparsify: ``b_dec`` = first batch's mean, centred encoder input, renormalise before
each step, gradient projection). Reported on the held-out rows: FVU = 1 - explained variance (ratio of
sums, :func:`jsae.eval.metrics.explained_variance`, in raw units) and the fraction of dead latents
(never fired on any held-out token). Without the cache, a synthetic sparse dataset is used (labelled).
``--ours-bdec-mean`` adds an ablation: ours on recipe A with ``b_dec`` set to the first batch's mean (as
sparsify does) instead of the paper's zero.

    python benchmarks/bench_sparsify.py --threads 1                       # everything, ~10 min CPU (2 seeds)
    python benchmarks/bench_sparsify.py --threads 1 --sizes small --no-quality   # quick check
    python benchmarks/bench_sparsify.py --threads 1 --no-steps --seeds 0 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from jsae.eval.metrics import explained_variance, firing_counts
from jsae.nn.pair import expected_norm_scale, mse
from jsae.nn.sae import TopKSAE
from jsae.train.dead import DeadLatentTracker
from jsae.train.run import NORM_ESTIMATE_TOKENS
from jsae.train.schedules import lr_at

# name: (d_model, n_latents, k)
SIZES = {"pythia-70m": (512, 16384, 32), "small": (128, 1024, 16)}
STEP_VARIANTS = ("ours", "sparsify_adam", "sparsify_adam_fused", "sparsify_signum")
QUALITY_SIZES = ((8, 16), (32, 32))  # (expansion, k) at the cache's d
DEFAULT_CACHE = "/tmp/fresh.*/x/results/cache/tiny-neox/L2/train.h5"

Tick = Callable[[str], None]


def _no_tick(_label: str) -> None:
    return None


def signum_lr(n: int) -> float:
    """sparsify's default LR for its schedule-free SignSGD (``sparsify.trainer``)."""
    return 5e-3 / (n / 2**14) ** 0.5


def sparsify_adam_lr(n: int) -> float:
    """sparsify's default LR for its Adam option."""
    return 2e-4 / (n / 2**14) ** 0.5


# -- the two training steps ---------------------------------------------------------------------------


class OurStep:
    """One SAE stepped as ``Trainer.train_step`` steps each SAE of a pair (plain lam = 0, no AuxK, CPU)."""

    def __init__(self, d: int, n: int, k: int, *, lr: float, n_steps: int, seed: int = 0,
                 optimizer: str = "adam", schedule: bool = True, bdec_mean: bool = False) -> None:
        self.sae = TopKSAE(d, n, k, seed=seed)
        self.bdec_mean = bdec_mean  # ablation, not the trainer: b_dec = the first batch's mean (as sparsify)
        self.lr, self.n_steps, self.schedule, self.step_i = lr, n_steps, schedule, 0
        if optimizer == "adam":  # as the Trainer: betas / eps from TrainConfig's defaults, fused on CPU
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        else:
            self.opt = _signum(self.sae.parameters(), lr)
        self.dead = DeadLatentTracker(n, 10_000_000)

    def __call__(self, x: torch.Tensor, tick: Tick = _no_tick) -> None:
        if self.bdec_mean and self.step_i == 0:
            self.sae.b_dec.data = x.mean(0)
        if self.schedule:
            lr = lr_at(self.step_i % self.n_steps, self.n_steps, lr=self.lr)
            for group in self.opt.param_groups:
                group["lr"] = lr
        vals, idx = self.sae.encode(x)
        loss = mse(x, self.sae.decode(vals, idx))
        tick("forward")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        tick("backward")
        self.opt.step()
        tick("optimizer")
        self.sae.normalize_decoder_()
        self.dead.update(vals.detach(), idx)
        tick("renorm+bookkeeping")
        self.step_i += 1

    def finish(self) -> None:
        if hasattr(self.opt, "eval"):  # schedule-free: evaluate at the averaged weights
            self.opt.eval()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vals, idx = self.sae.encode(x)
        return self.sae.decode(vals, idx), vals, idx


def _signum(params, lr: float):
    from schedulefree import ScheduleFreeWrapper
    from sparsify.sign_sgd import SignSGD

    opt = ScheduleFreeWrapper(SignSGD([{"params": list(params), "lr": lr}]), momentum=0.95)
    opt.train()
    return opt


class SparsifyStep:
    """``sparsify.SparseCoder`` stepped as ``sparsify.trainer.Trainer.fit`` does (``loss_fn="fvu"``, one
    hookpoint, no AuxK, no gradient accumulation). ``optimizer``: ``adam`` (its trainer's construction:
    ``torch.optim.Adam`` with ``get_linear_schedule_with_warmup``), ``adam_fused``, ``signum`` (its default),
    or ``adam_ours`` (fused Adam on our trainer's ``lr_at`` schedule: the identical-settings run)."""

    def __init__(self, d: int, n: int, k: int, *, lr: float, n_steps: int, seed: int = 0,
                 optimizer: str = "adam", warmup_steps: int = 1000) -> None:
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(seed)  # as its trainer, before building each SAE
        self.sae = SparseCoder(d, SparseCoderConfig(k=k, num_latents=n), "cpu", dtype=torch.float32)
        self.n, self.lr, self.n_steps, self.optimizer, self.step_i = n, lr, n_steps, optimizer, 0
        self.sched = None
        if optimizer == "signum":
            self.opt = _signum(self.sae.parameters(), lr)
        else:
            self.opt = torch.optim.Adam([{"params": list(self.sae.parameters()), "lr": lr}],
                                        fused=True if optimizer in ("adam_fused", "adam_ours") else None)
            if optimizer == "adam":
                from transformers import get_linear_schedule_with_warmup

                self.sched = get_linear_schedule_with_warmup(self.opt, warmup_steps, n_steps)
        self.num_tokens_since_fired = torch.zeros(n, dtype=torch.long)
        self.did_fire = torch.zeros(n, dtype=torch.bool)

    def __call__(self, x: torch.Tensor, tick: Tick = _no_tick) -> None:
        sae = self.sae
        if self.optimizer == "adam_ours":
            lr = lr_at(self.step_i % self.n_steps, self.n_steps, lr=self.lr)
            for group in self.opt.param_groups:
                group["lr"] = lr
        if self.step_i == 0:  # its trainer: b_dec = the first batch's mean
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x - x.mean(0)).pow(2).sum()
        tick("renorm+bookkeeping")
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        self.did_fire[out.latent_indices.flatten()] = True
        _logged_fvu = float(out.fvu.detach())  # its trainer logs the FVU every step (a host sync)
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        tick("forward")
        loss.div(1).backward()
        tick("backward")
        sae.remove_gradient_parallel_to_decoder_directions()
        tick("grad projection")
        self.opt.step()
        self.opt.zero_grad()
        if self.sched is not None:
            self.sched.step()
        tick("optimizer")
        with torch.no_grad():
            self.num_tokens_since_fired += x.shape[0]
            self.num_tokens_since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        tick("renorm+bookkeeping")
        self.step_i += 1

    def finish(self) -> None:
        if hasattr(self.opt, "eval"):  # its checkpoints are written after optimizer.eval()
            self.opt.eval()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.sae(x)
        return out.sae_out, out.latent_acts, out.latent_indices


def build_step(variant: str, d: int, n: int, k: int, lr: float, seed: int = 0):
    big = 10**6  # a long run: the schedules sit at their plateau (Adam's warm-up is over after step 1000 ...)
    if variant == "ours":
        return OurStep(d, n, k, lr=lr, n_steps=big, seed=seed)
    if variant == "sparsify_signum":
        return SparsifyStep(d, n, k, lr=signum_lr(n), n_steps=big, seed=seed, optimizer="signum")
    opt = {"sparsify_adam": "adam", "sparsify_adam_fused": "adam_fused"}[variant]
    return SparsifyStep(d, n, k, lr=lr, n_steps=big, seed=seed, optimizer=opt)


# -- step time ---------------------------------------------------------------------------------------


class Phases:
    """``tick(label)`` adds the CPU time since the previous tick to ``label``."""

    def __init__(self) -> None:
        self.t = time.process_time()
        self.sums: dict[str, float] = {}

    def __call__(self, label: str) -> None:
        now = time.process_time()
        self.sums[label] = self.sums.get(label, 0.0) + now - self.t
        self.t = now


def time_steps(args) -> list[dict]:
    rows = []
    for size in args.sizes:
        d, n, k = SIZES[size]
        for batch in args.batches:
            steps = {v: build_step(v, d, n, k, args.lr) for v in STEP_VARIANTS}
            x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)) + 0.5
            for v in STEP_VARIANTS:
                for _ in range(args.warmup):
                    steps[v](x)
            cpu: dict[str, list[float]] = {v: [] for v in STEP_VARIANTS}
            wall: dict[str, list[float]] = {v: [] for v in STEP_VARIANTS}
            phases: dict[str, list[dict[str, float]]] = {v: [] for v in STEP_VARIANTS}
            for _ in range(args.repeats):
                for v in STEP_VARIANTS:
                    tick = Phases()
                    w0, c0 = time.perf_counter(), time.process_time()
                    tick.t = c0
                    steps[v](x, tick)
                    cpu[v].append(time.process_time() - c0)
                    wall[v].append(time.perf_counter() - w0)
                    phases[v].append(tick.sums)
            med = {v: statistics.median(cpu[v]) for v in STEP_VARIANTS}
            med_wall = {v: statistics.median(wall[v]) for v in STEP_VARIANTS}
            print(f"\n[{size}: d {d}, n {n}, k {k}, batch {batch}]   CPU ms/step  wall ms/step  tokens/s (CPU)"
                  "  ours / this (CPU)  ours / this (wall)")
            for v in STEP_VARIANTS:
                print(f"  {v:<20} {1e3 * med[v]:11.1f} {1e3 * med_wall[v]:12.1f} {batch / med[v]:15.0f}"
                      f" {med['ours'] / med[v]:18.2f} {med_wall['ours'] / med_wall[v]:19.2f}")
            for v in STEP_VARIANTS:
                labels = list(phases[v][0])
                parts = {lab: statistics.median(p.get(lab, 0.0) for p in phases[v]) for lab in labels}
                print(f"  phases {v:<20} " + ", ".join(f"{lab} {1e3 * s:.1f} ms" for lab, s in parts.items()))
                rows.append({"size": size, "d": d, "n_latents": n, "k": k, "batch": batch, "variant": v,
                             "cpu_s": med[v], "wall_s": med_wall[v], "tokens_per_cpu_s": batch / med[v],
                             "ours_over_this_cpu": med["ours"] / med[v],
                             "ours_over_this_wall": med_wall["ours"] / med_wall[v], "phases_cpu_s": parts})
            if args.profile and size == args.sizes[0] and batch == args.batches[0]:
                profile(steps, x)
            del steps
    return rows


def profile(steps: dict, x: torch.Tensor, top: int = 8) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for v in ("ours", "sparsify_adam_fused"):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            steps[v](x)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        print(f"  profile {v} (one step, self CPU, total {total / 1e3:.0f} ms): " + ", ".join(
            f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:top]))


# -- quality at equal tokens --------------------------------------------------------------------------


def load_data(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    paths = sorted(glob.glob(args.cache)) if args.cache else []
    if paths:
        from jsae.data.cache import ActivationCache

        train_path = Path(paths[0])
        with ActivationCache.open(train_path) as c:
            n = min(c.n_tokens, args.train_tokens or c.n_tokens)
            train = c.read(0, n)
        val_path = train_path.with_name("validation.h5")
        if val_path.is_file():
            with ActivationCache.open(val_path) as c:
                held = c.read(0, min(c.n_tokens, args.eval_tokens))
            return train, held, f"{train_path} ({n} tokens) / held out: {val_path} ({held.shape[0]} tokens)"
        held = train[-args.eval_tokens:]
        train = train[: -args.eval_tokens]
        return train, held, f"{train_path} ({train.shape[0]} tokens; the last {held.shape[0]} held out)"
    # Fallback: synthetic sparse data (a planted dictionary, k-sparse codes, an offset, noise).
    g = torch.Generator().manual_seed(0)
    d, n_dict, k_true = 128, 2048, 12
    D = torch.nn.functional.normalize(torch.randn(n_dict, d, generator=g), dim=1)
    offset = torch.randn(d, generator=g)

    def sample(rows: int) -> torch.Tensor:
        idx = torch.randint(0, n_dict, (rows, k_true), generator=g)
        vals = torch.rand(rows, k_true, generator=g) * 2
        x = torch.nn.functional.embedding_bag(idx, D, per_sample_weights=vals, mode="sum")
        return x + offset + 0.05 * torch.randn(rows, d, generator=g)

    n = args.train_tokens or 400_000
    return sample(n), sample(args.eval_tokens), f"SYNTHETIC (no cache at {args.cache!r}): {n} tokens, d {d}"


def quality_runs(n: int, bdec_mean: bool = False) -> list[tuple[str, str, dict]]:
    """(label, implementation, settings) of the runs per (size, seed); ``bdec_mean`` adds the ablation."""
    extra = [("A, ours b_dec = mean", "ours", {"optimizer": "adam_ours", "lr": 2e-3, "scaled": True,
                                                     "bdec_mean": True})] if bdec_mean else []
    return extra + [
        ("A: our recipe", "ours", {"optimizer": "adam_ours", "lr": 2e-3, "scaled": True}),
        ("A: our recipe", "sparsify", {"optimizer": "adam_ours", "lr": 2e-3, "scaled": True}),
        ("B: sparsify's recipe", "ours", {"optimizer": "signum", "lr": signum_lr(n), "scaled": False}),
        ("B: sparsify's recipe", "sparsify", {"optimizer": "signum", "lr": signum_lr(n), "scaled": False}),
        ("sparsify's Adam option", "sparsify", {"optimizer": "adam", "lr": sparsify_adam_lr(n), "scaled": False}),
    ]


def train_and_eval(impl: str, settings: dict, train: torch.Tensor, held: torch.Tensor, order: torch.Tensor,
                   n: int, k: int, batch: int, seed: int, scale: float) -> dict:
    d = train.shape[1]
    n_steps = order.shape[0] // batch
    s = scale if settings["scaled"] else 1.0
    if impl == "ours":
        opt = "adam" if settings["optimizer"] == "adam_ours" else "signum"
        model = OurStep(d, n, k, lr=settings["lr"], n_steps=n_steps, seed=seed, optimizer=opt,
                        schedule=opt == "adam", bdec_mean=settings.get("bdec_mean", False))
    else:
        model = SparsifyStep(d, n, k, lr=settings["lr"], n_steps=n_steps, seed=seed, optimizer=settings["optimizer"])
    c0 = time.process_time()
    for i in range(n_steps):
        x = train.index_select(0, order[i * batch:(i + 1) * batch])
        model(x * s if s != 1.0 else x)
    cpu = time.process_time() - c0
    model.finish()
    recons, counts = [], torch.zeros(n, dtype=torch.int64)
    for chunk in held.split(8192):
        x_hat, vals, idx = model.reconstruct(chunk * s if s != 1.0 else chunk)
        recons.append(x_hat / s if s != 1.0 else x_hat)
        counts += firing_counts(vals, idx, n)
    fvu = 1.0 - explained_variance(held, torch.cat(recons))
    return {"fvu": fvu, "dead_fraction": float((counts == 0).double().mean()), "train_cpu_s": cpu,
            "steps": n_steps}


def quality(args) -> tuple[list[dict], str]:
    train, held, source = load_data(args)
    d = train.shape[1]
    print(f"\nquality data: {source}; batch {args.quality_batch}, one epoch, seeds {args.seeds}", flush=True)
    rows = []
    for expansion, k in QUALITY_SIZES:
        n = d * expansion
        for seed in args.seeds:
            order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
            first = train.index_select(0, order[:NORM_ESTIMATE_TOKENS])
            scale = expected_norm_scale(first.double().norm(dim=1), d)  # as estimate_activation_scales
            for label, impl, settings in quality_runs(n, args.ours_bdec_mean):
                r = train_and_eval(impl, settings, train, held, order, n, k, args.quality_batch, seed, scale)
                row = {"expansion": expansion, "n_latents": n, "k": k, "seed": seed, "settings": label,
                       "impl": impl, "optimizer": settings["optimizer"], "lr": settings["lr"], **r}
                rows.append(row)
                print(f"  n {n:5d} k {k:2d} seed {seed}  {label:<24} {impl:<9} FVU {r['fvu']:.4f}  "
                      f"dead {100 * r['dead_fraction']:5.1f}%  ({r['steps']} steps, {r['train_cpu_s']:.1f} CPU s)",
                      flush=True)
    print("\nsummary (mean over seeds)        FVU ours  FVU sparsify  dead ours  dead sparsify"
          "  train CPU ours/sparsify")
    for expansion, k in QUALITY_SIZES:
        for label in dict.fromkeys(lab for lab, _, _ in quality_runs(d * expansion, args.ours_bdec_mean)):
            here = [r for r in rows if r["expansion"] == expansion and r["settings"] == label]
            sel = {impl: [r for r in here if r["impl"] == impl] for impl in ("ours", "sparsify")}

            def mean(impl: str, key: str, sel: dict = sel) -> float:
                vals = [r[key] for r in sel[impl]]
                return statistics.fmean(vals) if vals else math.nan

            print(f"  exp {expansion:2d} k {k:2d} {label:<24} {mean('ours', 'fvu'):8.4f}"
                  f" {mean('sparsify', 'fvu'):13.4f}"
                  f" {100 * mean('ours', 'dead_fraction'):9.1f}% {100 * mean('sparsify', 'dead_fraction'):13.1f}%"
                  f" {mean('ours', 'train_cpu_s') / mean('sparsify', 'train_cpu_s'):24.2f}")
    return rows, source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="step-time sizes")
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 4096], help="tokens per step (step time)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4, help="Adam LR of ours and sparsify's Adam (step time)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the torch.profiler top operators of one step")
    p.add_argument("--no-steps", action="store_true", help="skip the step-time comparison")
    p.add_argument("--no-quality", action="store_true", help="skip the quality comparison")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="training activation cache (glob; first match)")
    p.add_argument("--train-tokens", type=int, default=None, help="training tokens (default: the whole cache)")
    p.add_argument("--eval-tokens", type=int, default=40_000, help="held-out tokens for FVU and dead latents")
    p.add_argument("--quality-batch", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ours-bdec-mean", action="store_true",
                   help="also train ours (recipe A) with b_dec = the first batch's mean (an ablation, not our trainer)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device cpu ({machine}), torch {torch.__version__}, sparsify {version('eai-sparsify')}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    w0, c0 = time.perf_counter(), time.process_time()
    steps = [] if args.no_steps else time_steps(args)
    qual, source = ([], None) if args.no_quality else quality(args)
    print(f"\ntotal {time.perf_counter() - w0:.0f} s wall, {time.process_time() - c0:.0f} s CPU; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "torch": torch.__version__, "args": vars(args),
                                               "steps": steps, "quality": qual, "quality_data": source}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
