"""The CSVs a speech-data build writes (scripts/download_production_audio.py): the rows planned per
manifest with each clip's result, the refusal of a build whose engine broke, and the summary of
rows, hours and failures per engine and voice."""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omni import speech_data as sd
from omni.audio import SAMPLE_RATE

MAX_FAILED = 0.05  # more failed clips than this means a broken engine, not a bad sentence


class SourceError(RuntimeError):
    """A source could not be built; the message names the source and the fix."""


@dataclass
class Manifest:
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


def write_manifests(manifests: dict[str, Manifest], out: Path) -> None:
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


def print_summary(manifests: dict[str, Manifest], out: Path, seconds: float) -> None:
    """Rows, hours and MB per manifest and engine/voice group; reused clips; failures by reason."""
    print(f"\n{'manifest':<28}{'engine voice':<28}{'rows':>7}{'hours':>8}{'MB':>9}")
    totals = Counter()
    for name, m in manifests.items():
        groups: dict[str, Counter] = {}
        for group, r in zip(m.groups, m.results):
            g = groups.setdefault(group, Counter())
            if r.samples is None:
                g[f"failed:{r.reason}"] += 1
                continue
            g.update(rows=1, samples=r.samples, bytes=r.out.stat().st_size, reused=int(r.reused))
        groups["total"] = sum(groups.values(), Counter())
        for group, g in sorted(groups.items(), key=lambda kv: (kv[0] == "total", kv[0])):
            failed = {k.split(":")[1]: v for k, v in g.items() if k.startswith("failed:")}
            print(f"{name:<28}{group:<28}{g['rows']:>7}{g['samples'] / SAMPLE_RATE / 3600:>8.3f}"
                  f"{g['bytes'] / 1e6:>9.1f}" + (f"  failed {failed}" if failed else ""))
        totals.update(groups["total"])
    hours = totals["samples"] / SAMPLE_RATE / 3600
    print(f"all: {totals['rows']} clips, {hours:.2f} h, {totals['bytes'] / 1e6:.1f} MB; reused from "
          f"an earlier run (skipped): {totals['reused']}; failed (not written): "
          f"{sum(v for k, v in totals.items() if k.startswith('failed:'))}")
    for name in manifests:
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")
    print(f"done in {seconds:.1f} s")
