"""The ``python -m jsae`` dispatcher: usage, unknown commands, one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

from jsae.__main__ import COMMANDS, main


def test_usage_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_module_imports_and_has_help():
    import importlib

    for name, (target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_bad_input_is_one_line_without_traceback(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jsae",
            "reinit",
            "--model",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in res.stderr
    assert "missing" in lines[-1]
