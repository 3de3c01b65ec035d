"""Device and precision choice, one place for the cache, training, evaluation and probes."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
#: Every dtype the package names in configs, files and CLIs, by its name.
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: SAE weights while training (fp16 weights underflow Adam's updates).
TRAIN_DTYPES = ("float32", "float64", "bfloat16")
#: Storage of cached activations (float64 only doubles the file).
CACHE_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = str(name).split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"device={name!r} is invalid; expected one of {', '.join(DEVICES)} (optionally cuda:N)")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available; expected 'auto' or 'cpu' here")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} requested but MPS is not available; expected 'auto' or 'cpu' here")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (paper setup: fp32 weights + bf16 autocast), none elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else None
