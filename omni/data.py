"""Offset-indexed files and the packed text dataset.

Random access into a data file goes through an index built once with numpy over the raw bytes and
cached beside the file (``<file>.line_offsets.npy``). Each cache starts with a 32-byte stamp
(magic, source size, source mtime_ns, key) so it is reused only while the source is unchanged,
rebuilt otherwise (a cache that cannot be read is rebuilt too), and always loaded with
``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from omni.errors import DataError  # noqa: F401  (re-exported: most callers import it from here)
from omni.files import atomic_write

log = logging.getLogger(__name__)

_MAGIC = 0x6D4F6D6E69  # "mOmni"
_STAMP_BYTES = 32
_CHUNK = 1 << 24


class BadRow(DataError):
    """One unusable row of a manifest: the message names the file and line, ``reason`` is what the
    row is counted under (``malformed_row``, ``outside_data_dir``)."""

    def __init__(self, message: str, reason: str = "malformed_row") -> None:
        super().__init__(message)
        self.reason = reason


def read_utf8(path: Path) -> str:
    """The whole text of a small data file (a manifest, a registry); bytes that are not UTF-8 are a
    DataError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                        "UTF-8") from None


def _stamp(src: Path, key: str) -> np.ndarray:
    st = src.stat()
    key_int = int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)
    return np.array([_MAGIC, st.st_size, st.st_mtime_ns, key_int], dtype="<i8")


