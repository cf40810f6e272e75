"""scripts/train_all.py on a two-stage chain of tiny configs (A the Thinker, C vision reading it):
skip when unchanged, resume after --hours, retrain dependants of a changed input, the report card."""
from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from omni.cli import train_all
from omni.engine import checkpoint as ckpt
from omni.pipeline.profiles import PROFILES, Profile, StageRun
from omni.pipeline.runner import RECORD, input_dirs, read_raw
from tests.conftest import write_config
from tests.vision.test_vision import _vision_config


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """Profile 'tiny' with a 4-step Thinker and a 4-step vision stage that reads its checkpoint."""
    thinker = write_config(tmp_path, "thinker.json", train={"max_steps": 4, "save_dir": str(tmp_path / "A")})
    vision = _vision_config(tmp_path, tmp_path / "A", n_scenes=24)
    profile = Profile("tiny", str(tmp_path / "run"), (
        StageRun("thinker", "A Thinker", "train_text.py", str(thinker), "thinker"),
        StageRun("vision", "C vision encoder", "train_vision.py", str(vision), "vision")), ())
    monkeypatch.setitem(PROFILES, "tiny", profile)
    return profile, tmp_path


def _record(profile: Profile) -> dict:
    return json.loads((train_all.ROOT / profile.run_dir / RECORD).read_text())


def _weights(folder):
    return load_file(str(folder / ckpt.MODEL_FILE))


def test_run_skip_change_and_report(chain, capsys):
    profile, tmp = chain
    vision = profile.stages[1]
    assert input_dirs(read_raw(vision)) == [str(tmp / "A")]  # the Thinker it starts from
    assert train_all.main(["--profile", "tiny", "--n", "5"]) == 0
    rec = _record(profile)
    assert {k: v["status"] for k, v in rec["stages"].items()} == {"thinker": "done", "vision": "done"}
    report = json.loads((tmp / "run" / "report.json").read_text())
    assert [s["key"] for s in report["stages"]] == ["thinker", "vision"]
    for s in report["stages"]:
        assert s["metrics"] and s["steps"] == 4 and s["precision"] == "fp32" and s["wall_s"] > 0
    # the card's numbers are the stages' own: the last validation record of each folder
    vals = {k: [r for r in ckpt.read_metrics(tmp / d) if r["event"] == "val"][-1] for k, d in
            (("thinker", "A"), ("vision", "vis"))}
    thinker_row, vision_row = report["stages"][0]["metrics"][0], report["stages"][1]["metrics"][0]
    assert thinker_row["value"] == vals["thinker"]["val_loss"] and thinker_row["baseline_value"] > 0
    lo, hi = thinker_row["interval"]  # a bootstrap over the windows validation scored, with the saved weights
    assert lo < thinker_row["value"] < hi and "bootstrap over its" in thinker_row["note"]
    assert vision_row["value"] == vals["vision"]["i2t_r1"]
    assert vision_row["baseline_value"] == vals["vision"]["hist_i2t_r1"]
    lo, hi = vision_row["interval"]
    assert lo <= vision_row["value"] <= hi
    md = (tmp / "run" / "REPORT.md").read_text()
    assert "A Thinker" in md and "C vision encoder" in md and (tmp / "run" / "curves.png").is_file()

    before = _weights(tmp / "vis")
    capsys.readouterr()
    assert train_all.main(["--profile", "tiny", "--n", "5"]) == 0  # nothing changed: nothing trains
    out = capsys.readouterr().out
    assert out.count(": skip (unchanged since") == 2

    # a changed Thinker config retrains the Thinker, and then the vision stage that reads it
    raw = json.loads(open(profile.stages[0].config).read())
    raw["train"]["lr"] = 1e-3
    open(profile.stages[0].config, "w").write(json.dumps(raw))
    assert train_all.main(["--profile", "tiny", "--only", "thinker"]) == 0
    out = capsys.readouterr().out
    assert "A Thinker: train (" in out and "thinker.json changed" in out
    assert train_all.main(["--profile", "tiny", "--plan"]) == 0
    assert f"input {tmp / 'A'} changed" in capsys.readouterr().out
    assert train_all.main(["--profile", "tiny", "--n", "5"]) == 0
    out = capsys.readouterr().out
    assert "A Thinker: skip" in out and f"C vision encoder: train (input {tmp / 'A'} changed)" in out
    after = _weights(tmp / "vis")
    assert not all(torch.equal(before[k], after[k]) for k in before)


