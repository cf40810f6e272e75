"""Image data for Stages C and E: generated scenes, robust image normalisation, manifests.

Manifest (docs/architecture.md): a JSON array, one object per image: `image` (path relative to the
manifest), `caption`, one `question`/`answer` pair, plus `source`, `category` and `qa` (every
question/answer pair known for the image, as [question, answer] lists). One row per image keeps
a contrastive batch free of duplicate images; Stage E can expand `qa` into one turn per pair.
Images are RGB PNGs, at most 256 px on the long side, alpha composited on white.
"""

from __future__ import annotations

import json
import logging
import math
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omni.files import atomic_write, write_text_atomic
from omni.images import SCENE_SIZE, BadImage, load_image, to_rgb

log = logging.getLogger(__name__)

COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 200, 20),
    "orange": (245, 130, 20), "purple": (140, 50, 180), "black": (20, 20, 20),
}
BACKGROUNDS = ((255, 255, 255), (232, 232, 232), (250, 244, 228))  # white, light grey, cream
SHAPES = ("circle", "square", "triangle", "star", "diamond")
CELL = 74  # the 224 px canvas is a 3x3 grid of 74 px cells with 1 px gaps; 5 cells are used
POSITIONS = {"left": (0, 75), "right": (150, 75), "top": (75, 0), "bottom": (75, 150),
             "centre": (75, 75)}
PLACE = {"left": "on the left", "right": "on the right", "top": "at the top",
         "bottom": "at the bottom", "centre": "in the centre"}
NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass
class ImageStats:
    """Skip reasons and conversions, counted per source."""

    skipped: Counter = field(default_factory=Counter)  # (source, reason) -> n
    converted: Counter = field(default_factory=Counter)  # (source, note) -> n


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Group:
    """`count` shapes of one kind and colour in one cell of the canvas."""

    shape: str
    colour: str
    position: str
    count: int


def _a(word: str) -> str:  # "a red", "an orange"
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(g: Group) -> str:
    head = _a(g.colour)[:-len(g.colour) - 1] if g.count == 1 else NUMBERS[g.count]
    return f"{head} {g.colour} {g.shape}{'s' if g.count > 1 else ''} {PLACE[g.position]}"


