"""``python -m jsae <command> ...``: one entry point; each command lives in the module that owns it.

Every command's known failures become one line on stderr and an exit status (:func:`jsae.cli.cli_failure`:
2 bad input, 1 disk full, 130 interrupted; ``JSAE_DEBUG=1`` shows the traceback). SIGTERM (how Snakemake
and SLURM stop a job) stops a command as Ctrl-C does, checkpoints kept. A job started by Snakemake stops
the same way when that Snakemake is gone (killed with -9), instead of running on as an orphan.
Modules are imported lazily so ``python -m jsae train --help`` does not import matplotlib, and a
missing optional stage never breaks the others.
"""

from __future__ import annotations

import _thread
import importlib
import os
import signal
import socket
import sys
import threading
import time

from jsae.cli import cli_failure

#: Set by the workflow (workflow/rules/environment.smk) to ``<host>:<pid>`` of the Snakemake process whose
#: jobs inherit it; a job on that host watches the process.
PARENT_ENV = "JSAE_SNAKEMAKE"
WATCH_EVERY_S = 5.0
GRACE_S = 60.0  # after the interrupt, time to write a checkpoint before the process is ended

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("jsae.data.corpus:cli", "build the default corpus (documents, split, sha256)"),
    "tokenizer": ("jsae.data.pretrain:cli_tokenizer", "train the byte-level BPE tokenizer on a corpus"),
    "pretrain": ("jsae.data.pretrain:cli", "pretrain the embedded tiny-neox model"),
    "reinit": ("jsae.data.models:cli_reinit", "save a randomly re-initialised copy of a model"),
    "materialize": ("jsae.data.models:cli_materialize", "save a model (e.g. GGUF weights) as a plain local folder"),
    "planted": ("jsae.data.planted:cli", "build a planted ground-truth model (known features and edges)"),
    "cache": ("jsae.data.cache:cli", "cache MLP inputs of (model, layer) to HDF5"),
    "train": ("jsae.train.cli:cli", "train one JSAE pair from a cache"),
    "train-baseline": ("jsae.train.baseline_cli:cli", "train one transcoder / skip-transcoder baseline from a cache"),
    "evaluate": ("jsae.eval.evaluate:cli", "evaluate a trained pair (reconstruction, CE/KL, Jacobian stats)"),
    "probes": ("jsae.eval.probes:cli", "linearity probes of f_s (appendix B)"),
    "tables": ("jsae.eval.tables:cli", "qualitative tables: top output latents and their inputs"),
    "recovery": ("jsae.eval.recovery:cli", "recovery of a planted model's features, edges and kinds by a pair"),
    "interaction": ("jsae.eval.interaction:cli", "SCALAR-style interaction sparsity: effect recovered vs edges kept"),
    "core": ("jsae.eval.core:cli", "SAEBench core metrics of both SAEs of a pair (one SAEBench JSON each)"),
    "evaluate-baseline": ("jsae.eval.baseline:cli", "evaluate a transcoder baseline (MLP-output FVU, CE/KL splice)"),
    "core-baseline": ("jsae.eval.baseline:core_cli", "SAEBench core metrics of a transcoder baseline (one JSON)"),
    "figures": ("jsae.report.figures:cli", "render the paper's figures from evaluation outputs"),
    "summary": ("jsae.report.summary:cli", "one row per pair and the paper-claims table"),
    "export": ("jsae.release:cli", "a release of trained pairs for SAELens, sparsify and Neuronpedia"),
    "gpu-slot": ("jsae.gpu_slots:cli", "run a command on a free GPU of its own (CUDA_VISIBLE_DEVICES)"),
}


def _usage() -> str:
    lines = ["usage: python -m jsae <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_snakemake(value: str | None = None) -> threading.Thread | None:
    """Interrupt this process when the Snakemake that started it (``$JSAE_SNAKEMAKE``) no longer runs."""
    value = os.environ.get(PARENT_ENV) if value is None else value
    host, _, pid_text = (value or "").rpartition(":")
    if not pid_text.isdigit() or host != socket.gethostname() or int(pid_text) == os.getpid():
        return None
    pid = int(pid_text)

    def watch() -> None:
        while _alive(pid):
            time.sleep(WATCH_EVERY_S)
        print(f"jsae: Snakemake (pid {pid}) is gone; stopping this job (re-run snakemake to resume)",
              file=sys.stderr)
        _thread.interrupt_main()
        time.sleep(GRACE_S)
        os._exit(130)

    thread = threading.Thread(target=watch, name="watch-snakemake", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jsae: unknown command {name!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        watch_snakemake()
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    except BaseException as exc:  # KeyboardInterrupt included; anything unknown keeps its traceback
        outcome = cli_failure(exc)
        if outcome is None or os.environ.get("JSAE_DEBUG"):
            raise
        # Bad input: the one-line message is the whole story; a traceback would bury it.
        code, message = outcome
        print(f"jsae {name}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