def test_hours_stops_and_the_next_run_resumes_exactly(chain, tmp_path):
    profile, tmp = chain
    straight = write_config(tmp, "straight.json", train={"max_steps": 4, "save_dir": str(tmp / "S")})
    import train_text
    assert train_text.main(["--config", str(straight)]) == 0
    # --hours 0: the first stage still gets one step, then stops with a checkpoint (exit 75)
    assert train_all.main(["--profile", "tiny", "--hours", "0"]) == 75
    rec = _record(profile)
    assert rec["stages"]["thinker"]["status"] == "stopped" and "vision" not in rec["stages"]
    assert ckpt.load_train_state(tmp / "A")["progress"]["step"] == 1
    assert train_all.main(["--profile", "tiny", "--until", "thinker"]) == 0
    assert _record(profile)["stages"]["thinker"]["status"] == "done"
    a, s = _weights(tmp / "A"), _weights(tmp / "S")
    assert all(torch.equal(a[k], s[k]) for k in a)  # sliced == uninterrupted


def test_unknown_stage_is_a_clear_error(chain, capsys):
    assert train_all.main(["--profile", "tiny", "--only", "talker"]) == 2
    assert "no stage 'talker' in profile tiny; its stages: thinker, vision" in capsys.readouterr().err


def test_report_asr_row_matches_the_evaluator_and_survives_no_pocketsphinx(tmp_path, monkeypatch, capsys):
    """Stage B's row is what scripts/evaluate.py asr says on the same rows; without pocketsphinx the
    baseline is a marked blank, not a crash."""
    import train_audio_enc
    from omni.cli import eval_asr, evaluate
    from omni.pipeline import report
    from tests.audio.test_asr import CLIPS, _asr_config
    cfg = _asr_config(tmp_path)
    assert train_audio_enc.main(["--config", str(cfg)]) == 0
    stage = StageRun("audio_enc", "B audio encoder", "train_audio_enc.py", str(cfg), "audio_enc")

    def no_pocketsphinx(*a, **k):
        raise ImportError("No module named 'pocketsphinx'")
    monkeypatch.setattr(eval_asr, "pocketsphinx_results", no_pocketsphinx)
    (row,) = report.asr_metrics(stage, read_raw(stage), 9, torch.device("cpu"), real_csv=tmp_path / "not_built.csv",
                                unseen_csv=tmp_path / "not_built.csv")
    assert row.baseline_value is None and row.met is None and "pocketsphinx baseline not measured" in row.note
    card = {"profile": "t", "built": "now", "n": 9, "machine": report.machine(),
            "stages": [{"title": "B", "status": "done", "wall_s": 1.0, "metrics": [report.asdict(row)]}]}
    assert "pocketsphinx (en-us) on the same clips: not measured" in report.markdown(card)
    capsys.readouterr()
    assert evaluate.main(["asr", "--ckpt", str(tmp_path / "ck" / "best"), "--csv", str(CLIPS), "--n", "9"]) == 0
    out = capsys.readouterr().out
    assert f"CER {row.value:.4f}" in out
    lo, hi = row.interval
    assert f"{lo:.3f}-{hi:.3f}" in out
    # once the real-speech and unseen-engine sets are built, a row each: n clips spread over it (here
    # the 9 real fixtures stand in for both)
    held, real, unseen = report.asr_metrics(stage, read_raw(stage), 4, torch.device("cpu"), real_csv=CLIPS,
                                            unseen_csv=CLIPS)
    assert held.name == "held-out CER, greedy (4 clips)" and real.name == "real people's CER, greedy (4 clips)"
    assert real.target == "below pocketsphinx" and real.interval is not None
    assert unseen.name == "unseen engine's (Festival) CER, greedy (4 clips)" and unseen.value == real.value


