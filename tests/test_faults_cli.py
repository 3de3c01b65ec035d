"""One error handler at the command-line boundary (``jsae.cli.run_cli``), checked on real processes.

A deleted or truncated weights file, Ctrl-C in the middle of training and a disk that fills up each end
``python -m jsae ...`` with one logged line, no traceback, and the documented exit status (2, 130, 1).
The inputs are real: a tiny GPT-NeoX saved with ``save_pretrained``, its HDF5 caches and a trained pair.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from jsae.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, INTERRUPTED, cli_failure

pytestmark = pytest.mark.faults  # make faults

LAYER = 1


def no_proxy_env() -> dict[str, str]:
    """The environment without proxy settings: the tests talk to local ports only."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


def jsae(*args: str, cwd: Path | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """``python -m jsae ARGS`` in a fresh process (one thread, offline)."""
    env = {**no_proxy_env(), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("JSAE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "jsae", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, **popen)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def assert_one_line_error(res: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert res.returncode == code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    [line] = error_lines(res.stderr)
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict:
    """A saved tiny GPT-NeoX (``model``), its train/validation caches and a pair trained on them (``run``)."""
    from builders import build_tiny_saved_lm

    from jsae.data.cache import build_cache
    from jsae.train.run import TrainConfig, train_from_files

    root = tmp_path_factory.mktemp("faults")
    build_tiny_saved_lm(root, validation_fraction=0.3)
    model = str(root / "model")
    for split, n in (("train", 450), ("validation", 300)):
        build_cache(model, LAYER, root / "corpus", split, n, 16, root / f"{split}.h5", device="cpu", progress=False,
                    batch_size=8)
    train_from_files(model, LAYER, root / "train.h5", root / "run",
                     TrainConfig(lam=1.0, n_tokens=32 * 6, batch_size=32, k=4, expansion=4, lr=3e-3),
                     progress=False, device="cpu", log_every=3, checkpoint_every=100, mlflow_uri=None)
    torch.set_num_threads(1)
    return {"root": root, "model": model, "train": root / "train.h5", "validation": root / "validation.h5",
            "run": root / "run"}


def copy_pair(pair: dict, dest: Path) -> dict:
    """A private copy (model, caches, run) to damage; the model path recorded in the caches stays valid."""
    shutil.copytree(pair["run"], dest / "run")
    return {**pair, "run": dest / "run"}


def evaluate_args(pair: dict, model: str, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", model, "--layer", str(LAYER), "--run", str(pair["run"]), "--cache",
            str(pair["validation"]), "--device", "cpu", "--no-progress", "--ce-tokens", "30", "--batch-size", "64",
            "--out", str(out), *extra]


def train_args(pair: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", pair["model"], "--layer", str(LAYER), "--cache", str(pair["train"]), "--out", str(out),
            "--lam", "1", "--batch-size", "32", "--k", "4", "--expansion", "4", "--device", "cpu", "--no-progress",
            "--no-artifacts", "--mlflow-uri", "none", *extra]


def test_deleted_model_weights_are_one_line_with_the_remedy(tiny_pair, tmp_path):
    """The model folder lost its weights (a cleaned disk, an interrupted copy): exit 2, one line, no traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_pair["model"], model)
    (model / "model.safetensors").unlink()
    pair = copy_pair(tiny_pair, tmp_path)
    # The pair and the caches record the original folder; point them at the damaged copy.
    run = json.loads((pair["run"] / "run.json").read_text())
    run["model"] = str(model)
    (pair["run"] / "run.json").write_text(json.dumps(run))
    pair["validation"] = tmp_path / "validation.h5"
    shutil.copy(tiny_pair["validation"], pair["validation"])
    with h5py.File(pair["validation"], "r+") as f:
        f.attrs["model"] = str(model)
    res = jsae(*evaluate_args(pair, str(model), tmp_path / "ev" / "evaluation.json"))
    assert_one_line_error(res, EXIT_BAD_INPUT, str(model), "no loadable weights", "re-run the rule that builds it")
    assert not (tmp_path / "ev" / "evaluation.json").exists()


def test_truncated_sae_weights_are_one_line_with_the_remedy(tiny_pair, tmp_path):
    """A truncated safetensors file raises safetensors' own error type (not an OSError): still one line, exit 2."""
    pair = copy_pair(tiny_pair, tmp_path)
    weights = pair["run"] / "sae_in" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    res = jsae(*evaluate_args(pair, pair["model"], tmp_path / "ev" / "evaluation.json"))
    assert_one_line_error(res, EXIT_BAD_INPUT, "SafetensorError", "re-run the rule that builds it")


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm", "snakemake-killed"])
def test_ctrl_c_during_training_is_one_line_and_exit_130(tiny_pair, tmp_path, stop):
    """Ctrl-C, SIGTERM (how Snakemake and SLURM stop a job) and the death of the Snakemake that started the job
    (kill -9: the job would run on as an orphan) all stop training the same way: checkpoint kept, exit 130."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JSAE_DEBUG", None)
    parent = None
    if stop == "snakemake-killed":  # a stand-in process plays the Snakemake whose pid the workflow exports
        import socket

        parent = subprocess.Popen(["sleep", "600"])
        env["JSAE_SNAKEMAKE"] = f"{socket.gethostname()}:{parent.pid}"
    cmd = [sys.executable, "-m", "jsae", *train_args(tiny_pair, out, "--n-tokens", str(32 * 200_000),
                                                     "--checkpoint-every", "20")]
    # SIG_DFL in the child: a shell without job control starts background processes with SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:  # wait until the training loop runs (and a checkpoint exists)
            lines.append(line)
            if "training " in line:
                break
            assert time.monotonic() < deadline, "training did not start"
        checkpoint = out.with_name(f".{out.name}.work") / "checkpoint.pt"
        while not checkpoint.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        if stop == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        elif stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            parent.kill()
            parent.wait()
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if parent is not None and parent.poll() is None:
            parent.kill()
    stderr = "".join(lines) + rest
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    [line] = error_lines(stderr)
    assert line.endswith(INTERRUPTED)
    assert checkpoint.is_file() and not out.exists()  # resumable, and nothing that looks finished


def _tmpfs_available(mount: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs '{mount}'"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_full_disk_is_one_line_naming_the_file_and_exit_1(tiny_pair, tmp_path):
    """A real ENOSPC: training writes its checkpoint into a 16 KiB tmpfs (a private mount namespace)."""
    full = tmp_path / "full"
    full.mkdir()
    if not _tmpfs_available(full):
        pytest.skip("no unprivileged mount namespace (unshare -rm) to make a small tmpfs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JSAE_DEBUG", None)
    args = " ".join(f"'{a}'" for a in train_args(tiny_pair, full / "run", "--n-tokens", "320",
                                                 "--checkpoint-every", "5"))
    script = f"mount -t tmpfs -o size=16k tmpfs '{full}' && exec '{sys.executable}' -m jsae {args}"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=env)
    line = assert_one_line_error(res, EXIT_FAILED, "disk full", "free space")
    assert "checkpoint.pt" in line and str(full) in line  # names the file being written


def cache_argv(pair: dict, out: Path) -> list[str]:
    return ["--model", pair["model"], "--layer", str(LAYER), "--corpus", str(pair["root"] / "corpus"), "--split",
            "train", "--n-tokens", "450", "--context-length", "16", "--out", str(out)]


def _in_small_tmpfs(mount: Path, size: str, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JSAE_DEBUG", None)
    script = f"mount -t tmpfs -o size={size} tmpfs '{mount}' && exec {command}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=env)


def test_a_cache_that_cannot_fit_is_refused_before_any_forward(tiny_pair, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    if not _tmpfs_available(full):
        pytest.skip("no unprivileged mount namespace (unshare -rm) to make a small tmpfs")
    args = ["cache", *cache_argv(tiny_pair, full / "c.h5")]
    res = _in_small_tmpfs(full, "40k", f"'{sys.executable}' -m jsae " + " ".join(f"'{a}'" for a in args))
    line = assert_one_line_error(res, EXIT_FAILED, "disk full", str(full / "c.h5"), "MiB free")
    assert "cache L1" not in res.stderr, line  # no forward ran


def test_a_disk_that_fills_while_caching_is_one_line_and_no_crash(tiny_pair, tmp_path):
    """The file system fills up after the up-front check (another job wrote to it): HDF5 must not crash at exit."""
    full = tmp_path / "full"
    full.mkdir()
    if not _tmpfs_available(full):
        pytest.skip("no unprivileged mount namespace (unshare -rm) to make a small tmpfs")
    argv = [*cache_argv(tiny_pair, full / "c.h5"), "--batch-size", "4"]
    # The up-front space check is switched off to stand for the other job: the writes themselves hit ENOSPC.
    code = ("import sys, jsae.data.cache as c; c._check_free_space = lambda *a: None; "
            f"sys.exit(c.cli({argv!r}))")
    res = _in_small_tmpfs(full, "40k", f"'{sys.executable}' -c \"{code}\"")
    assert_one_line_error(res, EXIT_FAILED, "disk full", str(full))
    assert "Segmentation fault" not in res.stderr and res.returncode == EXIT_FAILED


def test_known_failures_map_to_their_exit_status_and_one_line(tmp_path):
    """The mapping itself, on real exceptions: writes to /dev/full (ENOSPC) from Python and from torch.save."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as info, open("/dev/full", "w") as f:
        f.write("x" * 10_000)
        f.flush()
    assert info.value.errno == errno.ENOSPC
    code, line = cli_failure(info.value)
    assert code == EXIT_FAILED and line.startswith("disk full") and "\n" not in line
    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    code, line = cli_failure(info.value)
    assert code == EXIT_FAILED and line.startswith("disk full"), line
    code, line = cli_failure(KeyboardInterrupt())
    assert (code, line) == (EXIT_INTERRUPTED, INTERRUPTED)
    with pytest.raises(OSError) as info:
        from transformers import AutoModelForCausalLM

        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
        AutoModelForCausalLM.from_pretrained(tmp_path)  # no weights file
    code, line = cli_failure(info.value)
    assert code == EXIT_BAD_INPUT and "re-run the rule that builds it" in line and "\n" not in line
    assert cli_failure(ValueError("x=1 is invalid;\nexpected 2")) == (EXIT_BAD_INPUT, "x=1 is invalid; expected 2")
    assert cli_failure(ZeroDivisionError()) is None  # a bug keeps its traceback
