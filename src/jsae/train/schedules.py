"""Training schedules (paper appendix D) as pure functions of the optimiser step.

``step`` is the 0-based index of the optimiser step about to be taken; ``n_steps`` is the total.
Pure functions (no scheduler objects) make resuming trivial: the schedule state *is* the step.

* Learning rate: linear warm-up over the first ``warmup_frac`` of steps, constant, then linear
  decay to 0 over the last ``decay_frac`` (1% and 20% in the paper).
* Jacobian coefficient lambda: linear warm-up over the first ``warmup_frac`` of steps (5%).

Warm-up starts at ``1/W`` of the peak, not at 0, so no step is wasted with a zero learning rate;
decay ends at ``1/D`` of the peak on the last step (it would reach 0 one step after the end).
"""

from __future__ import annotations

import math


def _check_steps(step: int, n_steps: int) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} is invalid; expected a positive integer")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < n_steps:
        raise ValueError(f"step={step!r} is out of range; expected an integer in [0, {n_steps - 1}]")


def _check_frac(name: str, frac: float) -> None:
    if not (isinstance(frac, (int, float)) and math.isfinite(frac) and 0.0 <= frac <= 1.0):
        raise ValueError(f"{name}={frac!r} is invalid; expected a fraction in [0, 1]")


def n_phase_steps(frac: float, n_steps: int) -> int:
    """Number of steps in a phase that lasts ``frac`` of training (rounded down)."""
    return int(math.floor(frac * n_steps + 1e-9))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """``min(1, (step + 1) / warmup_steps)``; 1 without warm-up."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def decay_factor(step: int, n_steps: int, decay_steps: int) -> float:
    """``(n_steps - step) / decay_steps`` during the last ``decay_steps`` steps, else 1."""
    if decay_steps <= 0 or step < n_steps - decay_steps:
        return 1.0
    return (n_steps - step) / decay_steps


def lr_at(step: int, n_steps: int, *, lr: float, warmup_frac: float = 0.01, decay_frac: float = 0.2) -> float:
    """Appendix D's learning rate: 1% linear warm-up, constant ``lr``, linear decay over the last 20%.

    When warm-up and decay overlap (very short runs) the smaller factor wins.
    """
    _check_steps(step, n_steps)
    _check_frac("warmup_frac", warmup_frac)
    _check_frac("decay_frac", decay_frac)
    warm = warmup_factor(step, n_phase_steps(warmup_frac, n_steps))
    decay = decay_factor(step, n_steps, n_phase_steps(decay_frac, n_steps))
    return float(lr) * min(warm, decay)


def lam_at(step: int, n_steps: int, *, lam: float, warmup_frac: float = 0.05) -> float:
    """Appendix D's Jacobian coefficient: linear warm-up to ``lam`` over the first 5% of steps."""
    _check_steps(step, n_steps)
    _check_frac("warmup_frac", warmup_frac)
    return float(lam) * warmup_factor(step, n_phase_steps(warmup_frac, n_steps))
