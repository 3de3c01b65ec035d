"""The training loop: :class:`Trainer` trains a :class:`~jsae.nn.pair.JSAEPair` in place with the
paper's recipe from any :class:`~jsae.train.sources.BatchSource`, checkpointing into a work directory.

Recipe (appendix D, every value in :class:`~jsae.train.config.TrainConfig`): Adam, LR with linear
warm-up, constant, linear decay to 0; lam warmed up linearly; both decoders renormalised to unit
rows after every step; optional gradient-norm clipping. ``lam = 0`` trains the traditional-SAE
baseline (two TopK SAEs; the Jacobian is then not part of the loss). Optional (``auxk_coef > 0``,
off by default): the AuxK loss (:class:`jsae.nn.pair.AuxK`) on the latents the dead-latent trackers
call dead before the step. Logged metrics: :mod:`jsae.train.keys`.

Resume: the checkpoint holds both SAEs, the optimiser, the step (schedules are pure functions of
it), RNG states, the reader position (batches consumed = step), dead-latent counters, the metric
history, the current log window and the MLflow run id. Resuming with the same arguments ends, on
CPU, bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jsae.devices import autocast_dtype
from jsae.eval.metrics import frac_above
from jsae.io import atomic_path
from jsae.nn.pair import AuxK, JSAEPair, LossParts, jacobian_l1
from jsae.train import keys
from jsae.train.config import RunOptions, TrainConfig
from jsae.train.dead import DeadLatentTracker
from jsae.train.schedules import lam_at, lr_at
from jsae.train.sources import BatchSource, Prefetcher

log = logging.getLogger("jsae.train")

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILENAME = "checkpoint.pt"


def jsonable(obj: Any) -> Any:
    """Cache attributes (numpy scalars, bytes) as plain JSON values, for fingerprints and run.json."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    """The first few differing keys of two nested dicts, as ``key: old != new``."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            sub = fingerprint_diff(a, b, prefix=f"{prefix}{key}.")
            if sub:
                diffs.append(sub)
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} != {b!r}")
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


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
    sums: dict[str, Tensor] = field(default_factory=dict)  # loss part name -> sum
    timed_steps: int = 0  # steps since t0 (a restored window's earlier steps ran in another session)
    t0: float = field(default_factory=time.perf_counter)
    wait0: float = 0.0

    def add(self, parts: Any, names: Iterable[str]) -> None:
        """Add the step's ``parts`` fields ``names`` (a trainer's :attr:`TrainerBase.window_means`)."""
        for name in names:
            value = getattr(parts, name)
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1
        self.timed_steps += 1


