"""``python -m jsae train``: train one pair from an activation cache (:func:`jsae.train.run.train_from_files`).

The recipe and running options are generated from the fields of :class:`~jsae.train.config.TrainConfig`
and :class:`~jsae.train.config.RunOptions`: ``--name-with-dashes``, the field's type, default, help
text and choices. ``--config-json`` gives any of them at once, keyed by field name (the study
config's ``sae:`` and ``train:`` keys, plus ``lam`` and ``seed``): the Snakemake rule passes each
pair's settings so. Options given explicitly override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from collections.abc import Callable, Mapping
from typing import Any

from jsae.cli import MLFLOW_URI_ENV, HelpFormatter, default_tracking_uri, run_cli, tracking_uri
from jsae.io import setup_logging
from jsae.tracking import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from jsae.train.config import RunOptions, TrainConfig
from jsae.train.run import CONTROLS, train_from_files

log = logging.getLogger("jsae.train")

#: The dataclasses whose fields are options of the CLI (and keys of --config-json).
CONFIG_CLASSES = (TrainConfig, RunOptions)
#: What an optional (``X | None``) option accepts for None.
NONE_WORDS = ("none", "null")
_METAVARS = {int: "N", float: "X"}


def option_name(field_name: str) -> str:
    """The CLI option of a config field: ``n_tokens`` -> ``--n-tokens``."""
    return "--" + field_name.replace("_", "-")


def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """``{field: (base type, optional)}`` of a config dataclass (``float | None`` -> ``(float, True)``)."""
    hints = typing.get_type_hints(cls)
    types: dict[str, tuple[type, bool]] = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        base = next((a for a in args if a is not type(None)), hints[f.name])
        types[f.name] = (base, type(None) in args)
    return types


def _parser_for(base: type, optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.lower() in NONE_WORDS:
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names it in errors: "invalid float value: 'x'"
    return parse


def add_config_options(group: argparse._ArgumentGroup, cls: type) -> None:
    """One option per field of ``cls``, with the field's type, default, help text and choices."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        base, optional = types[f.name]
        required = f.default is dataclasses.MISSING  # checked after --config-json is merged in
        help_ = f.metadata["help"] + (" (required, here or in --config-json)" if required else "")
        group.add_argument(option_name(f.name), dest=f.name, type=_parser_for(base, optional),
                           default=None if required else f.default, choices=f.metadata.get("choices"),
                           metavar=_METAVARS.get(base), help=help_)


