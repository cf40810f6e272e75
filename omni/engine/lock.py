"""One run per checkpoint folder: an exclusive lock on ``<save_dir>/.lock`` (``fcntl.flock`` plus the
holder's PID, host and start time, so a lock left by a dead process is recognised as stale), the
up-front check that the folder is writable, and ``hold_folder``, which takes the lock on rank 0 for the
life of a run and sweeps the temp files of saves a kill interrupted."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from omni.engine.checkpoint import LOCK_FILE, CheckpointError, _write_failure
from omni.engine.runtime import Runtime, any_rank, exit_on_sigterm
from omni.files import pid_alive, process_start, sweep_orphaned_temps

log = logging.getLogger(__name__)


def prepare_save_dir(folder: Path) -> None:
    """Create ``folder``, or check that it is a folder this user can write, before anything trains."""
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"train.save_dir {folder} is a file, not a folder: set train.save_dir to a "
                              "folder (it is created when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent that is a file, no permission, a read-only disk
        raise CheckpointError(f"cannot create train.save_dir {folder} ({e.strerror}): set train.save_dir "
                              "to a folder you can write") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"train.save_dir {folder} is not writable: fix its permissions or set "
                              "train.save_dir to another folder")


@dataclass
class _Holder:
    """The run a lock file names."""
    pid: int
    host: str
    since: str | None = None
    start: int | None = None  # its process start time (Linux /proc), which tells a reused PID apart

    def alive(self, flock_works: bool) -> bool:
        if self.host != socket.gethostname():
            # a process on another host cannot be checked from here; a working flock already said no
            return not flock_works
        if self.pid == os.getpid() or not pid_alive(self.pid):
            return False  # our own PID: an earlier process's, in a restarted container (the same PIDs)
        now = process_start(self.pid)
        return self.start is None or now is None or now == self.start


def _parse_holder(text: str) -> _Holder | None:
    """The holder a lock file names: the JSON ``FolderLock`` writes, or a bare PID (a lock written by
    hand); None for anything else (an empty file: its writer died before writing)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(raw, int):
        raw = {"pid": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
        return None
    return _Holder(raw["pid"], str(raw.get("host", socket.gethostname())), raw.get("since"), raw.get("start"))


def live_holder(folder: Path) -> _Holder | None:
    """The run training in ``folder`` now: the live process its lock file names, or None."""
    try:
        holder = _parse_holder((folder / LOCK_FILE).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return holder if holder is not None and holder.alive(flock_works=True) else None


def _in_use(path: Path, holder: _Holder | None) -> CheckpointError:
    who = f"PID {holder.pid} on {holder.host}" if holder else "PID unknown"
    if holder and holder.since:
        who += f", since {holder.since}"
    return CheckpointError(f"{path.parent} is in use by another run ({who}): wait for it to end or stop it, "
                           f"or set train.save_dir to another folder; if no run uses it, delete {path}")


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _open_locked(path: Path) -> tuple[int, bool]:
    """Open ``path`` (created when missing) under an exclusive flock -> (fd, whether flock works on
    this filesystem). A run holding the flock is a CheckpointError naming it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot create {path} ({e.strerror}): train.save_dir must be a folder "
                                  "you can write") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise _in_use(path, holder) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise CheckpointError(f"cannot lock {path}: {e.strerror}") from e
            log.warning("%s: this filesystem has no file locks (%s); a second run is detected only by the "
                        "PID in the lock, and only on this host", path, e.strerror)
            return fd, False
        if _same_file(path, fd):
            return fd, True
        os.close(fd)  # its holder released it (unlinked the file) between our open and flock: again


class FolderLock:
    """One run per checkpoint folder. ``<folder>/.lock`` carries an exclusive flock while a run
    lives, and names the run (PID, host, start) for the message a second run stops with. The kernel
    drops a flock when its process dies, even by kill -9: the file such a death leaves is stale, and
    the next run takes it over with a warning. Acquiring a lock this process holds nests: each
    ``acquire`` needs a ``release``."""

    _held: dict[Path, "FolderLock"] = {}

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd, self.depth = path, fd, 1

    @classmethod
    def acquire(cls, folder: Path) -> "FolderLock":
        prepare_save_dir(folder)
        path = (folder / LOCK_FILE).resolve()
        if path in cls._held:
            cls._held[path].depth += 1
            return cls._held[path]
        fd, flock_works = _open_locked(path)
        try:
            cls._claim(path, fd, flock_works)
        except BaseException:
            os.close(fd)
            raise
        cls._held[path] = lock = cls(path, fd)
        return lock

    @staticmethod
    def _claim(path: Path, fd: int, flock_works: bool) -> None:
        """Check the holder the file names (a live one: a run whose flock this filesystem does not
        show), then write ours."""
        holder = _parse_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if holder is not None and holder.alive(flock_works):
            raise _in_use(path, holder)
        if holder is not None:
            log.warning("%s: removing a stale lock of PID %d on %s: that run ended without releasing it "
                        "(killed)", path, holder.pid, holder.host)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "start": process_start(os.getpid())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as e:  # os.pwrite's error names no file
            raise _write_failure(OSError(e.errno, e.strerror, str(path))) from e

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        del self._held[self.path]
        # unlink while still holding the flock: a run waiting on this file then finds it gone and retries
        if _same_file(self.path, self.fd):
            self.path.unlink()
        os.close(self.fd)


@contextlib.contextmanager
def hold_folder(rt: Runtime, save_dir: Path):
    """One run per checkpoint folder for the life of the block. Rank 0 checks the folder, takes its
    lock (``checkpoint.FolderLock``; released on exit, error, Ctrl-C and SIGTERM) and sweeps the temp
    files of killed saves; the other ranks write nothing there. Every rank learns whether rank 0 got
    the folder, so a refused DDP run stops on all of them instead of hanging at a barrier."""
    lock, error = None, None
    if rt.is_main:
        try:
            lock = FolderLock.acquire(save_dir)
        except CheckpointError as e:
            error = e
    if any_rank(rt, error is not None):
        raise error or CheckpointError(f"rank 0 could not take {save_dir} (its error says why)")
    try:
        if lock is not None and lock.depth == 1:  # the run's start, not a nested hold
            _sweep_temps(save_dir)
        with exit_on_sigterm(rt.is_main):
            yield
    finally:
        if lock is not None:
            lock.release()


def _sweep_temps(save_dir: Path) -> None:
    removed, freed = sweep_orphaned_temps(save_dir)
    if removed:
        log.info("%s: removed %d temp files left by killed saves (%s bytes freed)", save_dir, removed,
                 f"{freed:,}")
