"""Train one JSAE pair (model, layer, lambda) from an activation cache: the paper's recipe, resumable.

Recipe (appendix D, every value configurable in :class:`TrainConfig`): Adam with default betas,
LR 5e-4 with 1% linear warm-up, constant, linear decay to 0 over the last 20%; lambda warmed up
linearly over the first 5% of steps; steps = token budget // batch size; both decoders renormalised
to unit rows after every step; optional gradient-norm clipping. ``lam = 0`` trains the traditional-SAE
baseline (two TopK SAEs, the Jacobian is then not computed for the loss).

Layers:

* :class:`Trainer` trains a :class:`~jsae.nn.pair.JSAEPair` in place from any :class:`BatchSource`
  (the HDF5 :class:`~jsae.data.cache.ActivationCache`, or :class:`InMemorySource` in tests/benchmarks),
  checkpointing atomically every N steps into a work directory and resuming from it exactly.
* :func:`run_training` adds the run directory (SAELens export + ``run.json``, written to a temp dir
  and renamed), the finished-run / bad-input checks and MLflow tracking.
* :func:`train_from_files` opens the cache and loads the model (the Snakemake rule and the CLI).

Metrics, every ``log_every`` steps (MLflow step = optimiser step; also ``metrics.jsonl``): ``loss``,
``in/mse``, ``out/mse`` and ``jac/l1_train`` (the loss's Jacobian term, 0 when lambda is 0) averaged
over the steps since the last log; ``jac/l1`` and ``jac/frac_above_0.01`` (share of the k_out x k_in
active |J| above 0.01, as :func:`jsae.eval.metrics.frac_above`) on the logged step's batch, computed for
lam = 0 too; ``lambda``, ``lr``; ``tokens_per_s``, ``reader_wait_fraction``; ``in/dead_fraction``,
``out/dead_fraction`` and ``*_count`` (:class:`DeadLatentTracker`).

Resume: the checkpoint (``.{run_dir}.work/checkpoint.pt`` next to the run directory) holds both
SAEs, the optimiser, the step (schedules are pure functions of it), RNG states, the reader position
(batches consumed = step), dead-latent counters, the metric history and the MLflow run id. A rerun
with the same arguments continues from it and, on CPU, ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from jsae.devices import DTYPES, TRAIN_DTYPES, autocast_dtype, resolve_device
from jsae.io import atomic_dir, atomic_path, read_json, setup_logging, write_json
from jsae.eval.metrics import frac_above, threshold_key
from jsae.nn.mlp import MLP, mlp_from_module
from jsae.nn.pair import ACTIVATION_NORMALIZATIONS, EVALUATION_POINT, JSAEPair, expected_norm_scale, jacobian_l1
from jsae.nn.sae import TopKSAE
from jsae.train.schedules import lambda_at, lr_at
from jsae.checks import check_k, check_positive_int, same_model

log = logging.getLogger("jsae.train.run")

CONTROLS = ("trained", "reinit")
CHECKPOINT_FORMAT = 1
METRICS_FILENAME = "metrics.jsonl"
#: |J| threshold of the logged ``jac/frac_above_0.01`` (the paper's headline sparsity threshold).
JAC_THRESHOLD = 0.01
#: The scalar loss parts of ``JSAEPair.loss`` averaged over each log window.
SCALAR_PARTS = ("loss", "mse_in", "mse_out", "jac")
#: Tokens read from the start of the data order to estimate the activation scales (expected_norm).
NORM_ESTIMATE_TOKENS = 65536


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter that determines the trained weights (recorded in run.json and MLflow).

    ``n_latents`` overrides ``expansion`` (latents = expansion * d_in); ``k_out`` / ``n_latents_out``
    default to the input SAE's values. Fractions are of the total number of steps.
    """

    lam: float
    n_tokens: int
    batch_size: int = 4096
    k: int = 32
    expansion: float | None = 32.0
    n_latents: int | None = None
    k_out: int | None = None
    n_latents_out: int | None = None
    lr: float = 5e-4
    lr_warmup_frac: float = 0.01
    lr_decay_frac: float = 0.2
    lam_warmup_frac: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float | None = None
    seed: int = 0
    dead_window_tokens: int = 10_000_000
    dtype: str = "float32"
    normalize_activations: str = "none"

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size

    def validate(self) -> None:
        """One-line ``ValueError`` for any bad value, before anything is loaded or trained."""
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam={lam!r} is invalid; expected a finite number >= 0 (0 trains the traditional-SAE baseline)")
        for name in ("n_tokens", "batch_size", "dead_window_tokens"):
            check_positive_int(name, getattr(self, name))
        if self.n_steps < 1:
            raise ValueError(
                f"n_tokens={self.n_tokens} with batch_size={self.batch_size} gives zero training steps; "
                "expected n_tokens >= batch_size"
            )
        for name in ("k", "n_latents", "k_out", "n_latents_out"):
            value = getattr(self, name)
            if value is not None or name == "k":
                check_positive_int(name, value)
        if self.n_latents is None:
            e = self.expansion
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
                raise ValueError(f"expansion={e!r} is invalid; expected a positive number (or give n_latents)")
        for name in ("lr", "adam_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}={v!r} is invalid; expected a positive finite number")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name}={v!r} is invalid; expected a number in [0, 1)")
        for name in ("lr_warmup_frac", "lr_decay_frac", "lam_warmup_frac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{name}={v!r} is invalid; expected a fraction in [0, 1]")
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError(
                f"lr_warmup_frac + lr_decay_frac = {self.lr_warmup_frac + self.lr_decay_frac:g} > 1; expected at most 1"
            )
        gc = self.grad_clip
        if gc is not None and (isinstance(gc, bool) or not isinstance(gc, (int, float)) or not math.isfinite(gc) or gc <= 0):
            raise ValueError(f"grad_clip={gc!r} is invalid; expected a positive number or None (no clipping)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} is invalid; expected a non-negative integer")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is invalid; expected one of {', '.join(TRAIN_DTYPES)}")
        if self.normalize_activations not in ACTIVATION_NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is invalid; "
                f"expected one of {', '.join(ACTIVATION_NORMALIZATIONS)}"
            )

    def dims(self, d_in: int, d_out: int) -> dict[str, int]:
        """Resolved sizes: ``n_latents_in/out``, ``k_in/out`` (checked: 1 <= k <= latents)."""
        n_in = self.n_latents if self.n_latents is not None else int(round(float(self.expansion) * d_in))  # type: ignore[arg-type]
        n_out = self.n_latents_out if self.n_latents_out is not None else (
            self.n_latents if self.n_latents is not None else int(round(float(self.expansion) * d_out))  # type: ignore[arg-type]
        )
        k_in, k_out = self.k, self.k_out if self.k_out is not None else self.k
        for role, n in (("input", n_in), ("output", n_out)):
            if n < 1:
                raise ValueError(f"the {role} SAE would have {n} latents; expected a positive number (raise expansion)")
        try:
            check_k(k_in, n_in)
            check_k(k_out, n_out)
        except ValueError:
            raise ValueError(
                f"k={k_in} (input) / {k_out} (output) exceeds the number of latents {n_in} (input) / {n_out} (output); "
                "expected 1 <= k <= latents for each SAE"
            ) from None
        return {"n_latents_in": n_in, "n_latents_out": n_out, "k_in": k_in, "k_out": k_out}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class BatchSource(Protocol):
    """What training needs from a cache (``jsae.data.cache.ActivationCache`` satisfies it)."""

    d_model: int
    attrs: Mapping[str, Any]

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[Tensor]: ...


