"""What every ``python -m jsae <command>`` shares: help formatting, the tracking-URI option, exit codes.

Exit codes: 0 done, 2 bad input (one logged line, no traceback), 1 a run that failed as a result
(e.g. a diverged training loss).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

log = logging.getLogger("jsae")

#: What ``--mlflow-uri`` accepts to switch tracking off.
NO_TRACKING = ("", "none")


class HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Identity, not equality: a default of 0 (== False) is still worth showing.
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def tracking_uri(value: str | None) -> str | None:
    """The ``--mlflow-uri`` value as a URI, or None when tracking is off (``none`` or empty)."""
    return None if value is None or str(value).lower() in NO_TRACKING else str(value)


def run_cli(fn: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a CLI body; bad input becomes one logged line and exit status 2 (no traceback)."""
    try:
        return int(fn(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
