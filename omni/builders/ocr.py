"""OCR data: render text lines to PNG in TrueType/OpenType fonts, pick usable fonts, cut text lines.

A line image is grayscale (mode "L"), `height` pixels tall and as wide as the text needs: the text
is drawn at a random font size, padded, rotated a few degrees, then scaled uniformly (never
stretched) to `height`, blurred and noised. The vertical extent comes from the font ("Hg" plus the
line's own ink), so one font gives the same text scale whatever letters a line holds.

Manifests are CSV files `image,text,font` with image paths relative to the CSV (docs/architecture.md).
Every sample is a pure function of (text, font, seed, index, height): re-runs skip images that
already exist, and a changed plan writes new file names instead of reusing stale images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from omni.files import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

ASCII = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII without space
FONT_DIRS = (Path("/usr/share/fonts"),)
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_SUFFIXES = (".ttf", ".otf")
RENDER_VERSION = "1"  # part of every image name: bump when rendering changes
TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                             "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " "})
MANIFEST_FIELDS = ("image", "text", "font")


class Font(NamedTuple):
    path: str
    family: str
    style: str


@dataclass(frozen=True)
class Augment:
    """One sample's rendering parameters. Sizes are font pixels before height normalisation."""

    size: int = 32
    angle: float = 0.0  # degrees, counter-clockwise
    blur: float = 0.0  # Gaussian radius in output pixels
    noise: float = 0.0  # std of additive Gaussian noise, 0..255 scale
    ink: int = 0
    paper: int = 255
    pad: tuple[int, int, int, int] = (4, 4, 4, 4)  # left, top, right, bottom