class InMemorySource:
    """A :class:`BatchSource` over a tensor: infinite, shuffled, a new permutation per pass, resumable.

    Batch ``b`` is rows ``[b*B, (b+1)*B)`` of the concatenation of per-pass permutations, each
    permutation seeded by ``(seed, pass)``, so ``start_batch`` skips exactly without replaying.
    """

    def __init__(self, x: Tensor, attrs: Mapping[str, Any] | None = None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1:
            raise ValueError(f"x has shape {tuple(getattr(x, 'shape', ()))}; expected a non-empty [n_tokens, d] tensor")
        self.x = x.detach().to(torch.float32).contiguous()
        self.d_model = int(x.shape[1])
        self.n_tokens = int(x.shape[0])
        self.attrs = dict(attrs or {"d_model": self.d_model, "n_tokens": self.n_tokens})

    def _perm(self, seed: int, pass_index: int) -> Tensor:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + pass_index)
        return torch.randperm(self.n_tokens, generator=g)

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0) -> Iterator[Tensor]:
        check_positive_int("batch_size", batch_size)
        n = self.n_tokens
        pos = start_batch * batch_size
        pass_index, offset = divmod(pos, n)
        perm = self._perm(seed, pass_index)
        while True:
            parts: list[Tensor] = []
            need = batch_size
            while need > 0:
                take = min(need, n - offset)
                parts.append(perm[offset : offset + take])
                offset += take
                need -= take
                if offset == n:
                    pass_index, offset = pass_index + 1, 0
                    perm = self._perm(seed, pass_index)
            idx = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield self.x[idx]


class Prefetcher:
    """Reads batches in a background thread (a bounded queue) so training does not wait on I/O.

    Order is preserved (one reader thread), so training stays deterministic. ``wait_s`` is the
    time the training loop spent blocked on the reader: the "fraction of time in the reader".
    """

    _DONE = object()

    def __init__(self, batches: Iterator[Tensor], *, depth: int = 4, pin_memory: bool = False) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._batches, self._pin = batches, pin_memory
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, name="jsae-reader", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._batches:
                batch = batch.to(torch.float32)
                if self._pin:
                    batch = batch.pin_memory()
                if not self._put(batch):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # surfaced in the training thread
            self._put(exc)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Tensor:
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# Dead latents
# --------------------------------------------------------------------------------------------------


