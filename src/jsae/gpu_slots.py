"""GPU slots: which GPU each parallel job of one machine runs on.

``snakemake --resources gpu=N`` only *counts* GPUs: it runs at most N GPU jobs at once but never tells a job
which device is its own (snakemake/snakemake#281), so every job lands on ``cuda:0``. ``python -m jsae gpu-slot
-- CMD ...`` closes that gap: it takes a free slot (one per GPU), runs CMD with ``CUDA_VISIBLE_DEVICES`` set to
that GPU, and frees the slot when CMD is gone.

A slot is an exclusive ``fcntl.flock`` on ``<lock dir>/gpu-<id>.lock``, held for the job's lifetime. The kernel
drops a flock when the last descriptor of it closes, i.e. when the processes holding it die however they die
(finished, crashed, SIGKILL), so there are no stale slots to clean up. CMD inherits the descriptor: while CMD
still runs (even if the launcher itself was SIGKILLed) its GPU stays taken.

The slots and the ids written to ``CUDA_VISIBLE_DEVICES`` come from, in order: ``$JSAE_GPU_IDS`` (comma list),
the launcher's own ``CUDA_VISIBLE_DEVICES`` (so a SLURM allocation's devices are respected), else
``torch.cuda.device_count()``. With no GPU, CMD simply replaces the launcher (exec): same process, environment
untouched, so the same command line works on a CPU machine.

Locks are named by the id handed out, so two launchers that list the GPUs differently (``JSAE_GPU_IDS=0,1``
and ``CUDA_VISIBLE_DEVICES=1,2``) still never share GPU 1. Inside a SLURM/PBS/LSF job the lock directory is the
job's own (its GPUs are; SLURM may number them from 0 in every job). CMD runs in its own process group: the
launcher forwards stop signals to it, so that a Ctrl-C reaches it once, not twice. Stdlib only (torch is
imported only for the count).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

IDS_ENV = "JSAE_GPU_IDS"
LOCK_DIR_ENV = "JSAE_GPU_LOCK_DIR"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"
#: Set by the workflow (see jsae.__main__): ``<host>:<pid>`` of the Snakemake whose job this is.
SNAKEMAKE_ENV = "JSAE_SNAKEMAKE"
#: A batch scheduler's job id: the GPUs of one such job are shared by its processes only.
BATCH_JOB_ENVS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
POLL_S = 0.2
# Forwarded to CMD (its process group): what a terminal, Snakemake, SLURM or a user sends to stop a job.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# A GPU index as CUDA_VISIBLE_DEVICES takes it, or a GPU / MIG UUID (GPU-..., MIG-GPU-.../1/0).
_ID = re.compile(r"\d+|(?:GPU|MIG)-[0-9A-Za-z/-]+")
_EXPECTED_IDS = "expected comma-separated GPU indices (e.g. 0,1,3) or GPU-/MIG- UUIDs"
EXIT_TIMEOUT, EXIT_BAD_INPUT, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 1, 2, 126, 127


class SlotTimeout(TimeoutError):
    """Every slot stayed held for the whole timeout."""


def parse_ids(text: str, source: str = IDS_ENV) -> list[str]:
    """``"0, 1,3"`` -> ``["0", "1", "3"]``; one-line ValueError naming a bad or repeated id."""
    ids = []
    for part in (p.strip() for p in text.split(",")):
        if not _ID.fullmatch(part):
            raise ValueError(f"{source}={text!r}: {part!r} is not a GPU id; {_EXPECTED_IDS}")
        ids.append(str(int(part)) if part.isdigit() else part)  # "01" and "1" are the same GPU
    repeated = next((i for i in ids if ids.count(i) > 1), None)
    if repeated is not None:
        raise ValueError(f"{source}={text!r} names GPU {repeated!r} more than once; expected each GPU once "
                         "(one slot per GPU)")
    return ids


def gpu_ids(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs jobs may be given: ``$JSAE_GPU_IDS``, else ``$CUDA_VISIBLE_DEVICES``, else all that torch sees."""
    env = os.environ if environ is None else environ
    if env.get(IDS_ENV, "").strip():
        return parse_ids(env[IDS_ENV], IDS_ENV)
    if CUDA_ENV in env:
        value = env[CUDA_ENV].strip()
        # "" and "-1" are how a scheduler or user hides every GPU from CUDA
        return [] if value in ("", "-1") else parse_ids(value, CUDA_ENV)
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def _private_lock_dir() -> Path:
    # A batch job's GPUs are its own, and SLURM may number them from 0 in every job (device cgroups): two jobs
    # on one node must not meet on "GPU 0", so each batch job gets its own slots.
    job = next((os.environ[v] for v in BATCH_JOB_ENVS if os.environ.get(v, "").strip()), "")
    suffix = "-job" + re.sub(r"[^0-9A-Za-z._-]", "_", job.strip()) if job else ""
    return Path("/tmp") / f"jsae-gpu-slots-{os.getuid()}{suffix}"


