"""Training one JSAE pair: the recipe and its settings, batch sources, the training loop, the run directory.

* :mod:`~jsae.train.config`: :class:`TrainConfig` (what determines the weights) and :class:`RunOptions`.
* :mod:`~jsae.train.schedules`: the LR and lam schedules (pure functions of the step).
* :mod:`~jsae.train.sources`: :class:`BatchSource`, :class:`InMemorySource`, the :class:`Prefetcher` thread.
* :mod:`~jsae.train.dead`: :class:`DeadLatentTracker`.
* :mod:`~jsae.train.keys`: the metric keys training logs.
* :mod:`~jsae.train.trainer`: :class:`~jsae.train.trainer.TrainerBase` (the loop, checkpoints, exact resume),
  :class:`Trainer` (a pair's step), :class:`TrainResult`.
* :mod:`~jsae.train.run`: one run directory (:func:`run_training`, :func:`train_from_files`, :class:`RunRecord`).
* :mod:`~jsae.train.cli`: ``python -m jsae train``.
"""

from jsae.train.config import RunOptions, TrainConfig
from jsae.train.dead import DeadLatentTracker
from jsae.train.run import (
    CONTROLS,
    NORM_ESTIMATE_TOKENS,
    RunRecord,
    build_pair,
    check_cache_matches,
    check_out_dir,
    estimate_activation_scales,
    run_training,
    train_from_files,
    work_dir_for,
)
from jsae.train.sources import BatchSource, InMemorySource, Prefetcher
from jsae.train.trainer import Trainer, TrainResult

__all__ = [
    "CONTROLS",
    "NORM_ESTIMATE_TOKENS",
    "BatchSource",
    "DeadLatentTracker",
    "InMemorySource",
    "Prefetcher",
    "RunOptions",
    "RunRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_pair",
    "check_cache_matches",
    "check_out_dir",
    "estimate_activation_scales",
    "run_training",
    "train_from_files",
    "work_dir_for",
]
