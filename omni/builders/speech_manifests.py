"""The CSVs a speech-data build writes (scripts/download_production_audio.py): the rows planned per
manifest with each clip's result, and the refusal of a build whose engine broke."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omni.builders import speech as sd

MAX_FAILED = 0.05  # more failed clips than this means a broken engine, not a bad sentence


class SourceError(RuntimeError):
    """A source could not be built; the message names the source and the fix."""


@dataclass
class ManifestPlan:
    """One CSV to write: header, and per planned clip its row, summary group and job result."""

    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    results: list[sd.JobResult] = field(default_factory=list)

    def add(self, row: tuple[str, ...], group: str, result: sd.JobResult) -> None:
        self.rows.append(row)
        self.groups.append(group)
        self.results.append(result)

    def ok_rows(self) -> list[tuple[str, ...]]:
        """The rows whose clip exists (failed clips are reported, never written)."""
        return [row for row, r in zip(self.rows, self.results) if r.samples is not None]


def write_manifests(manifests: dict[str, ManifestPlan], out: Path) -> None:
    """Refuse a broken build; otherwise write every manifest atomically (never appended)."""
    results = [r for m in manifests.values() for r in m.results]
    failed = [r for r in results if r.samples is None]
    if not results or len(failed) > MAX_FAILED * len(results):
        first = failed[0].error if failed else "no clips were planned"
        raise SourceError(f"{len(failed)} of {len(results)} clips failed (first: {first}); "
                          f"manifests left untouched")
    for r in failed:
        logging.warning("skipped %s: %s", r.out.name, r.error)
    for name, m in manifests.items():
        sd.write_csv(out / name, m.header, m.ok_rows())