def default_lock_dir() -> Path:
    """``$JSAE_GPU_LOCK_DIR``, else ``/tmp/jsae-gpu-slots-<uid>`` (``...-job<id>`` inside a SLURM, PBS or LSF
    job).

    Not the results directory: it may sit on a shared file system (NFS, Lustre) where flock is either local
    to each node or emulated across nodes, and slots are per machine. Not ``$TMPDIR`` either: it can differ
    from job to job (schedulers, Snakemake's tmpdir resource), and jobs must meet in one directory. Per user,
    because a directory in /tmp that another user created could be theirs to tamper with; set
    ``$JSAE_GPU_LOCK_DIR`` to a shared directory to coordinate several users."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    return Path(configured) if configured else _private_lock_dir()


def _prepare_lock_dir(lock_dir: Path) -> Path:
    private = lock_dir == _private_lock_dir()
    lock_dir.mkdir(mode=0o700 if private else 0o777, parents=True, exist_ok=True)
    if private:  # in world-writable /tmp: use it only if it is our own directory (not a planted one or a link)
        st = os.lstat(lock_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ValueError(f"GPU lock dir {lock_dir} is not a directory owned by this user (uid {os.getuid()}); "
                             f"expected one of ours: remove it, or set {LOCK_DIR_ENV} to a directory of yours")
    return lock_dir


def _lock_name(gpu: str) -> str:
    return f"gpu-{gpu.replace('/', '_')}.lock"  # MIG ids contain "/"


@dataclass
class Slot:
    """A held slot: ``index`` into the id list, ``device`` the GPU id CMD sees as ``CUDA_VISIBLE_DEVICES``."""

    index: int
    device: str
    n_slots: int
    path: Path
    fd: int | None

    def release(self) -> None:
        """Close this process's descriptor: the slot is free once no process (e.g. CMD) holds one."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(path: Path) -> int | None:
    # 0o666 (less the umask): a shared $JSAE_GPU_LOCK_DIR works for its group; read-only if not ours to write
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:  # the holder's pid, for the timeout message only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _holders(lock_dir: Path, ids: Sequence[str]) -> str:
    out = []
    for gpu in ids:
        try:
            pid = (lock_dir / _lock_name(gpu)).read_text().strip()
        except OSError:
            pid = ""
        out.append(f"GPU {gpu} by pid {pid}" if pid.isdigit() else f"GPU {gpu}")
    return ", ".join(out)


