"""The speech archive builders of scripts/download_production_audio.py (LibriSpeech, LJSpeech),
served by http.server on 127.0.0.1 from archives built here."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.builders.test_speech_data import assert_manifest, load_script, tone


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over loopback HTTP: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def encoded(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt)
    return buf.getvalue()


def test_librispeech_archive_over_loopback(http_dir, tmp_path: Path, capsys) -> None:
    root, base = http_dir
    with tarfile.open(root / "dev-clean.tar.gz", "w:gz") as tar:
        for spk, chapter in (("84", "121123"), ("174", "50561")):
            folder = f"LibriSpeech/dev-clean/{spk}/{chapter}"
            lines = []
            for utt in range(2):
                uid = f"{spk}-{chapter}-{utt:04d}"
                flac = encoded(tone(16000, 0.3, seed=utt), 16000, "FLAC")
                add_bytes(tar, f"{folder}/{uid}.flac", flac)
                lines.append(f"{uid} GO DO YOU HEAR NUMBER {utt}'S BELL\n")
            add_bytes(tar, f"{folder}/{spk}-{chapter}.trans.txt", "".join(lines).encode())
    digest = hashlib.sha256((root / "dev-clean.tar.gz").read_bytes()).hexdigest()
    out = tmp_path / "audio"
    argv = ["--source", "librispeech", "--url", f"{base}/dev-clean.tar.gz", "--sha256", digest,
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert load_script("download_production_audio").main(argv) == 0
    rows = assert_manifest(out / "librispeech_dev-clean.csv", ["wav", "text", "engine", "voice"])
    assert len(rows) == 4 and {r["voice"] for r in rows} == {"84", "174"}
    assert rows[0]["text"].startswith("go do you hear number") and rows[0]["engine"] == "librispeech"
    assert "librispeech_dev-clean.csv" in capsys.readouterr().out


def test_ljspeech_archive_over_loopback(http_dir, tmp_path: Path, capsys) -> None:
    root, base = http_dir
    words = ("one", "two", "three", "four")
    meta = "".join(f"LJ001-{i:04d}|Chapter {i} text.|Chapter {w} text.\n" for i, w in enumerate(words))
    with tarfile.open(root / "LJSpeech-1.1.tar.bz2", "w:bz2") as tar:
        add_bytes(tar, "LJSpeech-1.1/metadata.csv", meta.encode())
        for i in range(4):
            add_bytes(tar, f"LJSpeech-1.1/wavs/LJ001-{i:04d}.wav",
                      encoded(tone(22050, 0.2, seed=i), 22050, "WAV"))
    out = tmp_path / "audio"
    argv = ["--source", "ljspeech", "--url", f"{base}/LJSpeech-1.1.tar.bz2", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.25", "--workers", "1"]
    script = load_script("download_production_audio")
    assert script.main(argv) == 0
    train = assert_manifest(out / "ljspeech_tts.csv", ["text", "wav"])
    val = assert_manifest(out / "ljspeech_tts_val.csv", ["text", "wav"])
    assert len(train) == 3 and len(val) == 1
    assert {r["text"] for r in train + val} == {f"Chapter {w} text." for w in words}
    assert script.main(argv + ["--sha256", "0" * 64]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
