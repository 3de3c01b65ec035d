"""``python -m jsae <command> ...``: one entry point; each command lives in the module that owns it.

Bad input exits with status 2 and one line on stderr (``JSAE_DEBUG=1`` shows the traceback).
Modules are imported lazily so ``python -m jsae train --help`` does not import matplotlib, and a
missing optional stage never breaks the others.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": ("jsae.data.corpus:cli", "build the default corpus (documents, split, sha256)"),
    "tokenizer": ("jsae.data.pretrain:cli_tokenizer", "train the byte-level BPE tokenizer on a corpus"),
    "pretrain": ("jsae.data.pretrain:cli", "pretrain the embedded tiny-neox model"),
    "reinit": ("jsae.data.models:cli_reinit", "save a randomly re-initialised copy of a model"),
    "cache": ("jsae.data.cache:cli", "cache MLP inputs of (model, layer) to HDF5"),
    "train": ("jsae.train.cli:cli", "train one JSAE pair from a cache"),
    "evaluate": ("jsae.eval.evaluate:cli", "evaluate a trained pair (reconstruction, CE/KL, Jacobian stats)"),
    "probes": ("jsae.eval.probes:cli", "linearity probes of f_s (appendix B)"),
    "tables": ("jsae.eval.tables:cli", "qualitative tables: top output latents and their inputs"),
    "figures": ("jsae.report.figures:cli", "render the paper's figures from evaluation outputs"),
    "summary": ("jsae.report.summary:cli", "one row per pair and the paper-claims table"),
}


def _usage() -> str:
    lines = ["usage: python -m jsae <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


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
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        # Bad input: the one-line message is the whole story; a traceback would bury it.
        if os.environ.get("JSAE_DEBUG"):
            raise
        print(f"jsae {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
