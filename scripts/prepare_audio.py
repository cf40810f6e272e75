#!/usr/bin/env python
"""Standardise any folder of audio into a registered dataset of 16 kHz mono WAV.

Every .wav/.flac/.ogg/.mp3 under --input-dir (any rate, any channels) is converted to 16-bit
PCM WAV under <out>/<NAME>/wavs/ (the input's sub-folders are kept), then:

  <out>/<NAME>/train.tsv, val.tsv, test.tsv   header `path<TAB>num_samples<TAB>text`, then one clip a line
                                              (path relative to the .tsv, samples at 16 kHz, text from a
                                              sidecar NAME.txt / NAME.lab transcript, or empty)
  <out>/<NAME>/metadata.json                  counts, hours, source formats/rates/channels,
                                              skipped files with reasons, ignored non-audio files
  <registry> (default <out>/../datasets.json) {NAME: folder relative to the registry}, merged

Corrupt, empty, NaN/inf and all-zero files are skipped and listed, never fatal. The split is a
seeded shuffle of the files (same input + seed -> same split). A re-run reuses converted files
that are newer than their source.

Example:
  python scripts/prepare_audio.py --input-dir ~/recordings --dataset my_voice
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import soundfile as sf

from omni.audio.features import AUDIO_EXTENSIONS, SAMPLE_RATE
from omni.builders import speech as sd
from omni.cli.common import Parser

SPLITS = ("train", "val", "test")


def find_audio(input_dir: Path, exclude: Path) -> tuple[list[Path], Counter]:
    """Audio files under input_dir in sorted order, and a count of other files by extension."""
    files, ignored = [], Counter()
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        if path.is_relative_to(exclude):
            continue
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            files.append(path)
        else:
            ignored[path.suffix.lower() or "(none)"] += 1
    return files, ignored


def output_paths(files: list[Path], input_dir: Path, wav_dir: Path) -> list[Path]:
    """wavs/<relative path>.wav; a.wav and a.flac in one folder become a_wav.wav and a_flac.wav."""
    stems = Counter(f.relative_to(input_dir).with_suffix("") for f in files)
    outs = []
    for f in files:
        rel = f.relative_to(input_dir).with_suffix("")
        if stems[rel] > 1:
            rel = rel.with_name(f"{rel.name}_{f.suffix.lower().lstrip('.')}")
        outs.append(wav_dir / rel.with_suffix(".wav"))
    return outs


def stale_outputs_removed(jobs: list[sd.ConvertJob]) -> int:
    """Delete converted files older than their source, so the re-run converts them again."""
    removed = 0
    for job in jobs:
        if job.out.is_file() and job.out.stat().st_mtime < job.src.stat().st_mtime:
            job.out.unlink()
            removed += 1
    return removed


def split_indices(n: int, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[int]]:
    """Seeded shuffle of range(n) cut into test, val, train (sorted within each split).

    A non-zero fraction gets at least one file once there are 3 or more.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test, n_val = (max(int(f > 0 and n >= 3), round(n * f)) for f in (test_fraction, val_fraction))
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def source_stats(files: list[Path]) -> dict[str, dict[str, int]]:
    """How many sources had each format, sample rate and channel count (readable headers only)."""
    formats, rates, channels = Counter(), Counter(), Counter()
    for f in files:
        formats[f.suffix.lower()] += 1
        try:
            info = sf.info(str(f))
        except (sf.LibsndfileError, RuntimeError):
            rates["unreadable"] += 1  # the conversion reports why, per file
            channels["unreadable"] += 1
            continue
        rates[str(info.samplerate)] += 1
        channels[str(info.channels)] += 1
    return {"formats": dict(sorted(formats.items())), "sample_rates": dict(sorted(rates.items())),
            "channels": dict(sorted(channels.items()))}


def transcript(audio: Path) -> str:
    """The sidecar transcript of an audio file (`NAME.txt` or `NAME.lab` beside it, first line),
    tabs and newlines folded to spaces; "" when there is none."""
    for suffix in (".txt", ".lab"):
        side = audio.with_suffix(suffix)
        if side.is_file():
            lines = side.read_text(encoding="utf-8", errors="replace").splitlines()
            return " ".join(lines[0].split()) if lines else ""
    return ""


def write_splits(root: Path, results: list[sd.JobResult], splits: dict[str, list[int]],
                 texts: list[str]) -> None:
    """train/val/test.tsv: `path<TAB>num_samples<TAB>text` rows, paths relative to root, text
    from sidecar transcripts ("" when a clip has none)."""
    for name in SPLITS:
        lines = ["path\tnum_samples\ttext"]
        lines += [f"{sd.relpath(results[i].out, root)}\t{results[i].samples}\t{texts[i]}" for i in splits[name]]
        sd.write_text_atomic(root / f"{name}.tsv", "\n".join(lines) + "\n")


