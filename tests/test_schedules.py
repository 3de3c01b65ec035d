"""Appendix-D schedules: values at given steps, shapes of the phases, and bad input."""

from __future__ import annotations

import pytest

from jsae.train.schedules import lam_at, lr_at, n_phase_steps

LR = 5e-4


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, LR * 1 / 10),  # 1% of 1000 steps = 10 warm-up steps, starting at 1/10 of the peak
        (4, LR * 5 / 10),
        (9, LR),  # warm-up reaches the peak on its last step
        (10, LR),
        (500, LR),
        (799, LR),  # constant until the last 20% (200 steps)
        (800, LR * 200 / 200),
        (900, LR * 100 / 200),
        (999, LR * 1 / 200),  # one step before 0
    ],
)
def test_lr_values_at_steps(step: int, expected: float) -> None:
    assert lr_at(step, 1000, lr=LR) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 2.0 / 50), (24, 2.0 * 25 / 50), (48, 2.0 * 49 / 50), (49, 2.0), (50, 2.0), (999, 2.0)],
)
def test_lambda_warmup_values_at_steps(step: int, expected: float) -> None:
    # 5% of 1000 steps = 50 warm-up steps; lambda = 2
    assert lam_at(step, 1000, lam=2.0) == pytest.approx(expected, rel=1e-12)


def test_lr_schedule_shape() -> None:
    n = 73_243  # the paper's 300M tokens / 4096
    lrs = [lr_at(s, n, lr=LR) for s in range(n)]
    warm, decay = n_phase_steps(0.01, n), n_phase_steps(0.2, n)
    assert (warm, decay) == (732, 14_648)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))  # strictly increasing warm-up
    assert set(lrs[warm - 1 : n - decay + 1]) == {LR}  # constant plateau
    assert all(a > b for a, b in zip(lrs[n - decay : -1], lrs[n - decay + 1 :]))  # strictly decreasing
    assert 0 < lrs[-1] <= LR / decay + 1e-18


def test_zero_lambda_and_no_warmup() -> None:
    assert all(lam_at(s, 100, lam=0.0) == 0.0 for s in range(100))
    assert lam_at(0, 100, lam=1.5, warmup_frac=0.0) == 1.5
    assert lr_at(0, 100, lr=1.0, warmup_frac=0.0, decay_frac=0.0) == 1.0
    assert lr_at(99, 100, lr=1.0, warmup_frac=0.0, decay_frac=0.0) == 1.0


def test_short_run_overlapping_phases_take_the_smaller_factor() -> None:
    # 10 steps, warm-up 50% (5 steps) and decay 50% (5 steps): a triangle
    lrs = [lr_at(s, 10, lr=1.0, warmup_frac=0.5, decay_frac=0.5) for s in range(10)]
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    # fewer steps than one warm-up step: phases round down to zero steps
    assert lr_at(0, 3, lr=1.0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 10, "n_steps": 10}, "step=10 is out of range"),
        ({"step": -1, "n_steps": 10}, "step=-1 is out of range"),
        ({"step": 0, "n_steps": 0}, "n_steps=0 is invalid"),
        ({"step": 0, "n_steps": 10, "warmup_frac": 1.5}, "warmup_frac=1.5 is invalid"),
        ({"step": 0, "n_steps": 10, "decay_frac": -0.1}, "decay_frac=-0.1 is invalid"),
    ],
)
def test_bad_schedule_input_is_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as exc:
        lr_at(lr=1.0, **kwargs)
    assert "\n" not in str(exc.value)