class DeadLatentTracker:
    """Tokens since each latent last fired (in the top-k with a positive value, as
    :func:`jsae.eval.metrics.firing_counts` defines firing; computed here without a host sync).

    A latent is dead when it has not fired within the last ``window`` tokens, where the window is
    ``min(window_tokens, tokens seen)`` so short runs report latents never fired so far (the
    paper's window is 10M tokens, appendix E). Updated on the device without host syncs.
    """

    def __init__(self, n_latents: int, window_tokens: int, device: torch.device | str = "cpu") -> None:
        self.n_latents, self.window_tokens = n_latents, int(window_tokens)
        self.since_fired = torch.zeros(n_latents, dtype=torch.int64, device=device)
        self.tokens_seen = 0

    def update(self, vals: Tensor, idx: Tensor) -> None:
        fired = torch.zeros(self.n_latents, dtype=torch.int32, device=self.since_fired.device)
        fired.index_add_(0, idx.reshape(-1), (vals.reshape(-1) > 0).to(torch.int32))
        n = int(idx.reshape(-1, idx.shape[-1]).shape[0])
        self.since_fired = torch.where(fired > 0, torch.zeros_like(self.since_fired), self.since_fired + n)
        self.tokens_seen += n

    def dead_mask(self) -> Tensor:
        if self.tokens_seen == 0:
            return torch.zeros(self.n_latents, dtype=torch.bool, device=self.since_fired.device)
        return self.since_fired >= min(self.window_tokens, self.tokens_seen)

    def dead_count(self) -> int:
        return int(self.dead_mask().sum())

    def dead_fraction(self) -> float:
        return self.dead_count() / self.n_latents

    def state_dict(self) -> dict[str, Any]:
        return {"since_fired": self.since_fired.clone(), "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.since_fired = state["since_fired"].to(self.since_fired.device, torch.int64).clone()
        self.tokens_seen = int(state["tokens_seen"])


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Cache attributes (numpy scalars, bytes) as plain JSON values, for fingerprints and run.json."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


@dataclass
class TrainResult:
    """What a finished training returns: final metrics, the logged history and timings."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    timings: dict[str, Any]
    mlflow_run_id: str | None = None


@dataclass
class _Window:
    """Sums of the loss parts since the last log (device tensors: no sync per step)."""

    steps: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    timed_steps: int = 0  # steps since t0 (a restored window's earlier steps ran in another session)
    t0: float = field(default_factory=time.perf_counter)
    wait0: float = 0.0

    def add(self, parts: Mapping[str, Tensor]) -> None:
        for name in SCALAR_PARTS:
            value = parts[name]
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1
        self.timed_steps += 1


class Trainer:
    """Trains ``pair`` in place with the appendix-D recipe; checkpoints into ``work_dir``.

    ``fingerprint`` (hyper-parameters and data identity) is stored in each checkpoint; resuming
    from a checkpoint with another fingerprint is a one-line ``ValueError``. ``on_step(step)`` is
    called after each completed step (and its checkpoint); raising in it simulates a crash.
    """

    def __init__(
        self,
        pair: JSAEPair,
        source: BatchSource,
        config: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        work_dir: str | os.PathLike[str] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        checkpoint_every: int = 500,
        log_every: int = 50,
        progress: bool = True,
        tracker: Any = None,
        on_step: Callable[[int], None] | None = None,
        prefetch: int = 4,
    ) -> None:
        config.validate()
        check_positive_int("checkpoint_every", checkpoint_every)
        check_positive_int("log_every", log_every)
        if source.d_model != pair.sae_in.d_in:
            raise ValueError(
                f"the cache holds activations of width {source.d_model}; expected the MLP input width {pair.sae_in.d_in}"
            )
        self.pair, self.source, self.config = pair, source, config
        self.device = torch.device(device)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.fingerprint = _jsonable(dict(fingerprint or {"config": dataclasses.asdict(config)}))
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.progress, self.tracker, self.on_step, self.prefetch = progress, tracker, on_step, prefetch
        self.n_steps = config.n_steps
        self.params = [p for sae in (pair.sae_in, pair.sae_out) for p in sae.parameters()]
        self.optimizer = torch.optim.Adam(
            self.params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
            fused=self.device.type in ("cpu", "cuda") or None,  # one kernel per step; deterministic on CPU
        )
        self.dead_in = DeadLatentTracker(pair.sae_in.n_latents, config.dead_window_tokens, self.device)
        self.dead_out = DeadLatentTracker(pair.sae_out.n_latents, config.dead_window_tokens, self.device)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.timing: dict[str, Any] = {"train_s": 0.0, "reader_wait_s": 0.0, "sessions": 0, "resumed_from": []}
        self.mlflow_run_id: str | None = None
        self.autocast = autocast_dtype(self.device)
        # Loss sums of the current log window: checkpointed so a resumed run logs the same means.
        self.window = _Window()

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return self.work_dir / "checkpoint.pt" if self.work_dir is not None else None

    def save_checkpoint(self) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "step": self.step,
            "reader_position": self.step,  # one batch per step: batches consumed
            "sae_in": self.pair.sae_in.state_dict(),
            "sae_out": self.pair.sae_out.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "dead_in": self.dead_in.state_dict(),
            "dead_out": self.dead_out.state_dict(),
            "history": self.history,
            "window": {"steps": self.window.steps, "sums": self.window.sums},
            "timing": self.timing,
            "mlflow_run_id": self.mlflow_run_id,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def restore(self) -> bool:
        """Load the work directory's checkpoint if there is one; True when resuming."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}); expected a jsae checkpoint (delete it to start over)"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {path} has an unknown format; expected format {CHECKPOINT_FORMAT} (delete it to start over)")
        diff = _fingerprint_diff(state.get("fingerprint", {}), self.fingerprint)
        if diff:
            raise ValueError(
                f"checkpoint {path} was written with different hyper-parameters or data ({diff}); "
                f"expected the arguments of the interrupted run (or delete {path.parent} to start over)"
            )
        self.pair.sae_in.load_state_dict(state["sae_in"])
        self.pair.sae_out.load_state_dict(state["sae_out"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.dead_in.load_state_dict(state["dead_in"])
        self.dead_out.load_state_dict(state["dead_out"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.window = _Window(steps=int(state["window"]["steps"]), sums=dict(state["window"]["sums"]))
        self.timing = dict(state["timing"])
        self.timing["resumed_from"] = list(self.timing.get("resumed_from", [])) + [self.step]
        self.mlflow_run_id = state.get("mlflow_run_id")
        log.info("resuming from %s at step %d/%d", path, self.step, self.n_steps)
        return True

    # -- training ----------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        """One optimiser step at ``self.step`` (schedules from the step); returns the loss parts."""
        cfg = self.config
        lr = lr_at(self.step, self.n_steps, lr=cfg.lr, warmup_frac=cfg.lr_warmup_frac, decay_frac=cfg.lr_decay_frac)
        lam = lambda_at(self.step, self.n_steps, lam=cfg.lam, warmup_frac=cfg.lam_warmup_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            loss, parts = self.pair.loss(x, lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.pair.normalize_decoders_()
        self.dead_in.update(parts["in_vals"], parts["in_idx"])
        self.dead_out.update(parts["out_vals"], parts["out_idx"])
        self.step += 1
        return parts

    @torch.no_grad()
    def jacobian_metrics(self, x: Tensor, J: Tensor | None = None) -> dict[str, float]:
        """``jac/l1`` and ``jac/frac_above_0.01`` on batch ``x``.

        ``J`` is the step's own Jacobian when the loss computed it (lam > 0); otherwise (lam = 0, or
        the first steps of a zero warm-up) it is computed here with the current weights, so the
        baseline's Jacobian sparsity is logged too.
        """
        if J is None:
            with self._autocast():
                J, _, _ = self.pair.jacobian(x)
        J = J.float()
        return {"jac/l1": float(jacobian_l1(J)), threshold_key(JAC_THRESHOLD): float(frac_above(J, (JAC_THRESHOLD,)).mean())}

    def _log_row(self, window: _Window, x: Tensor, J: Tensor | None, reader: Prefetcher) -> dict[str, float]:
        cfg = self.config
        means = {name: float(total) / window.steps for name, total in window.sums.items()}
        elapsed = time.perf_counter() - window.t0
        last = self.step - 1
        row = {
            "step": float(self.step),
            "tokens": float(self.step * cfg.batch_size),
            "loss": means["loss"],
            "in/mse": means["mse_in"],
            "out/mse": means["mse_out"],
            "jac/l1_train": means["jac"],
            "lambda": lambda_at(last, self.n_steps, lam=cfg.lam, warmup_frac=cfg.lam_warmup_frac),
            "lr": lr_at(last, self.n_steps, lr=cfg.lr, warmup_frac=cfg.lr_warmup_frac, decay_frac=cfg.lr_decay_frac),
            "tokens_per_s": window.timed_steps * cfg.batch_size / max(elapsed, 1e-9),
            "reader_wait_fraction": (reader.wait_s - window.wait0) / max(elapsed, 1e-9),
            "in/dead_fraction": self.dead_in.dead_fraction(),
            "out/dead_fraction": self.dead_out.dead_fraction(),
            "in/dead_count": float(self.dead_in.dead_count()),
            "out/dead_count": float(self.dead_out.dead_count()),
        }
        row.update(self.jacobian_metrics(x, J))
        return row

    def run(self) -> TrainResult:
        """Train from ``self.step`` to the end; returns the final metrics (last logged window)."""
        cfg = self.config
        self.timing["sessions"] = int(self.timing.get("sessions", 0)) + 1
        start = self.step
        session_s = self._loop(start) if start < self.n_steps else 0.0
        timings = dict(self.timing)
        timings["session_tokens_per_s"] = (self.n_steps - start) * cfg.batch_size / session_s if session_s > 0 else None
        train_s = float(self.timing["train_s"])
        timings["tokens_per_s"] = self.n_steps * cfg.batch_size / train_s if train_s > 0 else None
        timings["reader_wait_fraction"] = float(self.timing["reader_wait_s"]) / train_s if train_s > 0 else None
        final = dict(self.history[-1]) if self.history else {}
        return TrainResult(metrics=final, history=list(self.history), timings=timings, mlflow_run_id=self.mlflow_run_id)

    def _loop(self, start: int) -> float:
        """Steps ``start .. n_steps - 1``; returns the session's wall time in seconds."""
        cfg = self.config
        reader = Prefetcher(
            self.source.batches(cfg.batch_size, seed=cfg.seed, start_batch=start),
            depth=self.prefetch,
            pin_memory=self.device.type == "cuda",
        )
        wait_base = float(self.timing.get("reader_wait_s", 0.0))
        bar = _progress_bar(self.n_steps * cfg.batch_size, start * cfg.batch_size, enabled=self.progress)
        session_t0 = time.perf_counter()
        self.window.t0, self.window.wait0 = session_t0, 0.0
        try:
            for _ in range(start, self.n_steps):
                t_step = time.perf_counter()
                x = next(reader).to(self.device, non_blocking=True)
                parts = self.train_step(x)
                self.window.add(parts)
                if self.step % self.log_every == 0 or self.step == self.n_steps:
                    row = self._log_row(self.window, x, parts.get("jacobian"), reader)
                    if not math.isfinite(row["loss"]):
                        raise FloatingPointError(
                            f"the training loss became {row['loss']} by step {self.step}; expected finite values "
                            "(lower --lr or set --grad-clip; the last finite checkpoint is kept)"
                        )
                    self.history.append(row)
                    if self.tracker is not None:
                        self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=self.step)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", jac=f"{row['jac/l1']:.3g}", refresh=False)
                    self.window = _Window(t0=time.perf_counter(), wait0=reader.wait_s)
                bar.update(cfg.batch_size)
                # Time in steps (incl. waiting on the reader), excluding checkpoint writes.
                self.timing["train_s"] = float(self.timing["train_s"]) + (time.perf_counter() - t_step)
                self.timing["reader_wait_s"] = wait_base + reader.wait_s
                if self.step % self.checkpoint_every == 0 or self.step == self.n_steps:
                    self.save_checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step)
        finally:
            bar.close()
            reader.close()
        return time.perf_counter() - session_t0


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc="train", disable=not enabled,
        mininterval=0.5 if interactive else 30.0, dynamic_ncols=True, smoothing=0.05,
    )


def _fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    """The first few differing keys of two nested dicts, as ``key: old != new``."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            sub = _fingerprint_diff(a, b, prefix=f"{prefix}{key}.")
            if sub:
                diffs.append(sub)
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} != {b!r}")
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


# --------------------------------------------------------------------------------------------------
# One run directory
# --------------------------------------------------------------------------------------------------


def work_dir_for(out_dir: str | os.PathLike[str]) -> Path:
    """Where checkpoints of ``out_dir`` live: a hidden sibling, so the run directory appears only when done."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.work"


def _identity(config: TrainConfig, *, model: str, layer: int, control: str) -> dict[str, Any]:
    return {"model": model, "layer": layer, "control": control, **dataclasses.asdict(config)}


def check_out_dir(out_dir: str | os.PathLike[str], identity: Mapping[str, Any], *, force: bool) -> dict[str, Any] | None:
    """The finished run at ``out_dir`` if it is this run (skip it), None to train; errors otherwise.

    A finished run (``run.json`` present) from other hyper-parameters, or a non-empty directory that
    is not a finished run, is refused unless ``force`` (which retrains and replaces it at the end).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory; expected a run directory path")
    run_json = out / "run.json"
    if run_json.is_file():
        if force:
            log.warning("%s holds a finished run; --force: retraining and replacing it", out)
            return None
        record = read_json(run_json)
        diff = _fingerprint_diff(_jsonable(record.get("identity", {})), _jsonable(dict(identity)))
        if diff:
            raise ValueError(
                f"{out} already holds a finished run with other settings ({diff}); "
                "expected a new --out directory, or --force to replace it"
            )
        return record
    # Snakemake creates the directories of declared outputs (run dir, sae_in/, sae_out/) before the job.
    files = [p for p in out.rglob("*") if not p.is_dir()] if out.is_dir() else []
    if files and not force:
        raise ValueError(
            f"{out} holds files ({files[0].relative_to(out)}, ...) but no run.json; "
            "expected an absent directory or one with only empty sub-directories (or --force)"
        )
    return None


def build_pair(mlp: MLP | torch.nn.Module, config: TrainConfig, *, device: torch.device | str = "cpu") -> JSAEPair:
    """Two freshly initialised TopK SAEs around ``mlp`` (seeds ``seed`` and ``seed + 1``)."""
    mlp = mlp_from_module(mlp)
    dims = config.dims(mlp.d_in, mlp.d_out)
    dtype = DTYPES[config.dtype]
    sae_in = TopKSAE(mlp.d_in, dims["n_latents_in"], dims["k_in"], seed=config.seed, dtype=dtype)
    sae_out = TopKSAE(mlp.d_out, dims["n_latents_out"], dims["k_out"], seed=config.seed + 1, dtype=dtype)
    return JSAEPair(sae_in, sae_out, mlp).to(device)


@torch.no_grad()
def estimate_activation_scales(
    mlp: MLP, source: BatchSource, config: TrainConfig, *, device: torch.device | str = "cpu",
    n_tokens: int = NORM_ESTIMATE_TOKENS,
) -> tuple[float, float]:
    """``(input_scale, output_scale)`` giving x and y = MLP(x) mean L2 norm sqrt(d) (``expected_norm``).

    Estimated on the first ``n_tokens`` of the training order, so a resumed run gets the same scales.
    """
    x_norms: list[Tensor] = []
    y_norms: list[Tensor] = []
    seen = 0
    for batch in source.batches(min(config.batch_size, n_tokens), seed=config.seed):
        x = batch.to(device=device, dtype=mlp.W_out.dtype)
        x_norms.append(x.double().norm(dim=1).cpu())
        y_norms.append(mlp(x).double().norm(dim=1).cpu())
        seen += x.shape[0]
        if seen >= n_tokens:
            break
    return expected_norm_scale(torch.cat(x_norms), mlp.d_in), expected_norm_scale(torch.cat(y_norms), mlp.d_out)


def run_training(
    mlp: MLP | torch.nn.Module,
    source: BatchSource,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    model: str,
    layer: int,
    control: str = "trained",
    model_name: str | None = None,
    hook_name: str | None = None,
    device: str = "auto",
    checkpoint_every: int = 500,
    log_every: int = 50,
    mlflow_uri: str | None = None,
    experiment: str = "jsae",
    force: bool = False,
    progress: bool = True,
    log_artifacts: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one pair into ``out_dir`` (SAELens ``sae_in/``, ``sae_out/``, ``metrics.jsonl``, ``run.json``).

    ``model`` is the model SPEC (recorded, and compared with the cache's), ``model_name`` the short
    name used for the MLflow run (default: the spec's last path component). Returns run.json's
    content; an already finished identical run is skipped and its record returned.
    """
    from jsae import __version__
    from jsae.export import save_pair
    from jsae.tracking import Tracker, run_name

    config.validate()
    if control not in CONTROLS:
        raise ValueError(f"control={control!r} is invalid; expected one of {', '.join(CONTROLS)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer={layer!r} is invalid; expected a non-negative integer")
    mlp = mlp_from_module(mlp)
    dims = config.dims(mlp.d_in, mlp.d_out)
    out_dir = Path(out_dir)
    identity = _identity(config, model=model, layer=layer, control=control)
    done = check_out_dir(out_dir, identity, force=force)
    if done is not None:
        log.info("%s already holds this finished run; skipping (pass --force to retrain)", out_dir)
        return done
    attrs = _jsonable(dict(source.attrs))
    if "layer" in attrs and attrs["layer"] is not None and int(attrs["layer"]) != layer:
        raise ValueError(f"the cache holds layer {attrs['layer']} activations; expected layer {layer}")
    if source.d_model != mlp.d_in:
        raise ValueError(f"the cache holds activations of width {source.d_model}; expected the MLP input width {mlp.d_in}")
    n_cache = attrs.get("n_tokens")
    if isinstance(n_cache, int) and config.n_steps * config.batch_size > n_cache:
        log.warning("token budget %d exceeds the cache's %d tokens: %.2f passes over the cache",
                    config.n_steps * config.batch_size, n_cache, config.n_steps * config.batch_size / n_cache)

    dev = resolve_device(device)
    pair = build_pair(mlp, config, device=dev)
    scales = {"in": 1.0, "out": 1.0}
    if config.normalize_activations == "expected_norm":
        scales["in"], scales["out"] = estimate_activation_scales(pair.mlp, source, config, device=dev)
        pair.set_activation_scales(scales["in"], scales["out"])
        log.info("activation scales (expected_norm): input x%.4g, output x%.4g", scales["in"], scales["out"])
    name = model_name or Path(str(model).rstrip("/")).name or str(model)
    fingerprint = {"identity": identity, "cache": attrs}
    work = work_dir_for(out_dir)
    trainer = Trainer(
        pair, source, config, device=dev, work_dir=work, fingerprint=fingerprint,
        checkpoint_every=checkpoint_every, log_every=log_every, progress=progress, on_step=on_step,
    )
    resumed = trainer.restore()  # bad checkpoint -> one-line error before any training

    tracker = Tracker(mlflow_uri, experiment) if mlflow_uri else Tracker.disabled()
    params = {
        **dataclasses.asdict(config), **dims, "n_steps": config.n_steps, "model": model, "model_name": name,
        "layer": layer, "control": control, "evaluation_point": EVALUATION_POINT, "d_in": mlp.d_in,
        "d_mlp": mlp.d_hidden, "mlp_kind": mlp.kind, "device": str(dev), "jsae_version": __version__,
        "input_scale": scales["in"], "output_scale": scales["out"],
        "cache": {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))},
    }
    tags = {"model": name, "layer": layer, "lambda": config.lam, "k": config.k, "expansion": config.expansion,
            "n_latents": dims["n_latents_in"], "control": control, "jsae_version": __version__}
    trainer.mlflow_run_id = tracker.start(run_name(name, layer, config.lam, control), params=params, tags=tags,
                                          run_id=trainer.mlflow_run_id)
    trainer.tracker = tracker
    log.info(
        "training %s layer %d (%s) lam=%g: %d steps x %d tokens, latents %d/%d, k %d/%d, device %s%s",
        name, layer, control, config.lam, config.n_steps, config.batch_size, dims["n_latents_in"],
        dims["n_latents_out"], dims["k_in"], dims["k_out"], dev, f", resumed at step {trainer.step}" if resumed else "",
    )
    wall0 = time.perf_counter()
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    # The MLP's module path; the cache records its input hook as "<path>.input".
    hook = hook_name or str(attrs.get("hook") or f"layers.{layer}.mlp.input").removesuffix(".input")
    final = {k: v for k, v in result.metrics.items() if k not in ("step", "tokens")}
    final["in/dead_fraction"] = trainer.dead_in.dead_fraction()
    final["out/dead_fraction"] = trainer.dead_out.dead_fraction()
    record: dict[str, Any] = {
        "model": model,
        "model_name": name,
        "layer": layer,
        "control": control,
        "lam": config.lam,
        "seed": config.seed,
        "hook": attrs.get("hook"),
        "hook_name": hook,
        "pair": {"model": model, "layer": layer, "control": control, "lam": config.lam,
                 "k": dims["k_in"], "n_latents": dims["n_latents_in"],
                 "k_out": dims["k_out"], "n_latents_out": dims["n_latents_out"]},
        "identity": identity,
        "params": params,
        "evaluation_point": EVALUATION_POINT,
        "activation_scales": scales,
        "cache": attrs,
        "jsae_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "autocast": str(trainer.autocast).replace("torch.", "") if trainer.autocast else None,
        "torch_threads": torch.get_num_threads(),
        "n_steps": config.n_steps,
        "tokens_trained": config.n_steps * config.batch_size,
        "timings": {**result.timings, "session_wall_s": time.perf_counter() - wall0},
        "metrics": final,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mlflow_tags": {key: str(value) for key, value in tags.items()},
        "mlflow_uri": mlflow_uri,
        "mlflow_experiment": experiment if mlflow_uri else None,
        "mlflow_run_id": result.mlflow_run_id,
    }
    metadata = {"model_name": model, "hook_layer": layer, "control": control, "lam": config.lam,
                "context_size": attrs.get("context_length"), "jsae_version": __version__,
                "evaluation_point": EVALUATION_POINT}
    # Exported SAEs act on raw activations: the scales go into their weights (latents and J unchanged).
    pair.fold_activation_scales_()
    with atomic_dir(out_dir) as tmp:
        save_pair(pair, tmp, hook_name=hook, metadata=metadata)
        with atomic_path(tmp / METRICS_FILENAME) as mtmp:
            mtmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in result.history))
        tracker.log_metrics(final, step=config.n_steps)
        if log_artifacts:
            for sub in ("sae_in", "sae_out"):
                tracker.log_artifacts(tmp / sub, sub)
            tracker.log_artifact(tmp / METRICS_FILENAME)
        record["mlflow_status"] = tracker.status
        write_json(tmp / "run.json", record)
        tracker.log_artifact(tmp / "run.json")
    tracker.finish()
    shutil.rmtree(work, ignore_errors=True)
    if tracker.error is not None and mlflow_uri:
        log.warning("MLflow tracking was unavailable (%s); all metrics are in %s", tracker.error, out_dir / METRICS_FILENAME)
    log.info("finished %s: loss %.4g, in/mse %.4g, out/mse %.4g, jac/l1 %.4g, dead %.3f/%.3f -> %s",
             name, final.get("loss", float("nan")), final.get("in/mse", float("nan")), final.get("out/mse", float("nan")),
             final.get("jac/l1", float("nan")), final["in/dead_fraction"], final["out/dead_fraction"], out_dir)
    return record


