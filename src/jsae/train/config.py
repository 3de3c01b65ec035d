"""The training settings, each declared once: name, type, default, help text and check.

:class:`TrainConfig` is everything that determines the trained weights (a run's identity, recorded
in run.json and MLflow); :class:`RunOptions` is how a run is carried out (changing it never
invalidates a checkpoint or a finished run). The study config's ``sae:`` and ``train:`` keys are
these field names (``lam`` comes from ``lambdas``, ``seed`` from the top-level ``seed``), and the
options of ``python -m jsae train`` are generated from the fields (:mod:`jsae.train.cli`).
``tests/test_train_config.py`` checks that the schema, the dataclasses and the CLI agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from jsae.checks import check_k, check_positive_int
from jsae.devices import TRAIN_DTYPES
from jsae.nn.pair import ACTIVATION_NORMALIZATIONS


def _help(text: str, **extra: Any) -> dict[str, Any]:
    """A field's metadata: its help text (CLI and docs) and, optionally, its ``choices``."""
    return {"help": text, **extra}


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_finite(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter that determines the trained weights (the paper's appendix D defaults).

    Fractions are of the total number of steps. Construction checks every value (one-line
    ``ValueError``); :meth:`dims` adds the checks that need the MLP's widths.
    """

    lam: float = field(metadata=_help(
        "Jacobian coefficient lambda of eq. 5 (0 = the traditional-SAE baseline, trained without J)"))
    n_tokens: int = field(default=1_000_000, metadata=_help("training tokens; steps = n_tokens // batch_size"))
    batch_size: int = field(default=4096, metadata=_help("tokens per optimiser step"))
    k: int = field(default=32, metadata=_help("TopK k: active latents per token (of both SAEs unless k_out)"))
    expansion: float | None = field(default=32.0, metadata=_help(
        "latents = expansion x the SAE's input width (ignored, and recorded as None, when n_latents is given)"))
    n_latents: int | None = field(default=None, metadata=_help(
        "latents of the input SAE, overriding expansion (default: from expansion)"))
    k_out: int | None = field(default=None, metadata=_help("k of the output SAE (default: k)"))
    n_latents_out: int | None = field(default=None, metadata=_help(
        "latents of the output SAE (default: n_latents, else expansion x the MLP's output width)"))
    lr: float = field(default=5e-4, metadata=_help("peak Adam learning rate"))
    lr_warmup_frac: float = field(default=0.01, metadata=_help("fraction of steps of linear LR warm-up from 0"))
    lr_decay_frac: float = field(default=0.2, metadata=_help("fraction of steps (the last) of linear LR decay to 0"))
    lam_warmup_frac: float = field(default=0.05, metadata=_help("fraction of steps of linear lam warm-up from 0"))
    adam_beta1: float = field(default=0.9, metadata=_help("Adam beta1"))
    adam_beta2: float = field(default=0.999, metadata=_help("Adam beta2"))
    adam_eps: float = field(default=1e-8, metadata=_help("Adam epsilon"))
    grad_clip: float | None = field(default=None, metadata=_help(
        "clip the gradient norm to this value (default: no clipping)"))
    seed: int = field(default=0, metadata=_help(
        "training seed: of the SAE init (input SAE: 2·seed, output SAE: 2·seed + 1) and of the data order"))
    dead_window_tokens: int = field(default=10_000_000, metadata=_help(
        "a latent is dead when it has not fired within the last min(this, a quarter of the tokens seen so far) "
        "tokens (appendix E's 10M; jsae.train.dead.DeadLatentTracker)"))
    auxk_coef: float = field(default=0.0, metadata=_help(
        "coefficient of the AuxK loss (Gao et al. 2024, A.2; they use 1/32): each SAE's reconstruction error is "
        "reconstructed from its auxk_k dead latents (0 = off, the paper's recipe)"))
    auxk_k: int | None = field(default=None, metadata=_help(
        "dead latents per token in the AuxK loss (default: half the SAE's input width, as Gao et al.)"))
    dtype: str = field(default="float32", metadata=_help(
        "dtype of the SAE weights (CUDA adds bf16 autocast)", choices=TRAIN_DTYPES))
    normalize_activations: str = field(default="none", metadata=_help(
        "none = raw activations (the paper); expected_norm = x and MLP(x) scaled to mean L2 norm sqrt(d), "
        "so lam weighs eq. 5's terms alike on every model (the exported SAEs still act on raw activations)",
        choices=ACTIVATION_NORMALIZATIONS))

    def __post_init__(self) -> None:
        lam = self.lam
        if not _is_finite(lam) or lam < 0:
            raise ValueError(
                f"lam={lam!r} is invalid; expected a finite number >= 0 (0 trains the traditional-SAE baseline)"
            )
        for name in ("n_tokens", "batch_size", "dead_window_tokens", "k"):
            check_positive_int(name, getattr(self, name))
        for name in ("n_latents", "k_out", "n_latents_out", "auxk_k"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        if self.n_steps < 1:
            raise ValueError(
                f"n_tokens={self.n_tokens} with batch_size={self.batch_size} gives zero training steps; "
                "expected n_tokens >= batch_size"
            )
        if self.n_latents is None:
            e = self.expansion
            if not _is_finite(e) or e <= 0:
                raise ValueError(f"expansion={e!r} is invalid; expected a positive number (or give n_latents)")
        else:
            # n_latents overrides expansion: record None, so equal settings give one identity.
            object.__setattr__(self, "expansion", None)
        for name in ("lr", "adam_eps"):
            v = getattr(self, name)
            if not _is_finite(v) or v <= 0:
                raise ValueError(f"{name}={v!r} is invalid; expected a positive finite number")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v < 1:
                raise ValueError(f"{name}={v!r} is invalid; expected a number in [0, 1)")
        for name in ("lr_warmup_frac", "lr_decay_frac", "lam_warmup_frac"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 1:
                raise ValueError(f"{name}={v!r} is invalid; expected a fraction in [0, 1]")
        if self.lr_warmup_frac + self.lr_decay_frac > 1:
            raise ValueError(
                f"lr_warmup_frac + lr_decay_frac = {self.lr_warmup_frac + self.lr_decay_frac:g} > 1; "
                "expected at most 1"
            )
        c = self.auxk_coef
        if not _is_finite(c) or c < 0:
            raise ValueError(f"auxk_coef={c!r} is invalid; expected a finite number >= 0 (0 = no AuxK)")
        gc = self.grad_clip
        if gc is not None and (not _is_finite(gc) or gc <= 0):
            raise ValueError(f"grad_clip={gc!r} is invalid; expected a positive number or None (no clipping)")
        check_positive_int("seed", self.seed, minimum=0)
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is invalid; expected one of {', '.join(TRAIN_DTYPES)}")
        if self.normalize_activations not in ACTIVATION_NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is invalid; "
                f"expected one of {', '.join(ACTIVATION_NORMALIZATIONS)}"
            )

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size

    def dims(self, d_in: int, d_out: int) -> dict[str, int]:
        """Resolved sizes: ``n_latents_in/out``, ``k_in/out``, ``k_aux_in/out`` (checked: 1 <= k <= latents).

        ``k_aux``: AuxK's dead latents per token, ``auxk_k`` or by default half the SAE's input width
        (Gao et al.'s "d_model / 2"), at least 1 and at most the SAE's latents.
        """
        def from_expansion(d: int) -> int:
            return int(round(float(self.expansion) * d))  # type: ignore[arg-type]

        n_in = self.n_latents if self.n_latents is not None else from_expansion(d_in)
        if self.n_latents_out is not None:
            n_out = self.n_latents_out
        else:
            n_out = self.n_latents if self.n_latents is not None else from_expansion(d_out)
        k_in, k_out = self.k, self.k_out if self.k_out is not None else self.k
        for role, n in (("input", n_in), ("output", n_out)):
            if n < 1:
                raise ValueError(f"the {role} SAE would have {n} latents; expected a positive number (raise expansion)")
        try:
            check_k(k_in, n_in)
            check_k(k_out, n_out)
        except ValueError:
            raise ValueError(
                f"k={k_in} (input) / {k_out} (output) exceeds the number of latents {n_in} (input) / {n_out} "
                "(output); expected 1 <= k <= latents for each SAE"
            ) from None
        if self.auxk_k is not None:
            if self.auxk_k > min(n_in, n_out):
                raise ValueError(
                    f"auxk_k={self.auxk_k} exceeds the number of latents {n_in} (input) / {n_out} (output); "
                    "expected 1 <= auxk_k <= latents for each SAE"
                )
            k_aux_in = k_aux_out = self.auxk_k
        else:
            k_aux_in, k_aux_out = min(max(1, d_in // 2), n_in), min(max(1, d_out // 2), n_out)
        return {"n_latents_in": n_in, "n_latents_out": n_out, "k_in": k_in, "k_out": k_out,
                "k_aux_in": k_aux_in, "k_aux_out": k_aux_out}


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it learns (not part of a run's identity)."""

    checkpoint_every: int = field(default=500, metadata=_help("optimiser steps between resumable checkpoints"))
    log_every: int = field(default=50, metadata=_help("optimiser steps between logged metrics"))

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "log_every"):
            check_positive_int(name, getattr(self, name))


def configs_from_values(values: Mapping[str, Any]) -> tuple[TrainConfig, RunOptions]:
    """The checked configs of one pair from values keyed by field name (the study config's merged ``sae:`` and
    ``train:`` keys plus ``lam`` and ``seed``), as the workflow checks them before building the DAG."""
    names = {cls: {f.name for f in fields(cls)} for cls in (TrainConfig, RunOptions)}
    unknown = sorted(set(values) - names[TrainConfig] - names[RunOptions])
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}; expected fields of TrainConfig or RunOptions")
    return (TrainConfig(**{k: v for k, v in values.items() if k in names[TrainConfig]}),
            RunOptions(**{k: v for k, v in values.items() if k in names[RunOptions]}))
