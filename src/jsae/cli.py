"""What every ``python -m jsae <command>`` shares: help formatting, the tracking-URI option, exit codes.

Exit codes (:func:`run_cli` maps exceptions to them, each reported as one logged line, no traceback):

* 0 done;
* 1 a run that failed as a result (e.g. a diverged training loss), or the disk filled up while writing
  (``OSError`` ENOSPC/EDQUOT, or torch's "file write failed" / "iostream error"): free space and re-run;
* 2 bad input: ``ValueError``, ``TypeError``, ``FileNotFoundError``, ``FileExistsError``,
  ``PermissionError``, and any other ``OSError`` or corrupt weights file (``SafetensorError``), e.g. a
  deleted or truncated model file: the line names it and the remedy (re-run the rule that builds it);
* 130 interrupted (Ctrl-C / SIGINT): re-run the same command to resume from the last checkpoint.

Anything else keeps its traceback (a bug). ``JSAE_DEBUG=1`` shows the traceback in every case. The
commands that run through :func:`run_cli`: cache, reinit, train, evaluate, probes, tables.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
from collections.abc import Callable

log = logging.getLogger("jsae")

#: What ``--mlflow-uri`` accepts to switch tracking off.
NO_TRACKING = ("", "none")
#: The environment variable that sets ``--mlflow-uri``'s default. The workflow hands the study's URI to its jobs
#: through it: where a job logs is not what it computes, so it is kept out of the jobs' params and command
#: text, and moving a study to another store (a tracking server on a cluster) re-plans nothing.
MLFLOW_URI_ENV = "JSAE_MLFLOW_URI"

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
INTERRUPTED = "interrupted; re-run the same command to resume from the last checkpoint"
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What torch.save (its C++ stream writer: "unexpected pos N vs M" is a short write) and h5py say when a
# write fails for lack of space.
_DISK_FULL_TEXT = re.compile(r"no space left|disk quota|file write failed|iostream error|"
                             r"inline_container\.cc.*unexpected pos", re.IGNORECASE)
_BAD_INPUT = (ValueError, TypeError, FileNotFoundError, FileExistsError)


class HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Identity, not equality: a default of 0 (== False) is still worth showing.
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def default_tracking_uri(fallback: str | None) -> str | None:
    """``--mlflow-uri``'s default: ``$JSAE_MLFLOW_URI`` where it is set, else ``fallback``."""
    return os.environ.get(MLFLOW_URI_ENV, fallback)


def tracking_uri(value: str | None) -> str | None:
    """The ``--mlflow-uri`` value as a URI, or None when tracking is off (``none`` or empty)."""
    return None if value is None or str(value).lower() in NO_TRACKING else str(value)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The exception's message on one line (library messages can span several), at most ``limit`` characters."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _disk_full_path(exc: BaseException) -> str | None:
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.filename:
            return str(e.filename)
        found = re.search(r"filename = '([^']+)'", str(e or ""))  # h5py's message carries the file name
        if found:
            return found.group(1)
    return None


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and bool(_DISK_FULL_TEXT.search(str(exc)))


def cli_failure(exc: BaseException) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` for an exception a command reports without a traceback, else None."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, INTERRUPTED
    if is_disk_full(exc):
        path = _disk_full_path(exc)
        where = f" while writing {path}" if path else ""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc, 160)
        return EXIT_FAILED, (f"disk full: no space left on the device{where} ({detail}); free space or "
                             "point the outputs elsewhere, then re-run the same command (finished outputs and "
                             "checkpoints are kept)")
    if isinstance(exc, _BAD_INPUT):
        return EXIT_BAD_INPUT, one_line(exc)
    if isinstance(exc, PermissionError):
        return EXIT_BAD_INPUT, f"{one_line(exc)}; expected a path this user may read and write (check its permissions)"
    if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
        return EXIT_BAD_INPUT, (f"{type(exc).__name__}: {one_line(exc, 300)}; expected a complete, readable file: "
                                "delete the file named above if it is corrupt and re-run the rule that builds it")
    return None


def run_cli(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a CLI body; a known failure becomes one logged line and its exit status (module docstring)."""
    try:
        return int(fn(args) or 0)
    except BaseException as exc:  # KeyboardInterrupt included on purpose; anything unknown is re-raised
        outcome = cli_failure(exc)
        if outcome is None or os.environ.get("JSAE_DEBUG"):
            raise
        code, message = outcome
        log.error("%s", message)
        return code
