"""GPU slots (jsae.gpu_slots): real launcher processes holding real flocks, on CPU.

A "GPU" is a slot named by JSAE_GPU_IDS / CUDA_VISIBLE_DEVICES, so no GPU is needed: the oracle is what each
job's own process sees in CUDA_VISIBLE_DEVICES and when it ran, recorded by the job itself. Most launchers run
the module as a script (``python -P gpu_slots.py``): the jsae package imports torch (~2 s a process); the
signal test and the workflow test go through ``python -m jsae gpu-slot`` itself."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_workflow import REPO, job_counts, layout, load, snakemake, study_pairs

from jsae import gpu_slots

SCRIPT = REPO / "src" / "jsae" / "gpu_slots.py"
FAST = [sys.executable, "-P", str(SCRIPT)]  # -P: the script's folder (src/jsae: io.py, ...) not on sys.path
JSAE = [sys.executable, "-m", "jsae", "gpu-slot"]

# A job: writes <pid>.start (its CUDA_VISIBLE_DEVICES) when it starts, waits for HOLD to exist ("-": no
# wait), sleeps, then writes <pid>.done: "<device> <start> <end>" (its own clock).
JOB = r"""
import os, sys, time
out, hold, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
device, start = os.environ.get("CUDA_VISIBLE_DEVICES", "-"), time.time()
with open(os.path.join(out, f"{os.getpid()}.start"), "w") as f:
    f.write(device)
while hold != "-" and not os.path.exists(hold):
    time.sleep(0.01)
time.sleep(sleep)
with open(os.path.join(out, f"{os.getpid()}.done"), "w") as f:
    f.write(f"{device} {start} {time.time()}")
"""

# Counts the stop signals it gets; prints them 0.5 s after the first (a duplicate would arrive meanwhile).
SIGNALS = r"""
import signal, sys, time
got = []
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda n, f: got.append(signal.Signals(n).name))
print("ready", flush=True)
deadline = time.time() + 30
while not got and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
print(" ".join(got), flush=True)
sys.exit(7)
"""


@pytest.fixture
def env(tmp_path):
    """The launcher's environment: no GPU variables of the machine, a lock dir of this test."""
    out = {k: v for k, v in os.environ.items()
           if k not in (gpu_slots.IDS_ENV, gpu_slots.CUDA_ENV, gpu_slots.SNAKEMAKE_ENV)}
    out[gpu_slots.LOCK_DIR_ENV] = str(tmp_path / "locks")
    return out


def job(out: Path, hold: str = "-", sleep: float = 0.0) -> list[str]:
    return [sys.executable, "-c", JOB, str(out), hold, str(sleep)]


def launch(cmd: list[str], env: dict, *opts: str, launcher=FAST, **kw) -> subprocess.Popen:
    return subprocess.Popen([*launcher, *opts, "--", *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_files(folder: Path, suffix: str, n: int, timeout: float = 20) -> dict[int, str]:
    """{pid: content} of the first n <pid><suffix> files to appear."""
    deadline = time.monotonic() + timeout
    while True:
        found = {int(p.name.split(".")[0]): p.read_text() for p in folder.glob(f"*{suffix}")}
        if len(found) >= n and all(found.values()):
            return found
        assert time.monotonic() < deadline, f"only {len(found)} of {n} jobs reached {suffix}"
        time.sleep(0.02)


def finish(procs: list[subprocess.Popen], timeout: float = 30) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def run(cmd: list[str], env: dict, *opts: str, launcher=FAST) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *opts, "--", *cmd], env=env, capture_output=True, text=True, timeout=60)


def test_parallel_jobs_get_distinct_gpus_and_extra_jobs_wait_for_a_free_one(env, tmp_path):
    env[gpu_slots.IDS_ENV] = "0,1,2,3"
    out, hold = tmp_path / "jobs", tmp_path / "hold"
    out.mkdir()
    procs = []
    try:
        # 4 jobs that all run at once (each holds on until `hold` exists): 4 different GPUs
        procs = [launch(job(out, str(hold)), env) for _ in range(4)]
        assert sorted(wait_files(out, ".start", 4).values()) == ["0", "1", "2", "3"]
        # 6 more: every slot is held, so none starts until the first 4 end
        extra = [launch(job(out, sleep=0.2), env) for _ in range(6)]
        procs += extra
        time.sleep(0.8)
        assert len(list(out.glob("*.start"))) == 4 and all(p.poll() is None for p in extra)
        hold.touch()
        results = finish(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [rc for rc, _, _ in results] == [0] * 10, [err for _, _, err in results]
    assert all("all 4 GPU slots are held" in err for _, _, err in results[4:]), results[4:]
    runs = [line.split() for line in wait_files(out, ".done", 10).values()]
    assert {device for device, _, _ in runs} == {"0", "1", "2", "3"}
    # never two jobs at once on one GPU: per device, each run starts after the previous one ended
    for device in "0123":
        spans = sorted((float(start), float(end)) for d, start, end in runs if d == device)
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), (device, spans)


