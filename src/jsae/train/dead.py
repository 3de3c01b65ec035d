"""Dead latents: tokens since each latent last fired, counted on the device without host syncs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


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