def test_report_vision_rows_per_source_with_their_own_sample_sizes():
    from omni.pipeline.metrics import vision_metrics, wilson
    val = {"i2t_r1": 0.7, "chance_r1": 0.02, "queries": 300.0, "hist_i2t_r1": 0.1,
           "scenes/i2t_r1": 0.85, "scenes/chance_r1": 0.01, "scenes/queries": 200.0, "hist_scenes/i2t_r1": 0.12,
           "emoji/i2t_r1": 0.4, "emoji/chance_r1": 0.04, "emoji/queries": 100.0, "hist_emoji/i2t_r1": 0.05}
    rows = {m.name.split(":")[0]: m for m in vision_metrics(val, 0.80)}
    assert set(rows) == {"all sources", "emoji", "scenes"}
    assert rows["scenes"].interval == wilson(170, 200) and rows["emoji"].interval == wilson(40, 100)
    assert rows["scenes"].target == ">= 0.80" and rows["scenes"].met          # the target is the scenes'
    assert rows["emoji"].target == "above the colour histogram" and rows["emoji"].met
    assert rows["all sources"].met is True and rows["all sources"].interval == wilson(210, 300)
    # one source: one row, which carries the target
    [only] = vision_metrics({"i2t_r1": 0.5, "chance_r1": 0.01, "queries": 50.0, "hist_i2t_r1": 0.2}, 0.80)
    assert only.target == ">= 0.80" and only.met is False and only.interval == wilson(25, 50)


def test_a_stage_that_stopped_early_resumes_when_its_patience_grows(tmp_path, monkeypatch, capsys):
    """The tuned patience (rescaled with the validation interval: tests/tools/test_autotune.py) is not in
    the fingerprint; a stage that converged under a shorter one resumes where it stopped, and is
    skipped once it has waited its new patience."""
    cfg = write_config(tmp_path, "thinker.json", train={
        "max_steps": 12, "val_freq": 1, "checkpoint_freq": 100, "lr": 1e-12, "warmup_steps": 0, "patience": 2,
        "save_dir": str(tmp_path / "A")})
    profile = Profile("tuned", str(tmp_path / "run"),
                      (StageRun("thinker", "A Thinker", "train_text.py", str(cfg), "thinker"),), (), tune=True)
    monkeypatch.setitem(PROFILES, "tuned", profile)
    budget = {"train.max_steps": 12, "train.val_freq": 1}
    monkeypatch.setattr(train_all, "tuned_budgets", lambda stages: {"thinker": budget})
    assert train_all.main(["--profile", "tuned", "--n", "5"]) == 0
    first = ckpt.load_train_state(tmp_path / "A")["progress"]["step"]
    assert first < 12   # no better held-out loss at a learning rate of ~0: it converged
    monkeypatch.setattr(train_all, "tuned_budgets", lambda stages: {"thinker": {**budget, "train.patience": 4}})
    capsys.readouterr()
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    assert ("resume: it stopped early after 2 validations without a better metric; its patience is now 4"
            in capsys.readouterr().out)
    assert train_all.main(["--profile", "tuned", "--n", "5"]) == 0
    command = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ ") and "train_text" in ln)
    assert "--resume" in command and "train.patience=4" in command
    second = ckpt.load_train_state(tmp_path / "A")["progress"]["step"]
    assert second == first + 2   # two more validations without a better metric, then converged again
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    assert "skip: unchanged" in capsys.readouterr().out


