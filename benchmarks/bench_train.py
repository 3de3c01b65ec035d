"""End-to-end training throughput (tokens/s) from a real HDF5 activation cache, same run, four ways.

For each size (the default study's tiny-neox and Pythia-70m's d 512, d_mlp 2048, expansion 32,
k 32) it builds a real cache with ``jsae.data.cache.build_cache`` from a randomly initialised GPT-NeoX of
those widths (so reading, shuffling and prefetching are the real code paths), then times

* ``trainer``: :class:`jsae.train.trainer.Trainer` end to end (cache reader, schedules, Adam, decoder renorm,
  dead-latent tracking, metric logging), for the JSAE pair (lam = 1) and the lam = 0 pair;
* ``bare``: the same optimisation step on batches already in memory (no reader, no bookkeeping),
  the baseline the trainer's overhead is measured against. Trainer and baseline steps alternate
  and per-step medians are reported, so load on a shared machine hits both alike;

and reports the fraction of the trainer's time spent waiting on the reader. ``--auxk`` adds both
pairs with the AuxK loss (coefficient 1/32; its bare baseline uses a fixed mask with half the
latents dead), to measure AuxK's cost. Optionally (``--sae-lens``, needs ``sae-lens``) it times one
TopK SAE training step against SAELens's own (``TopKTrainingSAE`` through
``SAETrainer._train_step``) at the Pythia-70m size.

    python benchmarks/bench_train.py                    # default: both sizes, CPU-friendly budgets
    python benchmarks/bench_train.py --sae-lens --json out.json
    python benchmarks/bench_train.py --sizes default-study --auxk            # AuxK's cost
    python benchmarks/bench_train.py --sizes pythia-70m --batch-size 4096 --steps 20   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from jsae.devices import resolve_device  # noqa: E402
from jsae.nn.pair import AuxK  # noqa: E402
from jsae.train import TrainConfig, Trainer, build_pair  # noqa: E402

# name: (d_model, d_mlp, expansion, k, default batch size on CPU, default timed steps on CPU)
SIZES = {
    "default-study": (128, 512, 8, 16, 1024, 30),
    "pythia-70m": (512, 2048, 32, 32, 1024, 3),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_cache(root: Path, d: int, d_mlp: int, n_tokens: int) -> tuple[str, Path]:
    """A saved random GPT-NeoX of the given widths and the layer-0 cache of ``n_tokens`` tokens."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from jsae.data.cache import build_cache
    from jsae.data.corpus import build_corpus
    from jsae.data.pretrain import train_tokenizer

    words = "the of and to in is was that for on with as by at from light water earth day night said king".split()
    g = torch.Generator().manual_seed(0)
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    n_docs, words_per_doc = 40, max(200, n_tokens // 20)
    for i in range(n_docs):
        idx = torch.randint(0, len(words), (words_per_doc,), generator=g).tolist()
        (docs / f"doc{i}.txt").write_text(" ".join(words[j] for j in idx) + ".\n")
    corpus = root / "corpus"
    build_corpus(corpus, source="files", globs=[str(docs / "*.txt")], validation_fraction=0.05)
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=d, intermediate_size=d_mlp, num_hidden_layers=1,
                        num_attention_heads=max(1, d // 64), max_position_embeddings=128, hidden_act="gelu")
    model_dir = root / "model"
    GPTNeoXForCausalLM(cfg).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    cache = root / "train.h5"
    build_cache(str(model_dir), 0, corpus, "train", n_tokens, 128, cache, device="cpu", progress=False, batch_size=16)
    return str(model_dir), cache


class BareSteps:
    """The optimisation steps alone on in-memory batches (the baseline), one timed step per call."""

    def __init__(self, pair, config: TrainConfig, batches: list[torch.Tensor], device: torch.device) -> None:
        self.pair, self.lam, self.batches, self.device = pair, config.lam, batches, device
        self.auxk = None
        if config.auxk_coef > 0:  # a fixed mask: every other latent dead
            dims = config.dims(pair.sae_in.d_in, pair.sae_out.d_in)
            half = [torch.arange(sae.n_latents, device=device) % 2 == 0 for sae in (pair.sae_in, pair.sae_out)]
            self.auxk = AuxK(config.auxk_coef, *half, dims["k_aux_in"], dims["k_aux_out"])
        self.opt = torch.optim.Adam([p for s in (pair.sae_in, pair.sae_out) for p in s.parameters()], lr=config.lr,
                                    fused=device.type in ("cpu", "cuda") or None)  # as the Trainer
        self.times: list[float] = []

    def step(self) -> None:
        x = self.batches[len(self.times) % len(self.batches)]
        sync(self.device)
        t0 = time.perf_counter()
        loss, _ = self.pair.loss(x, self.lam, self.auxk)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.pair.normalize_decoders_()
        sync(self.device)
        self.times.append(time.perf_counter() - t0)


def bench_size(name: str, args, device: torch.device, root: Path) -> list[dict]:
    from jsae.data.cache import ActivationCache
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model
    from jsae.nn.mlp import mlp_from_module

    d, d_mlp, expansion, k, batch_default, steps_default = SIZES[name]
    B = args.batch_size or batch_default
    steps = args.steps or steps_default
    n_cache = max(8 * B, 8192)
    t0 = time.perf_counter()
    model_dir, cache_path = make_cache(root / name, d, d_mlp, n_cache)
    print(f"[{name}] cache of {n_cache} tokens x {d} built in {time.perf_counter() - t0:.1f}s", flush=True)
    lm, _ = load_model(model_dir)
    mlp = mlp_from_module(mlp_module(lm, 0))
    cache = ActivationCache.open(cache_path)
    rows = []
    variants = [(1.0, 0.0), (0.0, 0.0)] + ([(1.0, 1 / 32), (0.0, 1 / 32)] if args.auxk else [])
    for lam, auxk_coef in variants:
        config = TrainConfig(lam=lam, n_tokens=(steps + 1) * B, batch_size=B, k=k, expansion=expansion,
                             auxk_coef=auxk_coef)
        batches = [b.to(device) for b, _ in zip(cache.batches(B, seed=1), range(4))]
        bare = BareSteps(build_pair(mlp, config, device=device), config, batches, device)
        bare.step()  # warm-up (allocator, kernels)
        bare.times.clear()
        # Trainer and baseline steps alternate (the baseline runs in the trainer's step callback), so
        # load drifts on a shared machine hit both alike; medians of per-step times are reported.
        marks: list[tuple[float, float]] = []

        def interleave(_step: int, bare: BareSteps = bare, marks: list = marks) -> None:
            t_end = time.perf_counter()
            bare.step()
            marks.append((t_end, time.perf_counter()))

        trainer = Trainer(build_pair(mlp, config, device=device), cache, config, device=device, progress=False,
                          log_every=args.log_every, on_step=interleave)
        out = trainer.run()
        # trainer step i = from leaving callback i-1 to entering callback i (reader wait, step, logging)
        step_times = [marks[i][0] - marks[i - 1][1] for i in range(1, len(marks))]
        t_tr, t_bare = statistics.median(step_times), statistics.median(bare.times)
        row = {
            "size": name, "pair": ("jsae (lam=1)" if lam else "lam=0") + (" + auxk" if auxk_coef else ""),
            "d": d, "d_mlp": d_mlp,
            "n_latents": d * expansion, "k": k, "batch": B, "steps": steps,
            "trainer_tokens_per_s": B / t_tr, "bare_tokens_per_s": B / t_bare,
            "trainer_over_bare": t_tr / t_bare,
            "reader_fraction": out.timings["reader_wait_s"] / out.timings["train_s"],
        }
        rows.append(row)
        print(f"[{name}] {row['pair']:<20} trainer {row['trainer_tokens_per_s']:9.0f} tok/s   bare "
              f"{row['bare_tokens_per_s']:9.0f} tok/s   trainer/bare step time {row['trainer_over_bare']:.2f}x   "
              f"reader {100 * row['reader_fraction']:.1f}% of training time", flush=True)
    cache.close()
    return rows


def bench_sae_lens(args, device: torch.device) -> dict | None:
    """One TopK SAE step at Pythia-70m size: ours vs SAELens's TopKTrainingSAE through its trainer."""
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError as exc:
        print(f"[sae-lens] skipped: {exc}")
        return None
    from jsae.nn.pair import mse
    from jsae.nn.sae import TopKSAE

    d, _, expansion, k, B, _ = SIZES["pythia-70m"]
    B = args.batch_size or B
    n = d * expansion
    x = torch.randn(B, d, device=device)
    theirs = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, dtype="float32", device=str(device)))
    trainer_cfg = SAETrainerConfig(total_training_samples=B * 1000, train_batch_size_samples=B, lr=5e-4, lr_end=5e-4,
                                   device=str(device))
    trainer = SAETrainer(trainer_cfg, theirs, data_provider=iter(()))
    ours = TopKSAE(d, n, k, seed=0, device=device)
    opt = torch.optim.Adam(ours.parameters(), lr=5e-4)

    def our_step() -> None:
        loss = mse(x, ours(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ours.normalize_decoder_()

    def their_step() -> None:
        trainer._train_step(theirs, x)

    times = {"ours": [], "sae_lens": []}
    for f in (our_step, their_step):
        f()  # warm-up
    for _ in range(args.sae_lens_repeats):
        for name, f in (("ours", our_step), ("sae_lens", their_step)):
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    t = {name: statistics.median(v) for name, v in times.items()}
    row = {"d": d, "n_latents": n, "k": k, "batch": B, "ours_s": t["ours"], "sae_lens_s": t["sae_lens"],
           "ours_over_sae_lens": t["ours"] / t["sae_lens"]}
    print(f"[sae-lens] one TopK SAE step, d {d}, n {n}, k {k}, batch {B}: ours {t['ours']:.3f}s, "
          f"SAELens {t['sae_lens']:.3f}s -> ours/SAELens = {row['ours_over_sae_lens']:.2f} (goal <= 0.4)")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batch-size", type=int, default=None, help="tokens per step (default: per size, CPU-friendly)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: per size)")
    p.add_argument("--log-every", type=int, default=10, help="trainer log interval (each log computes metrics)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--auxk", action="store_true", help="also time the JSAE pair with the AuxK loss (1/32)")
    p.add_argument("--sae-lens", action="store_true", help="also time one TopK SAE step against SAELens's")
    p.add_argument("--sae-lens-repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device {device} ({machine}), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in args.sizes:
            rows += bench_size(name, args, device, Path(tmp))
    sae_lens = bench_sae_lens(args, device) if args.sae_lens else None
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "machine": machine, "torch": torch.__version__,
                                               "args": vars(args), "train": rows, "sae_lens_step": sae_lens}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
