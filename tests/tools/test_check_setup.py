"""scripts/check_setup.py on a temporary project layout: what passes, what fails, and the fixes."""
import importlib.metadata
import importlib.util
import json
import shutil
import sys

import pytest

from tests.conftest import ROOT, SONNETS, tiny_config

spec = importlib.util.spec_from_file_location("check_setup", ROOT / "scripts" / "check_setup.py")
check_setup = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = check_setup  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(check_setup)


@pytest.fixture
def project(tmp_path):
    """A root with Stage A's config and data (paths relative to the root, as in the repo)."""
    (tmp_path / "data" / "text").mkdir(parents=True)
    for name in ("production_corpus.txt", "production_val.txt", "tiny_corpus.txt"):
        shutil.copy(SONNETS, tmp_path / "data" / "text" / name)
    cfg = tiny_config(tmp_path, data={"train_file": "data/text/production_corpus.txt",
                                      "val_file": "data/text/production_val.txt"},
                      train={"save_dir": "checkpoints/thinker_tiny"})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "thinker_tiny.json").write_text(json.dumps(cfg, indent=2))
    return tmp_path


def _rows(root, stage):
    return {r.what: r for r in check_setup.run_checks(root, [stage]) if r.stage == stage}


def test_ready_stage_passes(project, capsys):
    assert check_setup.main(["--stage", "A", "--root", str(project)]) == 0
    out = capsys.readouterr().out
    assert "loads as TextStageConfig" in out and "ready for stage A" in out
    assert "not trained yet" in out and "python train_text.py --config configs/thinker_tiny.json" in out


def test_missing_production_data_fails_with_fix(project, capsys):
    (project / "data" / "text" / "production_corpus.txt").unlink()
    row = _rows(project, "A")["data.train_file"]
    assert row.status == "FAIL" and "synthetic data/text/tiny_corpus.txt exists" in row.detail
    assert "download_production_text.py" in row.fix and "data.train_file=data/text/tiny_corpus.txt" in row.fix
    assert check_setup.main(["--stage", "A", "--root", str(project)]) == 1
    assert "fix: python scripts/download_production_text.py" in capsys.readouterr().out


def test_bad_config_fails_with_the_loaders_message(project):
    path = project / "configs" / "thinker_tiny.json"
    raw = json.loads(path.read_text())
    raw["train"]["lrr"] = raw["train"].pop("lr")
    path.write_text(json.dumps(raw))
    row = _rows(project, "A")["configs/thinker_tiny.json"]
    assert row.status == "FAIL" and "did you mean 'lr'" in row.detail


def test_missing_config_fails(project):
    assert _rows(project, "B")["configs/audio_enc_tiny.json"].status == "FAIL"
    assert check_setup.main(["--stage", "B", "--root", str(project)]) == 1


def test_missing_checkpoint_names_the_stage_that_writes_it(project, monkeypatch):
    cfg = tiny_config(project, data={"train_file": "data/text/tiny_corpus.txt"}, train={"save_dir": "checkpoints/x"})
    cfg["model"]["thinker_ckpt"] = "checkpoints/thinker_tiny/best"
    (project / "configs" / "x.json").write_text(json.dumps(cfg))
    monkeypatch.setitem(check_setup.STAGES, "C", ("test stage", "configs/x.json", "train_x.py"))
    row = _rows(project, "C")["model.thinker_ckpt"]
    assert row.status == "FAIL" and "stage A: python train_text.py --config configs/thinker_tiny.json" in row.fix
    (project / "checkpoints" / "thinker_tiny" / "best").mkdir(parents=True)
    (project / "checkpoints" / "thinker_tiny" / "best" / "model.safetensors").write_bytes(b"x")
    assert _rows(project, "C")["model.thinker_ckpt"].status == "OK"


def test_packages_missing_or_wrong_version_fail(monkeypatch):
    real_find, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tokenizers" else real_find(n, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "1.0.0" if d == "librosa" else real_version(d))
    rows = {r.what: r for r in check_setup.check_packages()}
    assert rows["tokenizers"].status == "FAIL" and rows["tokenizers"].fix == "pip install -r requirements.txt"
    assert rows["librosa"].status == "FAIL" and "librosa>=0.10,<1.0" in rows["librosa"].fix
    assert rows["numpy"].status == "OK"


def test_missing_optional_tools_only_warn(project, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rows = {r.what: r for r in check_setup.check_tools()}
    assert rows["espeak-ng"].status == "WARN" and rows["espeak-ng"].fix == "sudo apt-get install espeak-ng"
    assert "tesseract-ocr" in rows["tesseract"].fix
    assert check_setup.main(["--stage", "A", "--root", str(project)]) == 0


def test_a_stage_folder_says_whether_its_run_finished(tmp_path):
    """run_state reads how the run ended (metrics.jsonl's end record) and whether one trains there now
    (its lock names a live process)."""
    import os
    import subprocess

    import train_text
    from omni.engine import checkpoint as ckpt
    from tests.conftest import write_config

    cfg = write_config(tmp_path, train={"max_steps": 3})
    d = tmp_path / "ckpt"
    assert check_setup.run_state(d) == ("not trained yet", "")
    assert train_text.main(["--config", str(cfg), "--stop-at", "2"]) == 0
    state, fix = check_setup.run_state(d)
    assert state == "stopped part-way at step 2 (stopped): continue it" and fix == " --resume"
    assert train_text.main(["--config", str(cfg), "--resume"]) == 0
    assert check_setup.run_state(d) == ("trained (done at step 3)", None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": child.pid, "since": "now"}))
        assert check_setup.run_state(d) == (f"being trained now (PID {child.pid}, since now)", None)
    finally:
        child.kill()
        child.wait()
    assert check_setup.run_state(d)[0] == "trained (done at step 3)"   # a dead holder is no run
    (d / ckpt.METRICS_FILE).write_text("")   # a log from before the end record
    assert check_setup.run_state(d)[0].startswith("has weights") and os.path.exists(d / ckpt.MODEL_FILE)