def config_json_values(text: str) -> dict[str, Any]:
    """The fields given by ``--config-json``: a JSON object keyed by field name, numbers as the fields' types."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is not valid JSON ({exc}); expected an object like '{{\"lam\": 1}}'") from None
    if not isinstance(values, Mapping):
        raise ValueError(f"--config-json holds a {type(values).__name__}; expected a JSON object keyed by field name")
    types = {name: t for cls in CONFIG_CLASSES for name, t in field_types(cls).items()}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"--config-json has unknown keys {', '.join(unknown)}; expected some of {', '.join(types)}")
    # JSON writes 8.0 as 8: float fields get floats, as their options give.
    return {name: float(v) if types[name][0] is float and type(v) is int else v for name, v in values.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jsae train",
        description="Train one JSAE pair (input and output TopK SAEs around an MLP, with the Jacobian L1 penalty) "
        "from an activation cache; resumable, tracked in MLflow, exported in SAELens format.",
        epilog="Outputs: RUN_DIR/sae_in, RUN_DIR/sae_out (SAELens cfg.json + sae_weights.safetensors), "
        "RUN_DIR/metrics.jsonl and RUN_DIR/run.json (written last). Checkpoints live in .RUN_DIR.work next to it; "
        "rerunning the same command resumes. A finished identical run is skipped; --force retrains and replaces it.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--model", required=True, help="model SPEC (local directory, HF id, smollm2-135m)")
    g.add_argument("--model-name", default=None, help="short name for MLflow (default: last component of --model)")
    g.add_argument("--layer", type=int, required=True, help="index of the transformer block whose MLP is trained on")
    g.add_argument("--cache", required=True, help="HDF5 activation cache of that model and layer (train split)")
    g.add_argument("--out", required=True, help="run directory to create")
    g.add_argument("--control", default="trained", choices=CONTROLS, help="trained model or random re-init control")
    unsettable = [option_name(name) for name, (_, optional) in field_types(TrainConfig).items() if optional]
    h = p.add_argument_group(
        "recipe: what determines the weights (paper appendix D defaults)",
        f"{', '.join(unsettable[:-1])} and {unsettable[-1]} also accept '{NONE_WORDS[0]}' (unset).",
    )
    h.add_argument("--config-json", metavar="JSON", default=None,
                   help="recipe and running options as one JSON object keyed by field name (the study config's "
                   "sae: and train: keys, lam, seed), e.g. '{\"lam\": 1, \"k\": 16}'; options given explicitly win")
    add_config_options(h, TrainConfig)
    r = p.add_argument_group("running: how, where and what is recorded (never changes the weights)")
    add_config_options(r, RunOptions)
    r.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (bf16 autocast on CUDA)")
    r.add_argument("--mlflow-uri", default=default_tracking_uri(DEFAULT_TRACKING_URI),
                   help=f"MLflow tracking URI ('none' to disable; default: ${MLFLOW_URI_ENV}, else "
                   f"{DEFAULT_TRACKING_URI})")
    r.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (one per study)")
    r.add_argument("--mlflow-parent-from", default=None, metavar="MARKER",
                   help="the workflow's tracking marker (python -m jsae.tracking --marker): nest this run under "
                   "the study's run recorded there")
    r.add_argument("--no-artifacts", action="store_true", help="do not copy the SAEs into MLflow's artifact store")
    r.add_argument("--force", action="store_true",
                   help="retrain even if --out holds a finished run (replaced at the end)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--log-file", default=None, help="also write the log to this file")
    return p


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The arguments (of ``parser``, default :func:`build_parser`'s), ``--config-json`` filling the options not
    given explicitly."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.config_json is not None:
        try:
            parser.set_defaults(**config_json_values(args.config_json))
        except ValueError as exc:
            parser.error(str(exc))
        args = parser.parse_args(argv)
    return args


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, RunOptions]:
    """The checked :class:`TrainConfig` and :class:`RunOptions` (one-line ``ValueError`` otherwise)."""
    if args.lam is None:
        raise ValueError("lam is not set; expected --lam (or \"lam\" in --config-json)")
    train, run = ({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)} for cls in CONFIG_CLASSES)
    return TrainConfig(**train), RunOptions(**run)


def parent_run(marker: str | None, uri: str | None) -> str | None:
    """The study's run id from the tracking marker; None without a marker or with tracking off."""
    if marker is None or uri is None:
        return None
    from jsae.tracking import read_parent_run_id

    return read_parent_run_id(marker)


def train_from_args(train: Callable[..., Any], args: argparse.Namespace, **extra: Any) -> int:
    """``train(model, layer, cache, out, config, **running options, **extra)`` with the parsed arguments; exit
    status 0 done, 1 diverged (:func:`train_from_files`, or a baseline's ``train_baseline_from_files``)."""
    config, options = configs_from_args(args)
    uri = tracking_uri(args.mlflow_uri)
    try:
        train(
            args.model, args.layer, args.cache, args.out, config, control=args.control, force=args.force,
            model_name=args.model_name, device=args.device, checkpoint_every=options.checkpoint_every,
            log_every=options.log_every, mlflow_uri=uri, experiment=args.experiment,
            mlflow_parent=parent_run(args.mlflow_parent_from, uri), progress=not args.no_progress,
            log_artifacts=not args.no_artifacts, **extra,
        )
    except FloatingPointError as exc:  # diverged: a result, not a bug; no traceback
        log.error("%s", exc)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    return train_from_args(train_from_files, args)


def cli(argv: list[str]) -> int:
    """``python -m jsae train ...``; exit status 0 done, 2 bad input, 1 diverged."""
    args = parse_args(argv)
    setup_logging(log_file=args.log_file)
    return run_cli(_train, args)
