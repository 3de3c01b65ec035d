"""Atomic outputs and small I/O helpers: a killed job never leaves a file that looks complete.

A write that fails while the disk is full surfaces as ``OSError(ENOSPC)`` naming the output, even where
the writer (``torch.save``) reports only a position mismatch, so the command line can say "disk full".
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("jsae")

#: Below this many free bytes a failed write is taken to be the disk being full.
DISK_FULL_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the filesystem holding ``path`` (None if it cannot be asked)."""
    try:
        vfs = os.statvfs(path)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    # A file system that reports no blocks at all (some virtual or network ones) says nothing about space.
    return vfs.f_bavail * vfs.f_frsize if vfs.f_blocks > 0 else None


def disk_full_error(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """``OSError(ENOSPC)`` naming ``path`` when ``exc`` is a failed write on a full disk, else None.

    torch.save on a full disk raises ``RuntimeError: ... unexpected pos N vs M`` and h5py an OSError
    whose errno may be unset; both are recognised by the free space left where ``path`` lives.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    if "errno = 28" in str(exc) or "No space left on device" in str(exc):  # h5py's RuntimeError text
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    # Only errors that say nothing more specific (no errno, or EIO) are put down to a full disk.
    if not (isinstance(exc, RuntimeError) or isinstance(exc, OSError) and exc.errno in (None, errno.EIO)):
        return None
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = free_bytes(where)
    if free is None or free >= DISK_FULL_BYTES:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be like any new file
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(exc, final)  # checked before the partial file is removed
        if full is None or full is exc:
            raise
        raise full from exc
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; rename it onto ``path`` if the block succeeds.

    An existing ``path`` is replaced only after the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(exc, final)
        if full is None or full is exc:
            raise
        raise full from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never deleted) for the block.

    ``fcntl.flock`` serialises processes on one machine (and on NFS where flock is supported); it is
    released if the holder dies. Without fcntl (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, NaN allowed as in Python's json)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; expected a JSON file")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}); expected a complete JSON file") from None


def setup_logging(level: int | str = logging.INFO, log_file: str | os.PathLike[str] | None = None) -> None:
    """Timestamped logs to stderr (and to ``log_file``, e.g. a Snakemake rule's ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)
    # A Python warning becomes one log line (Python's default prints it and a source line).
    warnings.showwarning = _warning_to_log


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, " ".join(str(message).split()))
