"""CSV manifests, the one row format every speech stage reads: ``data/datasets.json`` names
resolved to files, rows read by byte offset, the rule that a manifest's paths stay in its folder,
and the audio-row dataset base class.

A row that cannot be used (unreadable, the wrong number of fields, a path that leaves the data
folder) raises ``BadRow``: readers skip it and count it under ``BadRow.reason``. Only a bad header
or a manifest without a single usable row stops a stage.
"""
from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from omni.audio.features import AudioError, load_audio
from omni.data import BadRow, DataError, LineFile, SkipCountingDataset, read_utf8

log = logging.getLogger(__name__)
T = TypeVar("T")


REGISTRY = Path("data/datasets.json")  # written by scripts/prepare_audio.py
OUTSIDE = "outside_data_dir"  # the skip reason of a row whose path leaves the manifest's folder


def resolve_manifest(name_or_path: str, split: str, registry: Path = REGISTRY) -> Path:
    """A CSV path as given, or a dataset registered by prepare_audio.py -> its ``<split>.tsv``."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".csv", ".tsv"):
        return path
    if not registry.is_file():
        raise DataError(f"{name_or_path}: no such manifest, and no dataset registry at {registry} "
                        "(register a folder with scripts/prepare_audio.py --dataset NAME)")
    entries = read_registry(registry)
    if name_or_path not in entries:
        raise DataError(f"{name_or_path}: not a file and not a registered dataset "
                        f"(registered in {registry}: {', '.join(sorted(entries)) or 'none'})")
    return registry.parent / entries[name_or_path] / f"{split}.tsv"


def read_registry(registry: Path) -> dict[str, str]:
    """``data/datasets.json``: {NAME: folder relative to the registry}. Anything else (not UTF-8,
    invalid JSON, another shape) is a DataError naming the file, and the line where there is one."""
    fix = "fix it, or delete it and register the datasets again with scripts/prepare_audio.py --dataset NAME"
    try:
        entries = json.loads(read_utf8(registry))
    except json.JSONDecodeError as e:
        raise DataError(f"{registry}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}); {fix}") from None
    except RecursionError:
        raise DataError(f"{registry}: invalid JSON (nested too deeply); {fix}") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise DataError(f"{registry}: expected one JSON object of NAME: \"folder\" strings; {fix}")
    return entries


class PathGuard:
    """Turns a manifest's path values into paths relative to the manifest's folder and refuses a
    path that leaves that folder: ``../x.wav``, ``/etc/passwd``, or a symlink inside the folder that
    points out (paths are compared resolved). ``allow_outside`` (``data.allow_outside_paths``)
    lets such paths through, for data that really lives elsewhere."""

    def __init__(self, manifest: Path, allow_outside: bool) -> None:
        self.folder, self.allow_outside = manifest.parent, allow_outside
        self.real_folder = self.folder.resolve()

    def __call__(self, value: str, where: str) -> Path:
        """The path of ``value`` (as the manifest's folder / value); raises BadRow naming ``where``."""
        path = self.folder / value
        if self.allow_outside:
            return path
        try:
            real = path.resolve()
        except (OSError, RuntimeError, ValueError) as e:  # a NUL byte, a symlink loop
            raise BadRow(f"{where}: unusable path {value!r} ({e})") from None
        if not real.is_relative_to(self.real_folder):
            raise BadRow(f"{where}: {value!r} is outside the data folder {self.real_folder} (it resolves to "
                         f"{real}); move the data under the manifest's folder, or set "
                         "data.allow_outside_paths=true to read it anyway", OUTSIDE)
        return path


class Manifest:
    """Random access to the rows of a ``wav,text[,...]`` CSV, or of a registered dataset's TSV
    (``path<TAB>num_samples<TAB>text``): ``m[i]`` -> dict with at least ``wav`` and ``text``
    (``path_key`` instead of ``wav`` for other media, e.g. ``image,text`` OCR manifests); the
    path is resolved relative to the manifest and must stay in its folder unless ``allow_outside``."""

    def __init__(self, path: str | Path, path_key: str = "wav", allow_outside: bool = False) -> None:
        self.path, self.path_key = Path(path), path_key  # path_key: the column of file paths ("image" for OCR)
        self.delimiter = "\t" if self.path.suffix == ".tsv" else ","
        self.lines = LineFile(self.path, suffix=".row_offsets.npy")
        if len(self.lines) < 2:
            raise DataError(f"{self.path}: no rows (a header line and at least one row are needed)")
        self.header = self._read_header()
        self.paths = PathGuard(self.path, allow_outside)
        self._warned: set[int] = set()

    def _read_header(self) -> list[str]:
        try:
            names = self._split(self.lines[0].decode("utf-8-sig"))  # -sig: a spreadsheet's byte-order mark
        except (UnicodeDecodeError, StopIteration, csv.Error) as e:
            raise DataError(f"{self.path}:1: unreadable header ({e}); the first line names the columns, "
                            f"e.g. {self.path_key},text") from None
        header = [self.path_key if h.strip() == "path" else h.strip() for h in names]
        missing = {self.path_key, "text"} - set(header)
        if missing:
            raise DataError(f"{self.path}:1: header {header} lacks column(s) {sorted(missing)}")
        if len(set(header)) < len(header):
            raise DataError(f"{self.path}:1: header {header} names a column twice")
        return header

    def __len__(self) -> int:
        return len(self.lines) - 1

    def __getitem__(self, i: int) -> dict[str, str]:
        """Row i (0-based, after the header). An unusable row raises BadRow naming its line, logged
        the first time only (datasets read the same rows every epoch)."""
        try:
            return self._row(i)
        except BadRow as e:
            if i not in self._warned:
                self._warned.add(i)
                log.warning("%s", e)
            raise

    def _row(self, i: int) -> dict[str, str]:
        where, raw = f"{self.path}:{i + 2}", self.lines[i + 1]
        try:
            values = self._split(raw.decode("utf-8"))
        except (UnicodeDecodeError, StopIteration, csv.Error) as e:
            raise BadRow(f"{where}: unreadable row ({e}): {raw[:120]!r}") from None
        if len(values) != len(self.header):
            raise BadRow(f"{where}: {len(values)} fields, header has {len(self.header)}: {raw[:120]!r}")
        row = dict(zip(self.header, values))
        row[self.path_key] = str(self.paths(row[self.path_key], where))
        return row

    def _split(self, line: str) -> list[str]:
        if self.delimiter == "\t":
            return line.split("\t")
        return next(csv.reader([line]))

    def scan(self) -> Iterator[tuple[int, dict[str, str] | BadRow]]:
        """(i, row) for every row in order, or (i, the BadRow) for an unusable one; afterwards the bad
        rows are summarised by reason, and a manifest without a single usable row is a DataError."""
        bad: Counter = Counter()
        for i in range(len(self)):
            try:
                row = self[i]
            except BadRow as e:
                bad[e.reason] += 1
                row = e
            yield i, row
        if sum(bad.values()) == len(self):
            raise DataError(f"{self.path}: none of its {len(self)} rows is usable ({dict(bad)}); see the "
                            "warnings above for each row")
        if bad:
            log.warning("%s: %d of %d rows are skipped (%s)", self.path, sum(bad.values()), len(self), dict(bad))


class ManifestRows(SkipCountingDataset):
    """A dataset over the rows of a manifest: ``_media_row(i, ...)`` reads row i and loads the file in
    one of its columns, counting the row as seen, or counts why it is unusable (``malformed_row``,
    ``outside_data_dir``, ``<prefix>_<reason>`` of the loader's error)."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.m = manifest

    def __len__(self) -> int:
        return len(self.m)

    def _media_row(self, i: int, column: str, load: Callable[[str], T], error: type[Exception],
                   prefix: str) -> tuple[dict[str, str], T] | None:
        self.counts["seen"] += 1
        try:
            row = self.m[i]
        except BadRow as e:
            return self._skip(e.reason)
        try:
            return row, load(row[column])
        except error as e:
            log.warning("%s:%d: %s", self.m.path, i + 2, e)
            return self._skip(f"{prefix}_{e.reason}")


class AudioRows(ManifestRows):
    """The rows of an audio manifest with their audio (column ``wav``)."""

    def _audio_row(self, i: int) -> tuple[dict[str, str], np.ndarray] | None:
        return self._media_row(i, "wav", load_audio, AudioError, "audio")
