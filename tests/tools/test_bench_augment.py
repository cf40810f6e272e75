"""lab/bench_augment.py: times the default augmentation on batches of a config's training manifest."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import soundfile as sf

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_augment", ROOT / "lab" / "bench_augment.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_times_real_batches_of_the_configured_manifest(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["wav,text"]
    for i, seconds in enumerate((0.7, 1.3, 1.9)):
        sf.write(tmp_path / f"c{i}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
        rows.append(f"c{i}.wav,a short clip")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = json.loads((ROOT / "configs" / "audio_enc_tiny.json").read_text())
    cfg["data"]["train_csv"] = str(tmp_path / "train.csv")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert bench.main(["--config", str(tmp_path / "cfg.json"), "--batches", "2", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 batches of 3 clips" in out and "ms a batch" in out and "speed=0.5" in out
