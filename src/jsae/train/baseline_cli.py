"""``python -m jsae train-baseline``: train one transcoder baseline from an activation cache
(:func:`jsae.train.baseline.train_baseline_from_files`).

The options are ``python -m jsae train``'s (:mod:`jsae.train.cli`: one per :class:`~jsae.train.config.TrainConfig`
and :class:`~jsae.train.config.RunOptions` field, ``--config-json`` keyed by field name, explicit options winning),
plus ``--method``; ``--lam`` defaults to 0 and any other value is refused (a transcoder has no Jacobian term). The
Snakemake rule passes the study's ``sae:`` and ``train:`` keys and the seed, exactly as it does for the pairs.
"""

from __future__ import annotations

import argparse

from jsae.cli import run_cli
from jsae.io import setup_logging
from jsae.train import cli as train_cli
from jsae.train.baseline import BASELINE_METHODS, CODER_DIRNAME, train_baseline_from_files


def build_parser() -> argparse.ArgumentParser:
    """``python -m jsae train``'s parser with this command's name, description and ``--method``."""
    p = train_cli.build_parser()
    p.prog = "python -m jsae train-baseline"
    p.description = ("Train one baseline of the JSAE pairs from the same activation cache: a TopK transcoder (MLP "
                     "input -> MLP output) or a skip transcoder (plus a linear skip path), with the pairs' width, k, "
                     "recipe, tokens and data order; resumable, tracked in MLflow, saved in sparsify's format.")
    p.epilog = (f"Outputs: RUN_DIR/{CODER_DIRNAME} (sparsify's cfg.json + sae.safetensors), RUN_DIR/metrics.jsonl and "
                "RUN_DIR/run.json (written last). Checkpoints live in .RUN_DIR.work next to it; rerunning the same "
                "command resumes. A finished identical run is skipped; --force retrains and replaces it.")
    p.add_argument("--method", required=True, choices=BASELINE_METHODS,
                   help="transcoder: y_hat = W_dec TopK(W_enc x + b_enc) + b_dec; skip_transcoder: + W_skip x")
    p.set_defaults(lam=0.0)
    for action in p._actions:
        if action.dest == "lam":
            action.help = "must be 0, the default: a transcoder has no Jacobian term"
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments, ``--config-json`` filling the options not given explicitly (as ``train``'s)."""
    return train_cli.parse_args(argv, build_parser())


def _train(args: argparse.Namespace) -> int:
    return train_cli.train_from_args(train_baseline_from_files, args, method=args.method)


def cli(argv: list[str]) -> int:
    """``python -m jsae train-baseline ...``; exit status 0 done, 2 bad input, 1 diverged."""
    args = parse_args(argv)
    setup_logging(log_file=args.log_file)
    return run_cli(_train, args)