def acquire_slot(ids: int | Sequence[str], lock_dir: str | Path | None = None, timeout: float | None = None,
                 poll_s: float = POLL_S, on_wait: Callable[[str], None] | None = None) -> Slot:
    """Take the first free slot (lowest index first) of ``ids`` (GPU ids, or a count n for ids 0..n-1).

    Waits while all are held, polling every ``poll_s``; ``timeout`` (seconds, None = forever) bounds the
    wait (:class:`SlotTimeout`). ``on_wait`` gets one line when the wait starts. Use as a context manager, or
    call :meth:`Slot.release`."""
    ids = [str(i) for i in range(ids)] if isinstance(ids, int) else list(ids)
    if not ids:
        raise ValueError("no GPU slots to take; expected at least one GPU id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"GPU ids {','.join(ids)} repeat an id; expected each GPU once (one slot per GPU)")
    lock_dir = _prepare_lock_dir(Path(lock_dir) if lock_dir is not None else default_lock_dir())
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    waited = False
    while True:
        for index, gpu in enumerate(ids):
            path = lock_dir / _lock_name(gpu)
            fd = _try_lock(path)
            if fd is not None:
                return Slot(index=index, device=gpu, n_slots=len(ids), path=path, fd=fd)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise SlotTimeout(
                f"no free GPU slot after {timeout:g} s: all {len(ids)} of {len(ids)} slots held "
                f"({_holders(lock_dir, ids)}; locks in {lock_dir}); expected a slot to free up: wait longer "
                f"(--timeout), or run at most {len(ids)} GPU jobs at once (snakemake --resources gpu={len(ids)})")
        if not waited and on_wait is not None:
            on_wait(f"all {len(ids)} GPU slots are held ({_holders(lock_dir, ids)}); waiting for one")
        waited = True
        time.sleep(poll_s if deadline is None else min(poll_s, deadline - now))


def _snakemake_gone() -> bool:
    """True when this job's Snakemake (``$JSAE_SNAKEMAKE`` on this host) no longer runs: then the SIGINT that
    jsae's watcher raises here is not forwarded, as CMD watches the same Snakemake and stops by itself."""
    import socket

    host, _, pid = os.environ.get(SNAKEMAKE_ENV, "").rpartition(":")
    if not pid.isdigit() or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as a shell says


def _exec(cmd: list[str]) -> int:
    """No GPU: become CMD. Python ignores SIGPIPE (and SIGXFSZ); CMD gets the defaults back, as from a shell."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        return _not_started(cmd, exc)
    return EXIT_NOT_FOUND  # not reached: execvp returns only by raising


def _not_started(cmd: list[str], exc: OSError) -> int:
    print(f"jsae gpu-slot: error: cannot run {cmd[0]!r}: {exc.strerror or exc}; expected an executable "
          "command (on PATH or a path)", file=sys.stderr)
    return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE


def run_in_slot(cmd: list[str], ids: Sequence[str], lock_dir: str | Path | None = None,
                timeout: float | None = None) -> int:
    """Run CMD on a free GPU of ``ids`` (``CUDA_VISIBLE_DEVICES=<id>``) and return its exit status (128 + N if
    a signal N killed it). Each signal of FORWARDED that reaches the launcher reaches CMD's processes once."""

    def note(line: str) -> None:
        print(f"jsae gpu-slot: {line}", file=sys.stderr, flush=True)

    # While waiting for a slot a stop request just ends the wait (KeyboardInterrupt or the default action).
    slot = acquire_slot(ids, lock_dir, timeout, on_wait=note)
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and _snakemake_gone():
            return
        if child is None:
            pending.append(signum)
            return
        try:
            # CMD leads its own process group: a terminal's Ctrl-C or a killpg of the job reaches the launcher
            # only, and this forward gives every process of CMD the signal exactly once.
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    # Handlers can only be set in the main thread; an ignored signal stays ignored (nohup: CMD inherits that).
    own = [s for s in FORWARDED if signal.getsignal(s) != signal.SIG_IGN]
    if threading.current_thread() is not threading.main_thread():
        own = []
    with slot:
        previous = {s: signal.signal(s, forward) for s in own}
        try:
            note(f"GPU {slot.device} (slot {slot.index + 1} of {slot.n_slots}): {CUDA_ENV}={slot.device}")
            if pending:  # stopped before CMD started: do not start it
                return 128 + pending[0]
            try:
                # pass_fds: CMD shares the lock, so the GPU stays taken for as long as CMD lives
                child = subprocess.Popen(cmd, env={**os.environ, CUDA_ENV: slot.device}, pass_fds=(slot.fd,),
                                         process_group=0)
            except OSError as exc:
                return _not_started(cmd, exc)
            while pending:  # arrived while CMD was being started
                forward(pending.pop(0), None)
            return _exit_status(child.wait())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jsae gpu-slot",
        usage="%(prog)s [--timeout S] [--lock-dir DIR] -- CMD [ARG ...]",
        description=(f"Run CMD on a GPU of its own: take a free slot (one per GPU of ${IDS_ENV}, else "
                     f"${CUDA_ENV}, else every GPU torch sees), set {CUDA_ENV} to it, free it when CMD exits. "
                     "Without a GPU, CMD runs unchanged."),
    )
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a free slot before failing (default: as long as it takes)")
    parser.add_argument("--lock-dir", default=None,
                        help=f"directory of the slot locks, local to this machine (default: ${LOCK_DIR_ENV}, "
                             "else /tmp/jsae-gpu-slots-<uid>)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd

    def error(message: str, code: int) -> int:
        print(f"jsae gpu-slot: error: {message}", file=sys.stderr)
        return code

    if not cmd:
        return error("no command given; expected: python -m jsae gpu-slot -- CMD [ARG ...]", EXIT_BAD_INPUT)
    if args.timeout is not None and not args.timeout >= 0:  # NaN fails too
        return error(f"--timeout {args.timeout:g} is invalid; expected seconds >= 0", EXIT_BAD_INPUT)
    try:
        ids = gpu_ids()
        if not ids:
            return _exec(cmd)
        return run_in_slot(cmd, ids, args.lock_dir, args.timeout)
    except SlotTimeout as exc:
        return error(str(exc), EXIT_TIMEOUT)
    except ValueError as exc:
        return error(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:  # the lock directory or a lock file
        where = f" {exc.filename}" if exc.filename else ""
        return error(f"cannot use the GPU lock dir{where}: {exc.strerror or exc}; expected a writable directory "
                     f"on this machine (--lock-dir or ${LOCK_DIR_ENV})", EXIT_BAD_INPUT)


if __name__ == "__main__":
    sys.exit(cli())
