#!/usr/bin/env python
"""Build the OCR data: data/ocr/production_ocr.csv (train) + production_ocr_val.csv (evaluation).

CSV columns `image,text,font`, image paths relative to the CSV. Sources:

  offline  (default) text lines of 2-8 words cut from data/text/production_corpus.txt (train) and
           production_val.txt (evaluation), rendered with Pillow in every installed font that
           draws all printable ASCII (apt font packages are installed first; symbol/emoji fonts
           are skipped and counted). Whole font families (--val-families) are kept out of
           training: the evaluation split uses only them, on held-out text.
  mjsynth  the MJSynth (Synth90k) tar.gz: mnt/ramdisk/max/90kDICT32px/<a>/<b>/<i>_<WORD>_<j>.jpg
           with annotation_train.txt / annotation_val.txt; the label comes from the file name.

Re-runs are resumable: existing images are kept, CSVs are rewritten whole (atomic, no duplicates).

Examples:
  python scripts/download_production_ocr.py
  python scripts/download_production_ocr.py --n 2000 --dry-run
  python scripts/download_production_ocr.py --source mjsynth --url URL --sha256 HEX
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path

from omni.builders import download as dl
from omni.builders import ocr
from omni.cli.common import Parser, data_script

FONT_PACKAGES = ["fonts-liberation2", "fonts-freefont-ttf", "fonts-urw-base35", "fonts-open-sans",
                 "fonts-hack", "fonts-lato", "fonts-noto-mono", "fonts-noto-core"]
# one serif, one sans, one monospace and one old-style face that training never sees
DEFAULT_VAL_FAMILIES = ("Liberation Serif", "Lato", "Hack", "P052")
MJSYNTH_URL = "https://www.robots.ox.ac.uk/~vgg/data/text/mjsynth.tar.gz"
TRAIN_NAME, VAL_NAME = "production_ocr.csv", "production_ocr_val.csv"
IMG_SUBDIR = "rendered"


class BuildError(RuntimeError):
    """The data cannot be built; the message says why and what to do."""


def choose_val_families(fonts: list[ocr.Font], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted families that are installed; if none is, the last installed family (logged)."""
    families = sorted({f.family for f in fonts})
    if len(families) < 2:
        raise BuildError(f"need at least 2 font families to hold one out, found {families}; "
                         f"install fonts with: apt-get install {' '.join(FONT_PACKAGES)}")
    held = tuple(f for f in wanted if f in families)
    if not held:
        held = (families[-1],)
        logging.warning("none of --val-families %s is installed; holding out %r", wanted, held[0])
    if len(held) == len(families):
        raise BuildError(f"--val-families {held} would leave no font for training")
    return held


def build_offline(args: argparse.Namespace) -> dict:
    """Install fonts, check them, cut lines, render both splits; returns what the summary needs."""
    if not args.skip_apt:
        dl.ensure_apt_packages(FONT_PACKAGES)
    fonts, skipped = ocr.usable_fonts(ocr.discover_fonts(tuple(args.font_dir)))
    held = choose_val_families(fonts, args.val_families)
    train_fonts, val_fonts = ocr.split_fonts(fonts, held)
    val_lines, val_drops = ocr.text_lines(args.val_text, args.val_samples, args.seed)
    train_lines, train_drops = ocr.text_lines(args.train_text, args.n, args.seed,
                                              exclude=frozenset(val_lines))
    result = {"fonts": fonts, "skipped_fonts": skipped, "held": held,
              "drops": {"train": train_drops, "val": val_drops}, "splits": {}}
    for split, lines, split_fonts, name in (("train", train_lines, train_fonts, TRAIN_NAME),
                                            ("val", val_lines, val_fonts, VAL_NAME)):
        jobs = ocr.plan_jobs(lines, split_fonts, split, args.seed, args.height, IMG_SUBDIR)
        nbytes, written = ocr.render_jobs(jobs, args.out, args.workers, desc=f"render {split}")
        ocr.write_manifest(args.out / name, ocr.job_rows(jobs))
        result["splits"][split] = {"rows": ocr.job_rows(jobs), "bytes": nbytes, "new": written}
    return result


