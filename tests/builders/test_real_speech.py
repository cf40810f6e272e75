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
