import shutil
import subprocess

import numpy as np
import pytest

from omni.audio.features import load_audio
from omni.speech.intelligibility import cer_wer, original_path, report_paths, transcribe
from tests.conftest import ROOT

ARCTIC = ROOT / "examples" / "audio" / "arctic_a0007.wav"
ARCTIC_TEXT = "and you always want to see it in the superlative degree"


def test_real_recording_is_recognised():
    hyp = transcribe(load_audio(ARCTIC))
    assert cer_wer([ARCTIC_TEXT], [hyp])["wer"] <= 0.2, hyp


@pytest.mark.skipif(shutil.which("flite") is None, reason="apt install flite")
def test_flite_speech_is_mostly_recognised(tmp_path):
    text = "The weather is nice today and we will go for a walk in the park."
    wav = tmp_path / "flite.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(wav)], check=True)
    rates = cer_wer([text], [transcribe(load_audio(wav))])
    assert rates["cer"] < 0.5
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    assert cer_wer([text], [transcribe(noise)])["cer"] > rates["cer"]  # the measure can fail


def test_silence_and_empty_audio():
    assert transcribe(np.zeros(0, dtype=np.float32)) == ""
    assert transcribe(np.zeros(16000, dtype=np.float32)) == ""
    with pytest.raises(ValueError, match="mono"):
        transcribe(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        transcribe(np.full(100, np.nan, dtype=np.float32))


def test_cer_wer_normalises_and_counts():
    assert cer_wer(["Hello, World!"], ["hello world"]) == {"cer": 0.0, "wer": 0.0}
    assert cer_wer(["abc"], ["abd"])["cer"] == pytest.approx(1 / 3)
    assert cer_wer(["a b"], [""]) == {"cer": 1.0, "wer": 1.0}
    with pytest.raises(ValueError):
        cer_wer(["a"], [])


def test_report_paths_scores_each_path():
    rows = [(ARCTIC_TEXT, load_audio(ARCTIC))]
    silent = lambda text, audio: np.zeros_like(audio)
    deaf = lambda wav: ""
    report = report_paths(rows, {"original": original_path(), "silent": silent}, also={"deaf": deaf})
    assert report["original"]["cer"] < 0.2 and report["original"]["deaf_cer"] == 1.0
    assert report["silent"]["cer"] == 1.0
    assert report["original"]["n"] == 1 and report["original"]["audio_s"] == pytest.approx(len(rows[0][1]) / 16000)
    assert "cer_other" not in report["original"]  # one row: no other text to score against
    # against the next row's text the real recording scores far worse than against its own
    two = report_paths(rows + [("Front Left", load_audio(ROOT / "assets" / "audio" / "front_left.wav"))],
                       {"original": original_path()})["original"]
    assert two["cer_other"] > two["cer"] + 0.3, two


def test_cer_by_length_bins_rows_by_reference_length():
    from omni.speech.intelligibility import cer_by_length
    refs = ["short one", "a" * 45, "b" * 45, "c" * 95]
    hyps = ["short one", "a" * 45, "x" * 45, ""]
    bins = cer_by_length(refs, hyps)
    assert [(b["lo"], b["hi"], b["n"]) for b in bins] == [(0, 40, 1), (40, 60, 2), (90, None, 1)]
    assert [b["cer"] for b in bins] == [0.0, 0.5, 1.0]  # empty bin (60-89) left out


@pytest.mark.skipif(shutil.which("flite") is None, reason="apt install flite")
def test_a_transcript_does_not_depend_on_what_was_transcribed_before(tmp_path):
    """The same audio gets the same transcript whatever came before it. A reused pocketsphinx decoder
    heard this sentence differently after 5 s of loud noise ('most' -> 'those', 'to have' -> 'jihad')."""
    wav_path = tmp_path / "algae.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", "Most algae are plankton carried passively by water, "
                    "although some macroalgae have holdfasts for anchorage.", "-o", str(wav_path)], check=True)
    wav = load_audio(wav_path)
    first = transcribe(wav)
    transcribe(0.3 * np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32))
    assert transcribe(wav) == first


def test_read_rows_skip_selects_rows_and_counts_bad_ones(tmp_path):
    import soundfile as sf

    from omni.data import DataError
    from omni.speech.intelligibility import read_rows
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", np.full(1600, 0.1 * (i + 1), dtype=np.float32), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    (tmp_path / "m.csv").write_text("text,wav\nzero,0.wav\nbroken,bad.wav\none,1.wav\ntwo,2.wav\n")
    rows, skipped = read_rows(tmp_path / "m.csv", 2, skip=1)
    assert [t for t, _ in rows] == ["one", "two"] and sum(skipped.values()) == 1
    assert rows[0][1][0] == pytest.approx(0.2, abs=1e-3)  # 16-bit PCM
    assert [t for t, _ in read_rows(tmp_path / "m.csv", 1)[0]] == ["zero"]
    with pytest.raises(DataError, match="from row 4 of 4"):
        read_rows(tmp_path / "m.csv", 1, skip=4)


def test_cer_interval_brackets_the_score_and_pairs_two_paths():
    from omni.audio.ctc import cer_interval
    rng = np.random.default_rng(0)
    refs = ["the quick brown fox jumps"] * 200
    hyps = ["the quick brown fox jumps" if rng.random() < 0.5 else "the quack brawn fix jumps" for _ in refs]
    cer = cer_wer(refs, hyps)["cer"]
    lo, hi = cer_interval(refs, hyps)
    assert lo < cer < hi and hi - lo < 0.05
    lo20, hi20 = cer_interval(refs[:20], hyps[:20])
    assert hi20 - lo20 > hi - lo  # fewer rows, a wider interval
    assert cer_interval(refs, refs) == (0.0, 0.0)
    assert cer_interval(refs, hyps, hyps) == (0.0, 0.0)  # a path against itself
    worse = ["the quack brawn fix jumps"] * 200
    dlo, dhi = cer_interval(refs, worse, hyps)  # every row at least as bad: the difference is clearly > 0
    assert 0 < dlo <= dhi


def test_tts_compare_reports_the_paired_difference(tmp_path, capsys):
    import json

    from omni.cli.evaluate import main
    refs = [f"sentence number {i} is here" for i in range(50)]
    good = [(r, r) for r in refs]
    bad = [(r, r.replace("number", "lumber").replace("here", "hair")) for r in refs]
    for name, rows in (("a", good), ("b", bad)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"talker_codec_griffinlim": {"cer": 0.0, "rows": rows}}))
    assert main(["tts-compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "talker_codec_griffinlim" in out and "(A lower)" in out and " 0.000 " in out
    (tmp_path / "c.json").write_text(json.dumps({"talker_codec_griffinlim": {"cer": 0.0, "rows": good[1:]}}))
    with pytest.raises(SystemExit, match="different rows"):
        main(["tts-compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")])
    (tmp_path / "d.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not an evaluate.py tts --json report"):
        main(["tts-compare", str(tmp_path / "a.json"), str(tmp_path / "d.json")])
