"""The embedded default model: a byte-level BPE tokenizer and a small Pythia-architecture GPT-NeoX,
both trained here on a corpus directory, saved with ``save_pretrained`` so they load through the same
``from_pretrained`` code as Pythia.

The architecture is Pythia's: parallel residual, rotary embeddings on a quarter of each head, GELU MLP
of width 4 x hidden, untied input/output embeddings. Training is AdamW with a short warm-up and a
cosine decay over the run; the run stops on a wall-clock budget (``--minutes``) or on ``--max-steps``
(bit-reproducible for a seed; a time budget alone makes the step count depend on the machine). With
``--max-steps``, ``--minutes`` is only a cap: if it fires, pretraining fails (:class:`TimeCapError`), so a
loaded machine cannot silently produce a different model, unless ``--allow-time-cap`` accepts that
(``pretrain.json`` then records ``time_cap_fired``).
Every context starts with the BOS token, as in the activation cache.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from jsae.checks import check_positive_int
from jsae.cli import HelpFormatter
from jsae.data.corpus import (
    TokenStream,
    context_windows,
    corpus_info,
    iter_documents,
    make_contexts,
    tokenize_split,
)
from jsae.devices import resolve_device
from jsae.io import atomic_dir, setup_logging, write_json

log = logging.getLogger("jsae.data.pretrain")

SPECIAL_TOKEN = "<|endoftext|>"  # BOS, EOS, PAD and the document separator, as in GPT-2/Pythia


class TimeCapError(ValueError):
    """The time cap stopped a step-budgeted run early: the model would depend on the machine's speed.

    A ValueError, so ``python -m jsae pretrain`` exits with one line naming the fix (the config's budget).
    """


def train_tokenizer(corpus_dir: str | os.PathLike[str], *, vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE tokenizer (``tokenizers``) trained on the corpus' train split (``PreTrainedTokenizerFast``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_positive_int("vocab_size", vocab_size, minimum=256 + 1 + 1)  # 256 bytes, the special token, >= 1 merge
    info = corpus_info(corpus_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    t0 = time.perf_counter()
    n_docs = info["splits"]["train"]["documents"]
    tok.train_from_iterator(iter_documents(corpus_dir, "train"), trainer=trainer, length=n_docs)
    log.info("trained byte-level BPE tokenizer (vocab %d) in %.1fs", tok.get_vocab_size(), time.perf_counter() - t0)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                                   pad_token=SPECIAL_TOKEN, unk_token=None, model_max_length=1 << 30)


def save_tokenizer(corpus_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, vocab_size: int = 4096) -> None:
    tokenizer = train_tokenizer(corpus_dir, vocab_size=vocab_size)
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)


@dataclass
class PretrainConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    vocab_size: int = 4096
    context_length: int = 128
    batch_size: int = 8  # contexts per step; small batches learn more per token on a CPU budget (measured)
    lr: float = 6e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    minutes: float = 6.0
    max_steps: int | None = None
    allow_time_cap: bool = False  # with max_steps: accept a run the minutes cap stopped early (else fail)
    eval_every_s: float = 60.0
    eval_contexts: int = 64
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "vocab_size", "batch_size", "eval_contexts"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("context_length", self.context_length, minimum=2)  # BOS + at least one token
        check_positive_int("max_steps", self.max_steps, allow_none=True)
        if self.hidden % self.heads or (self.hidden // self.heads) % 4:
            raise ValueError(f"hidden={self.hidden} with heads={self.heads} is invalid; "
                             "expected hidden divisible by heads with head size a multiple of 4 (rotary)")
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError(f"minutes={self.minutes!r} is invalid; expected a positive time budget")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is invalid; expected a positive learning rate")


def tiny_neox_config(cfg: PretrainConfig, tokenizer):
    """A Pythia-architecture ``GPTNeoXConfig`` of the requested size."""
    from transformers import GPTNeoXConfig

    sid = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    return GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=4 * cfg.hidden, max_position_embeddings=cfg.context_length, hidden_act="gelu",
        use_parallel_residual=True, rotary_pct=0.25, tie_word_embeddings=False, attention_dropout=0.0,
        hidden_dropout=0.0, bos_token_id=sid, eos_token_id=sid, pad_token_id=sid,
    )


def unigram_entropy(train: TokenStream, validation: TokenStream, vocab: int) -> float:
    """Cross-entropy (nats/token) of validation under add-one unigram frequencies of train: the floor to beat."""
    counts = np.bincount(train.ids, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[validation.ids].mean())


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate_loss(model, contexts: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats/token) over the contexts (predictions of positions 1..C-1)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(contexts), batch_size):
        ids = contexts[i : i + batch_size]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum")
        total, count = total + float(loss), count + ids[:, 1:].numel()
    model.train()
    return total / count


def pretrain(corpus_dir: str | os.PathLike[str], out: str | os.PathLike[str], cfg: PretrainConfig | None = None,
             *, tokenizer_dir: str | os.PathLike[str] | None = None) -> dict:
    """Train the tokenizer (unless ``tokenizer_dir`` is given) and the model; write ``out`` with ``pretrain.json``."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    cfg = cfg or PretrainConfig()
    cfg.validate()
    device = resolve_device(cfg.device)
    info = corpus_info(corpus_dir)
    t_start = time.perf_counter()
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = train_tokenizer(corpus_dir, vocab_size=cfg.vocab_size)
    train, val = tokenize_split(tokenizer, corpus_dir, "train"), tokenize_split(tokenizer, corpus_dir, "validation")
    n_train, n_val = context_windows(len(train), cfg.context_length), context_windows(len(val), cfg.context_length)
    if n_train < cfg.batch_size or n_val < 1:
        raise ValueError(f"corpus {corpus_dir} gives {n_train} train / {n_val} validation contexts of length "
                         f"{cfg.context_length}; "
                         f"expected >= batch_size={cfg.batch_size} train and >= 1 validation context")
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    rng = np.random.default_rng(cfg.seed)
    val_windows = np.sort(rng.choice(n_val, size=min(cfg.eval_contexts, n_val), replace=False))
    val_ctx = torch.from_numpy(make_contexts(val, val_windows, cfg.context_length, bos)[0]).to(device)
    baseline = unigram_entropy(train, val, len(tokenizer))
    t_prep = time.perf_counter() - t_start
    log.info("tokens: train %d, validation %d; unigram baseline %.3f nats/token", len(train), len(val), baseline)

    torch.manual_seed(cfg.seed)
    model = GPTNeoXForCausalLM(tiny_neox_config(cfg, tokenizer)).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    budget_s = cfg.minutes * 60.0
    curve: list[dict] = []
    order = rng.permutation(n_train)
    cursor, step, tokens, epoch = 0, 0, 0, 0
    t0 = last_eval = time.perf_counter()
    total = cfg.max_steps if cfg.max_steps is not None else round(budget_s)
    bar = tqdm(total=total, unit="step" if cfg.max_steps is not None else "s", desc="pretrain tiny-neox",
               dynamic_ncols=True)
    stopped_by = "max_steps"
    while True:
        elapsed = time.perf_counter() - t0
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        if elapsed >= budget_s:
            stopped_by = "time_budget"
            break
        progress = step / cfg.max_steps if cfg.max_steps is not None else elapsed / budget_s
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(progress, step, cfg.warmup_steps)
        if cursor + cfg.batch_size > n_train:  # a new epoch: a fresh order of the windows
            order, cursor, epoch = rng.permutation(n_train), 0, epoch + 1
        window = order[cursor : cursor + cfg.batch_size]
        ids = torch.from_numpy(make_contexts(train, window, cfg.context_length, bos)[0]).to(device)
        cursor += cfg.batch_size
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + ids[:, 1:].numel()
        now = time.perf_counter()
        bar.update(1 if cfg.max_steps is not None else round(now - t0) - bar.n)
        if now - last_eval >= cfg.eval_every_s:
            curve.append({"step": step, "tokens": tokens, "seconds": round(now - t0, 2),
                          "train_loss": float(loss.detach()), "validation_loss": evaluate_loss(model, val_ctx)})
            bar.set_postfix(train=f"{float(loss.detach()):.3f}", val=f"{curve[-1]['validation_loss']:.3f}")
            last_eval = time.perf_counter()
    bar.close()
    train_seconds = time.perf_counter() - t0
    final = evaluate_loss(model, val_ctx)
    curve.append({"step": step, "tokens": tokens, "seconds": round(train_seconds, 2),
                  "train_loss": float(loss.detach()) if step else None, "validation_loss": final})
    result = {
        "config": asdict(cfg), "device": str(device), "steps": step, "tokens": tokens,
        "epochs": round(tokens / max(1, n_train * (cfg.context_length - 1)), 3),
        "stopped_by": stopped_by, "train_seconds": round(train_seconds, 2), "prepare_seconds": round(t_prep, 2),
        "tokens_per_second": round(tokens / max(train_seconds, 1e-9), 1), "final_validation_loss": final,
        "unigram_baseline_loss": baseline, "validation_tokens_evaluated": int(val_ctx[:, 1:].numel()),
        "corpus_sha256": info["sha256"], "corpus_tokens": {"train": len(train), "validation": len(val)},
        "n_parameters": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "curve": curve,
    }
    time_cap_fired = cfg.max_steps is not None and stopped_by == "time_budget"
    if time_cap_fired and not cfg.allow_time_cap:  # before anything is written: no marker, the rule fails
        raise TimeCapError(time_cap_message(cfg, step, train_seconds))
    result["time_cap_fired"] = time_cap_fired
    model.eval()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "pretrain.json", result)
    log.info("tiny-neox: %d steps, %d tokens in %.0fs (%.0f tok/s); validation loss %.3f nats/token "
             "(unigram %.3f) -> %s", step, tokens, train_seconds, result["tokens_per_second"], final, baseline, out)
    if time_cap_fired:
        log.warning("the %g-minute cap stopped pretraining at step %d of max_steps=%d (allowed by allow_time_cap): "
                    "this model depends on the machine's speed; pretrain.json records time_cap_fired",
                    cfg.minutes, step, cfg.max_steps)
    return result