def mjsynth_rows(base: Path, annotation: str, out: Path, limit: int | None
                 ) -> tuple[list[tuple[str, str, str]], Counter]:
    """CSV rows from one MJSynth annotation file (`./a/b/i_WORD_j.jpg lexidx` per line)."""
    path = base / annotation
    if not path.is_file():
        raise BuildError(f"{path} not found: the archive is not laid out like MJSynth")
    rows, drops = [], Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        if limit is not None and len(rows) == limit:
            break
        rel = line.split(" ", 1)[0].strip()
        parts = Path(rel).stem.split("_")
        word = "_".join(parts[1:-1]) if len(parts) >= 3 else ""
        image = (base / rel).resolve()
        if not rel or not word:
            drops["bad_line"] += 1
        elif not image.is_file():
            drops["missing_image"] += 1
        else:
            rows.append((os.path.relpath(image, out.resolve()), word, "mjsynth"))
    return rows, drops


def build_mjsynth(args: argparse.Namespace) -> dict:
    """Download (resumable, sha256) and unpack the archive under --out, convert both annotations."""
    url = args.url or MJSYNTH_URL
    name = Path(urllib.parse.urlparse(url).path).name or "mjsynth.tar.gz"
    archive = dl.download(url, args.cache_dir / "mjsynth" / name, args.sha256)
    root = dl.extract_archive(archive, args.out / "mjsynth")
    found = sorted(root.glob("**/annotation_train.txt"))
    if not found:
        raise BuildError(f"no annotation_train.txt under {root}; delete {root} and check --url")
    result = {"base": found[0].parent, "drops": {}, "splits": {}}
    for split, annotation, csv_name in (("train", "annotation_train.txt", TRAIN_NAME),
                                        ("val", "annotation_val.txt", VAL_NAME)):
        rows, drops = mjsynth_rows(found[0].parent, annotation, args.out, args.n)
        ocr.write_manifest(args.out / csv_name, rows)
        nbytes = sum((args.out / image).stat().st_size for image, _, _ in rows)
        result["drops"][split] = drops
        result["splits"][split] = {"rows": rows, "bytes": nbytes, "new": 0}
    return result


def print_fonts(result: dict) -> None:
    """Rows per font file and split, then the skipped fonts grouped by reason."""
    counts = {split: Counter(font for _, _, font in s["rows"])
              for split, s in result["splits"].items()}
    print(f"\n{'font file':<40}{'family':<28}{'style':<18}{'train':>7}{'val':>6}")
    for font in sorted(result["fonts"], key=lambda f: (f.family, f.style)):
        file = Path(font.path).name
        n_train, n_val = counts["train"][file], counts["val"][file]
        if n_train or n_val:
            print(f"{file:<40}{font.family[:27]:<28}{font.style[:17]:<18}{n_train:>7}{n_val:>6}")
    skipped = result["skipped_fonts"]
    reasons = Counter(r.split(" (")[0] for r in skipped.values())
    print(f"fonts: {len(result['fonts'])} usable in {len({f.family for f in result['fonts']})} "
          f"families, {len(skipped)} skipped {dict(reasons)}")
    for path, reason in list(skipped.items())[:15]:
        print(f"  skipped {Path(path).name}: {reason}")
    if len(skipped) > 15:
        print(f"  ... and {len(skipped) - 15} more")
    print(f"held out for evaluation (absent from training): {', '.join(result['held'])}")


def print_summary(args: argparse.Namespace, result: dict, seconds: float) -> None:
    """Fonts (offline), rows/bytes/new images per split, dropped lines by reason, timing."""
    if args.source == "offline":
        print_fonts(result)
    for split, name in (("train", TRAIN_NAME), ("val", VAL_NAME)):
        s = result["splits"][split]
        print(f"{split:<6}{len(s['rows']):>8} rows  {s['bytes'] / 1e6:8.2f} MB images  "
              f"{s['new']:>7} newly rendered  dropped {dict(result['drops'][split])}  "
              f"-> {args.out / name}")
    print(f"done in {seconds:.1f} s")


