"""A model SPEC that looks like a local path never reaches the network: a missing folder is a one-line error
at once (with ``HF_HUB_OFFLINE`` unset and no route to the hub, a hub lookup would hang for minutes); a folder
whose weights were deleted is a one-line error naming it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from test_faults_cli import tiny_pair  # noqa: F401  (fixture)

from jsae.data.models import load_model, resolve_spec

pytestmark = pytest.mark.faults  # make faults


@pytest.fixture
def online_but_no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset (the hub would be tried), every connection and name lookup fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()  # the pipeline's output folder exists, its model does not
    (tmp_path / "weights.safetensors").write_bytes(b"not a folder")


@pytest.mark.parametrize("spec", ["./models/foo", "/abs/path/to/model", "results/models/x", "~/no-such-model-x",
                                  "results/x", "x/", "models\\foo", "../elsewhere/model"])
def test_a_missing_local_path_fails_at_once_without_network(spec, online_but_no_network):
    for call in (resolve_spec, load_model):
        t0 = time.monotonic()
        with pytest.raises(FileNotFoundError) as exc:
            call(spec)
        assert time.monotonic() - t0 < 5
        msg = str(exc.value)
        assert msg.startswith(f"model directory {spec} does not exist; expected a save_pretrained folder"), msg
        assert "\n" not in msg


def test_a_file_is_not_a_model_folder(online_but_no_network):
    with pytest.raises(FileNotFoundError, match="weights.safetensors is a file, not a directory; expected a "
                                                "save_pretrained folder"):
        resolve_spec("weights.safetensors")


def test_hub_ids_are_still_hub_ids(monkeypatch):
    """``org/name`` with no local ``org`` folder is a hub id (answered here from a hub that is unreachable)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a real closed port: the probe fails at once
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="hub is unreachable"):
        resolve_spec("EleutherAI/pythia-70m-deduped")
    assert time.monotonic() - t0 < 5


def test_a_model_folder_without_weights_is_one_line(tiny_pair, tmp_path, online_but_no_network):  # noqa: F811
    model = tmp_path / "model"
    shutil.copytree(tiny_pair["model"], model)
    (model / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        load_model(str(model))
    msg = str(exc.value)
    assert msg.startswith(f"model directory {model} has no loadable weights") and "\n" not in msg, msg
    assert "delete it and re-run the rule that builds it" in msg


def test_the_command_line_reports_a_missing_local_model_in_one_line(tmp_path):
    (tmp_path / "results").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")}
    env["HOME"] = str(tmp_path)  # an empty HF cache
    res = subprocess.run([sys.executable, "-m", "jsae", "reinit", "--model", "results/tiny-neox", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "model directory results/tiny-neox does not exist" in res.stderr.strip().splitlines()[-1]
