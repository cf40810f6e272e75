"""File plumbing shared by every stage: hashing, and atomic writes: every file μOmni writes goes through a temp file in the same folder, is
fsynced, then renamed over the target, so a kill at any moment leaves the old file or the new one,
never half of either. A kill -9 leaves the temp file (``.NAME.tmpPID``); ``sweep_orphaned_temps``
removes those of dead writers."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

TEMP_NAME = re.compile(r"^\..+\.tmp(?P<pid>\d+)$")  # atomic_write's temp files: .NAME.tmpPID
# torch.save reports a full disk without an errno ("unexpected pos 576 vs 534", "basic_ios::clear:
# iostream error"): a writer that fails with less than this free is taken to have met a full disk
# (torch writes a checkpoint in pieces up to a tensor's size)
LOW_SPACE_BYTES = 64 << 20


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this user may still write on the disk of ``folder``."""
    return shutil.disk_usage(folder).free


def _disk_full(e: Exception, folder: Path) -> bool:
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    # safetensors' SafetensorError carries the OS message; torch's RuntimeError carries nothing
    return os.strerror(errno.ENOSPC) in str(e) or free_bytes(folder) < LOW_SPACE_BYTES


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, then rename it to ``path``. A full
    disk is an ``OSError(ENOSPC)`` naming ``path``, whatever the writer raised; the temp file is
    removed and the old ``path`` stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            write(tmp)
        except Exception as e:  # any writer's failure (re-raised): torch's and safetensors' are no OSError
            # asked before the finally below frees the temp file's space
            if _disk_full(e, path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
            raise
        os.chmod(tmp, 0o644)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC and e.filename != str(path):  # fsync's: name the target, not the temp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (one of another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22),
    which tells a reused PID from the process that had it; None without /proc or such a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # the fields after "(name)" start at field 3


def sweep_orphaned_temps(folder: str | os.PathLike) -> tuple[int, int]:
    """Delete the temp files ``atomic_write`` left in ``folder`` and its sub-folders when a writer was
    killed (-9) mid-write: those whose PID runs no process. The caller's own PID counts as dead (a
    restarted container reuses PIDs), so call this before this process writes there.
    -> (files removed, bytes freed)."""
    removed = freed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            m = TEMP_NAME.match(name)
            pid = int(m["pid"]) if m else 0
            if not m or (pid != os.getpid() and pid_alive(pid)):
                continue
            tmp = Path(root) / name
            size = tmp.stat().st_size
            tmp.unlink()
            removed, freed = removed + 1, freed + size
            log.debug("removed the orphaned temp file %s (%d bytes)", tmp, size)
    return removed, freed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, written exactly as given (no newline translation)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data), fsync)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (``algorithm``: a hashlib name such as sha1 or sha256), read in 4 MiB pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_sha1(path: str | os.PathLike) -> str:
    return file_digest(path, "sha1")


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """A copy of ``src`` at ``dest``, written like every other file (temp file, fsync, rename)."""
    return atomic_write(dest, lambda p: shutil.copyfile(src, p))