def test_a_failed_or_killed_command_frees_its_slot_and_passes_its_status(env, tmp_path):
    env[gpu_slots.IDS_ENV] = "0"
    code = "import os, signal, sys; sys.exit(3) if sys.argv[1] == 'exit' else os.kill(os.getpid(), signal.SIGKILL)"
    failed = run([sys.executable, "-c", code, "exit"], env)
    assert failed.returncode == 3, failed.stderr
    killed = run([sys.executable, "-c", code, "kill"], env)
    assert killed.returncode == 128 + signal.SIGKILL, killed.stderr
    missing = run(["no-such-command-jsae"], env)
    assert missing.returncode == 127
    assert missing.stderr.strip().splitlines()[-1].startswith("jsae gpu-slot: error: cannot run 'no-such-command-jsae'")
    # --timeout 0: one look at the slots, no waiting; the one slot is free again
    again = run(["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], env, "--timeout", "0")
    assert (again.returncode, again.stdout) == (0, "0\n"), again.stderr


def test_sigkill_frees_the_slot_once_the_command_is_gone_too(env, tmp_path):
    """The command holds the lock with the launcher: a SIGKILLed launcher's still running command keeps its GPU;
    once both are dead the kernel has dropped the flock and the next job gets that GPU."""
    env[gpu_slots.IDS_ENV] = "0"
    out = tmp_path / "jobs"
    out.mkdir()
    launcher = launch(job(out, str(tmp_path / "never")), env)
    child = None
    try:
        child = next(iter(wait_files(out, ".start", 1)))
        launcher.kill()
        launcher.wait(timeout=10)
        busy = run(["true"], env, "--timeout", "0")
        assert busy.returncode == 1
        lines = busy.stderr.strip().splitlines()
        assert len(lines) == 1 and "all 1 of 1 slots held" in lines[0] and "GPU 0 by pid" in lines[0], lines
        os.kill(child, signal.SIGKILL)
        child = None
        freed = run(["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], env, "--timeout", "10")
        assert (freed.returncode, freed.stdout) == (0, "0\n"), freed.stderr
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if child is not None:
            os.kill(child, signal.SIGKILL)


def test_stop_signals_reach_the_command_exactly_once(env):
    env[gpu_slots.IDS_ENV] = "0"
    cmd = [sys.executable, "-c", SIGNALS]
    # SIGTERM to the launcher (Snakemake, SLURM, kill): through `python -m jsae gpu-slot` itself
    proc = launch(cmd, env, launcher=JSAE)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, stdout) == (7, "SIGTERM\n"), stderr
    assert "jsae gpu-slot: GPU 0 (slot 1 of 1): CUDA_VISIBLE_DEVICES=0" in stderr
    # Ctrl-C signals the whole foreground process group: the command gets it once, not twice. A terminal's
    # foreground job has SIGINT at its default; a shell without job control (`pytest ... &` in a script) starts
    # it ignored, and an ignored SIGINT rightly stays ignored (test_an_ignored_signal_stays_ignored): reset it.
    proc = launch(cmd, env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n"
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, stdout) == (7, "SIGINT\n"), stderr


def test_an_ignored_signal_stays_ignored(env, tmp_path):
    """`nohup snakemake ...`: SIGHUP is ignored, so a closed terminal must not stop the command either."""
    env[gpu_slots.IDS_ENV] = "0"
    out, hold = tmp_path / "jobs", tmp_path / "hold"
    out.mkdir()
    proc = launch(job(out, str(hold)), env, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_files(out, ".start", 1)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None
        hold.touch()
        assert proc.wait(timeout=30) == 0 and len(wait_files(out, ".done", 1)) == 1
    finally:
        if proc.poll() is None:
            proc.kill()


def test_slots_are_the_parents_cuda_visible_devices_and_locks_are_per_physical_gpu(env, tmp_path):
    env[gpu_slots.CUDA_ENV] = "5,7"  # e.g. the GPUs SLURM gave this job
    out, hold = tmp_path / "jobs", tmp_path / "hold"
    out.mkdir()
    procs = []
    try:
        procs = [launch(job(out, str(hold)), env) for _ in range(2)]
        assert sorted(wait_files(out, ".start", 2).values()) == ["5", "7"]
        # JSAE_GPU_IDS wins over the parent's list; GPU 7 is held (by the other view of it): this job gets 9
        other = run(["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], {**env, gpu_slots.IDS_ENV: "7,9"}, "--timeout", "0")
        assert (other.returncode, other.stdout) == (0, "9\n"), other.stderr
        full = run(["true"], env, "--timeout", "0")
        assert full.returncode == 1 and "all 2 of 2 slots held" in full.stderr, full.stderr
        hold.touch()
        assert [rc for rc, _, _ in finish(procs)] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_without_a_gpu_the_command_runs_unchanged(env, tmp_path):
    env[gpu_slots.CUDA_ENV] = ""  # no GPU visible
    code = "import json, os, sys; print(json.dumps({'pid': os.getpid(), 'env': dict(os.environ)})); sys.exit(5)"
    proc = launch([sys.executable, "-c", code], env)
    stdout, stderr = proc.communicate(timeout=60)
    seen = json.loads(stdout)
    assert proc.returncode == 5 and stderr == ""
    assert seen["pid"] == proc.pid  # the launcher became the command: no wrapper process, no slot
    assert seen["env"] == env
    assert not (tmp_path / "locks").exists()


def test_device_ids_and_their_fallbacks():
    import torch

    assert gpu_slots.gpu_ids({gpu_slots.IDS_ENV: " 1, 03 ", gpu_slots.CUDA_ENV: "5"}) == ["1", "3"]
    assert gpu_slots.gpu_ids({gpu_slots.IDS_ENV: "", gpu_slots.CUDA_ENV: "GPU-8c1f2e3a,4"}) == ["GPU-8c1f2e3a", "4"]
    assert gpu_slots.gpu_ids({gpu_slots.CUDA_ENV: "-1"}) == []
    assert gpu_slots.gpu_ids({}) == [str(i) for i in range(torch.cuda.device_count())]


def test_acquire_slot_as_a_library(tmp_path):
    """flock locks belong to an open file, so one process holding two slots is two holders."""
    with gpu_slots.acquire_slot(2, tmp_path) as first, gpu_slots.acquire_slot(2, tmp_path, timeout=0) as second:
        assert (first.index, first.device, second.index, second.device) == (0, "0", 1, "1")
        with pytest.raises(gpu_slots.SlotTimeout, match="all 2 of 2 slots held"):
            gpu_slots.acquire_slot(2, tmp_path, timeout=0.1)
    assert first.fd is None and second.fd is None  # released on leaving the block
    with gpu_slots.acquire_slot(["7"], tmp_path, timeout=0) as again:
        assert (again.index, again.device, again.path.name) == (0, "7", "gpu-7.lock")


def test_each_batch_job_has_its_own_slots(monkeypatch):
    for name in (gpu_slots.LOCK_DIR_ENV, *gpu_slots.BATCH_JOB_ENVS):
        monkeypatch.delenv(name, raising=False)
    plain = gpu_slots.default_lock_dir()
    assert plain == Path("/tmp") / f"jsae-gpu-slots-{os.getuid()}"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # SLURM may call each job's one GPU "0": jobs must not share
    assert gpu_slots.default_lock_dir() == Path(f"{plain}-job4242")
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, "/somewhere/else")
    assert gpu_slots.default_lock_dir() == Path("/somewhere/else")


@pytest.mark.parametrize("variable, value, named", [
    (gpu_slots.IDS_ENV, "0,x", "'x' is not a GPU id"),
    (gpu_slots.IDS_ENV, "0,,1", "'' is not a GPU id"),
    (gpu_slots.IDS_ENV, "0,1,00", "GPU '0' more than once"),
    (gpu_slots.CUDA_ENV, "0,1.5", "'1.5' is not a GPU id"),
])
def test_bad_ids_are_one_line_errors(monkeypatch, capsys, variable, value, named):
    monkeypatch.delenv(gpu_slots.IDS_ENV, raising=False)
    monkeypatch.setenv(variable, value)
    assert gpu_slots.cli(["--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "expected" in err and f"{variable}={value!r}" in err, err


def test_bad_invocations_are_one_line_errors(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(gpu_slots.IDS_ENV, "0")
    (tmp_path / "file").write_text("")
    for argv, named in ((["--"], "no command given"), (["--timeout", "-1", "--", "true"], "--timeout -1"),
                        (["--lock-dir", str(tmp_path / "file"), "--", "true"], "cannot use the GPU lock dir")):
        assert gpu_slots.cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err and "expected" in err, err


# --------------------------------------------------------------------------------------------------
# The workflow: GPU rules go through the launcher unless the study runs on the CPU
# --------------------------------------------------------------------------------------------------


def gpu_rules() -> set[str]:
    """The rules whose resources claim a GPU, read from the rule files (cache_<variant>: "cache")."""
    names = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        parts = re.split(r"^\s*rule\s*(\w*)\s*:", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            if "gpu=GPU" in body:
                names.add(name or re.search(r'name:\s*f"(\w+?)_', body)[1])
    return names


def planned_commands(output: str) -> list[tuple[str, str]]:
    """(rule, shell command) of each job a `snakemake -n -p` printed."""
    out, rule = [], None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\S+):$", line):
            rule = "cache" if m[1].startswith("cache_") else m[1]
        elif line.startswith("Shell command: ") and line != "Shell command: None":
            out.append((rule, line.removeprefix("Shell command: ")))
    return out


def test_workflow_runs_gpu_rules_through_the_launcher_only_off_the_cpu(tmp_path):
    cfg = REPO / "config" / "config.yaml"
    assert load("config.yaml")["device"] == "cpu"
    # `all` and one pair's core metrics and interaction sparsity (off in the default study), so that every GPU rule
    # is planned
    pair_dir = layout()["eval_dir"](*study_pairs(load("config.yaml"))[0])
    core = f"{pair_dir}/core/sae_in_eval_results.json"
    interaction = f"{pair_dir}/interaction.json"
    # and one transcoder baseline's evaluation and core metrics (baselines.smk; off in the default study)
    baseline = pair_dir.replace("/lam0/", "/transcoder/")
    baseline_targets = (f"{baseline}/baseline_evaluation.json", f"{baseline}/core/transcoder_eval_results.json")
    runs = {}

    def plan(device):
        (tmp_path / device).mkdir()
        (tmp_path / device / "on.yaml").write_text("baselines: {enabled: true, methods: [transcoder]}\n")
        runs[device] = snakemake("-n", "-p", "all", core, interaction, *baseline_targets, "--configfile", str(cfg),
                                 "on.yaml", "--config", f"device={device}", cwd=tmp_path / device)

    threads = [threading.Thread(target=plan, args=(d,)) for d in ("cpu", "cuda")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in runs.values():
        assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    cpu, cuda = planned_commands(runs["cpu"].stdout), planned_commands(runs["cuda"].stdout)
    assert job_counts(runs["cpu"].stdout) == job_counts(runs["cuda"].stdout)
    launched = gpu_rules()
    assert launched == {"pretrain", "cache", "train", "evaluate", "probes", "tables", "recovery", "core", "interaction",
                        "train_baseline", "evaluate_baseline", "core_baseline"}
    assert {rule for rule, _ in cuda} >= launched  # each one is planned, so each one is checked below
    assert not any("gpu-slot" in cmd for _, cmd in cpu)
    for rule, cmd in cuda:
        if rule in launched:
            command = rule.replace("_", "-")  # train_baseline: python -m jsae train-baseline
            assert re.match(rf"OMP_NUM_THREADS=\d+ python -m jsae gpu-slot -- python -m jsae {command} ", cmd), cmd
        else:
            assert "gpu-slot" not in cmd, cmd
    # apart from the launcher and the device the config names, the commands are the CPU study's, byte for byte
    unlaunched = [cmd.replace("python -m jsae gpu-slot -- ", "").replace("--device cuda", "--device cpu")
                  for _, cmd in cuda]
    assert sorted(unlaunched) == sorted(cmd for _, cmd in cpu)