class TrainerBase:
    """What every trainer shares: Adam over ``params``, the LR schedule's bookkeeping, checkpoints into
    ``work_dir``, timing, the metric history, the log window, autocast and the loop.

    A subclass names what it checkpoints (:meth:`checkpoint_modules`, :meth:`dead_trackers`: their names are
    the checkpoint's keys), takes a step (:meth:`train_step`) and adds its own log entries
    (:meth:`log_extras`, :meth:`postfix`). ``fingerprint`` (hyper-parameters and data identity) is stored in
    each checkpoint; resuming from a checkpoint with another fingerprint is a one-line ``ValueError``.
    ``on_step(step)`` is called after each completed step (and its checkpoint); raising in it simulates a crash.
    """

    #: The loss parts summed over a log window -> their logged keys.
    window_means: Mapping[str, str] = keys.WINDOW_MEANS
    #: Recorded in, and required of, a checkpoint when set (a pair's checkpoints have none).
    checkpoint_kind: str | None = None

    def __init__(
        self,
        source: BatchSource,
        config: TrainConfig,
        params: Iterable[torch.nn.Parameter],
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
        options = RunOptions(checkpoint_every=checkpoint_every, log_every=log_every)
        self.source, self.config = source, config
        self.device = torch.device(device)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.fingerprint = jsonable(dict(fingerprint or {"config": dataclasses.asdict(config)}))
        self.checkpoint_every, self.log_every = options.checkpoint_every, options.log_every
        self.progress, self.tracker, self.on_step, self.prefetch = progress, tracker, on_step, prefetch
        self.n_steps = config.n_steps
        self.params = list(params)
        self.optimizer = torch.optim.Adam(
            self.params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
            fused=self.device.type in ("cpu", "cuda") or None,  # one kernel per step; deterministic on CPU
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.timing: dict[str, Any] = {"train_s": 0.0, "reader_wait_s": 0.0, "sessions": 0, "resumed_from": []}
        self.mlflow_run_id: str | None = None
        self.autocast = autocast_dtype(self.device)
        # Loss sums of the current log window: checkpointed so a resumed run logs the same means.
        self.window = _Window()

    # -- what the subclass trains ------------------------------------------------------------------

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """The trained modules by their checkpoint key."""
        raise NotImplementedError

    def dead_trackers(self) -> dict[str, DeadLatentTracker]:
        """The dead-latent trackers by side (``in``, ``out``): checkpointed as ``dead_{side}``, logged under
        :data:`keys.DEAD_FRACTIONS` and :data:`keys.DEAD_COUNTS`."""
        raise NotImplementedError

    def train_step(self, x: Tensor) -> Any:
        """One optimiser step at ``self.step``; returns the step's parts (fields :attr:`window_means`)."""
        raise NotImplementedError

    def log_extras(self, x: Tensor, parts: Any) -> dict[str, float]:
        """The subclass's own entries of a log row, computed on the logged step's batch ``x``."""
        return {}

    def postfix(self, row: Mapping[str, float]) -> dict[str, str]:
        """The progress bar's postfix from a log row."""
        return {"loss": f"{row[keys.LOSS]:.4g}"}

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return self.work_dir / CHECKPOINT_FILENAME if self.work_dir is not None else None

    def save_checkpoint(self) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "format": CHECKPOINT_FORMAT,
            **({"kind": self.checkpoint_kind} if self.checkpoint_kind is not None else {}),
            "fingerprint": self.fingerprint,
            "step": self.step,
            "reader_position": self.step,  # one batch per step: batches consumed
            **{name: module.state_dict() for name, module in self.checkpoint_modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            **{f"dead_{side}": dead.state_dict() for side, dead in self.dead_trackers().items()},
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
                f"checkpoint {path} cannot be read ({type(exc).__name__}); "
                "expected a jsae checkpoint (delete it to start over)"
            ) from None
        if not isinstance(state, dict) or (state.get("format"), state.get("kind")) != (CHECKPOINT_FORMAT,
                                                                                       self.checkpoint_kind):
            kind = f" of kind {self.checkpoint_kind!r}" if self.checkpoint_kind is not None else ""
            raise ValueError(
                f"checkpoint {path} has an unknown format; "
                f"expected format {CHECKPOINT_FORMAT}{kind} (delete it to start over)"
            )
        diff = fingerprint_diff(state.get("fingerprint", {}), self.fingerprint)
        if diff:
            raise ValueError(
                f"checkpoint {path} was written with different hyper-parameters or data ({diff}); "
                f"expected the arguments of the interrupted run (or delete {path.parent} to start over)"
            )
        for name, module in self.checkpoint_modules().items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        for side, dead in self.dead_trackers().items():
            dead.load_state_dict(state[f"dead_{side}"])
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

    def _lr(self, step: int) -> float:
        cfg = self.config
        return lr_at(step, self.n_steps, lr=cfg.lr, warmup_frac=cfg.lr_warmup_frac, decay_frac=cfg.lr_decay_frac)

    def _log_row(self, window: _Window, x: Tensor, parts: Any, reader: Prefetcher) -> dict[str, float]:
        cfg = self.config
        elapsed = time.perf_counter() - window.t0
        dead = self.dead_trackers()
        return {
            keys.STEP: float(self.step),
            keys.TOKENS: float(self.step * cfg.batch_size),
            **{key: float(window.sums[name]) / window.steps for name, key in self.window_means.items()},
            keys.LR: self._lr(self.step - 1),
            keys.TOKENS_PER_S: window.timed_steps * cfg.batch_size / max(elapsed, 1e-9),
            keys.READER_WAIT_FRACTION: (reader.wait_s - window.wait0) / max(elapsed, 1e-9),
            **{keys.DEAD_FRACTIONS[side]: tracker.dead_fraction() for side, tracker in dead.items()},
            **{keys.DEAD_COUNTS[side]: float(tracker.dead_count()) for side, tracker in dead.items()},
            **self.log_extras(x, parts),
        }

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
                self.window.add(parts, self.window_means)
                if self.step % self.log_every == 0 or self.step == self.n_steps:
                    row = self._log_row(self.window, x, parts, reader)
                    if not math.isfinite(row[keys.LOSS]):
                        raise FloatingPointError(
                            f"the training loss became {row[keys.LOSS]} by step {self.step}; expected finite values "
                            "(lower --lr or set --grad-clip; the last finite checkpoint is kept)"
                        )
                    self.history.append(row)
                    if self.tracker is not None:
                        self.tracker.log_metrics({k: v for k, v in row.items() if k != keys.STEP}, step=self.step)
                    bar.set_postfix(**self.postfix(row), refresh=False)
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


class Trainer(TrainerBase):
    """Trains ``pair`` in place with the appendix-D recipe; checkpoints into ``work_dir``
    (:class:`TrainerBase`: fingerprint, ``on_step``)."""

    def __init__(self, pair: JSAEPair, source: BatchSource, config: TrainConfig, **kwargs: Any) -> None:
        if source.d_model != pair.sae_in.d_in:
            raise ValueError(
                f"the cache holds activations of width {source.d_model}; "
                f"expected the MLP input width {pair.sae_in.d_in}"
            )
        super().__init__(source, config, [p for sae in (pair.sae_in, pair.sae_out) for p in sae.parameters()],
                         **kwargs)
        self.pair = pair
        self.dead_in = DeadLatentTracker(pair.sae_in.n_latents, config.dead_window_tokens, self.device)
        self.dead_out = DeadLatentTracker(pair.sae_out.n_latents, config.dead_window_tokens, self.device)
        self.auxk_k = (0, 0)
        if config.auxk_coef > 0:
            dims = config.dims(pair.sae_in.d_in, pair.sae_out.d_in)
            self.auxk_k = (dims["k_aux_in"], dims["k_aux_out"])

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {"sae_in": self.pair.sae_in, "sae_out": self.pair.sae_out}

    def dead_trackers(self) -> dict[str, DeadLatentTracker]:
        return {"in": self.dead_in, "out": self.dead_out}

    def train_step(self, x: Tensor) -> LossParts:
        """One optimiser step at ``self.step`` (schedules from the step); returns the loss parts."""
        cfg = self.config
        lam = lam_at(self.step, self.n_steps, lam=cfg.lam, warmup_frac=cfg.lam_warmup_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        auxk = None
        if cfg.auxk_coef > 0:
            # Dead as of the steps before this one (the trackers are checkpointed: resume is exact).
            auxk = AuxK(cfg.auxk_coef, self.dead_in.dead_mask(), self.dead_out.dead_mask(), *self.auxk_k)
        with self._autocast():
            loss, parts = self.pair.loss(x, lam, auxk)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.pair.normalize_decoders_()
        self.dead_in.update(parts.in_vals, parts.in_idx)
        self.dead_out.update(parts.out_vals, parts.out_idx)
        self.step += 1
        return parts

    @torch.no_grad()
    def jacobian_metrics(self, x: Tensor, J: Tensor | None = None) -> dict[str, float]:
        """``train/jac/l1`` and ``train/jac/frac_above_0.01`` (:data:`keys.JAC_L1`, :data:`keys.JAC_FRAC`) on ``x``.

        ``J`` is the step's own Jacobian when the loss computed it (lam > 0); otherwise (lam = 0, or
        the first steps of a zero warm-up) it is computed here with the current weights, so the
        baseline's Jacobian sparsity is logged too.
        """
        if J is None:
            with self._autocast():
                J, _, _ = self.pair.jacobian(x)
        J = J.float()
        return {keys.JAC_L1: float(jacobian_l1(J)), keys.JAC_FRAC: float(frac_above(J, (keys.JAC_THRESHOLD,)).mean())}

    def log_extras(self, x: Tensor, parts: LossParts) -> dict[str, float]:
        cfg = self.config
        lam = lam_at(self.step - 1, self.n_steps, lam=cfg.lam, warmup_frac=cfg.lam_warmup_frac)
        return {keys.LAM: lam, **self.jacobian_metrics(x, parts.jacobian)}

    def postfix(self, row: Mapping[str, float]) -> dict[str, str]:
        return {**super().postfix(row), "jac": f"{row[keys.JAC_L1]:.3g}"}


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, unit="tok", unit_scale=True, desc="train", disable=not enabled,
        mininterval=0.5 if interactive else 30.0, dynamic_ncols=True, smoothing=0.05,
    )