def describe_plan(args: argparse.Namespace) -> None:
    """--dry-run: what would be installed, downloaded and written; touches nothing."""
    print("dry run: nothing is downloaded, installed, rendered or written")
    if args.source == "mjsynth":
        print(f"  download {args.url or MJSYNTH_URL} sha256={args.sha256 or 'not checked'} "
              f"into {args.cache_dir / 'mjsynth'}; unpack into {args.out / 'mjsynth'}")
    else:
        missing = [] if args.skip_apt else dl.missing_apt_packages(FONT_PACKAGES)
        print(f"  apt {FONT_PACKAGES} ({f'would install {missing}' if missing else 'installed'})")
        print(f"  {len(ocr.discover_fonts(tuple(args.font_dir)))} font files now under "
              f"{[str(d) for d in args.font_dir]}; held-out families {args.val_families}")
        print(f"  {args.n} train lines from {args.train_text}, {args.val_samples} val "
              f"lines from {args.val_text}, height {args.height}, seed {args.seed}, "
              f"{args.workers} workers, images under {args.out / IMG_SUBDIR}")
    for name in (TRAIN_NAME, VAL_NAME):
        path = args.out / name
        print(f"  would write {path}{' (replacing it)' if path.exists() else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--source", choices=["offline", "mjsynth"], default="offline",
                   help="where the line images come from (see above)")
    p.add_argument("--out", type=Path, default=Path("data/ocr"), help="folder of the CSVs and images")
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="downloads, kept for re-runs")
    p.add_argument("--n", type=int, default=None,
                   help="offline: training lines (default 20000); mjsynth: cap per split")
    p.add_argument("--val-samples", type=int, default=2000, help="offline: evaluation lines")
    p.add_argument("--seed", type=int, default=0, help="seeds the lines, fonts and subsets")
    p.add_argument("--height", type=int, default=32, help="offline: image height in pixels")
    p.add_argument("--workers", type=int, default=2, help="offline: rendering processes")
    p.add_argument("--val-families", default=",".join(DEFAULT_VAL_FAMILIES),
                   help="offline: font families kept out of training, comma-separated")
    p.add_argument("--font-dir", type=Path, action="append", default=None,
                   help="offline: where to look for fonts (repeatable; default /usr/share/fonts)")
    p.add_argument("--skip-apt", action="store_true", help="offline: use only installed fonts")
    p.add_argument("--train-text", type=Path, default=Path("data/text/production_corpus.txt"),
                   help="offline: corpus the training lines are cut from")
    p.add_argument("--val-text", type=Path, default=Path("data/text/production_val.txt"),
                   help="offline: corpus the evaluation lines are cut from")
    p.add_argument("--url", default=None, help=f"mjsynth: archive URL (default {MJSYNTH_URL})")
    p.add_argument("--sha256", default=None, help="mjsynth: expected sha256 of the archive")
    p.add_argument("--dry-run", action="store_true", help="say what would be installed, downloaded and written; "
                   "touch nothing")
    args = p.parse_args(argv)
    args.val_families = tuple(f.strip() for f in args.val_families.split(",") if f.strip())
    args.font_dir = args.font_dir or list(ocr.FONT_DIRS)
    if args.source == "offline" and args.n is None:
        args.n = 20_000
    if args.source == "offline" and (args.url or args.sha256):
        p.error("--url/--sha256 apply to --source mjsynth only")
    for name in ("n", "val_samples", "height", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def build(args: argparse.Namespace, start: float) -> int:
    result = (build_offline if args.source == "offline" else build_mjsynth)(args)
    print_summary(args, result, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    return data_script(argv, parse_args, describe_plan, build,
                       (BuildError, dl.DownloadError, dl.MissingPackageError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
