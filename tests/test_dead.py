"""Dead latents during training (jsae.train.dead): hand-built firing histories with known answers, and a brute
force over the recorded history that reads each window as evaluation reads its tokens (firing_counts, dead_and_rare)."""

from __future__ import annotations

import math

import pytest
import torch

from jsae.eval.metrics import dead_and_rare, firing_counts
from jsae.train import DeadLatentTracker

N, B, K = 6, 4, 2  # latents, tokens per batch, TopK slots per token of the hand-built history
PAPER_WINDOW = 10_000_000

#: Step (1-based) -> the latents that fire in that batch. Latent 0 fires every step; 1 only at step 3;
#: 2 never; 3 at steps 1-10; 4 only at step 12; 5 is selected on every token but with value 0 (never fires).
SCHEDULE = {t: {0} | ({1} if t == 3 else set()) | ({3} if t <= 10 else set()) | ({4} if t == 12 else set())
            for t in range(1, 17)}


def batch_of(firing: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, K] TopK code in which exactly ``firing`` fire (value 1); every other slot holds latent 5 at 0."""
    idx = torch.full((B, K), 5)
    vals = torch.zeros(B, K)
    for slot, j in enumerate(sorted(firing)):
        idx.view(-1)[slot], vals.view(-1)[slot] = j, 1.0
    return vals, idx


def dead_set(tracker: DeadLatentTracker) -> set[int]:
    return {int(j) for j in torch.nonzero(tracker.dead_mask()).flatten()}


# Known answers, worked out by hand from SCHEDULE (T = 4 t tokens after step t).
#   paper window, T < 40M: W = ceil(T / 4) = t tokens = the last ceil(t / 4) batches.
#   window_tokens = 8: W = min(8, t) tokens, at most the last 2 batches.
EXPECTED = {
    (PAPER_WINDOW, 1): {1, 2, 4, 5},  # W = 1 token: batch 1 only (0 and 3 fired)
    (PAPER_WINDOW, 3): {2, 4, 5},  # W = 3: batch 3 (0, 1, 3 fired)
    (PAPER_WINDOW, 4): {1, 2, 4, 5},  # W = 4: batch 4 only; 1 fired at step 3, outside
    (PAPER_WINDOW, 5): {1, 2, 4, 5},  # W = 5 tokens: batch 5 and the last token of batch 4 (0 and 3 fired)
    (PAPER_WINDOW, 12): {1, 2, 5},  # W = 12: batches 10-12 (0, 3 at 10, 4 at 12)
    (PAPER_WINDOW, 13): {1, 2, 5},  # W = 13: ceil(13/4) = 4 batches, 10-13
    (PAPER_WINDOW, 16): {1, 2, 3, 4, 5},  # W = 16: batches 13-16; latent 1 fired once at step 3 -> dead
    (8, 4): {1, 2, 4, 5},  # W = min(8, 4) = 4: batch 4
    (8, 12): {1, 2, 3, 5},  # W = 8: batches 11-12
    (8, 16): {1, 2, 3, 4, 5},
}


@pytest.mark.parametrize("window", [PAPER_WINDOW, 8])
def test_hand_built_history_known_answers(window):
    tracker = DeadLatentTracker(N, window)
    assert dead_set(tracker) == set()  # no token seen: no evidence that anything is dead
    for t in range(1, 17):
        tracker.update(*batch_of(SCHEDULE[t]))
        if (window, t) in EXPECTED:
            assert dead_set(tracker) == EXPECTED[(window, t)], t
    assert tracker.tokens_seen == 64
    # Latents 1, 3 and 4 fired during the run, so the reading this replaces ("within min(window, tokens seen)",
    # the whole run when shorter) kept them alive; none fired in the last quarter of the run.
    assert all(any(j in SCHEDULE[t] for t in range(1, 17)) for j in (1, 3, 4)) and {1, 3, 4} <= dead_set(tracker)


def oracle_dead(
    history: list[tuple[torch.Tensor, torch.Tensor]], window_tokens: int, n_latents: int
) -> tuple[torch.Tensor, int]:
    """Brute force over the recorded history: firing counts on the batches overlapping the last W tokens, W from
    the definition (min(window, max(1, ceil(T / 4)))), and their token count; evaluation's reading: dead = 0."""
    sizes = [v.reshape(-1, v.shape[-1]).shape[0] for v, _ in history]
    T = sum(sizes)
    W = min(window_tokens, max(1, math.ceil(T / 4)))
    first_window_token = T - W
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    in_window = [h for h, s, n in zip(history, starts, sizes) if s + n > first_window_token]
    vals = torch.cat([v.reshape(-1, v.shape[-1]) for v, _ in in_window])
    idx = torch.cat([i.reshape(-1, i.shape[-1]) for _, i in in_window])
    return firing_counts(vals, idx, n_latents), vals.shape[0]


N_RANDOM = 40


@pytest.mark.parametrize(("window", "vary_batch"), [(PAPER_WINDOW, False), (24, False), (24, True), (5, True)])
def test_tracker_matches_brute_force_over_the_recorded_history(window, vary_batch):
    g = torch.Generator().manual_seed(window + vary_batch)
    tracker = DeadLatentTracker(N_RANDOM, window)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in range(30):
        b = int(torch.randint(3, 12, (), generator=g)) if vary_batch else 8
        # the pool of selectable latents drifts, so latents stop firing; values <= 0 are selected but do not fire
        lo = t // 3
        idx = torch.randint(lo, lo + 12, (b, 3), generator=g)
        vals = torch.rand(b, 3, generator=g) - 0.3
        tracker.update(vals, idx)
        history.append((vals, idx))
        counts, n_window = oracle_dead(history, window, N_RANDOM)
        dead = counts == 0
        assert torch.equal(tracker.dead_mask(), dead), t
        # the logged fraction is evaluation's dead_fraction on the window's tokens
        assert tracker.dead_fraction() == pytest.approx(dead_and_rare(counts, n_window)["dead_fraction"])
        assert tracker.dead_count() == int(dead.sum())


def test_state_round_trip_continues_identically():
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(8, 2, generator=g) - 0.2, torch.randint(0, 20, (8, 2), generator=g)) for _ in range(20)]
    a = DeadLatentTracker(20, 40)
    for vals, idx in batches[:9]:
        a.update(vals, idx)
    b = DeadLatentTracker(20, 40)
    b.load_state_dict(a.state_dict())
    for vals, idx in batches[9:]:
        a.update(vals, idx)
        b.update(vals, idx)
        assert torch.equal(a.dead_mask(), b.dead_mask()) and a.window() == b.window()


def test_window_is_the_lesser_of_the_configured_window_and_a_quarter_of_the_run():
    tracker = DeadLatentTracker(3, 100)
    seen_windows = []
    for _ in range(5):
        tracker.update(torch.ones(50, 1), torch.zeros(50, 1, dtype=torch.long))
        seen_windows.append(tracker.window())
    assert seen_windows == [13, 25, 38, 50, 63]  # ceil(50 t / 4)
    for _ in range(5):
        tracker.update(torch.ones(50, 1), torch.zeros(50, 1, dtype=torch.long))
    assert tracker.window() == 100  # 500 tokens seen: a quarter is 125 > the configured 100


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((0, 10), {}, r"n_latents=0 is invalid; expected a positive integer"),
    ((4, 0), {}, r"window_tokens=0 is invalid; expected a positive integer"),
    ((4, 10), {"run_share": 0}, r"run_share=0 is invalid; expected a fraction in \(0, 1\]"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeadLatentTracker(*args, **kwargs)
