"""scripts/prepare_audio.py on a folder of mixed formats, rates and channels, with broken files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omni.audio.features import SAMPLE_RATE, load_audio
from tests.conftest import ROOT


def prepare_script():
    path = ROOT / "scripts" / "prepare_audio.py"
    spec = importlib.util.spec_from_file_location("prepare_audio", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare_audio"] = module
    spec.loader.exec_module(module)
    return module


def tone(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * noise).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x][:channels], axis=1)


GOOD = {  # file -> seconds at 16 kHz after conversion
    "a.wav": 0.5, "a.flac": 0.25, "b.ogg": 0.4, "sub/stereo44k.wav": 0.3, "sub/deep/c.mp3": 0.5,
    "UPPER.WAV": 0.2,
}
BAD = {"corrupt.wav": "corrupt", "empty.flac": "empty", "nan.wav": "nan", "silent.wav": "silent",
       "fake.ogg": "corrupt"}


@pytest.fixture
def messy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub" / "deep").mkdir(parents=True)
    sf.write(d / "a.wav", tone(16000, 0.5), 16000, subtype="PCM_16")
    sf.write(d / "a.flac", tone(22050, 0.25, seed=1), 22050)
    sf.write(d / "b.ogg", tone(48000, 0.4, channels=2, seed=2), 48000, format="OGG", subtype="VORBIS")
    sf.write(d / "sub" / "stereo44k.wav", tone(44100, 0.3, channels=2, seed=3), 44100)
    sf.write(d / "sub" / "deep" / "c.mp3", tone(32000, 0.5, seed=4), 32000, format="MP3")
    sf.write(d / "UPPER.WAV", tone(8000, 0.2, seed=5), 8000)
    (d / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(200)))
    (d / "empty.flac").write_bytes(b"")
    nan = tone(16000, 0.1)
    nan[10] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros(1600, np.float32), 16000)
    (d / "fake.ogg").write_bytes(b"OggS not really")
    (d / "notes.txt").write_text("not audio")
    (d / "sub" / "cover.jpg").write_bytes(b"\xff\xd8")
    return d


def read_tsv(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path\tnum_samples\ttext"
    return [(p, int(n)) for p, n, _ in (line.split("\t") for line in lines[1:])]


def test_prepare_mixed_folder(messy_dir: Path, tmp_path: Path, capsys) -> None:
    out, registry = tmp_path / "data" / "processed", tmp_path / "data" / "datasets.json"
    registry.parent.mkdir(parents=True)
    registry.write_text(json.dumps({"other": "processed/other"}))
    argv = ["--input-dir", str(messy_dir), "--dataset", "mix", "--out", str(out),
            "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "1", "--workers", "1"]
    assert prepare_script().main(argv) == 0
    root = out / "mix"
    splits = {s: read_tsv(root / f"{s}.tsv") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    rows = [r for s in splits.values() for r in s]
    for rel, n in rows:
        info = sf.info(str(root / rel))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", n)
        assert load_audio(root / rel).size == n
    expected = {"wavs/a_wav.wav": 0.5, "wavs/a_flac.wav": 0.25, "wavs/b.wav": 0.4,
                "wavs/sub/stereo44k.wav": 0.3, "wavs/sub/deep/c.wav": 0.5, "wavs/UPPER.wav": 0.2}
    assert {rel for rel, _ in rows} == set(expected)
    for rel, n in rows:  # mp3 decoders may pad a frame; everything else is exact
        assert abs(n - expected[rel] * SAMPLE_RATE) <= (1200 if rel.endswith("c.wav") else 1), rel

    meta = json.loads((root / "metadata.json").read_text())
    assert meta["counts"] == {"train": 4, "val": 1, "test": 1}
    hours = sum(n for _, n in rows) / SAMPLE_RATE / 3600
    assert meta["hours"]["total"] == pytest.approx(hours, abs=1e-6)
    assert {s["file"]: s["reason"] for s in meta["skipped"]} == BAD
    assert all(s["file"] in s["error"] for s in meta["skipped"])
    assert meta["sources"]["formats"] == {".flac": 2, ".mp3": 1, ".ogg": 2, ".wav": 6}
    assert meta["sources"]["sample_rates"]["44100"] == 1 and meta["sources"]["channels"]["2"] == 2
    assert meta["ignored_files"] == {".jpg": 1, ".txt": 1}
    assert json.loads(registry.read_text()) == {"mix": "processed/mix", "other": "processed/other"}
    summary = capsys.readouterr().out
    assert "skipped corrupt.wav: corrupt" in summary and "skipped 5" in summary

    # the same input and seed give byte-identical outputs; converted files are reused
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    mtime = (root / "wavs" / "b.wav").stat().st_mtime_ns
    assert prepare_script().main(argv) == 0
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before
    assert (root / "wavs" / "b.wav").stat().st_mtime_ns == mtime


def test_prepare_seed_changes_split_and_bad_registry_is_an_error(messy_dir: Path, tmp_path: Path,
                                                                 capsys) -> None:
    out = tmp_path / "processed"
    base = ["--input-dir", str(messy_dir), "--out", str(out), "--val-fraction", "0.3",
            "--test-fraction", "0.3", "--workers", "1"]
    script = prepare_script()
    val_sets = set()
    for seed in range(4):
        assert script.main(base + ["--dataset", f"s{seed}", "--seed", str(seed)]) == 0
        val_sets.add(tuple(read_tsv(out / f"s{seed}" / "val.tsv")))
    assert len(val_sets) > 1
    assert json.loads((tmp_path / "datasets.json").read_text()) == {f"s{i}": f"processed/s{i}"
                                                                   for i in range(4)}
    (tmp_path / "datasets.json").write_text("{broken")
    assert script.main(base + ["--dataset", "x"]) == 1
    assert "datasets.json is not valid JSON" in capsys.readouterr().err


def test_prepare_rejects_bad_arguments(tmp_path: Path) -> None:
    script = prepare_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--input-dir", str(tmp_path), "--dataset", "../escape"])
    with pytest.raises(SystemExit):
        script.parse_args(["--input-dir", str(tmp_path / "nope"), "--dataset", "x"])
    (tmp_path / "only.txt").write_text("x")
    assert script.main(["--input-dir", str(tmp_path), "--dataset", "x",
                        "--out", str(tmp_path / "o")]) == 1
