"""Audio loading/saving, sentence selection and speech synthesis manifests (the archive downloads
are in tests/test_speech_archives.py).

Synthesis tests need espeak-ng and flite (apt-get install -y espeak-ng flite) and skip without
them.
"""

from __future__ import annotations

import csv
import importlib.util
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omni.audio.features import SAMPLE_RATE, AudioError, load_audio, save_wav
from omni.builders import speech as sd
from tests.conftest import ROOT


def missing_engines(engines: list[str]) -> str | None:
    """require_engines' message (the apt command) when an engine is missing, else None."""
    try:
        sd.require_engines(engines)
    except FileNotFoundError as e:
        return str(e)
    return None


ALL_ENGINES = [sd.ESPEAK, sd.FLITE]
needs_engines = pytest.mark.skipif(missing_engines(ALL_ENGINES) is not None,
                                   reason=str(missing_engines(ALL_ENGINES)) + " (bash scripts/setup.sh)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed: apt-get install -y espeak-ng")


def tone(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 300 Hz tone plus a little noise, (frames,) or (frames, channels) float32."""
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], 1)


def assert_manifest(csv_path: Path, header: list[str]) -> list[dict[str, str]]:
    """Header as given; every wav (relative to the CSV) loads as 16 kHz mono 16-bit PCM."""
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == header
    for row in rows:
        path = csv_path.parent / row["wav"]
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16"), path
        assert load_audio(path).size == info.frames and row["text"].strip()
    return rows


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- omni.audio


def test_load_audio_mixes_channels_and_resamples(tmp_path: Path) -> None:
    stereo = tone(44100, 1.0, channels=2)
    sf.write(tmp_path / "s.flac", stereo, 44100)
    audio = load_audio(tmp_path / "s.flac")
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size == SAMPLE_RATE
    expected = load_audio_reference(stereo.mean(axis=1), 44100)
    assert np.abs(audio - expected).max() < 2e-3  # FLAC is 16-bit


def load_audio_reference(x: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    return librosa.resample(x, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")


@pytest.mark.parametrize("reason", ["missing", "empty", "corrupt", "header_only", "nan", "silent"])
def test_load_audio_errors_name_the_file(tmp_path: Path, reason: str) -> None:
    path = tmp_path / f"{reason}.wav"
    if reason == "empty":
        path.write_bytes(b"")
    elif reason == "corrupt":
        path.write_bytes(b"RIFF\x00\x01garbage" + bytes(range(256)))
    elif reason == "header_only":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif reason in ("nan", "silent"):
        x = np.zeros(1600, np.float32)
        x[5] = np.nan if reason == "nan" else 0.0
        sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=str(path)) as err:
        load_audio(path)
    assert err.value.reason == {"header_only": "empty"}.get(reason, reason)
    assert isinstance(err.value, ValueError)


def test_save_wav_writes_16bit_pcm_atomically(tmp_path: Path) -> None:
    x = tone(SAMPLE_RATE, 0.5)
    x[0], x[1] = 2.0, -2.0  # clipped, not wrapped
    path = save_wav(tmp_path / "sub" / "x.wav", x)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 8000)
    y = load_audio(path)
    assert y[0] > 0.999 and y[1] < -0.999 and np.abs(y[2:] - x[2:]).max() < 1e-4
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]
    with pytest.raises(ValueError, match="NaN"):
        save_wav(tmp_path / "n.wav", np.array([0.1, np.nan], np.float32))
    with pytest.raises(ValueError, match="1-D"):
        save_wav(tmp_path / "n.wav", np.zeros((4, 2), np.float32))
    assert not (tmp_path / "n.wav").exists()


# ----------------------------------------------------------------------------- sentences


def test_clean_sentence_and_transcript() -> None:
    raw = "\u201cWell-known,\u201d he said\u2019s  here."
    assert sd.clean_sentence(raw) == "Well-known, he said's here."
    assert sd.normalize_transcript("Well-known, he said's here.") == "well known he said's here"
    assert sd.normalize_transcript("'Tis the end -- 'twas.") == "tis the end twas"
    assert sd.clean_sentence("Café au lait is hot.") == "Cafe au lait is hot."
    for bad in ["He had 12 sons.", "Go to NASA now.", "Too short.", "A (bracketed) word here.",
                " ".join(["word"] * 21) + ".", "Fee is $5 here.", "Hello -- there friend."]:
        assert sd.clean_sentence(bad) is None, bad


def test_corpus_sentences_unique_by_transcript(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat down. The cat, sat down! In 1999 it rained.\n"
                      "Why is the sky so blue? Ok.\n", encoding="utf-8")
    assert sd.corpus_sentences(corpus) == ["The cat sat down.", "Why is the sky so blue?"]
    with pytest.raises(FileNotFoundError, match="download_production_text.py"):
        sd.corpus_sentences(tmp_path / "missing.txt")


# ----------------------------------------------------------------------------- committed fixtures


def test_committed_clips_load_at_16k_mono() -> None:
    rows = assert_manifest(ROOT / "assets" / "audio" / "clips.csv", ["wav", "text", "speaker"])
    assert len(rows) == 9 and {r["speaker"] for r in rows} == {"alsa-utils", "cmu-arctic"}
    assert (ROOT / "assets" / "audio" / "COPYING.cmu_arctic").is_file()
    total = sum(p.stat().st_size for p in (ROOT / "assets" / "audio").iterdir())
    assert total < 1.5e6
    assert load_audio(ROOT / "examples" / "audio" / "arctic_a0007.wav").size == 4 * SAMPLE_RATE


def test_smoke_speech_falls_back_to_committed_clips(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sd.shutil, "which", lambda name: None)
    made = sd.make_synthetic_speech(tmp_path / "smoke", n=20, seed=0)
    assert made.source == "committed-clips" and made.n == 9
    rows = assert_manifest(made.asr_csv, ["wav", "text", "engine", "voice"])
    val = assert_manifest(made.asr_val_csv, ["wav", "text", "engine", "voice"])
    assert len(rows) == 7 and len(val) == 2 and not {r["wav"] for r in rows} & {r["wav"] for r in val}
    assert rows[0]["text"] == "front center" and rows[0]["engine"] == "recorded"
    tts = list(csv.DictReader(open(made.tts_csv, encoding="utf-8")))
    assert tts[0] == {"text": "Front Center", "wav": rows[0]["wav"]}


@needs_espeak
def test_smoke_speech_uses_espeak_and_is_deterministic(tmp_path: Path) -> None:
    a = sd.make_synthetic_speech(tmp_path / "a", n=3, seed=5)
    b = sd.make_synthetic_speech(tmp_path / "b", n=3, seed=5)
    assert a.source == "espeak-ng" and a.n == 4  # 3 training + 1 held-out utterance
    rows = assert_manifest(a.asr_csv, ["wav", "text", "engine", "voice"])
    assert {r["engine"] for r in rows} == {"espeak-ng"} and len(rows) == 3
    val = assert_manifest(a.asr_val_csv, ["wav", "text", "engine", "voice"])
    held = {v.name for v in sd.espeak_voices(held_out=True)}
    assert len(val) == 1 and all(r["voice"] in held for r in val) and not any(r["voice"] in held for r in rows)
    assert a.asr_csv.read_bytes() == b.asr_csv.read_bytes()
    assert a.tts_csv.read_bytes() == b.tts_csv.read_bytes()


# ----------------------------------------------------------------------------- offline build


def tiny_corpus(path: Path) -> Path:
    words = ["red", "blue", "green", "small", "big", "old", "new", "happy", "quiet", "bright"]
    things = ["cat", "dog", "bird", "tree", "river", "house", "boat", "road", "hill", "door"]
    lines = [f"The {a} {t} sat by the {b} {u}. A {b} {t} was near the {a} road."
             for a in words for b in words for t, u in zip(things, things[1:])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@needs_engines
def test_offline_build_manifests_held_out_and_resume(tmp_path: Path, capsys) -> None:
    script = load_script("download_production_audio")
    corpus = tiny_corpus(tmp_path / "corpus.txt")
    common = ["--corpus", str(corpus), "--n", "4", "--seed", "3"]
    out = tmp_path / "audio"
    assert script.main(common + ["--out", str(out), "--dry-run"]) == 0
    assert not out.exists()
    assert script.main(common + ["--out", str(out), "--workers", "2"]) == 0
    asr = assert_manifest(out / "production_asr.csv", ["wav", "text", "engine", "voice"])
    val = assert_manifest(out / "production_asr_val.csv", ["wav", "text", "engine", "voice"])
    tts = assert_manifest(out / "production_tts.csv", ["text", "wav"])
    tts_val = assert_manifest(out / "production_tts_val.csv", ["text", "wav"])
    assert [len(m) for m in (asr, val, tts, tts_val)] == [4, 4, 4, 4]
    assert not {r["voice"] for r in asr} & {r["voice"] for r in val}
    assert all(r["voice"].split("+")[-1] in ("f4", "m6", "rms") for r in val)
    train_text = {r["text"] for r in asr} | {sd.normalize_transcript(r["text"]) for r in tts}
    held_text = {r["text"] for r in val} | {sd.normalize_transcript(r["text"]) for r in tts_val}
    assert not train_text & held_text and len(train_text | held_text) == 16
    assert "production_asr.csv" in capsys.readouterr().out

    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    assert script.main(common + ["--out", str(out), "--workers", "1"]) == 0
    assert "reused from an earlier run (skipped): 16" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == before  # no duplicated rows
    assert script.main(common + ["--out", str(tmp_path / "again"), "--workers", "1"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").glob("*.csv")} == before


def test_offline_plan_sets_depend_only_on_their_own_sizes(tmp_path: Path) -> None:
    """A larger --asr-train extends the ASR training set; the ASR validation set and both TTS sets
    stay exactly as they were, so results at different sizes are measured on the same held-out rows."""
    import argparse
    script = load_script("download_production_audio")
    sentences = sd.corpus_sentences(tiny_corpus(tmp_path / "corpus.txt"))

    def plan(asr: int) -> dict:
        args = argparse.Namespace(n=None, asr_train=asr, asr_val=5, tts_train=6, tts_val=3,
                                  seed=0, out=tmp_path,
                                  corpus=tmp_path / "corpus.txt")
        return script.plan_offline(sentences, args)

    small, big = plan(10), plan(40)
    assert big["production_asr.csv"][:10] == small["production_asr.csv"] and len(big["production_asr.csv"]) == 40
    for name in ("production_asr_val.csv", "production_tts.csv", "production_tts_val.csv"):
        assert big[name] == small[name], name
    held = {j.text for name in ("production_asr_val.csv", "production_tts_val.csv") for j in big[name]}
    train = {j.text for name in ("production_asr.csv", "production_tts.csv") for j in big[name]}
    assert len(held) == 8 and len(train) == 46 and not held & train


def test_offline_plan_draws_flite_or_espeak_for_each_asr_clip(tmp_path: Path) -> None:
    """Each ASR clip is flite with probability FLITE_FRACTION, else espeak-ng, drawn from the
    manifest's own seeded stream; held-out manifests use held-out voices only."""
    import argparse
    script = load_script("download_production_audio")
    sentences = sd.corpus_sentences(tiny_corpus(tmp_path / "corpus.txt"))
    args = argparse.Namespace(n=None, asr_train=60, asr_val=20, tts_train=0, tts_val=0, seed=0,
                              out=tmp_path, corpus=tmp_path / "corpus.txt")
    plan = script.plan_offline(sentences, args)
    rng = random.Random("0:production_asr.csv")
    for job in plan["production_asr.csv"]:
        if rng.random() < script.FLITE_FRACTION:
            voice, speed = rng.choice(sd.flite_voices(False)), round(rng.uniform(*sd.FLITE_STRETCH), 2)
            pitch = None
        else:
            voice, speed = rng.choice(sd.espeak_voices(False)), rng.randint(*sd.ESPEAK_SPEED)
            pitch = rng.randint(*sd.ESPEAK_PITCH)
        assert (job.voice, job.speed, job.pitch) == (voice, speed, pitch)
    held = set(sd.flite_voices(True)) | set(sd.espeak_voices(True))
    assert {j.voice for j in plan["production_asr_val.csv"]} <= held


def test_synth_commands_per_engine(tmp_path: Path) -> None:
    wav = tmp_path / "x.wav"
    es = sd.SynthJob(sd.Voice(sd.ESPEAK, "en-us+m2"), "Hello there.", 150, 40, wav).command(wav)
    assert es == ["espeak-ng", "-v", "en-us+m2", "-s", "150", "-p", "40", "-w", str(wav), "Hello there."]
    flite = sd.SynthJob(sd.Voice(sd.FLITE, "kal"), "Hello there.", 1.1, None, wav).command(wav)
    assert flite == ["flite", "-voice", "kal", "--setf", "duration_stretch=1.1", "-t", "Hello there.",
                     "-o", str(wav)]


def test_missing_engine_names_the_packages_and_the_way_out(monkeypatch) -> None:
    monkeypatch.setattr(sd.shutil, "which", lambda name: None if name == "flite" else "/bin/" + name)
    with pytest.raises(FileNotFoundError) as e:
        sd.require_engines([sd.ESPEAK, sd.FLITE])
    assert "apt-get install -y flite" in str(e.value)
    sd.require_engines([sd.ESPEAK])  # flite is not needed for this one


def test_offline_build_needs_the_corpus(tmp_path: Path, capsys) -> None:
    script = load_script("download_production_audio")
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng/flite not installed: apt-get install -y espeak-ng flite")
    code = script.main(["--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")])
    assert code == 1 and "download_production_text.py" in capsys.readouterr().err


@needs_espeak
def test_smoke_speech_holds_out_sentences_too(tmp_path: Path) -> None:
    """The held-out rows speak sentences no training row speaks (the demo's SFT must not be scored
    on a sentence it learnt to transcribe)."""
    made = sd.make_synthetic_speech(tmp_path / "s", n=12, seed=0)
    train = {r["text"] for r in assert_manifest(made.asr_csv, ["wav", "text", "engine", "voice"])}
    val = {r["text"] for r in assert_manifest(made.asr_val_csv, ["wav", "text", "engine", "voice"])}
    assert val and not train & val
    tts_train = {r["text"] for r in csv.DictReader(open(made.tts_csv, encoding="utf-8"))}
    tts_val = {r["text"] for r in csv.DictReader(open(made.tts_val_csv, encoding="utf-8"))}
    assert tts_val and not tts_train & tts_val
