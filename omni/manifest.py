"""CSV manifests, the one row format every speech stage reads: ``data/datasets.json`` names
resolved to files, rows read by byte offset, and the audio-row dataset base class."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from omni.audio.features import AudioError, load_audio
from omni.data import DataError, LineFile, SkipCountingDataset

log = logging.getLogger(__name__)


REGISTRY = Path("data/datasets.json")  # written by scripts/prepare_audio.py


def resolve_manifest(name_or_path: str, split: str, registry: Path = REGISTRY) -> Path:
    """A CSV path as given, or a dataset registered by prepare_audio.py -> its ``<split>.tsv``."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".csv", ".tsv"):
        return path
    if not registry.is_file():
        raise DataError(f"{name_or_path}: no such manifest, and no dataset registry at {registry} "
                        "(register a folder with scripts/prepare_audio.py --dataset NAME)")
    entries = json.loads(registry.read_text(encoding="utf-8"))
    if name_or_path not in entries:
        raise DataError(f"{name_or_path}: not a file and not a registered dataset "
                        f"(registered in {registry}: {', '.join(sorted(entries)) or 'none'})")
    return registry.parent / entries[name_or_path] / f"{split}.tsv"


class Manifest:
    """Random access to the rows of a ``wav,text[,...]`` CSV, or of a registered dataset's TSV
    (``path<TAB>num_samples<TAB>text``): ``m[i]`` -> dict with at least ``wav`` and ``text``
    (``path_key`` instead of ``wav`` for other media, e.g. ``image,text`` OCR manifests); the
    path is resolved relative to the manifest."""

    def __init__(self, path: str | Path, path_key: str = "wav") -> None:
        self.path, self.path_key = Path(path), path_key  # path_key: the column of file paths ("image" for OCR)
        self.delimiter = "\t" if self.path.suffix == ".tsv" else ","
        self.lines = LineFile(self.path, suffix=".row_offsets.npy")
        if len(self.lines) < 2:
            raise DataError(f"{self.path}: no rows (a header line and at least one row are needed)")
        self.header = [path_key if h == "path" else h for h in self._split(self.lines[0].decode("utf-8"))]
        missing = {path_key, "text"} - set(self.header)
        if missing:
            raise DataError(f"{self.path}:1: header {self.header} lacks column(s) {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.lines) - 1

    def __getitem__(self, i: int) -> dict[str, str]:
        """Row i (0-based, after the header); a malformed row raises DataError with its line."""
        raw = self.lines[i + 1]
        try:
            values = self._split(raw.decode("utf-8"))
        except (UnicodeDecodeError, StopIteration, csv.Error) as e:
            raise DataError(f"{self.path}:{i + 2}: unreadable row ({e})") from e
        if len(values) != len(self.header):
            raise DataError(f"{self.path}:{i + 2}: {len(values)} fields, header has {len(self.header)}")
        row = dict(zip(self.header, values))
        row[self.path_key] = str(self.path.parent / row[self.path_key])
        return row

    def _split(self, line: str) -> list[str]:
        if self.delimiter == "\t":
            return line.split("\t")
        return next(csv.reader([line]))


class AudioRows(SkipCountingDataset):
    """A dataset over the rows of an audio manifest: ``_audio_row(i)`` reads row i and its audio,
    counting it as seen, or counts why it is unusable (``malformed_row``, ``audio_<reason>``)."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.m = manifest

    def __len__(self) -> int:
        return len(self.m)

    def _audio_row(self, i: int) -> tuple[dict[str, str], np.ndarray] | None:
        self.counts["seen"] += 1
        try:
            row = self.m[i]
            return row, load_audio(row["wav"])
        except DataError as e:
            log.warning("%s", e)
            return self._skip("malformed_row")
        except AudioError as e:
            log.warning("%s:%d: %s", self.m.path, i + 2, e)
            return self._skip(f"audio_{e.reason}")
