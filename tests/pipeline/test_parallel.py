"""train_all --jobs: independent stages train side by side, a stage waits for the checkpoints it
reads, a failed stage stops only what depends on it, and freed threads go to a running stage."""
from __future__ import annotations

import json
import signal

import pytest

from omni.cli import train_all
from omni.engine import checkpoint as ckpt
from omni.pipeline.parallel import Job, Scheduler, dependencies
from omni.pipeline.profiles import PROFILES, Profile, StageRun
from omni.pipeline.runner import RECORD
from tests.conftest import write_config
from tests.vision.test_vision import _vision_config


def test_the_default_profile_dependencies_are_read_from_its_configs():
    deps = dependencies(list(PROFILES["default"].stages))
    assert deps["thinker"] == deps["audio_enc"] == deps["talker"] == set()
    assert deps["vision"] == {"thinker"}
    assert deps["sft"] >= {"thinker", "audio_enc", "vision"}


@pytest.fixture
def three(tmp_path, monkeypatch):
    """A Thinker (A), a second Thinker nothing reads (B, 2 steps), and a vision stage reading A."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # one thread each while two run
    a = write_config(tmp_path, "a.json", train={"max_steps": 60, "save_dir": str(tmp_path / "A"), "val_freq": 30})
    b = write_config(tmp_path, "b.json", train={"max_steps": 2, "save_dir": str(tmp_path / "B")})
    vision = _vision_config(tmp_path, tmp_path / "A", n_scenes=24)
    profile = Profile("three", str(tmp_path / "run"), (
        StageRun("thinker", "A Thinker", "train_text.py", str(a), "thinker"),
        StageRun("second", "B second Thinker", "train_text.py", str(b), "thinker"),
        StageRun("vision", "C vision encoder", "train_vision.py", str(vision), "vision")), ())
    monkeypatch.setitem(PROFILES, "three", profile)
    return profile, tmp_path


def _stages(profile: Profile) -> dict:
    return json.loads((train_all.ROOT / profile.run_dir / RECORD).read_text())["stages"]


def test_jobs_run_independent_stages_together_and_wait_for_inputs(three, capsys):
    profile, tmp = three
    b = json.loads((tmp / "b.json").read_text())
    (tmp / "b.json").write_text(json.dumps({**b, "train": {**b["train"], "max_stepz": 2}}))  # a bad key
    assert train_all.main(["--profile", "three", "--jobs", "2", "--n", "5"]) == 2
    out, err = capsys.readouterr()
    rec = _stages(profile)
    # B failed; A and the stage that reads A went on
    assert {k: v["status"] for k, v in rec.items()} == {"thinker": "done", "second": "failed", "vision": "done"}
    assert "B second Thinker failed" in err and "max_stepz" in out  # its log's end on the terminal
    a, v = rec["thinker"], rec["vision"]
    assert rec["second"]["started"] < a["ended"]  # started beside A, not after it
    assert v["started"] >= a["ended"]  # C read A's final checkpoint
    log = (tmp / "run" / "logs" / "thinker.log").read_text()
    # B ended while A ran and C waited for A: A was stopped with a checkpoint and resumed on both threads
    assert "OMP_NUM_THREADS=1 train_text.py" in log and "OMP_NUM_THREADS=2 train_text.py" in log
    starts = [r for r in ckpt.read_metrics(tmp / "A") if r["event"] == "start"]
    assert [r["threads"] for r in starts] == [1, 2] and 0 < starts[1]["step"] < 60
    assert ckpt.load_train_state(tmp / "A")["progress"]["step"] == 60

    (tmp / "b.json").write_text(json.dumps(b))
    assert train_all.main(["--profile", "three", "--jobs", "2", "--n", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count(": skip (unchanged since") == 2 and "B second Thinker: train" in out
    assert {v["status"] for v in _stages(profile).values()} == {"done"}
    assert (tmp / "run" / "REPORT.md").is_file()
    assert train_all.main(["--profile", "three", "--plan", "--jobs", "2"]) == 0
    assert "one stage at a time (with --jobs 2" in capsys.readouterr().out


def test_jobs_must_be_positive(three, capsys):
    assert train_all.main(["--profile", "three", "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err


class _Child:
    def __init__(self):
        self.signals = []

    def send_signal(self, sig):
        self.signals.append(sig)


def test_no_thread_handover_after_a_ctrl_c(three, monkeypatch):
    """A stage ended by Ctrl-C (interrupted) frees its threads, but the stages still running got the
    same Ctrl-C: one more SIGINT to hand them the threads would abort them without a checkpoint."""
    profile, tmp = three
    sched = Scheduler(list(profile.stages[:2]), 2, None, None, tmp / "run", {"stages": {}}, print)
    monkeypatch.setattr(sched, "_training", lambda job: True)
    child = _Child()
    sched.running["thinker"] = Job(profile.stages[0], child, [], None, threads=1, t0=0.0)
    sched.status["second"] = "interrupted"
    sched._regrow()
    assert child.signals == []
    sched.status["second"] = "done"  # a stage that finished: its threads go to the running one
    sched._regrow()
    assert child.signals == [signal.SIGINT]
