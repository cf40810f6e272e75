"""The unseen-engine evaluation set (download_production_audio.py --source festival): Festival speaks
exactly the held-out ASR sentences, through text2wave reading stdin, and a voice Festival lacks is a
failed row, not a silent empty clip. A stand-in text2wave on PATH plays Festival, so the test needs
neither Festival nor its voices."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omni.builders import speech as sd
from tests.builders.test_speech_data import assert_manifest, load_script, tiny_corpus

FAKE_TEXT2WAVE = '''#!{python}
"""text2wave stand-in: -eval "(voice_NAME)" -o OUT, text on stdin -> a tone as long as the text."""
import sys
import numpy as np
import soundfile as sf
args = sys.argv[1:]
voice, out = args[args.index("-eval") + 1], args[args.index("-o") + 1]
text = sys.stdin.read()
if "nonexistent" in voice:
    sys.stderr.write("SIOD ERROR: unbound variable : " + voice.strip("()") + "\\n")
    sys.exit(0)   # as Festival does
t = np.arange(int(16000 * 0.05 * max(1, len(text.split())))) / 16000
sf.write(out, 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
'''


def fake_festival(tmp_path: Path, monkeypatch, script) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "text2wave"
    exe.write_text(FAKE_TEXT2WAVE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(script.dl, "ensure_apt_packages", lambda packages: None)


def test_festival_speaks_the_held_out_asr_sentences(tmp_path: Path, monkeypatch, capsys) -> None:
    script = load_script("download_production_audio")
    fake_festival(tmp_path, monkeypatch, script)
    corpus = tiny_corpus(tmp_path / "corpus.txt")
    sizes = ["--asr-train", "10", "--asr-val", "6", "--tts-train", "4", "--tts-val", "2"]
    out = tmp_path / "audio"
    assert script.main(["--source", "festival", "--corpus", str(corpus), "--out", str(out), "--workers", "1"]
                       + sizes) == 0
    rows = assert_manifest(out / "festival_asr_val.csv", ["wav", "text", "engine", "voice"])
    args = argparse.Namespace(n=None, asr_train=10, asr_val=6, tts_train=4, tts_val=2, seed=0, out=out,
                              corpus=corpus)
    held = script.plan_offline(sd.corpus_sentences(corpus), args)["production_asr_val.csv"]
    assert [r["text"] for r in rows] == [sd.normalize_transcript(j.text) for j in held]
    assert [r["voice"] for r in rows] == list(sd.FESTIVAL_VOICES) * 3 and {r["engine"] for r in rows} == {"festival"}
    assert "festival_asr_val.csv" in capsys.readouterr().out


def test_a_voice_festival_lacks_is_a_failed_clip(tmp_path: Path, monkeypatch) -> None:
    script = load_script("download_production_audio")
    fake_festival(tmp_path, monkeypatch, script)
    job = sd.SynthJob(sd.Voice(sd.FESTIVAL, "nonexistent"), "Hello there.", 1.0, None, tmp_path / "x.wav")
    assert job.command(tmp_path / "t.wav") == ["text2wave", "-eval", "(voice_nonexistent)", "-o",
                                               str(tmp_path / "t.wav")]
    result = sd.synthesize(job)
    assert result.samples is None and result.reason == "engine_error" and "SIOD ERROR" in result.error
    assert not (tmp_path / "x.wav").exists()
    ok = sd.synthesize(sd.SynthJob(sd.Voice(sd.FESTIVAL, "ked_diphone"), "Hello there.", 1.0, None,
                                   tmp_path / "y.wav"))
    assert ok.samples == 1600   # the stand-in read the two words from stdin
