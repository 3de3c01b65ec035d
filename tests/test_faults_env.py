"""The conda environment every workflow rule runs in (envs/jsae.yaml) installs what the package declares:
each of pyproject.toml's [project] dependencies, with the same pin, in its pip list."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

pytestmark = pytest.mark.faults  # make faults

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The distribution name of a requirement, normalised as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _spec(requirement: str) -> str:
    """The requirement without spaces or a trailing comment, so ``torch==2.13.0`` and ``torch == 2.13.0`` match."""
    return re.sub(r"\s+", "", requirement.split("#")[0]).lower()


def test_every_package_dependency_is_in_the_workflow_environment_with_the_same_pin():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs" / "jsae.yaml").read_text())
    [pip] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    in_env = {_name(r): _spec(r) for r in pip}
    missing = [r for r in declared if _name(r) not in in_env]
    assert not missing, f"envs/jsae.yaml lacks {missing}"
    differ = {r: in_env[_name(r)] for r in declared if in_env[_name(r)] != _spec(r)}
    assert not differ, f"pins differ between pyproject.toml and envs/jsae.yaml: {differ}"


def test_the_workflow_environment_python_is_one_the_package_supports():
    env = yaml.safe_load((REPO / "envs" / "jsae.yaml").read_text())
    [python] = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    version = ".".join(python.split("=")[-1].split(".")[:2])
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{version}.0"), (python, requires)
