"""Input checks shared by the package: one-line errors naming the bad value and what is expected."""

from __future__ import annotations

import os

import torch
from torch import Tensor


def check_k(k: object, n_latents: int) -> None:
    """TopK's k must be an integer in ``[1, n_latents]``."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_latents:
        raise ValueError(f"k={k!r} is invalid; expected an integer with 1 <= k <= n_latents={n_latents}")


def check_features(x: object, d: int, name: str = "x") -> None:
    """``x`` must be a floating tensor ``[..., d]`` with finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} is a {type(x).__name__}; expected a torch.Tensor of shape [..., {d}]")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected [..., {d}] (last dim = {d})")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating-point tensor")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite values (NaN/inf); expected finite activations")


def check_positive_int(name: str, value: object, *, minimum: int = 1, allow_none: bool = False) -> None:
    """``value`` must be an integer >= ``minimum`` (None passes when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} is invalid; expected {expected}")


def same_model(a: object, b: object) -> bool:
    """Model specs name the same model: equal as strings, or the same directory (relative vs absolute).

    ``None`` (not recorded) matches anything: older records carry no model.
    """
    if a is None or b is None:
        return True
    sa, sb = str(a), str(b)
    if sa == sb:
        return True
    if os.path.exists(sa) and os.path.exists(sb):
        return os.path.realpath(sa) == os.path.realpath(sb)
    return os.path.normpath(sa).rstrip("/") == os.path.normpath(sb).rstrip("/")
