"""The real-speech evaluation set's transcripts (omni/builders/real_speech.py): what is kept from each
source's script, and how. Building it needs the Debian packages (apt), so the build itself is not run here."""
from pathlib import Path

import numpy as np

from omni.builders import real_speech as rs


def test_recording_script_lines_become_transcripts_or_are_left_out():
    assert rs.spoken_text(" Please check the number and dial again.") == "please check the number and dial again"
    assert rs.spoken_text(" You're unmuted, now!") == "you're unmuted now"
    assert rs.spoken_text(" [this is a simple beep tone]") is None          # a tone, not speech
    assert rs.spoken_text(" at [@]") == "at"                                 # the annotation goes
    assert rs.spoken_text(" Press 1 now.") is None                           # "one" is said, not spelled
    assert rs.spoken_text(" followed by the # key") is None
    assert rs.spoken_text(" A.M.") is None                                   # letter names
    assert rs.spoken_text(" I have a message") == "i have a message"         # "i" and "a" are words


def test_sphinx_transcription_files_are_read(tmp_path: Path):
    f = tmp_path / "transcription"
    f.write_text("<s> he was not an ill disposed young man </s> (sense-0880)\n<s> ten of clubs  </s> (001)\n"
                 "no id on this line\n", encoding="utf-8")
    assert rs.sphinx_transcripts(f) == {"sense-0880": "he was not an ill disposed young man", "001": "ten of clubs"}


def test_raw_clips_are_16_bit_little_endian_pcm(tmp_path: Path):
    samples = np.array([0, 16384, -32768, 32767], dtype="<i2")
    (tmp_path / "x.raw").write_bytes(samples.tobytes())
    np.testing.assert_allclose(rs.read_clip(tmp_path / "x.raw"), samples / 32768.0)


def test_tuxpaint_descriptions_are_the_english_line_of_the_stamp(tmp_path: Path, monkeypatch):
    (tmp_path / "animals").mkdir()
    (tmp_path / "animals" / "frog.txt").write_text("A frog.\nfr.utf8=Une grenouille.\n", encoding="utf-8")
    (tmp_path / "animals" / "wallaby.txt").write_text("\naf.utf8=’n Wallaby.\n", encoding="utf-8")
    (tmp_path / "nolang.txt").write_text("de.utf8=Ein Haus.\n", encoding="utf-8")
    for name in ("animals/frog_desc.ogg", "animals/wallaby_desc.ogg", "animals/frog_desc_fr.ogg",
                 "nolang_desc.ogg", "orphan_desc.ogg"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(rs, "TUXPAINT_DIR", tmp_path)
    # the French recording, the empty English line, a file without one and a stamp without text go
    assert rs.tuxpaint_rows() == [(tmp_path / "animals" / "frog_desc.ogg", "a frog", "tuxpaint")]


def test_saytime_words_are_spelt_and_letter_names_left_out(tmp_path: Path, monkeypatch):
    for stem in ("13", "50", "am", "oh", "oclock", "the_time_is", "minutes"):
        (tmp_path / f"{stem}.au").write_bytes(b"")
    monkeypatch.setattr(rs, "SAYTIME_DIR", tmp_path)
    assert sorted(text for _, text, _ in rs.saytime_rows()) == ["fifty", "minutes", "o'clock", "the time is",
                                                                 "thirteen"]
