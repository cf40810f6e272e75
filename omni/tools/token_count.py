"""Token counts of training data with the project's tokenizer: streamed, batched, resumable.

Three kinds of file, each counted the way its stage reads it:

- ``lines``: one document per line (Stage A). A line is the bytes between newlines, decoded as
  UTF-8 and stripped; empty or undecodable lines are skipped, exactly as ``omni.data.LineFile``.
- ``csv``/``tsv`` manifests with a ``text`` column (ASR and TTS transcripts, OCR strings).
- ``json`` image manifests (a JSON array, or JSON Lines): the ``caption`` of every row.

Counts go through ``tokenizer.encode_batch`` (HF tokenizers encodes a batch on all cores) and are
kept beside the file in ``<file>.token_count.<tokenizer>.json``, stamped with the file's size and mtime and the
tokenizer's fingerprint. A line file is counted in chunks and the running count and byte offset are
saved every ``checkpoint_mb`` MB, so a count of a very large corpus that is interrupted resumes
where it stopped; a finished count is reused until the file or the tokenizer changes.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from omni.data import DataError
from omni.files import write_json_atomic

log = logging.getLogger(__name__)

STATE_VERSION = 1
_READ_BYTES = 1 << 22  # 4 MB per read: a few thousand documents per encode_batch call


@dataclass
class TokenCount:
    tokens: int    # tokenizer tokens of the text (no special tokens, no EOS)
    items: int     # documents / rows that carry text: the stage's samples
    skipped: int   # empty or undecodable lines, rows without text
    done: bool = True

    @property
    def tokens_with_eos(self) -> int:
        """Tokens of the packed Stage A stream: every document is followed by EOS."""
        return self.tokens + self.items


def file_kind(path: Path) -> str | None:
    """``lines`` | ``csv`` | ``json`` by extension; None for a file this module cannot read."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "lines"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".json", ".jsonl"):
        return "json"
    return None


def state_path(path: Path, tokenizer) -> Path:
    """``<file>.token_count.<fingerprint>.json``: one count per tokenizer (the demo's 2k-token BPE
    and the 32k one count the same file differently)."""
    return Path(f"{path}.token_count.{tokenizer.fingerprint()[:12]}.json")


def _stamp(path: Path, tokenizer) -> dict:
    st = path.stat()
    return {"version": STATE_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "tokenizer": tokenizer.fingerprint()}


def _read_state(state_path: Path, stamp: dict) -> dict | None:
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state.get("stamp") != stamp:
        log.info("%s is stale (file or tokenizer changed); counting again", state_path)
        return None
    return state


def _save_state(state_path: Path, stamp: dict, offset: int, count: TokenCount) -> None:
    write_json_atomic(state_path, {"stamp": stamp, "offset": offset, **asdict(count)})


def _decode_line(raw: bytes) -> str | None:
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None


def _count_texts(texts: list[str | None], tokenizer, count: TokenCount) -> None:
    good = [t for t in texts if t is not None]
    count.skipped += len(texts) - len(good)
    if good:
        count.items += len(good)
        count.tokens += sum(len(ids) for ids in tokenizer.encode_batch(good))


def count_lines(path: str | Path, tokenizer, checkpoint_mb: float = 64.0, use_state: bool = True,
                stop_after_bytes: int | None = None, progress: bool = True) -> TokenCount:
    """Tokens of a one-document-per-line file, resuming from ``<file>.token_count.json``.

    ``stop_after_bytes`` saves the state and returns (``done`` False) once that many bytes were read
    in this call: for time-sliced runs; the next call continues from there.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    state_file, stamp = state_path(path, tokenizer), _stamp(path, tokenizer)
    state = _read_state(state_file, stamp) if use_state else None
    offset, count = 0, TokenCount(0, 0, 0, done=False)
    if state is not None:
        offset = state["offset"]
        count = TokenCount(state["tokens"], state["items"], state["skipped"], state["done"])
        if count.done:
            return count
        log.info("%s: resuming the token count at byte %d of %d", path, offset, stamp["size"])
    every = max(1, int(checkpoint_mb * (1 << 20)))
    start, last_saved = offset, offset
    with open(path, "rb") as f, tqdm(total=stamp["size"], initial=offset, unit="B", unit_scale=True,
                                     desc=f"count tokens {path.name}", disable=not progress,
                                     mininterval=1.0, leave=False) as bar:
        f.seek(offset)
        while True:
            chunk = f.read(_READ_BYTES)
            if not chunk:
                break
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:  # a line longer than one read: extend it to its end (or EOF)
                chunk += f.readline()
                cut = len(chunk)
            elif cut < len(chunk):
                f.seek(cut - len(chunk), 1)
            lines = chunk[:cut].split(b"\n")
            if chunk[:cut].endswith(b"\n"):
                lines.pop()  # the empty piece after the final newline is not a line
            _count_texts([_decode_line(raw) for raw in lines], tokenizer, count)
            offset += cut
            bar.update(cut)
            if use_state and offset - last_saved >= every:
                _save_state(state_file, stamp, offset, count)
                last_saved = offset
            if stop_after_bytes is not None and offset - start >= stop_after_bytes and offset < stamp["size"]:
                _save_state(state_file, stamp, offset, count)
                return count
    count.done = True
    if use_state:
        _save_state(state_file, stamp, offset, count)
    return count


def manifest_texts(path: Path) -> Iterator[str | None]:
    """The text of every row of a manifest: CSV/TSV ``text`` column, JSON ``caption``."""
    if file_kind(path) == "csv":
        tsv = path.suffix.lower() == ".tsv"
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if tsv else ",",
                                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            if "text" not in (reader.fieldnames or []):
                raise DataError(f"{path}:1: header {reader.fieldnames} has no 'text' column to count")
            for row in reader:
                yield (row["text"] or "").strip() or None
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = json.loads(text)
    for row in rows:
        caption = row.get("caption") if isinstance(row, dict) else None
        yield (caption.strip() or None) if isinstance(caption, str) else None


def count_manifest(path: str | Path, tokenizer, use_state: bool = True, batch: int = 4096,
                   progress: bool = True) -> TokenCount:
    """Tokens of a manifest's texts (see ``manifest_texts``); the result is cached like a line count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    state_file, stamp = state_path(path, tokenizer), _stamp(path, tokenizer)
    state = _read_state(state_file, stamp) if use_state else None
    if state is not None and state["done"]:
        return TokenCount(state["tokens"], state["items"], state["skipped"], True)
    count, buf = TokenCount(0, 0, 0, done=False), []
    for text in tqdm(manifest_texts(path), desc=f"count tokens {path.name}", unit="row",
                     disable=not progress, mininterval=1.0, leave=False):
        buf.append(text)
        if len(buf) == batch:
            _count_texts(buf, tokenizer, count)
            buf = []
    _count_texts(buf, tokenizer, count)
    count.done = True
    if use_state:
        _save_state(state_file, stamp, stamp["size"], count)
    return count


def count_file(path: str | Path, tokenizer, use_state: bool = True, progress: bool = True) -> TokenCount:
    """Dispatch on the file kind; an unreadable kind is a DataError naming the file."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "lines":
        return count_lines(path, tokenizer, use_state=use_state, progress=progress)
    if kind in ("csv", "json"):
        return count_manifest(path, tokenizer, use_state=use_state, progress=progress)
    raise DataError(f"{path}: cannot count tokens in a '{path.suffix}' file (expected .txt, .csv, .tsv, .json, .jsonl)")