# --------------------------------------------------------------------------------------------------
# From files (the CLI and the Snakemake rule)
# --------------------------------------------------------------------------------------------------


def check_cache_matches(attrs: Mapping[str, Any], *, model: str, layer: int) -> None:
    """One-line ``ValueError`` when the cache was written for another model or layer."""
    cached_model, cached_layer = attrs.get("model"), attrs.get("layer")
    if cached_layer is not None and int(cached_layer) != int(layer):
        raise ValueError(f"the cache holds layer {cached_layer} activations; expected layer {layer} (--layer)")
    if cached_model is not None and not same_model(cached_model, model):
        raise ValueError(f"the cache holds activations of model {cached_model!r}; expected model {model!r} (--model)")


def train_from_files(
    model: str,
    layer: int,
    cache_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    control: str = "trained",
    force: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Open the cache, check it belongs to (model, layer), load the model's MLP and train.

    Cheap checks come first: the config, the output directory (a finished identical run is skipped
    before anything is loaded), the cache's attributes; then the model is loaded.
    """
    config.validate()
    if control not in CONTROLS:
        raise ValueError(f"control={control!r} is invalid; expected one of {', '.join(CONTROLS)}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer={layer!r} is invalid; expected a non-negative integer")
    done = check_out_dir(out_dir, _identity(config, model=model, layer=layer, control=control), force=force)
    if done is not None:
        log.info("%s already holds this finished run; skipping (pass --force to retrain)", out_dir)
        return done
    if not Path(cache_path).is_file():
        raise FileNotFoundError(f"cache {cache_path} does not exist; expected an HDF5 activation cache (python -m jsae cache)")
    from jsae.data.cache import ActivationCache, hook_name
    from jsae.data.hooks import mlp_module
    from jsae.data.models import load_model

    cache = ActivationCache.open(cache_path)
    check_cache_matches(cache.attrs, model=model, layer=layer)
    lm, _tokenizer = load_model(model, device="cpu", dtype=torch.float32)
    module = mlp_module(lm, layer)
    mlp = mlp_from_module(module)
    mlp_path = hook_name(lm, layer).removesuffix(".input")  # e.g. gpt_neox.layers.3.mlp
    del lm, module  # only the MLP's weights stay alive (its buffers share their storage)
    return run_training(mlp, cache, config, out_dir, model=model, layer=layer, control=control,
                        hook_name=mlp_path, force=force, **kwargs)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(lam=1.0, n_tokens=1)
    p = argparse.ArgumentParser(
        prog="python -m jsae train",
        description="Train one JSAE pair (input and output TopK SAEs around an MLP, with the Jacobian L1 penalty) "
        "from an activation cache; resumable, tracked in MLflow, exported in SAELens format.",
        epilog="Outputs: RUN_DIR/sae_in, RUN_DIR/sae_out (SAELens cfg.json + sae_weights.safetensors), "
        "RUN_DIR/metrics.jsonl and RUN_DIR/run.json (written last). Checkpoints live in .RUN_DIR.work next to it; "
        "rerunning the same command resumes. A finished identical run is skipped; --force retrains and replaces it.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--model", required=True, help="model SPEC (local directory, HF id, smollm2-135m)")
    g.add_argument("--model-name", default=None, help="short name for MLflow (default: last component of --model)")
    g.add_argument("--layer", type=int, required=True, help="index of the transformer block whose MLP is trained on")
    g.add_argument("--cache", required=True, help="HDF5 activation cache of that model and layer (train split)")
    g.add_argument("--out", required=True, help="run directory to create")
    g.add_argument("--control", default="trained", choices=CONTROLS, help="trained model or random re-init control")
    h = p.add_argument_group("recipe (paper appendix D defaults)")
    h.add_argument("--lam", type=float, required=True, help="Jacobian L1 coefficient lambda (0 = traditional SAEs)")
    size = h.add_mutually_exclusive_group()
    size.add_argument("--expansion", type=float, default=d.expansion, help="latents = expansion x d_model")
    size.add_argument("--n-latents", type=int, default=None, help="number of latents (overrides --expansion)")
    h.add_argument("--n-latents-out", type=int, default=None, help="latents of the output SAE (default: as the input SAE)")
    h.add_argument("--k", type=int, default=d.k, help="TopK k of both SAEs")
    h.add_argument("--k-out", type=int, default=None, help="k of the output SAE (default: --k)")
    h.add_argument("--tokens", type=int, required=True, help="token budget; steps = tokens // batch size")
    h.add_argument("--batch-size", type=int, default=d.batch_size, help="tokens per step")
    h.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (Adam)")
    h.add_argument("--lr-warmup", type=float, default=d.lr_warmup_frac, help="fraction of steps of linear LR warm-up")
    h.add_argument("--lr-decay", type=float, default=d.lr_decay_frac, help="fraction of steps of linear LR decay to 0")
    h.add_argument("--lam-warmup", type=float, default=d.lam_warmup_frac, help="fraction of steps of linear lambda warm-up")
    h.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value (default: off)")
    h.add_argument("--dead-window", type=int, default=d.dead_window_tokens, help="tokens without firing that make a latent dead")
    h.add_argument("--seed", type=int, default=d.seed, help="seed of the SAE init and the data order")
    h.add_argument("--normalize-activations", default=d.normalize_activations, choices=ACTIVATION_NORMALIZATIONS,
                   help="none = raw activations (the paper); expected_norm = scale x and MLP(x) to mean L2 norm "
                   "sqrt(d) so lambda means the same on every model")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (bf16 autocast on CUDA)")
    r.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    r.add_argument("--log-every", type=int, default=50, help="steps between logged metrics")
    r.add_argument("--mlflow-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI ('none' to disable)")
    r.add_argument("--experiment", default="jsae", help="MLflow experiment (one per study)")
    r.add_argument("--no-artifacts", action="store_true", help="do not copy the SAEs into MLflow's artifact store")
    r.add_argument("--force", action="store_true", help="retrain even if --out holds a finished run (replaced at the end)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-file", default=None, help="also write the log to this file")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        lam=args.lam, n_tokens=args.tokens, batch_size=args.batch_size, k=args.k,
        expansion=None if args.n_latents is not None else args.expansion, n_latents=args.n_latents,
        k_out=args.k_out, n_latents_out=args.n_latents_out, lr=args.lr, lr_warmup_frac=args.lr_warmup,
        lr_decay_frac=args.lr_decay, lam_warmup_frac=args.lam_warmup, grad_clip=args.grad_clip,
        seed=args.seed, dead_window_tokens=args.dead_window, normalize_activations=args.normalize_activations,
    )


def cli(argv: list[str]) -> int:
    """``python -m jsae train ...``: parse arguments and call :func:`train_from_files`."""
    args = build_parser().parse_args(argv)
    setup_logging(log_file=args.log_file)
    config = config_from_args(args)
    uri = None if str(args.mlflow_uri).lower() in ("none", "") else args.mlflow_uri
    try:
        train_from_files(
            args.model, args.layer, args.cache, args.out, config, control=args.control, force=args.force,
            model_name=args.model_name, device=args.device, checkpoint_every=args.checkpoint_every,
            log_every=args.log_every, mlflow_uri=uri, experiment=args.experiment,
            progress=not args.no_progress, log_artifacts=not args.no_artifacts,
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except FloatingPointError as exc:  # diverged: a result, not a bug; no traceback
        log.error("%s", exc)
        return 1
    return 0
