#!/usr/bin/env python
"""Build the Stage C/E image manifests: data/images/production_annotations.json + _val.json.

One row per image (see omni/builders/image.py): `image` (relative to the manifest), `caption`,
`question`/`answer`, `source`, `category`, `qa`. Images are RGB PNGs <= 256 px under
<out>/production/<source>/. The held-out split is by image and made per source. Sources:

  offline    (default) Tux Paint stamps (`apt-get download tuxpaint-stamps-default`, dpkg -x,
             SVGs rasterised by rsvg-convert), Noto Color Emoji (`apt-get download
             fonts-noto-color-emoji`, drawn by Pillow) and generated shape scenes.
  coco       a COCO-captions-style zip of images + captions_*.json (zip or plain .json). One row
             per image: `caption` is its first caption (lowest annotation id), `captions` all.
  synthetic  the small smoke-test set: <out>/annotations.json + annotations_val.json.
Re-runs reuse downloads, extractions and images on disk; manifests are rewritten atomically
(never appended, so never duplicate rows). Examples:
  python scripts/download_production_image.py
  python scripts/download_production_image.py --sources tuxpaint,scenes --n 500
  python scripts/download_production_image.py --source coco --url URL --annotations-url URL
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from omni.builders import download as dl
from omni.builders import image as im
from omni.cli.common import Parser, data_script, parse_sources
from omni.images import MAX_SIDE

OFFLINE_SOURCES = ("tuxpaint", "emoji", "scenes")
DEBS = {"tuxpaint": "tuxpaint-stamps-default", "emoji": "fonts-noto-color-emoji"}
STAMPS = "usr/share/tuxpaint/stamps"
EMOJI_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
COCO_URLS = {"images": "http://images.cocodataset.org/zips/val2017.zip",
             "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"}
TRAIN_NAME, VAL_NAME = "production_annotations.json", "production_annotations_val.json"


class SourceError(RuntimeError):
    """A source could not be built; the message names the source and the fix."""


SOURCE_ERRORS = (SourceError, dl.DownloadError, dl.MissingPackageError, OSError, ValueError, KeyError)


@dataclass
class Item:
    """One image to produce: `produce()` -> (RGB image, notes) or raises im.BadImage."""

    source: str
    rel: str  # output path relative to --out
    caption: str
    produce: Callable[[], tuple]
    category: str | None = None
    qa: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def row(self, seed: int) -> dict:
        """The manifest row; question/answer is a seeded pick from qa."""
        row = {"image": self.rel, "caption": self.caption}
        if self.qa:
            row["question"], row["answer"] = random.Random(f"{seed}:{self.rel}").choice(self.qa)
        row.update(source=self.source, **({"category": self.category} if self.category else {}))
        return {**row, **({"qa": self.qa} if self.qa else {}), **self.extra}


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool; a non-zero exit is a SourceError carrying the command and its stderr."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SourceError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    return proc


def apt_download(package: str, dest_dir: Path) -> Path:
    """`apt-get download package` into dest_dir (reused when a .deb is already there)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(dest_dir.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise SourceError(f"apt-get not found: put {package}_*.deb into {dest_dir} by hand")
    proc = subprocess.run(["apt-get", "download", package], cwd=dest_dir, capture_output=True, text=True)
    if proc.returncode != 0:  # often stale or empty package lists: update once (as root), retry
        if os.geteuid() == 0:
            run(["apt-get", "update"])
        run(["apt-get", "download", package], cwd=dest_dir)
    return sorted(dest_dir.glob(f"{package}_*.deb"))[-1]


def dpkg_extract(deb: Path, dest: Path) -> Path:
    """`dpkg -x deb` into dest via a temporary sibling (an interrupted run leaves no half tree)."""
    if dest.is_dir():
        return dest
    if shutil.which("dpkg") is None:
        raise SourceError(f"dpkg not found: cannot unpack {deb}; run on Debian/Ubuntu")
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        run(["dpkg", "-x", str(deb), str(tmp)])
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def package_root(name: str, args: argparse.Namespace) -> Path:
    """The unpacked tree of a source's Debian package (downloaded and extracted once)."""
    deb = apt_download(DEBS[name], args.cache_dir / "debs")
    return dpkg_extract(deb, args.cache_dir / deb.stem)


def rasterise(svg: Path, png: Path) -> tuple:
    """SVG -> PNG at most 256 px (rsvg-convert, kept in the cache) -> normalised image."""
    if not png.exists():
        png.parent.mkdir(parents=True, exist_ok=True)
        tmp = png.with_name(f".{png.name}.tmp{os.getpid()}")
        cmd = ["rsvg-convert", "-w", str(MAX_SIDE), "-h", str(MAX_SIDE), "-a", str(svg)]
        proc = subprocess.run(cmd + ["-o", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise im.BadImage(svg, "svg_error", proc.stderr.strip()[-200:])
        os.replace(tmp, png)
    return im.load_image(png)


def tuxpaint_items(args: argparse.Namespace, stats: im.ImageStats) -> list[Item]:
    """Tux Paint stamps: caption = line 1 of NAME.txt, category = the top folder."""
    stamps = im.tuxpaint_stamps(package_root("tuxpaint", args) / STAMPS, stats)
    if not stamps:
        raise SourceError(f"no stamps under {args.cache_dir}; delete the extracted folder and rerun")
    if any(s["path"].suffix == ".svg" for s in stamps):
        dl.ensure_apt_packages(["librsvg2-bin"])
    items = []
    for s in stamps:
        if s["path"].suffix == ".svg":
            png = args.cache_dir / "svg_png" / (s["name"] + ".png")
            load = lambda p=s["path"], c=png: rasterise(p, c)  # noqa: E731
        else:
            load = lambda p=s["path"]: im.load_image(p)  # noqa: E731
        qa = [["What category is this?", s["category"]]]
        if s["caption"].startswith(("A ", "An ", "The ")):  # not for "Boom!!!" or jokes
            qa.insert(0, ["What is this?", im.object_name(s["caption"])])
        items.append(Item("tuxpaint", f"production/tuxpaint/{s['name']}.png", s["caption"], load,
                          s["category"], qa))
    return items


def emoji_items(args: argparse.Namespace, stats: im.ImageStats) -> list[Item]:
    """Noto Color Emoji, one single-code-point emoji per image, named by unicodedata.name."""
    font = im.emoji_font(package_root("emoji", args) / EMOJI_FONT)
    items = []
    for cp, name, block in im.emoji_code_points(font):
        what = name.lower()
        qa = [["What is this?", what], ["What category is this?", block]]
        items.append(Item("emoji", f"production/emoji/u{cp:05x}.png", what.capitalize() + ".",
                          lambda c=cp: (im.render_emoji(font, c), []), block, qa))
    return items


def scene_items(args: argparse.Namespace, stats: im.ImageStats) -> list[Item]:
    """Generated shape scenes with exact captions and VQA answers (distinct captions)."""
    items = []
    for i, (scene_seed, info) in enumerate(im.unique_scenes(args.scenes, args.seed)):
        make = lambda s=scene_seed: (im.make_scene(random.Random(s))[0], [])  # noqa: E731
        items.append(Item("scenes", f"production/scenes/scene_{args.seed}_{i:05d}.png",
                          info["caption"], make, "shapes", info["qa"]))
    return items


BUILDERS = {"tuxpaint": tuxpaint_items, "emoji": emoji_items, "scenes": scene_items}


def fetch(url: str, sha256: str | None, args: argparse.Namespace) -> Path:
    """Resumable, sha256-checked download into <cache>/coco/."""
    return dl.download(url, args.cache_dir / "coco" / Path(urllib.parse.urlparse(url).path).name, sha256)


def unpack(path: Path) -> Path:
    """A downloaded zip/tar -> its extracted folder; any other file is returned as is."""
    if path.suffix in (".zip", ".tgz", ".gz", ".tar"):
        return dl.extract_archive(path, path.with_name(path.name.split(".")[0]))
    return path


def coco_captions(ann: Path) -> dict[str, list[str]]:
    """file_name -> captions (ordered by annotation id) from every captions_*.json under ann."""
    files = [ann] if ann.is_file() else sorted(ann.rglob("captions_*.json"))
    if not files:
        raise SourceError(f"no captions_*.json under {ann}; check --annotations-url")
    out: dict[str, list[str]] = {}
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {img["id"]: img["file_name"] for img in data["images"]}
        for a in sorted(data["annotations"], key=lambda a: a["id"]):
            text = " ".join(a["caption"].split())
            if text:
                out.setdefault(names[a["image_id"]], []).append(text)
    return out


def coco_items(args: argparse.Namespace, stats: im.ImageStats) -> list[Item]:
    """COCO-style captions: one item per annotated image found in the images archive."""
    images = unpack(fetch(args.url or COCO_URLS["images"], args.sha256, args))
    ann_url = args.annotations_url or COCO_URLS["annotations"]
    captions = coco_captions(unpack(fetch(ann_url, args.annotations_sha256, args)))
    on_disk = {p.name: p for p in images.rglob("*") if p.is_file()}
    items = []
    for name in sorted(captions):
        if name not in on_disk:
            stats.skipped["coco", "missing"] += 1
            continue
        items.append(Item("coco", f"production/coco/{Path(name).stem}.png", captions[name][0],
                          lambda p=on_disk[name]: im.load_image(p),
                          extra={"captions": captions[name]}))
    return items


def collect(args: argparse.Namespace, stats: im.ImageStats) -> list[Item]:
    """Every selected source's items (cheap: nothing is decoded yet)."""
    names = ["coco"] if args.source == "coco" else [s for s in OFFLINE_SOURCES if s in args.sources]
    items: list[Item] = []
    for name in names:
        try:
            got = coco_items(args, stats) if name == "coco" else BUILDERS[name](args, stats)
        except SOURCE_ERRORS as e:
            others = ",".join(n for n in names if n != name)
            hint = f" (to build without it: --sources {others})" if others else ""
            raise SourceError(f"source {name!r} failed: {e}{hint}") from e
        logging.info("%s: %d candidate images", name, len(got))
        items += got
    if args.n is not None and len(items) > args.n:
        keep = sorted(random.Random(args.seed).sample(range(len(items)), args.n))
        items = [items[i] for i in keep]
    return items


def materialise(items: list[Item], args: argparse.Namespace, stats: im.ImageStats) -> list[dict]:
    """Write each image not yet on disk; bad inputs are counted and dropped, never fatal."""
    rows = []
    for item in tqdm(items, desc="images", unit=" img"):
        dest = args.out / item.rel
        if dest.exists():
            stats.converted[item.source, "reused"] += 1
        else:
            try:
                img, notes = item.produce()
            except im.BadImage as e:
                logging.warning("skipping %s", e)
                stats.skipped[item.source, e.reason] += 1
                continue
            stats.converted.update((item.source, note) for note in notes)
            im.save_png(img, dest)
        rows.append(item.row(args.seed))
    return rows


def split_and_write(rows: list[dict], args: argparse.Namespace) -> tuple[list, list]:
    """Held-out split by image, per source; both manifests replaced together at the end."""
    train, val = [], []
    for source in dict.fromkeys(r["source"] for r in rows):
        t, v = im.split_by_image([r for r in rows if r["source"] == source], args.val_fraction, args.seed)
        train, val = train + t, val + v
    pending = []
    for name, part in ((TRAIN_NAME, train), (VAL_NAME, val)):
        tmp = args.out / f"{name}.partial"
        im.write_manifest(tmp, part)
        pending.append((tmp, args.out / name))
    for tmp, final in pending:
        os.replace(tmp, final)
    return train, val


def print_summary(train: list, val: list, stats: im.ImageStats, args: argparse.Namespace,
                  seconds: float) -> None:
    """Images per source and category, bytes, conversions and skips by reason."""
    counts, sizes = Counter(), Counter()
    for split, rows in (("train", train), ("val", val)):
        for r in rows:
            counts[r["source"], r.get("category", "-"), split] += 1
            sizes[r["source"]] += (args.out / r["image"]).stat().st_size
    print(f"\n{'source':<10}{'category':<28}{'train':>7}{'val':>6}")
    for source, category in sorted(dict.fromkeys((s, c) for s, c, _ in counts)):
        print(f"{source:<10}{category:<28}{counts[source, category, 'train']:>7}"
              f"{counts[source, category, 'val']:>6}")
    for source in sorted(sizes):
        n = sum(v for (s, _, _), v in counts.items() if s == source)
        conv = ", ".join(f"{k}={v}" for (s, k), v in sorted(stats.converted.items()) if s == source)
        print(f"{source}: {n} images, {sizes[source] / 1e6:.1f} MB; {conv or 'no conversions'}")
    for (source, reason), n in sorted(stats.skipped.items()):
        print(f"skipped {source}/{reason}: {n}")
    print(f"total {len(train)} train + {len(val)} val images, {sum(sizes.values()) / 1e6:.1f} MB")
    for name in (TRAIN_NAME, VAL_NAME):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size:,} bytes)")
    print(f"done in {seconds:.1f} s")


def describe_plan(args: argparse.Namespace) -> None:
    """--dry-run: what would be fetched, installed and written; touches nothing."""
    print(f"dry run: nothing is downloaded, installed or written (cache {args.cache_dir})")
    if args.source == "coco":
        for url, sha in ((args.url or COCO_URLS["images"], args.sha256),
                         (args.annotations_url or COCO_URLS["annotations"], args.annotations_sha256)):
            print(f"  coco: download {url} sha256={sha or 'not checked'}")
    elif args.source == "synthetic":
        print(f"  synthetic: {args.scenes} scenes -> {args.out / 'annotations.json'} (+ _val)")
        return
    for name in args.sources if args.source == "offline" else []:
        if name in DEBS:
            cached = sorted((args.cache_dir / "debs").glob(f"{DEBS[name]}_*.deb"))
            print(f"  {name}: {'reuse ' + str(cached[-1]) if cached else 'apt-get download ' + DEBS[name]}")
        else:
            print(f"  scenes: generate {args.scenes} scenes (seed {args.seed})")
    for name in (TRAIN_NAME, VAL_NAME):
        path = args.out / name
        print(f"  would write {path}{' (replacing it)' if path.exists() else ''}")
    print(f"  n={args.n} val_fraction={args.val_fraction} seed={args.seed}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--source", choices=["offline", "coco", "synthetic"], default="offline",
                   help="where the images come from (see above)")
    p.add_argument("--sources", default=",".join(OFFLINE_SOURCES),
                   help=f"offline subset, comma-separated from {','.join(OFFLINE_SOURCES)}")
    p.add_argument("--out", type=Path, default=Path("data/images"), help="folder of the manifests and images")
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache/images"), help="downloads, kept for re-runs")
    p.add_argument("--n", type=int, default=None,
                   help="cap on images written (a seeded subset across all sources)")
    p.add_argument("--scenes", type=int, default=None,
                   help="generated scenes (default 20000 offline, 200 for --source synthetic)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the images held out, per source")
    p.add_argument("--seed", type=int, default=0, help="seeds the scenes, the subset and the held-out split")
    p.add_argument("--url", default=None, help="coco: images zip (default: COCO val2017)")
    p.add_argument("--sha256", default=None, help="coco: expected sha256 of --url")
    p.add_argument("--annotations-url", default=None, help="coco: captions zip or captions_*.json")
    p.add_argument("--annotations-sha256", default=None, help="coco: expected sha256 of --annotations-url")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded and written; touch nothing")
    args = p.parse_args(argv)
    args.sources = parse_sources(p, args.sources, OFFLINE_SOURCES)
    if args.source != "coco" and (args.url or args.sha256 or args.annotations_url):
        p.error("--url/--sha256/--annotations-url apply to --source coco only")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    if args.scenes is None:
        args.scenes = 200 if args.source == "synthetic" else 20000
    return args


def main(argv: list[str] | None = None) -> int:
    return data_script(argv, parse_args, describe_plan, build, (SourceError,))


def build(args: argparse.Namespace, start: float) -> int:
    if args.source == "synthetic":
        n = min(args.scenes, args.n or args.scenes)
        paths = im.make_synthetic_images(args.out, n, args.seed, args.val_fraction)
        print(f"wrote {paths[0]} and {paths[1]} ({n} scenes) in {time.perf_counter() - start:.1f} s")
        return 0
    stats = im.ImageStats()
    items = collect(args, stats)
    rows = materialise(items, args, stats)
    if not rows:
        print("error: no usable images; nothing written", file=sys.stderr)
        return 1
    train, val = split_and_write(rows, args)
    print_summary(train, val, stats, args, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