def cached_array(src: Path, suffix: str, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``<src><suffix>`` if its stamp matches ``src`` and ``key``, else build, save, return.

    The returned array is memory-mapped read-only (the stamp is stripped).
    """
    cache = Path(str(src) + suffix)
    stamp = _stamp(src, key)
    if cache.is_file():
        arr = _load_stamped(cache, stamp)
        if arr is not None:
            return arr
    data = np.ascontiguousarray(build())
    full = np.concatenate([stamp.view(data.dtype), data])
    atomic_write(cache, lambda p: _save_npy(p, full), fsync=False)
    return np.load(cache, mmap_mode="r", allow_pickle=False)[_STAMP_BYTES // data.dtype.itemsize:]


def _load_stamped(cache: Path, stamp: np.ndarray) -> np.ndarray | None:
    """The cached array after its stamp, or None when the stamp differs (the source changed) or the
    file is not a readable stamped array (truncated, overwritten, another format): both are rebuilt."""
    try:
        arr = np.load(cache, mmap_mode="r", allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):  # a zip archive where an array belongs
            arr.close()
            raise ValueError("an .npz archive, not an array")
        size = arr.dtype.itemsize
        if size == 0 or arr.ndim != 1 or _STAMP_BYTES % size or arr.shape[0] < _STAMP_BYTES // size:
            raise ValueError("not a stamped one-dimensional array")
        n = _STAMP_BYTES // size
        if np.array_equal(np.asarray(arr[:n]).view("<i8"), stamp):
            return arr[n:]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s cannot be read (%s); rebuilding it", cache, e)
        return None
    log.info("%s is stale (source changed); rebuilding", cache)
    return None


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temp name
        np.save(f, arr, allow_pickle=False)


def build_line_offsets(path: Path) -> np.ndarray:
    """Byte offset of every line start plus the end of file: (n_lines + 1,) int64.

    A final line without a trailing newline still counts; an empty file has zero lines.
    """
    size = path.stat().st_size
    parts = [np.zeros(1, dtype=np.int64)]
    # a reader thread fetches chunk k+1 while numpy scans chunk k (both release the GIL), so a
    # file that is not in the page cache is indexed at close to disk speed
    with open(path, "rb") as f, ThreadPoolExecutor(1) as reader:
        pos, pending = 0, reader.submit(f.read, _CHUNK)
        while chunk := pending.result():
            pending = reader.submit(f.read, _CHUNK)
            nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            parts.append(nl + pos + 1)
            pos += len(chunk)
    offsets = np.concatenate(parts)
    if offsets[-1] != size:  # last line has no newline
        offsets = np.append(offsets, size)
    return offsets


class LineFile:
    """Random access to the lines of a text file: ``lf[i]`` -> bytes without the newline."""

    def __init__(self, path: str | Path, suffix: str = ".line_offsets.npy") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}")
        try:
            self.offsets = cached_array(self.path, suffix, "lines-v1", lambda: build_line_offsets(self.path))
        except PermissionError as e:
            raise DataError(f"{self.path}: cannot read it or write its index beside it ({e.strerror}: "
                            f"{e.filename})") from None
        self._mm = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        if self._mm is None:
            if self.path.stat().st_size == 0:
                return b""
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return bytes(self._mm[int(self.offsets[i]):int(self.offsets[i + 1])]).rstrip(b"\r\n")

    def iter_text(self, indices: np.ndarray | None = None) -> Iterator[tuple[int, str | None]]:
        """(line number, text) for each line; text None when the line is empty or not UTF-8."""
        for i in (range(len(self)) if indices is None else indices):
            raw = self[int(i)]
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                text = None
            yield int(i), text or None


def is_val_line(n_lines: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic held-out mask over lines: (n_lines,) bool, ~val_fraction True, spread evenly."""
    h = (np.arange(n_lines, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    return (h >> np.uint64(40)).astype(np.float64) / float(1 << 24) < val_fraction


@dataclass
class TokenizedCorpus:
    tokens: np.ndarray       # (N,) uint32, every good line followed by EOS
    line_starts: np.ndarray  # (n_lines + 1,) int64 index into tokens; empty range = skipped line

    @property
    def n_skipped(self) -> int:
        return int((np.diff(self.line_starts) == 0).sum())

    def select(self, keep: np.ndarray) -> np.ndarray:
        """Concatenate the token ranges of the lines where ``keep`` (n_lines,) is True."""
        starts, ends = self.line_starts[:-1][keep], self.line_starts[1:][keep]
        if len(starts) == 0:
            return np.zeros(0, dtype=np.uint32)
        idx = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        return np.asarray(self.tokens[idx])


def tokenize_lines(lines: LineFile, encode_batch: Callable[[list[str]], list[list[int]]],
                   eos_id: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize every line of ``lines``; bad lines (empty, invalid UTF-8) get no tokens."""
    pieces, lengths = [], np.zeros(len(lines), dtype=np.int64)
    buf_idx, buf_text = [], []
    bad = 0
    for i, text in tqdm(lines.iter_text(), total=len(lines), desc=f"tokenize {lines.path.name}",
                        unit="line", mininterval=1.0, leave=False):
        if text is None:
            bad += 1
            continue
        buf_idx.append(i)
        buf_text.append(text)
        if len(buf_text) == batch:
            _flush(buf_idx, buf_text, encode_batch, eos_id, pieces, lengths)
            buf_idx, buf_text = [], []
    _flush(buf_idx, buf_text, encode_batch, eos_id, pieces, lengths)
    if bad:
        log.warning("%s: %d of %d lines skipped (empty or not UTF-8)", lines.path, bad, len(lines))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)
    return tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _flush(idx: list[int], texts: list[str], encode_batch: Callable, eos_id: int,
           pieces: list[np.ndarray], lengths: np.ndarray) -> None:
    if not texts:
        return
    for i, ids in zip(idx, encode_batch(texts)):
        pieces.append(np.asarray(ids + [eos_id], dtype=np.uint32))
        lengths[i] = len(ids) + 1


def tokenize_corpus(path: str | Path, tokenizer, eos_id: int) -> TokenizedCorpus:
    """Token ids of a one-document-per-line file, cached beside it per tokenizer fingerprint."""
    lines = LineFile(path)
    key = f"tokens-v1-{tokenizer.fingerprint()}-{eos_id}"
    result: dict[str, np.ndarray] = {}

    def build_tokens() -> np.ndarray:
        result["tokens"], result["starts"] = tokenize_lines(lines, tokenizer.encode_batch, eos_id)
        return result["tokens"]

    def build_starts() -> np.ndarray:
        if "starts" not in result:
            build_tokens()
        return result["starts"]

    tokens = cached_array(lines.path, ".tokens.npy", key, build_tokens)
    starts = cached_array(lines.path, ".token_starts.npy", key, build_starts)
    corpus = TokenizedCorpus(tokens, starts)
    if corpus.n_skipped:
        log.warning("%s: %d lines carry no text (empty or not UTF-8) and were skipped", path, corpus.n_skipped)
    return corpus


class PackedTokens(torch.utils.data.Dataset):
    """Non-overlapping windows of ctx_len + 1 tokens over a packed stream (no padding):
    item i -> (x (ctx_len,), y (ctx_len,)) int64 with y = x shifted by one."""

    def __init__(self, tokens: np.ndarray, ctx_len: int, name: str) -> None:
        if len(tokens) < ctx_len + 1:
            raise DataError(f"{name}: {len(tokens)} tokens, fewer than one window of ctx_len + 1 = "
                            f"{ctx_len + 1}; use more text or a smaller model.ctx_len")
        self.tokens, self.ctx_len = tokens, ctx_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.ctx_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = i * self.ctx_len
        chunk = torch.from_numpy(np.asarray(self.tokens[s:s + self.ctx_len + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batch indices of one epoch from ``start`` on: a permutation fixed by (seed, epoch),
    cut into global batches of batch_size * world; this rank takes its slice of each."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, start: int,
                 lengths: np.ndarray | None = None, pool: int = 50) -> None:
        self.batch_size, self.rank, self.world = batch_size, rank, world
        g = batch_size * world
        self.per_epoch = n // g
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n)
        if lengths is not None and self.per_epoch > 0:
            # length bucketing: sort pools of `pool` global batches by length, cut them into
            # batches, shuffle the batch order: similar lengths share a batch, little padding
            perm = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                                   for c in np.array_split(perm, max(1, n // (g * pool)))])
            order = rng.permutation(self.per_epoch)
            perm = perm[:self.per_epoch * g].reshape(self.per_epoch, g)[order].reshape(-1)
        self.perm = perm
        self.start = start

    def __len__(self) -> int:
        return max(0, self.per_epoch - self.start)

    def __iter__(self):
        g = self.batch_size * self.world
        for m in range(self.start, self.per_epoch):
            lo = m * g + self.rank * self.batch_size
            yield self.perm[lo:lo + self.batch_size].tolist()


class SkipCountingDataset(torch.utils.data.Dataset):
    """A dataset that skips unusable rows and accounts for them per epoch: ``seen``, ``skipped``
    and one count per reason. ``report()`` returns the counts and starts over (the engine reads it
    at the end of every epoch; evaluation reads it to keep its own reads out of the training count)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def _skip(self, reason: str) -> None:
        """Count one unusable row under ``reason``; returns None for ``return self._skip(...)``."""
        self.counts["skipped"] += 1
        self.counts[reason] += 1

    def report(self) -> dict[str, int]:
        out, self.counts = dict(self.counts), Counter()
        return out
