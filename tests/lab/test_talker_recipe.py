"""lab/train_talker_recipe.py: the Talker recipe of docs/results.md (read, then self-fed) as phases of
train_talker.py on one folder, each resuming the last, skipped when already trained."""
import json

import pytest

from lab import train_talker_recipe as recipe
from omni.engine.checkpoint import read_metrics
from tests.speech.test_tts import _tiny_config


def test_recipe_reads_then_self_feeds_resuming_one_folder_and_skips_what_is_done(tmp_path, capsys):
    cfg_path = tmp_path / "talker.json"
    cfg_path.write_text(json.dumps(_tiny_config(tmp_path)))
    save = tmp_path / "read"
    args = ["--config", str(cfg_path), "--save-dir", str(save), "--read", "2,3", "--self-fed", "4,5", "--keep-rounds",
            "talker.text_aux_layer=1"]  # the tiny Talker has 2 layers; later arguments win over the recipe's
    assert recipe.main(args) == 0
    talker = save / "talker"
    trains = [r for r in read_metrics(talker) if r["event"] == "train"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4, 5]  # one run, resumed three times, never restarted
    vals = {r["step"]: r for r in read_metrics(talker) if r["event"] == "val"}
    assert "val_fed_loss" not in vals[2] and "val_fed_loss" in vals[4] and "val_fed_loss" in vals[5]
    cfg = json.loads((talker / "config.json").read_text())
    assert cfg["loss"]["self_feed"] == 0.5 and cfg["talker"]["text_aux_layer"] == 1 and cfg["talker"]["dropout"] == 0
    for step in (2, 3, 4, 5):
        kept = save / f"after_{step}" / "talker"
        assert (kept / "model.safetensors").is_file() and not (kept / "codes").exists()
        assert json.loads((kept / "config.json").read_text())["train"]["max_steps"] == step
    capsys.readouterr()
    assert recipe.main(args) == 0  # run again: everything is done, nothing is retrained
    assert capsys.readouterr().out.count("skipping the phase") == 4
    assert len([r for r in read_metrics(talker) if r["event"] == "train"]) == 5


def test_recipe_rejects_bad_phase_plans(tmp_path, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--read", "3000,2000"])
    assert "rising" in capsys.readouterr().err
    assert recipe.main(["--read", "3000,6000", "--self-fed", "5000"]) == 2
    assert "must go past the reading ones" in capsys.readouterr().err
    assert recipe.main(["--save-dir", str(tmp_path), "train.max_steps=10"]) == 2
    assert "the recipe sets these itself" in capsys.readouterr().err
