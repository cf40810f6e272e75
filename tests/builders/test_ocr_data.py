"""OCR data: line rendering, font checks, text lines, manifests, the build script (offline on the
DejaVu fonts of the base image, and mjsynth from a tiny archive on a loopback HTTP server)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import random
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni.builders import ocr
from tests.conftest import ROOT

SONNETS = ROOT / "assets" / "text" / "sonnets.txt"
DEJAVU = ocr.DEJAVU_DIR / "DejaVuSans.ttf"
PLAIN = ocr.Augment(size=32, pad=(4, 4, 4, 4))


@pytest.fixture
def texts(tmp_path: Path) -> tuple[Path, Path]:
    """(train, val) one-document-per-line files: sonnets 1-140 and 141-154."""
    sonnets = SONNETS.read_text(encoding="utf-8").splitlines()
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("\n".join(sonnets[:140]) + "\n", encoding="utf-8")
    val.write_text("\n".join(sonnets[140:]) + "\n", encoding="utf-8")
    return train, val


def ink_box(img: Image.Image) -> tuple[int, int, int, int]:
    return Image.fromarray((np.asarray(img) < 128).astype(np.uint8) * 255).getbbox()


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("height", [32, 48])
def test_render_height_and_aspect_preserved(height: int) -> None:
    text = "Shall I compare thee, 1609?"
    img = ocr.render_line(text, str(DEJAVU), PLAIN, height)
    assert img.mode == "L" and img.height == height
    left, top, right, bottom = ocr.text_box(ocr.load_font(str(DEJAVU), 32), text)
    canvas_w, canvas_h = right - left + 8, bottom - top + 8
    assert abs(img.width - canvas_w * height / canvas_h) <= 1  # one scale for both axes
    font_ink = ocr.load_font(str(DEJAVU), 32).getbbox(text)
    x0, y0, x1, y1 = ink_box(img)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(
        (font_ink[2] - font_ink[0]) / (font_ink[3] - font_ink[1]), rel=0.08)


def test_render_width_follows_text_and_scale_is_per_font() -> None:
    short = ocr.render_line("ace", str(DEJAVU), PLAIN, 32)
    tall = ocr.render_line("Apply, jig", str(DEJAVU), PLAIN, 32)
    long = ocr.render_line("ace " * 10, str(DEJAVU), PLAIN, 32)
    assert short.width < tall.width < long.width
    # "ace" has no ascenders: its x-height matches the x-height of the same font elsewhere
    assert ink_box(short)[3] - ink_box(short)[1] < 0.6 * (ink_box(tall)[3] - ink_box(tall)[1])


def test_render_is_deterministic_by_seed() -> None:
    def render(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        aug = ocr.sample_augment(rng)
        return ocr.render_line("to be or not to be", str(DEJAVU), aug, 32, rng).tobytes()

    assert render(3) == render(3)
    assert render(3) != render(4)


def test_augmentations_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    augs = [ocr.sample_augment(rng) for _ in range(300)]
    assert all(20 <= a.size <= 48 and abs(a.angle) <= 2 and a.blur < 1 for a in augs)
    assert all(abs(a.paper - a.ink) >= 100 for a in augs)  # always legible contrast
    assert any(a.angle for a in augs) and any(a.noise for a in augs) and any(a.blur for a in augs)
    with pytest.raises(ValueError, match="non-blank"):
        ocr.render_line("  ", str(DEJAVU), PLAIN)


# ----------------------------------------------------------------------------- fonts


def test_dejavu_fonts_are_usable() -> None:
    fonts, skipped = ocr.usable_fonts(ocr.discover_fonts((ocr.DEJAVU_DIR,)))
    assert any(f.path == str(DEJAVU.resolve()) and f.family == "DejaVu Sans" for f in fonts)
    assert all(Path(f.path).suffix in (".ttf", ".otf") for f in fonts) and not skipped


def test_missing_glyphs_finds_uncovered_characters() -> None:
    font = ocr.load_font(str(DEJAVU), 24)
    assert ocr.missing_glyphs(font) == ""
    # DejaVu Sans has no glyphs for CJK ideographs or this Linear B syllable
    assert ocr.missing_glyphs(font, "A\u4e2d\U00010000b") == "\u4e2d\U00010000"


def test_latin_shape_check() -> None:
    assert ocr.non_latin_shapes(ocr.load_font(str(DEJAVU), 24)) == ""
    symbol = Path("/usr/share/fonts/opentype/urw-base35/StandardSymbolsPS.otf")
    if symbol.exists():  # fonts-urw-base35: maps ASCII letters to Greek (h -> eta, p -> pi)
        font, reason = ocr.check_font(symbol)
        assert font is None and "not Latin letter shapes" in reason


def test_font_without_ascii_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "Broken.ttf"
    bad.write_bytes(b"not a font at all")
    font, reason = ocr.check_font(bad)
    assert font is None and reason.startswith("unreadable")
    fonts, skipped = ocr.usable_fonts([DEJAVU, bad])
    assert [Path(f.path).name for f in fonts] == ["DejaVuSans.ttf"] and list(skipped) == [str(bad)]


def test_split_and_pick_fonts_keep_families_apart() -> None:
    fonts, _ = ocr.usable_fonts(ocr.discover_fonts((ocr.DEJAVU_DIR,)))
    train, val = ocr.split_fonts(fonts, ("DejaVu Serif",))
    assert val and all(f.family == "DejaVu Serif" for f in val)
    assert train and not {f.path for f in train} & {f.path for f in val}
    picked = ocr.pick_fonts(train, 400, random.Random(0))
    assert {f.family for f in picked} == {f.family for f in train}
    assert picked == ocr.pick_fonts(train, 400, random.Random(0))


# ----------------------------------------------------------------------------- text lines


def test_cut_lines_word_counts_and_ascii() -> None:
    doc = " ".join(f"word{i}" for i in range(200))
    lines = ocr.cut_lines(doc, random.Random(0), max_chars=48)
    assert all(2 <= len(line.split()) <= 8 and len(line) <= 48 for line in lines)
    assert " ".join(lines) == doc  # consecutive, nothing lost when no chunk is dropped
    assert ocr.ascii_line("\u201cIt\u2019s\u201d \u2014 fine") == '"It\'s" - fine'
    assert ocr.ascii_line("caf\u00e9") is None


def test_text_lines_deterministic_and_held_out(texts) -> None:
    train_file, val_file = texts
    val, _ = ocr.text_lines(val_file, 50, seed=1)
    train, drops = ocr.text_lines(train_file, 300, seed=1, exclude=frozenset(val))
    assert len(val) == 50 and len(train) == 300 and len(set(train)) == 300
    assert not set(train) & set(val)
    assert (train, drops) == ocr.text_lines(train_file, 300, seed=1, exclude=frozenset(val))
    assert train != ocr.text_lines(train_file, 300, seed=2)[0]
    with pytest.raises(FileNotFoundError, match="download_production_text.py"):
        ocr.text_lines(train_file.with_name("absent.txt"), 5, 0)


# ----------------------------------------------------------------------------- manifests


def check_manifest(csv_path: Path) -> list[dict[str, str]]:
    """Every row has text and an image, relative to the CSV, that opens."""
    rows = ocr.read_manifest(csv_path)
    assert rows and list(rows[0]) == ["image", "text", "font"]
    for row in rows:
        assert row["text"].strip() and not Path(row["image"]).is_absolute()
        with Image.open(csv_path.parent / row["image"]) as img:
            img.load()
    return rows


def test_make_synthetic_ocr(tmp_path: Path, texts) -> None:
    out = tmp_path / "ocr"
    train_csv, val_csv = ocr.make_synthetic_ocr(out, 40, seed=0, train_text=texts[0],
                                                val_text=texts[1])
    assert (train_csv.name, val_csv.name) == ("ocr_train.csv", "ocr_val.csv")
    train, val = check_manifest(train_csv), check_manifest(val_csv)
    assert len(train) == 40 and len(val) == 4
    assert all(r["image"].startswith("synthetic/") for r in train + val)
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    ocr.make_synthetic_ocr(out, 40, seed=0, train_text=texts[0], val_text=texts[1])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before  # nothing re-rendered
    assert ocr.read_manifest(train_csv) == train


# ----------------------------------------------------------------------------- the script


def _script():
    spec = importlib.util.spec_from_file_location(
        "download_production_ocr", ROOT / "scripts" / "download_production_ocr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_offline_holds_out_whole_fonts(tmp_path: Path, texts, capsys) -> None:
    out = tmp_path / "ocr"
    argv = ["--skip-apt", "--font-dir", str(ocr.DEJAVU_DIR), "--out", str(out),
            "--train-text", str(texts[0]), "--val-text", str(texts[1]), "--n", "60",
            "--val-samples", "12", "--workers", "2", "--val-families", "DejaVu Serif"]
    script = _script()
    assert script.main(argv + ["--dry-run"]) == 0 and not out.exists()
    assert script.main(argv) == 0
    train = check_manifest(out / "production_ocr.csv")
    val = check_manifest(out / "production_ocr_val.csv")
    assert len(train) == 60 and len(val) == 12
    fonts, _ = ocr.usable_fonts(ocr.discover_fonts((ocr.DEJAVU_DIR,)))
    serif = {Path(f.path).name for f in fonts if f.family == "DejaVu Serif"}
    assert {r["font"] for r in val} <= serif and not {r["font"] for r in train} & serif
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    summary = capsys.readouterr().out
    assert "held out for evaluation (absent from training): DejaVu Serif" in summary
    first = (out / "production_ocr.csv").read_bytes()
    assert script.main(argv) == 0  # resumed: same rows, no duplicates, nothing re-rendered
    assert (out / "production_ocr.csv").read_bytes() == first
    assert " 0 newly rendered" in capsys.readouterr().out


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def mjsynth_tar(words: dict[str, str]) -> bytes:
    """A tar.gz laid out like MJSynth; words maps annotation name -> space-separated words."""
    buf, base = io.BytesIO(), "mnt/ramdisk/max/90kDICT32px"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for k, (annotation, text) in enumerate(words.items()):
            lines = []
            for i, word in enumerate(text.split()):
                rel = f"{k + 1}/{i + 1}/{i}_{word}_{100 + i}.jpg"
                jpg = io.BytesIO()
                Image.new("RGB", (20 + 5 * len(word), 32), (200, 200, 200)).save(jpg, "JPEG")
                add(rel, jpg.getvalue())
                lines.append(f"./{rel} {100 + i}")
            lines.append("./9/9/7_Missing_1.jpg 1")
            add(annotation, ("\n".join(lines) + "\n").encode())
    return buf.getvalue()


def test_script_mjsynth_over_loopback(server, tmp_path: Path, capsys) -> None:
    base, www = server
    data = mjsynth_tar({"annotation_train.txt": "Hello World Tiny", "annotation_val.txt": "Held"})
    (www / "mjsynth.tar.gz").write_bytes(data)
    out = tmp_path / "ocr"
    argv = ["--source", "mjsynth", "--url", f"{base}/mjsynth.tar.gz", "--out", str(out),
            "--sha256", hashlib.sha256(data).hexdigest(), "--cache-dir", str(tmp_path / "cache")]
    script = _script()
    assert script.main(argv) == 0
    train = check_manifest(out / "production_ocr.csv")
    val = check_manifest(out / "production_ocr_val.csv")
    assert [r["text"] for r in train] == ["Hello", "World", "Tiny"]
    assert [r["text"] for r in val] == ["Held"]
    assert "'missing_image': 1" in capsys.readouterr().out
    assert script.main(argv + ["--n", "2"]) == 0  # reuses download and extraction
    assert len(ocr.read_manifest(out / "production_ocr.csv")) == 2
    assert script.main(argv[:2] + ["--url", f"{base}/gone.tar.gz", "--out", str(tmp_path / "x"),
                                   "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "HTTP 404" in capsys.readouterr().err