def time_cap_message(cfg: PretrainConfig, steps: int, seconds: float) -> str:
    """One line: where the cap stopped the run, and the budget that would let this machine finish."""
    if steps > 0 and seconds > 0:
        # this machine's pace, with a 50% margin for load that changes during the run
        need = math.ceil(1.5 * cfg.max_steps * seconds / steps / 60.0)
        hint = f"raise pretrain.minutes (--minutes) to at least {need} for this machine's pace"
    else:
        hint = "raise pretrain.minutes (--minutes)"
    return (f"the {cfg.minutes:g}-minute time cap stopped pretraining at step {steps} of max_steps={cfg.max_steps}, "
            f"so the model would depend on this machine's speed; {hint}, or set pretrain.allow_time_cap: true "
            "(--allow-time-cap) to accept a model stopped early")


def set_threads(threads: int | None) -> int:
    """Torch intra-op CPU threads for this process (a CLI choice, never set by library functions).

    ``None`` means ``$OMP_NUM_THREADS`` (what Snakemake's ``threads:`` sets) or else 1: on a shared
    2-core machine the small models here ran 5-10x faster on one thread than on two (measured).
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else 1
    check_positive_int("threads", threads)
    torch.set_num_threads(threads)
    return threads


def cli_tokenizer(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae tokenizer",
        description="Train a byte-level BPE tokenizer on a corpus' train split and save it (save_pretrained).",
    )
    p.add_argument("--corpus", required=True, help="corpus directory (python -m jsae corpus)")
    p.add_argument("--out", required=True, help="output tokenizer directory")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    save_tokenizer(a.corpus, a.out, vocab_size=a.vocab_size)
    return 0


def cli(argv: list[str]) -> int:
    d = PretrainConfig()
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m jsae pretrain",
        description="Pretrain the embedded tiny-neox (Pythia architecture: GPT-NeoX, parallel residual, rotary, "
        "GELU MLP) and its byte-level BPE tokenizer on a corpus, within a wall-clock budget. Writes a save_pretrained "
        "directory with pretrain.json (loss curve, final validation loss, timings) as the completion marker.",
    )
    p.add_argument("--corpus", required=True, help="corpus directory (python -m jsae corpus)")
    p.add_argument("--out", required=True, help="output model directory (e.g. results/models/tiny-neox)")
    p.add_argument("--tokenizer", default=None, help="reuse a tokenizer directory instead of training one")
    p.add_argument("--hidden", type=int, default=d.hidden, help="model width")
    p.add_argument("--layers", type=int, default=d.layers, help="transformer blocks")
    p.add_argument("--heads", type=int, default=d.heads, help="attention heads")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary")
    p.add_argument("--context-length", type=int, default=d.context_length, help="tokens per context incl. BOS")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="contexts per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (bit-reproducible schedule)")
    p.add_argument("--allow-time-cap", action="store_true",
                   help="with --max-steps: accept a run the --minutes cap stopped early (recorded in pretrain.json) "
                   "instead of failing")
    p.add_argument("--eval-every", type=float, default=d.eval_every_s, help="seconds between validation evaluations")
    p.add_argument("--seed", type=int, default=d.seed, help="initialisation and data-order seed (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 1; small models on a shared machine run "
                   "several times faster on 1 thread than on 2)")
    p.add_argument("--log-file", default=None, help="also write logs here")
    a = p.parse_args(argv)
    setup_logging(log_file=a.log_file)
    set_threads(a.threads)
    cfg = PretrainConfig(hidden=a.hidden, layers=a.layers, heads=a.heads, vocab_size=a.vocab_size,
                         context_length=a.context_length, batch_size=a.batch_size, lr=a.lr, minutes=a.minutes,
                         max_steps=a.max_steps, allow_time_cap=a.allow_time_cap, eval_every_s=a.eval_every,
                         seed=a.seed, device=a.device)
    pretrain(a.corpus, a.out, cfg, tokenizer_dir=a.tokenizer)
    return 0
