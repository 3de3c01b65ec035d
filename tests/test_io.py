"""Atomic outputs: complete or absent, with normal permissions."""

from __future__ import annotations

import os

import pytest


def test_atomic_outputs_get_normal_permissions(tmp_path):
    from jsae.io import atomic_dir, write_json

    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_failed_write_leaves_nothing(tmp_path):
    from jsae.io import atomic_dir, atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "run") as d:
            (d / "w").write_text("partial")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    from jsae.io import atomic_dir

    with atomic_dir(tmp_path / "run") as d:
        (d / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "run") as d:
            (d / "v").write_text("2")
            raise RuntimeError
    assert (tmp_path / "run" / "v").read_text() == "1"
    with atomic_dir(tmp_path / "run") as d:
        (d / "v").write_text("3")
    assert (tmp_path / "run" / "v").read_text() == "3"