def describe(groups: list[Group]) -> str:
    """'Two red circles on the left and a blue square at the top.'"""
    parts = [_phrase(g) for g in groups]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def scene_qa(groups: list[Group], rng: random.Random) -> list[list[str]]:
    """Question/answer pairs whose answers follow exactly from the groups."""
    total = sum(g.count for g in groups)
    qa = [["How many shapes are there?", NUMBERS[total]]]
    for g in groups:
        many = g.count > 1
        noun = g.shape + ("s" if many else "")
        qa += [[f"How many {g.shape}s are there?", NUMBERS[g.count]],
               [f"What colour {'are' if many else 'is'} the {noun}?", g.colour],
               [f"Where {'are' if many else 'is'} the {g.colour} {noun}?", PLACE[g.position]],
               [f"What shape is {PLACE[g.position]}?", g.shape],
               [f"Is there {_a(g.colour)} {g.shape}?", "yes"]]
    absent = [s for s in SHAPES if s not in {g.shape for g in groups}]
    qa.append([f"How many {rng.choice(absent)}s are there?", "zero"])
    present = {(g.colour, g.shape) for g in groups}
    colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
    qa.append([f"Is there {_a(colour)} {shape}?", "no"])
    return qa


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, size: int, rgb: tuple):
    """One filled shape (no anti-aliasing) in the box (x, y, x + size - 1, y + size - 1)."""
    x1, y1, cx, cy = x + size - 1, y + size - 1, x + size / 2, y + size / 2
    if shape == "circle":
        draw.ellipse((x, y, x1, y1), fill=rgb)
    elif shape == "square":
        draw.rectangle((x, y, x1, y1), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y), (x1, y1), (x, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=rgb)
    elif shape == "star":
        r = [size / 2 if i % 2 == 0 else size / 5 for i in range(10)]
        pts = [(cx + r[i] * math.sin(i * math.pi / 5), cy - r[i] * math.cos(i * math.pi / 5))
               for i in range(10)]
        draw.polygon(pts, fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _slots(count: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """(dx, dy, size) boxes inside a cell; at least 3 px of background between two shapes."""
    if count == 1:
        size = rng.randint(40, 60)
        return [(rng.randint(4, CELL - size - 4), rng.randint(4, CELL - size - 4), size)]
    half = CELL // 2  # 37 px sub-slots in a 2x2 grid
    cells = [(0, 0), (half, 0), (0, half), (half, half)]
    pairs = [cells[:2], cells[2:], cells[::3]]  # side by side, or on a diagonal
    chosen = rng.sample(cells, count) if count > 2 else rng.choice(pairs)
    sizes = [rng.randint(24, 31) for _ in chosen]
    return [(sx + rng.randint(2, half - n - 1), sy + rng.randint(2, half - n - 1), n)
            for (sx, sy), n in zip(chosen, sizes)]


def render_scene(groups: list[Group], background: tuple, rng: random.Random) -> Image.Image:
    """Draw the groups on a plain background -> RGB (224, 224)."""
    img = Image.new("RGB", (SCENE_SIZE, SCENE_SIZE), background)
    draw = ImageDraw.Draw(img)
    for g in groups:
        ox, oy = POSITIONS[g.position]
        for dx, dy, size in _slots(g.count, rng):
            _draw_shape(draw, g.shape, ox + dx, oy + dy, size, COLOURS[g.colour])
    return img


def random_groups(rng: random.Random) -> list[Group]:
    """1-4 shapes in 1-3 groups; shapes and positions differ between groups."""
    total = rng.randint(1, 4)
    n_groups = rng.randint(1, min(total, 3))
    cuts = sorted(rng.sample(range(1, total), n_groups - 1))
    counts = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    shapes, places = rng.sample(SHAPES, n_groups), rng.sample(list(POSITIONS), n_groups)
    return [Group(s, rng.choice(list(COLOURS)), p, c) for s, p, c in zip(shapes, places, counts)]


def make_scene(rng: random.Random) -> tuple[Image.Image, dict]:
    """A random scene -> (RGB 224x224 image, {caption, qa, question, answer, groups})."""
    groups = random_groups(rng)
    img = render_scene(groups, rng.choice(BACKGROUNDS), rng)
    qa = scene_qa(groups, rng)
    question, answer = rng.choice(qa)
    info = {"caption": describe(groups), "question": question, "answer": answer, "qa": qa,
            "groups": [vars(g) for g in groups]}
    return img, info


def unique_scenes(n: int, seed: int) -> list[tuple[int, dict]]:
    """n (scene_seed, info) pairs with distinct captions; make_scene(Random(scene_seed)) redraws."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(n * 20):
        if len(out) == n:
            break
        scene_seed = rng.getrandbits(63)
        info = make_scene(random.Random(scene_seed))[1]
        if info["caption"] not in seen:
            seen.add(info["caption"])
            out.append((scene_seed, info))
    if len(out) < n:
        raise ValueError(f"could not generate {n} scenes with distinct captions; ask for fewer")
    return out


# ----------------------------------------------------------------------------- normalisation


def save_png(img: Image.Image, dest: Path) -> int:
    """Write img as PNG atomically; returns the file size in bytes."""
    atomic_write(dest, lambda p: img.save(p, format="PNG", optimize=False), fsync=False)
    return dest.stat().st_size


def convert_file(src: Path, dest: Path, source: str, stats: ImageStats) -> bool:
    """load_image + save_png; a bad input is logged, counted under its reason, and skipped."""
    try:
        img, notes = load_image(src)
    except BadImage as e:
        log.warning("skipping %s", e)
        stats.skipped[source, e.reason] += 1
        return False
    for note in notes:
        stats.converted[source, note] += 1
    save_png(img, dest)
    return True


# ----------------------------------------------------------------------------- manifests


def write_manifest(path: Path, rows: list[dict]) -> None:
    """A JSON array, one row per line, written to a temp file and renamed."""
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    write_text_atomic(path, "[\n" + body + "\n]\n" if rows else "[]\n")


def split_by_image(rows: list[dict], val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded held-out split where every row of one image lands on the same side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    images = sorted({r["image"] for r in rows})
    random.Random(seed).shuffle(images)
    n_val = max(1, round(len(images) * val_fraction)) if val_fraction > 0 and len(images) > 1 else 0
    val_images = set(images[:n_val])
    return ([r for r in rows if r["image"] not in val_images],
            [r for r in rows if r["image"] in val_images])


def scene_row(image: str, info: dict) -> dict:
    """Manifest row for a generated scene."""
    return {"image": image, "caption": info["caption"], "question": info["question"],
            "answer": info["answer"], "source": "scenes", "category": "shapes", "qa": info["qa"]}


def make_synthetic_images(out_dir: Path, n: int, seed: int, val_fraction: float = 0.1):
    """n scenes -> out_dir/synthetic/*.png, annotations.json + annotations_val.json (by image).

    One row per image (caption + one question/answer + all pairs in `qa`). Existing images are
    reused (the file name carries the seed); manifests are rewritten atomically, never appended.
    """
    out_dir, rows = Path(out_dir), []
    for i, (scene_seed, info) in enumerate(unique_scenes(n, seed)):
        rel = f"synthetic/scene_{seed}_{i:05d}.png"
        if not (out_dir / rel).exists():
            save_png(make_scene(random.Random(scene_seed))[0], out_dir / rel)
        rows.append(scene_row(rel, info))
    train, val = split_by_image(rows, val_fraction, seed)
    paths = out_dir / "annotations.json", out_dir / "annotations_val.json"
    write_manifest(paths[0], train)
    write_manifest(paths[1], val)
    log.info("wrote %d + %d synthetic scenes to %s", len(train), len(val), out_dir)
    return paths


# ----------------------------------------------------------------------------- Tux Paint, emoji


def object_name(caption: str) -> str:
    """'A blackbird.' -> 'a blackbird'; 'The Earth. Our planet!' -> 'the Earth' (first sentence)."""
    first = caption.strip().split(". ")[0].rstrip(".!? ")
    if len(first) > 1 and (first[1] == " " or first[1].islower()):
        first = first[0].lower() + first[1:]
    return first


def tuxpaint_stamps(stamps_dir: Path, stats: ImageStats) -> list[dict]:
    """Stamps under .../tuxpaint/stamps -> [{path, caption, category, name}], one per stamp.

    Caption: line 1 of NAME.txt (English). Category: the top folder (animals, food, ...).
    `_mirror` variants and the PNG twin of an SVG stamp are skipped (same picture) and counted.
    """
    stamps_dir, out = Path(stamps_dir), []
    files = sorted(p for p in stamps_dir.rglob("*") if p.suffix in (".png", ".svg"))
    stems = {p.with_suffix("") for p in files if p.suffix == ".png"}
    for p in files:
        if p.stem.endswith("_mirror"):
            stats.skipped["tuxpaint", "mirror_variant"] += 1
            continue
        if p.suffix == ".svg" and p.with_suffix("") in stems:
            stats.skipped["tuxpaint", "svg_with_png_twin"] += 1
            continue
        txt = p.with_suffix(".txt")
        lines = txt.read_text("utf-8", errors="replace").splitlines() if txt.is_file() else []
        if not lines or not lines[0].strip():
            stats.skipped["tuxpaint", "no_caption"] += 1
            continue
        rel = p.relative_to(stamps_dir)
        out.append({"path": p, "caption": " ".join(lines[0].split()), "category": rel.parts[0],
                    "name": "_".join(rel.with_suffix("").parts) + p.suffix.replace(".", "_")})
    return out


EMOJI_BLOCKS = (  # (first, last, Unicode block) for the ranges Noto Color Emoji covers
    (0x00A0, 0x00FF, "latin-1 symbols"), (0x2000, 0x206F, "punctuation"),
    (0x2100, 0x214F, "letterlike symbols"), (0x2190, 0x21FF, "arrows"),
    (0x2300, 0x23FF, "technical symbols"), (0x2460, 0x24FF, "enclosed alphanumerics"),
    (0x25A0, 0x25FF, "geometric shapes"), (0x2600, 0x26FF, "miscellaneous symbols"),
    (0x2700, 0x27BF, "dingbats"), (0x2900, 0x2BFF, "arrows"), (0x3000, 0x32FF, "cjk symbols"),
    (0x1F000, 0x1F0FF, "game symbols"), (0x1F100, 0x1F2FF, "enclosed alphanumerics"),
    (0x1F300, 0x1F5FF, "symbols and pictographs"), (0x1F600, 0x1F64F, "emoticons"),
    (0x1F680, 0x1F6FF, "transport and map symbols"), (0x1F780, 0x1F7FF, "geometric shapes"),
    (0x1F900, 0x1F9FF, "symbols and pictographs"), (0x1FA70, 0x1FAFF, "symbols and pictographs"),
)
EMOJI_EXCLUDE = ("REGIONAL INDICATOR", "EMOJI MODIFIER", "VARIATION SELECTOR", "ZERO", "COMBINING")


def emoji_font(path: Path) -> ImageFont.FreeTypeFont:
    """Noto Color Emoji is a bitmap font with one size, 109; BASIC layout (raqm fails on some)."""
    return ImageFont.truetype(str(path), 109, layout_engine=ImageFont.Layout.BASIC)


def emoji_code_points(font: ImageFont.FreeTypeFont) -> list[tuple[int, str, str]]:
    """(code point, name, block) for every single code point the font draws (U+00A0 and up)."""
    out = []
    for first, last, block in EMOJI_BLOCKS:
        for cp in range(first, last + 1):
            name = unicodedata.name(chr(cp), "")
            if not name or name.startswith(EMOJI_EXCLUDE):
                continue
            box = font.getbbox(chr(cp))
            if box[3] > box[1]:
                out.append((cp, name, block))
    return out


def render_emoji(font: ImageFont.FreeTypeFont, cp: int) -> Image.Image:
    """One emoji in colour, cropped to its ink, on white -> RGB (about 136 x 128)."""
    box = font.getbbox(chr(cp))
    canvas = Image.new("RGBA", (box[2] + 8, box[3] + 8), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((4, 4), chr(cp), font=font, fill="black", embedded_color=True)
    ink = canvas.getbbox()
    if ink is not None:
        canvas = canvas.crop(ink)
    return to_rgb(canvas)[0]
