"""Where training batches come from: the :class:`BatchSource` protocol, an in-memory source, and
the background reader (:class:`Prefetcher`) that keeps training from waiting on I/O."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from jsae.checks import check_positive_int


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