def sample_augment(rng: np.random.Generator) -> Augment:
    """Random size 20-48 px, rotation within +-2 degrees, mild blur/noise, varied contrast."""
    paper = int(rng.integers(170, 256))
    ink = int(rng.integers(0, max(1, paper - 110)))
    if rng.random() < 0.15:  # light text on a dark background
        ink, paper = 255 - ink, 255 - paper
    size = int(rng.integers(20, 49))
    pad = tuple(int(x) for x in rng.integers(1, max(2, size // 3), size=4))
    return Augment(
        size=size,
        angle=float(rng.uniform(-2.0, 2.0)) if rng.random() < 0.7 else 0.0,
        blur=float(rng.uniform(0.2, 0.9)) if rng.random() < 0.4 else 0.0,
        noise=float(rng.uniform(2.0, 12.0)) if rng.random() < 0.5 else 0.0,
        ink=ink, paper=paper, pad=pad,
    )


@lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font (basic layout: same result wherever Pillow runs)."""
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def text_box(font: ImageFont.FreeTypeFont, text: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) around the baseline: the line's ink, tops and bottoms widened to
    the font's "Hg" so every line in one font has the same vertical scale."""
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    _, ref_top, _, ref_bottom = font.getbbox("Hg", anchor="ls")
    return left, min(top, ref_top), max(right, left + 1), max(bottom, ref_bottom)


def render_line(text: str, font_path: str, aug: Augment, height: int = 32,
                rng: np.random.Generator | None = None) -> Image.Image:
    """Render one line -> grayscale image (height, W); W follows the text, aspect preserved."""
    if not text.strip():
        raise ValueError("render_line needs non-blank text")
    font = load_font(font_path, aug.size)
    left, top, right, bottom = text_box(font, text)
    pl, pt, pr, pb = aug.pad
    img = Image.new("L", (right - left + pl + pr, bottom - top + pt + pb), aug.paper)
    ImageDraw.Draw(img).text((pl - left, pt - top), text, font=font, fill=aug.ink, anchor="ls")
    if aug.angle:
        img = img.rotate(aug.angle, resample=Image.Resampling.BICUBIC, expand=True,
                         fillcolor=aug.paper)
    width = max(1, round(img.width * height / img.height))
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    if aug.blur:
        img = img.filter(ImageFilter.GaussianBlur(aug.blur))
    if aug.noise:
        if rng is None:
            raise ValueError("render_line with noise > 0 needs an rng")
        pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, aug.noise, (height, width))
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    return img


# ----------------------------------------------------------------------------- fonts


def discover_fonts(dirs: tuple[Path, ...] = FONT_DIRS) -> list[Path]:
    """Every .ttf/.otf file under dirs (recursively), symlinks resolved, sorted, no duplicates."""
    found = {p.resolve() for d in dirs if d.is_dir() for p in d.rglob("*")
             if p.suffix.lower() in FONT_SUFFIXES and p.is_file()}
    return sorted(found)


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    img = Image.new("L", (2 * font.size, 2 * font.size), 0)
    ImageDraw.Draw(img).text((font.size // 2, 3 * font.size // 2), char, font=font, fill=255,
                             anchor="ls")
    return np.asarray(img)


def missing_glyphs(font: ImageFont.FreeTypeFont, chars: str = ASCII) -> str:
    """The chars the font has no glyph for: drawn as nothing, or drawn as its .notdef box."""
    notdef = _glyph(font, "\U0010fffd")  # a private-use code point no text font maps
    missing = []
    for char in chars:
        pixels = _glyph(font, char)
        if not pixels.any() or np.array_equal(pixels, notdef):
            missing.append(char)
    return "".join(missing)


def non_latin_shapes(font: ImageFont.FreeTypeFont) -> str:
    """Lowercase letters that lack Latin proportions: ascenders (bdhkl) must rise above the
    x-height and descenders (gpqy) drop below the baseline. Catches fonts whose cmap maps ASCII
    to other shapes (Symbol: h -> eta, p -> pi; Dingbats) and caps-only faces."""
    x_height = float(np.median([-font.getbbox(c, anchor="ls")[1] for c in "acemnorsuvwxz"]))
    odd = [c for c in "bdhkl" if -font.getbbox(c, anchor="ls")[1] < 1.2 * x_height]
    odd += [c for c in "gpqy" if font.getbbox(c, anchor="ls")[3] < 0.15 * x_height]
    return "".join(odd)


def check_font(path: Path) -> tuple[Font | None, str]:
    """(Font, "") when the file renders all printable ASCII, else (None, why it was skipped)."""
    try:
        font = load_font(str(path), 24)
    except OSError as e:
        return None, f"unreadable ({e})"
    family, style = font.getname()
    missing = missing_glyphs(font, "Aa0") or missing_glyphs(font)  # cheap test first
    if missing:
        return None, f"no glyphs for {len(missing)} ASCII chars ({missing[:12]!r})"
    if len({_glyph(font, c).tobytes() for c in "AaBb01"}) < 6:
        return None, "ASCII chars all draw the same glyph"
    odd = non_latin_shapes(font)
    if odd:
        return None, f"not Latin letter shapes ({odd!r} lack ascenders/descenders)"
    return Font(str(path), family or path.stem, style or ""), ""


def usable_fonts(paths: list[Path]) -> tuple[list[Font], dict[str, str]]:
    """Split font files into usable Fonts and {path: reason} for the skipped ones."""
    fonts: list[Font] = []
    skipped: dict[str, str] = {}
    for path in tqdm(paths, desc="checking fonts", unit=" font", leave=False):
        font, reason = check_font(path)
        if font is None:
            skipped[str(path)] = reason
        else:
            fonts.append(font)
    return fonts, skipped


def split_fonts(fonts: list[Font], held_out: tuple[str, ...]) -> tuple[list[Font], list[Font]]:
    """(train, val): every face of a held-out family goes to val, so no val font is in train."""
    val = [f for f in fonts if f.family in held_out]
    return [f for f in fonts if f.family not in held_out], val


def pick_fonts(fonts: list[Font], n: int, rng: random.Random) -> list[Font]:
    """n fonts: a family uniformly, then one of its faces, so big families do not dominate."""
    by_family: dict[str, list[Font]] = {}
    for font in sorted(fonts):
        by_family.setdefault(font.family, []).append(font)
    families = sorted(by_family)
    return [rng.choice(by_family[rng.choice(families)]) for _ in range(n)]


# ----------------------------------------------------------------------------- text lines


def ascii_line(text: str) -> str | None:
    """Typographic quotes/dashes mapped to ASCII; None when other non-ASCII characters remain."""
    text = " ".join(text.translate(TYPOGRAPHIC).split())
    return text if text and all(" " <= c <= "~" for c in text) else None


def cut_lines(document: str, rng: random.Random, min_words: int = 2, max_words: int = 8,
              max_chars: int = 48) -> list[str]:
    """Cut a document into consecutive lines of min_words..max_words words and <= max_chars.

    A word longer than max_chars starts and ends its own chunk, which is then dropped.
    """
    words, lines, i = document.split(), [], 0
    while i < len(words):
        want, chunk = rng.randint(min_words, max_words), [words[i]]
        i += 1
        while i < len(words) and len(chunk) < want and len(" ".join(chunk + [words[i]])) <= max_chars:
            chunk.append(words[i])
            i += 1
        line = " ".join(chunk)
        if len(chunk) >= min_words and len(line) <= max_chars:
            lines.append(line)
    return lines


def text_lines(path: Path, n: int, seed: int, exclude: frozenset[str] = frozenset()
               ) -> tuple[list[str], Counter]:
    """Up to n distinct ASCII lines from a one-document-per-line file, spread over its documents.

    Documents are visited in a seeded order and give at most ~2n/len(documents) lines each.
    Returns (lines, drops by reason: non_ascii, duplicate, in_other_split).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build it with `python scripts/download_production_text.py`")
    docs = [d for d in path.read_text(encoding="utf-8").splitlines() if d.strip()]
    if not docs:
        raise ValueError(f"{path} holds no documents")
    rng = random.Random(seed)
    rng.shuffle(docs)
    per_doc = max(1, math.ceil(2 * n / len(docs)))
    lines, seen, drops = [], set(), Counter()
    for doc in docs:
        chunks = cut_lines(doc, rng)
        for raw in rng.sample(chunks, min(per_doc, len(chunks))):
            line = ascii_line(raw)
            reason = ("non_ascii" if line is None else "duplicate" if line in seen
                      else "in_other_split" if line in exclude else "")
            if reason:
                drops[reason] += 1
                continue
            seen.add(line)
            lines.append(line)
            if len(lines) == n:
                return lines, drops
    log.warning("%s gave only %d of the %d lines asked for", path, len(lines), n)
    return lines, drops


# ----------------------------------------------------------------------------- rendering jobs


class Job(NamedTuple):
    image: str  # path relative to the manifest
    text: str
    font: str
    seed: tuple[int, ...]  # np.random.default_rng seed for augmentation and noise
    height: int


def plan_jobs(lines: list[str], fonts: list[Font], split: str, seed: int, height: int,
              img_subdir: str) -> list[Job]:
    """One job per line, font and augmentation seeded by (seed, split, index)."""
    if not fonts:
        raise ValueError(f"no usable fonts for the {split} split")
    split_id = int(hashlib.sha1(split.encode()).hexdigest()[:8], 16)
    chosen = pick_fonts(fonts, len(lines), random.Random(f"{seed}/{split}"))
    jobs = []
    for i, (text, font) in enumerate(zip(lines, chosen)):
        key = f"{RENDER_VERSION}\0{text}\0{font.path}\0{seed}\0{split}\0{i}\0{height}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        jobs.append(Job(f"{img_subdir}/{split}/{i:06d}_{digest}.png", text, font.path,
                        (seed, split_id, i), height))
    return jobs


def render_job(job: Job, root: str) -> tuple[int, bool]:
    """Write job's PNG under root unless it exists (atomic); (file bytes, newly written)."""
    path = os.path.join(root, job.image)
    if os.path.exists(path):
        return os.path.getsize(path), False
    rng = np.random.default_rng(job.seed)
    img = render_line(job.text, job.font, sample_augment(rng), job.height, rng)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    write_bytes_atomic(path, buf.getvalue(), fsync=False)
    return len(buf.getvalue()), True


def _render_star(args: tuple[Job, str]) -> tuple[int, bool]:
    return render_job(*args)


def render_jobs(jobs: list[Job], root: Path, workers: int = 1, desc: str = "rendering"
                ) -> tuple[int, int]:
    """Render every job under root (workers processes); returns (total bytes, images written)."""
    total, written = 0, 0
    items = [(job, str(root)) for job in jobs]
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_render_star, items, chunksize=64) if pool else map(_render_star, items)
        for nbytes, new in tqdm(results, total=len(jobs), desc=desc, unit=" img", leave=False):
            total, written = total + nbytes, written + new
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return total, written


def job_rows(jobs: list[Job]) -> list[tuple[str, str, str]]:
    """Manifest rows (image, text, font file name) for rendered jobs."""
    return [(job.image, job.text, Path(job.font).name) for job in jobs]


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """CSV `image,text,font` (csv-module quoting), written to a temp file and renamed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The rows of an OCR CSV as dicts; a missing `image` or `text` column is a clear error."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"image", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: header {reader.fieldnames} lacks image,text")
        return list(reader)


def make_synthetic_ocr(out_dir: Path, n: int, seed: int,
                       train_text: Path = Path("data/text/production_corpus.txt"),
                       val_text: Path = Path("data/text/production_val.txt"),
                       height: int = 32) -> tuple[Path, Path]:
    """Small smoke-test set in DejaVu fonts: out_dir/ocr_train.csv (n lines from train_text) and
    ocr_val.csv (max(1, n // 10) lines from val_text), images under out_dir/synthetic/."""
    fonts, skipped = usable_fonts(discover_fonts((DEJAVU_DIR,)))
    if not fonts:
        raise FileNotFoundError(f"no usable DejaVu fonts in {DEJAVU_DIR} ({skipped}); "
                                "install them with: apt-get install fonts-dejavu-core")
    out_dir = Path(out_dir)
    val_lines, _ = text_lines(val_text, max(1, n // 10), seed)
    train_lines, _ = text_lines(train_text, n, seed, exclude=frozenset(val_lines))
    paths = []
    for split, lines in (("train", train_lines), ("val", val_lines)):
        jobs = plan_jobs(lines, fonts, split, seed, height, "synthetic")
        render_jobs(jobs, out_dir, desc=f"synthetic {split}")
        paths.append(out_dir / f"ocr_{split}.csv")
        write_manifest(paths[-1], job_rows(jobs))
    log.info("wrote %s and %s", *paths)
    return paths[0], paths[1]
