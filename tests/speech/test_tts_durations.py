"""train_talker.py end to end with a duration Talker (talker.alignment=durations): training,
validation metrics, synthesis with a speaking rate, the evaluators, and the export's refusal."""
import json

import pytest

import train_talker
from omni.cli import evaluate
from omni.cli import tts as tts_cli
from omni.engine.checkpoint import read_metrics
from omni.export.audit import ExportError
from omni.export.exporter import load_sources
from omni.speech.synthesis import Synthesizer
from omni.talker.duration import DurationTalker
from tests.speech.test_tts import CLIPS, _tiny_config


def test_duration_talker_trains_speaks_at_a_rate_and_is_evaluated(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    cfg["talker"].update(alignment="durations", encoder_layers=1)
    cfg["loss"] = {"prior_weight": 1.0, "duration_weight": 1.0}
    cfg_path = tmp_path / "talker.json"
    cfg_path.write_text(json.dumps(cfg))
    assert train_talker.main(["--config", str(cfg_path)]) == 0
    vals = [r for r in read_metrics(tmp_path / "ckpt" / "talker") if r["event"] == "val"]
    assert [r["step"] for r in vals] == [2, 4]
    assert {"val_loss", "val_ce_q0", "val_prior", "val_dur", "val_dur_frames", "val_len_ratio",
            "val_unigram_ce"} <= set(vals[-1])
    synth = Synthesizer.load(tmp_path / "ckpt", "cpu", gl_iters=2)
    assert isinstance(synth.talker, DurationTalker)
    text = "Front left, and then the centre, and then front right."
    normal = len(synth.synthesize(text, seed=0))
    fast = len(Synthesizer.load(tmp_path / "ckpt", "cpu", gl_iters=2, rate=2.0).synthesize(text, seed=0))
    assert normal > 0 and abs(fast / normal - 0.5) < 0.1
    out_wav = tmp_path / "hello.wav"
    assert tts_cli.main(["--text", "Hello there.", "--out", str(out_wav), "--talker", str(tmp_path / "ckpt"),
                         "--device", "cpu", "--gl-iters", "2", "--rate", "1.5"]) == 0
    assert out_wav.is_file()
    capsys.readouterr()
    assert evaluate.main(["talker", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "aligner prior" in out and "frames per symbol" in out
    assert evaluate.main(["tts", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--n", "1",
                          "--gl-iters", "2", "--paths", "talker,teacher"]) == 0
    assert "teacher_forced_talker" in capsys.readouterr().out
    with pytest.raises(ExportError, match="no ONNX graphs yet"):
        load_sources(tmp_path / "no_omni", tmp_path / "ckpt")


def test_rate_is_refused_for_an_attention_talker(tmp_path):
    cfg_path = tmp_path / "talker.json"
    cfg_path.write_text(json.dumps(_tiny_config(tmp_path)))
    assert train_talker.main(["--config", str(cfg_path), "train.max_steps=2"]) == 0
    with pytest.raises(ValueError, match="no rate control"):
        Synthesizer.load(tmp_path / "ckpt", "cpu", rate=2.0)