def register(registry: Path, name: str, folder: Path) -> None:
    """Add or replace name -> folder (relative to the registry) in the JSON registry, atomically."""
    entries: dict[str, str] = {}
    if registry.exists():
        try:
            entries = json.loads(registry.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{registry} is not valid JSON ({e}); fix or delete it") from e
        if not isinstance(entries, dict):
            raise ValueError(f"{registry} is not a JSON object; fix or delete it and run again")
    entries[name] = sd.relpath(folder, registry.parent)
    sd.write_text_atomic(registry, json.dumps(dict(sorted(entries.items())), indent=2) + "\n")


def build_metadata(args: argparse.Namespace, files: list[Path], results: list[sd.JobResult],
                   splits: dict[str, list[int]], ignored: Counter) -> dict:
    """Everything a user needs to trust the set: counts, hours, sources, what was skipped and why."""
    hours = {s: sum(results[i].samples for i in splits[s]) / SAMPLE_RATE / 3600 for s in SPLITS}
    skipped = [{"file": f.relative_to(args.input_dir).as_posix(), "reason": r.reason,
                "error": r.error} for f, r in zip(files, results) if r.samples is None]
    return {
        "dataset": args.dataset, "input_dir": str(args.input_dir.resolve()),
        "sample_rate": SAMPLE_RATE, "channels": 1, "format": "WAV PCM_16", "seed": args.seed,
        "val_fraction": args.val_fraction, "test_fraction": args.test_fraction,
        "counts": {s: len(splits[s]) for s in SPLITS},
        "hours": {**{s: round(h, 6) for s, h in hours.items()},
                  "total": round(sum(hours.values()), 6)},
        "sources": {"audio_files": len(files), **source_stats(files)},
        "skipped": skipped, "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)),
        "ignored_files": dict(sorted(ignored.items())),
    }


def prepare(args: argparse.Namespace) -> dict:
    """Convert, split, write the TSVs and metadata, register; returns the metadata."""
    root = args.out / args.dataset
    files, ignored = find_audio(args.input_dir, root.resolve())
    if not files:
        raise ValueError(f"no {'/'.join(AUDIO_EXTENSIONS)} files under {args.input_dir}")
    outs = output_paths(files, args.input_dir, root / "wavs")
    jobs = [sd.ConvertJob(f, o) for f, o in zip(files, outs)]
    logging.info("%d audio files; %d stale conversions removed", len(files),
                 stale_outputs_removed(jobs))
    results = sd.run_parallel(sd.convert, jobs, args.workers, f"preparing {args.dataset}")
    good = [i for i, r in enumerate(results) if r.samples is not None]
    cut = split_indices(len(good), args.val_fraction, args.test_fraction, args.seed)
    splits = {s: [good[i] for i in cut[s]] for s in SPLITS}
    texts = [transcript(f) for f in files]
    write_splits(root, results, splits, texts)
    meta = build_metadata(args, files, results, splits, ignored)
    meta["transcribed"] = sum(bool(texts[i]) for i in good)
    sd.write_text_atomic(root / "metadata.json", json.dumps(meta, indent=2) + "\n")
    register(args.registry, args.dataset, root)
    return meta


def print_summary(meta: dict, root: Path, registry: Path, seconds: float) -> None:
    """Counts and hours per split, skipped files with reasons."""
    print(f"\n{'split':<8}{'clips':>7}{'hours':>10}")
    for s in SPLITS:
        print(f"{s:<8}{meta['counts'][s]:>7}{meta['hours'][s]:>10.4f}")
    print(f"sources: {meta['sources']}")
    print(f"skipped {len(meta['skipped'])} {meta['skipped_by_reason'] or ''}; "
          f"ignored non-audio {meta['ignored_files'] or 0}")
    for s in meta["skipped"]:
        print(f"  skipped {s['file']}: {s['reason']}")
    print(f"wrote {root}/{{train,val,test}}.tsv, {root}/metadata.json; registered in {registry}")
    print(f"done in {seconds:.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--input-dir", type=Path, required=True, help="folder of audio files (searched recursively)")
    p.add_argument("--dataset", required=True, help="name: letters, digits, _ . -")
    p.add_argument("--out", type=Path, default=Path("data/processed"), help="the dataset goes to OUT/NAME/")
    p.add_argument("--registry", type=Path, default=None,
                   help="datasets JSON (default: datasets.json beside --out)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the files held out for validation")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of the files held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seeds the split")
    p.add_argument("--workers", type=int, default=2, help="conversion processes")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", args.dataset):
        p.error(f"--dataset {args.dataset!r}: use letters, digits, _ . - only")
    if not args.input_dir.is_dir():
        p.error(f"--input-dir {args.input_dir} is not a folder")
    fractions = (args.val_fraction, args.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        p.error("--val-fraction and --test-fraction must be >= 0 and sum to less than 1")
    args.registry = args.registry or args.out.parent / "datasets.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        meta = prepare(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(meta, args.out / args.dataset, args.registry, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