def test_a_tuned_profile_trains_the_budget_the_auto_tuner_plans(tmp_path, monkeypatch, capsys):
    """The default profile's kind: each stage's step budget comes from the auto-tuner on the data
    there is, is passed to the stage script and kept in the fingerprint."""
    from tests.conftest import SONNETS
    lines = [ln for ln in SONNETS.read_text().splitlines() if ln.strip()]
    (tmp_path / "corpus.txt").write_text("\n".join(lines[:30]) + "\n")
    thinker = write_config(tmp_path, "thinker.json", train={"max_steps": 4, "save_dir": str(tmp_path / "A"),
                                                            "batch_size": 8, "gradient_accumulation_steps": 4})
    profile = Profile("tuned", str(tmp_path / "run"),
                      (StageRun("thinker", "A Thinker", "train_text.py", str(thinker), "thinker"),), (), tune=True)
    monkeypatch.setitem(PROFILES, "tuned", profile)
    assert train_all.main(["--profile", "tuned", "--n", "5"]) == 0
    budget = _record(profile)["stages"]["thinker"]["budget"]
    assert set(budget) == {f"train.{k}" for k in ("max_steps", "max_epochs", "warmup_steps", "val_freq",
                                                  "checkpoint_freq")}
    steps = budget["train.max_steps"]
    assert 4 < steps < 100  # the corpus's epochs, not the config's 4 steps
    assert f"train.max_steps={steps}" in capsys.readouterr().out
    assert ckpt.load_train_state(tmp_path / "A")["progress"]["step"] == steps
    capsys.readouterr()
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "skip: unchanged" in out and f"train.max_steps={steps}" in out

    # a tuned patience follows from the hashed val_freq and config, and only decides when a run stops:
    # it reaches the stage script but leaves the stage unchanged
    monkeypatch.setattr(train_all, "tuned_budgets", lambda stages: {"thinker": {**budget, "train.patience": 9}})
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "skip: unchanged" in out and "train.patience=9" in out

    # a new budget (what more data gives: tests/tools/test_autotune.py) trains the stage again
    monkeypatch.setattr(train_all, "tuned_budgets",
                        lambda stages: {"thinker": {**budget, "train.max_steps": steps + 3}})
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    assert "train: step budget changed" in capsys.readouterr().out

    # data not built yet: --plan still plans, with the config's own budget, and says so
    monkeypatch.undo()
    monkeypatch.setitem(PROFILES, "tuned", profile)
    (tmp_path / "corpus.txt").unlink()
    assert train_all.main(["--profile", "tuned", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "not planned (its data is missing or empty)" in out and "A 4 steps x" in out


def test_report_card_shows_a_stage_partway_through_an_earlier_phase(tmp_path):
    """The Talker's stage trains the codec first: before the Talker's own folder exists, the card says
    how far the codec got instead of 'not trained'; a stage under way counts the running segment's time."""
    from omni.pipeline.report import stage_card
    cfg = tmp_path / "talker.json"
    cfg.write_text(json.dumps({"codec": {"train": {"save_dir": str(tmp_path / "codec")}},
                               "train": {"save_dir": str(tmp_path / "talker")}}))
    stage = StageRun("talker", "D codec + Talker", "train_talker.py", str(cfg), "talker")
    profile = Profile("p", str(tmp_path / "run"), (stage,), ())
    record = {"stages": {"talker": {"status": "interrupted"}}}
    card = stage_card(stage, profile, record, 1, torch.device("cpu"))
    assert card["status"] == "not trained"
    for step in (1, 2003):
        ckpt.append_metrics(tmp_path / "codec", {"event": "train", "step": step})
    card = stage_card(stage, profile, record, 1, torch.device("cpu"))
    assert card["status"] == f"interrupted: {tmp_path / 'codec'} at step 2,003" and card["wall_s"] is None
    # a stage under way: its wall time counts the segment running now
    record = {"stages": {"talker": {"status": "running", "wall_s": 60.0, "started": time.time() - 30}}}
    assert 89 < stage_card(stage, profile, record, 1, torch.device("cpu"))["wall_s"] < 120
