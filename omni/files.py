"""File plumbing shared by every stage: hashing, and atomic writes: every file μOmni writes goes through a temp file in the same folder, is
fsynced, then renamed over the target, so a kill at any moment leaves the old file or the new one,
never half of either."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
