"""Image data: scene generator, normalisation of bad inputs, manifests, splits, the build script.

No apt tools and no network: COCO is served by http.server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import sys
import threading
import zipfile
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from omni import images
from omni.builders import image as im
from tests.conftest import ROOT

ASSETS = ROOT / "assets" / "images"


def blobs(mask: np.ndarray) -> list[tuple[float, float]]:
    """Centroids (x, y) of the 4-connected components of a boolean mask."""
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pts = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pts.append((x, y))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(tuple(np.mean(pts, axis=0)))
    return out


def colour_blobs(img: Image.Image, colour: str) -> list[tuple[float, float]]:
    return blobs(np.all(np.asarray(img) == im.COLOURS[colour], axis=-1))


def cell_of(x: float, y: float) -> str:
    return next(p for p, (ox, oy) in im.POSITIONS.items() if ox <= x < ox + im.CELL and oy <= y < oy + im.CELL)


# ----------------------------------------------------------------------------- scenes


def test_known_scene_caption_and_pixels_agree() -> None:
    groups = [im.Group("circle", "red", "left", 2), im.Group("square", "blue", "top", 1)]
    img = im.render_scene(groups, (255, 255, 255), random.Random(0))
    assert im.describe(groups) == "Two red circles on the left and a blue square at the top."
    assert img.size == (224, 224) and img.mode == "RGB"
    red, blue = colour_blobs(img, "red"), colour_blobs(img, "blue")
    assert len(red) == 2 and {cell_of(*c) for c in red} == {"left"}
    assert len(blue) == 1 and cell_of(*blue[0]) == "top"
    assert im.describe([im.Group("star", "orange", "centre", 1)]) == "An orange star in the centre."


@pytest.mark.parametrize("seed", range(12))
def test_random_scene_matches_its_groups(seed: int) -> None:
    img, info = im.make_scene(random.Random(seed))
    groups = [im.Group(**g) for g in info["groups"]]
    assert info["caption"] == im.describe(groups)
    pixels = np.asarray(img)
    ink = np.any(pixels != pixels[0, 0], axis=-1)  # the corner is always background
    assert len(blobs(ink)) == sum(g.count for g in groups)
    for g in groups:
        in_cell = [c for c in colour_blobs(img, g.colour) if cell_of(*c) == g.position]
        assert len(in_cell) == g.count, (info["caption"], g)


def test_vqa_answers_follow_from_the_caption() -> None:
    rng = random.Random(7)
    for _ in range(50):
        _, info = im.make_scene(rng)
        qa, caption = dict(map(tuple, info["qa"])), info["caption"].lower()
        total = sum(g["count"] for g in info["groups"])
        assert qa["How many shapes are there?"] == im.NUMBERS[total]
        assert [info["question"], info["answer"]] in info["qa"]
        for g in info["groups"]:
            many = g["count"] > 1
            noun = g["shape"] + ("s" if many else "")
            colour = qa[f"What colour {'are' if many else 'is'} the {noun}?"]
            where = qa[f"Where {'are' if many else 'is'} the {colour} {noun}?"]
            assert f"{colour} {noun} {where}" in caption
            count = qa[f"How many {g['shape']}s are there?"]
            assert count == im.NUMBERS[g["count"]]
            assert qa[f"What shape is {where}?"] == g["shape"]
        zero = [q for q, a in info["qa"] if a == "zero"]
        assert len(zero) == 1 and zero[0].split()[2][:-1] not in caption


def test_scenes_are_deterministic_and_distinct() -> None:
    a_img, a = im.make_scene(random.Random(3))
    b_img, b = im.make_scene(random.Random(3))
    assert a == b and a_img.tobytes() == b_img.tobytes()
    scenes = im.unique_scenes(200, seed=0)
    assert len({info["caption"] for _, info in scenes}) == 200
    assert scenes == im.unique_scenes(200, seed=0)
    assert [s for s, _ in scenes] != [s for s, _ in im.unique_scenes(200, seed=1)]
    counts = {sum(g["count"] for g in info["groups"]) for _, info in scenes}
    shapes = {g["shape"] for _, info in scenes for g in info["groups"]}
    assert counts == {1, 2, 3, 4} and shapes == set(im.SHAPES)


# ----------------------------------------------------------------------------- manifests


def check_manifest(path: Path, max_side: int) -> list[dict]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and rows
    for r in rows:
        assert r["caption"].strip() and not Path(r["image"]).is_absolute()
        with Image.open(path.parent / r["image"]) as img:
            assert img.mode == "RGB" and max(img.size) <= max_side
        if "question" in r:
            assert r["answer"] and [r["question"], r["answer"]] in r["qa"]
    return rows


def test_synthetic_set_and_disjoint_split(tmp_path: Path) -> None:
    train_path, val_path = im.make_synthetic_images(tmp_path, 30, seed=0, val_fraction=0.2)
    train, val = check_manifest(train_path, 224), check_manifest(val_path, 224)
    assert len(train) == 24 and len(val) == 6
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    before = train_path.read_bytes()
    im.make_synthetic_images(tmp_path, 30, seed=0, val_fraction=0.2)  # reuses the images
    assert train_path.read_bytes() == before


def test_split_by_image_keeps_rows_of_one_image_together() -> None:
    rows = [{"image": f"i{i % 10}.png", "caption": str(i)} for i in range(40)]
    train, val = im.split_by_image(rows, 0.3, seed=1)
    assert len(train) + len(val) == 40 and len({r["image"] for r in val}) == 3
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    assert (train, val) == im.split_by_image(rows, 0.3, seed=1)
    with pytest.raises(ValueError, match="val_fraction"):
        im.split_by_image(rows, 1.0, seed=0)


def test_committed_fixtures() -> None:
    rows = check_manifest(ASSETS / "annotations.json", 128)
    assert len(rows) >= 24 and len({r["category"] for r in rows}) >= 5
    assert sum((ASSETS / r["image"]).stat().st_size for r in rows) < 1_000_000
    assert (ASSETS / "LICENSE.md").is_file()
    examples = sorted((ROOT / "examples" / "images").glob("*.png"))
    assert examples and Image.open(examples[0]).mode == "RGB"


# ----------------------------------------------------------------------------- bad inputs


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_bad_and_odd_images_are_converted_or_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 2_000_000)
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 20, 30))
    pal.info["transparency"] = 0  # the right half (index 0) is transparent
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))
    files = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10,
        "text.jpg": b"hello",
        "truncated.png": png_bytes(noisy)[:5000],
        "palette.png": png_bytes(pal),
        "grey.png": png_bytes(Image.new("L", (50, 50), 100)),
        "grey16.png": png_bytes(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))),
        "rgba.png": png_bytes(Image.new("RGBA", (20, 20), (0, 0, 0, 0))),
        "big.png": png_bytes(Image.new("RGB", (1600, 1000), (0, 200, 0))),
        "huge.png": png_bytes(Image.new("L", (2000, 1500), 0)),
        "tiny.png": png_bytes(Image.new("RGB", (4, 4))),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    stats = im.ImageStats()
    ok = {n: im.convert_file(tmp_path / n, tmp_path / "out" / n, "t", stats) for n in [*files, "gone.png"]}
    assert stats.skipped == {("t", "corrupt"): 1, ("t", "not_an_image"): 1, ("t", "truncated"): 1,
                             ("t", "too_large"): 1, ("t", "too_small"): 1, ("t", "missing"): 1}
    assert stats.converted == {("t", "palette"): 1, ("t", "alpha"): 2, ("t", "greyscale"): 2,
                               ("t", "resized"): 1}
    assert sorted(n for n, good in ok.items() if good) == sorted(
        ["palette.png", "grey.png", "grey16.png", "rgba.png", "big.png"])
    out = {n: Image.open(tmp_path / "out" / n) for n, good in ok.items() if good}
    assert all(img.mode == "RGB" for img in out.values())
    assert out["palette.png"].getpixel((5, 5)) == (0, 0, 255)
    assert out["palette.png"].getpixel((35, 5)) == (255, 255, 255)  # transparent -> white
    assert out["rgba.png"].getpixel((0, 0)) == (255, 255, 255)
    assert out["big.png"].size == (256, 160)
    assert out["grey16.png"].getpixel((63, 63)) == (255, 255, 255)


# ----------------------------------------------------------------------------- Tux Paint, emoji


def test_tuxpaint_stamps_captions_categories_and_skips(tmp_path: Path) -> None:
    birds = tmp_path / "stamps" / "animals" / "birds"
    birds.mkdir(parents=True)
    (tmp_path / "stamps" / "food").mkdir()
    for name in ("blackbird.png", "blackbird_mirror.png", "owl.svg", "owl.png", "nameless.png"):
        (birds / name).write_bytes(b"x")
    (birds / "blackbird.txt").write_text("A blackbird.\nfr.utf8=Un merle.\n", encoding="utf-8")
    (birds / "owl.txt").write_text("An owl.\n", encoding="utf-8")
    (tmp_path / "stamps" / "food" / "kettle.svg").write_bytes(b"<svg/>")
    (tmp_path / "stamps" / "food" / "kettle.txt").write_text("An electric kettle.\n")
    stats = im.ImageStats()
    stamps = im.tuxpaint_stamps(tmp_path / "stamps", stats)
    assert [(s["caption"], s["category"], s["name"]) for s in stamps] == [
        ("A blackbird.", "animals", "animals_birds_blackbird_png"),
        ("An owl.", "animals", "animals_birds_owl_png"),
        ("An electric kettle.", "food", "food_kettle_svg"),
    ]
    assert stats.skipped == {("tuxpaint", "mirror_variant"): 1, ("tuxpaint", "svg_with_png_twin"): 1,
                             ("tuxpaint", "no_caption"): 1}
    assert im.object_name("A blackbird.") == "a blackbird"
    assert im.object_name("The Earth. Our planet!") == "the Earth"
    assert im.object_name("USA flag.") == "USA flag"


def test_render_emoji_crops_to_ink_on_white() -> None:
    font = ImageFont.load_default(size=60)
    img = im.render_emoji(font, ord("W"))
    a = np.asarray(img)
    assert img.mode == "RGB" and max(img.size) <= 256
    assert a.min() < 50 and a[0, 0].tolist() != [0, 0, 0]  # dark ink, white (not black) paper
    edges = (a[0], a[-1], a[:, 0], a[:, -1])
    assert all((edge < 255).any() for edge in edges)  # cropped to the ink


# ----------------------------------------------------------------------------- the script


def _script():
    spec = importlib.util.spec_from_file_location(
        "download_production_image", ROOT / "scripts" / "download_production_image.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    handler = type("Handler", (_Handler,), {"files": {}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def coco_archives() -> tuple[bytes, bytes]:
    """val2017.zip with 4 JPEGs (one truncated) and annotations.zip with captions_val2017.json."""
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as zf:
        for i, colour in enumerate(["red", "green", "blue"], start=1):
            buf = io.BytesIO()
            Image.new("RGB", (640, 480), colour).save(buf, format="JPEG")
            zf.writestr(f"val2017/{i:012d}.jpg", buf.getvalue())
            last = buf.getvalue()
        zf.writestr("val2017/000000000004.jpg", last[: len(last) // 2])  # a cut-off download
    captions = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(1, 6)],
        "annotations": [{"id": 10 + i, "image_id": i, "caption": f"  A plain picture {i}. "}
                        for i in range(1, 6)] + [{"id": 1, "image_id": 1, "caption": "First one."}],
    }
    ann = io.BytesIO()
    with zipfile.ZipFile(ann, "w") as zf:
        zf.writestr("annotations/captions_val2017.json", json.dumps(captions))
        zf.writestr("annotations/instances_val2017.json", "{}")
    return images.getvalue(), ann.getvalue()


def test_script_coco_over_loopback(server, tmp_path: Path, capsys) -> None:
    images, ann = coco_archives()
    server.files = {"/zips/val2017.zip": images, "/annotations/ann.zip": ann}
    out, cache = tmp_path / "images", tmp_path / "cache"
    argv = ["--source", "coco", "--url", f"{server.base}/zips/val2017.zip",
            "--sha256", hashlib.sha256(images).hexdigest(),
            "--annotations-url", f"{server.base}/annotations/ann.zip",
            "--out", str(out), "--cache-dir", str(cache), "--val-fraction", "0.3"]
    script = _script()
    assert script.main(argv + ["--dry-run"]) == 0
    assert not out.exists() and not cache.exists()
    assert script.main(argv) == 0
    train = check_manifest(out / "production_annotations.json", 256)
    val = check_manifest(out / "production_annotations_val.json", 256)
    rows = sorted(train + val, key=lambda r: r["image"])
    assert [r["image"] for r in rows] == [f"production/coco/{i:012d}.png" for i in (1, 2, 3)]
    assert rows[0]["caption"] == "First one." and rows[0]["captions"][1] == "A plain picture 1."
    assert len(val) == 1 and all(r["source"] == "coco" for r in rows)
    summary = capsys.readouterr().out
    assert "skipped coco/truncated: 1" in summary and "skipped coco/missing: 1" in summary
    first = (out / "production_annotations.json").read_bytes()
    assert script.main(argv) == 0  # resumable: everything reused, same rows, no duplicates
    assert (out / "production_annotations.json").read_bytes() == first
    assert "coco: 3 images" in capsys.readouterr().out


def test_script_offline_scenes_only(tmp_path: Path, capsys) -> None:
    out = tmp_path / "images"
    argv = ["--sources", "scenes", "--scenes", "40", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--n", "30"]
    assert _script().main(argv) == 0
    train = check_manifest(out / "production_annotations.json", 224)
    val = check_manifest(out / "production_annotations_val.json", 224)
    assert len(train) + len(val) == 30 and len(val) == 3
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    assert {r["source"] for r in train} == {"scenes"}
    assert "scenes" in capsys.readouterr().out


def test_script_rasterises_svg_stamps(tmp_path: Path) -> None:
    """Tux Paint's SVG stamps go through rsvg-convert (librsvg2-bin, installed by scripts/setup.sh) to
    at most the stored long side, in their own colours; a broken SVG is a BadImage naming it."""
    svg = tmp_path / "stamp.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                   '<rect width="40" height="20" fill="#ff0000"/></svg>')
    img, _ = _script().rasterise(svg, tmp_path / "cache" / "stamp.png")
    assert max(img.size) == images.MAX_SIDE and img.size[0] == 2 * img.size[1]
    assert img.convert("RGB").getpixel((img.size[0] // 2, img.size[1] // 2)) == (255, 0, 0)
    bad = tmp_path / "bad.svg"
    bad.write_text("<svg not closed")
    with pytest.raises(im.BadImage, match="bad.svg"):
        _script().rasterise(bad, tmp_path / "cache" / "bad.png")
