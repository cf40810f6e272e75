"""Fault injection for the engine (issue #37): one run per folder, a full disk during a save,
truncated and mixed-up checkpoint files, a save_dir that cannot be used, temp files of killed saves."""
import errno
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import train_text
from omni import files
from omni.config import TrainConfig
from omni.engine import checkpoint as ckpt
from omni.engine.lock import FolderLock, hold_folder
from omni.engine.runtime import Runtime
from omni.engine.training import Stage, fit
from omni.thinker.stage import TextStageConfig
from tests.conftest import ROOT, tiny_config, write_config


def _mse(model, batch):
    x, y = batch
    return ((model(x)[:, 0] - y) ** 2).mean(), {}


def _stage(model: nn.Module | None = None, config: dict | None = None, loss_fn=_mse) -> Stage:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    return Stage(name="toy", model=model or nn.Linear(4, 1), train_set=TensorDataset(x, x.sum(1)),
                 loss_fn=loss_fn, config=config or {})


def _cfg(save_dir: Path, **kw) -> TrainConfig:
    base = dict(batch_size=4, gradient_accumulation_steps=1, lr=0.05, weight_decay=0.0, warmup_steps=1,
                max_steps=2, max_epochs=100, max_grad_norm=10.0, val_freq=1000, checkpoint_freq=1000,
                precision="fp32", save_dir=str(save_dir), seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names no process
    return child.pid


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def sleeper():
    """A live process that is not a μOmni run."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child
    child.kill()
    child.wait()


# ----------------------------------------------------------------------------- 1. one run per folder


def test_a_live_holder_stops_a_second_run(tmp_path, sleeper):
    d = tmp_path / "run"
    d.mkdir()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"{d} is in use by another run (PID {sleeper.pid} ")):
        fit(_stage(), _cfg(d))
    assert not (d / ckpt.STATE_FILE).exists()  # nothing trained or written
    assert json.loads((d / ckpt.LOCK_FILE).read_text())["pid"] == sleeper.pid  # the holder's lock stays


def test_a_flock_holder_stops_a_second_run(tmp_path):
    """The real holder: another process with the flock (its PID written as a bare number)."""
    d = tmp_path / "run"
    d.mkdir()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
            "print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(d / ckpt.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.CheckpointError, match=f"PID {child.pid} "):
            fit(_stage(), _cfg(d))
    finally:
        child.kill()
        child.wait()
    fit(_stage(), _cfg(d))  # the kernel dropped the dead holder's flock: the folder is free again


def test_the_cli_exits_2_with_one_line_for_a_held_folder(tmp_path, sleeper, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    assert train_text.main(["--config", str(cfg)]) == 2
    [err] = _errors(capsys)
    assert f"PID {sleeper.pid}" in err and str(tmp_path / "ckpt") in err


def test_a_dead_holders_lock_is_stale(tmp_path, caplog):
    d = tmp_path / "run"
    d.mkdir()
    pid = _dead_pid()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING):
        assert fit(_stage(), _cfg(d))["status"] == "done"
    assert f"stale lock of PID {pid}" in caplog.text
    assert not (d / ckpt.LOCK_FILE).exists()  # released at the end


def test_the_lock_is_released_on_error_and_on_sigterm(tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process has its own SIGTERM handler, which hold_folder keeps")
    d = tmp_path / "run"

    def boom(model, batch):
        raise ValueError("a bug in the loss")

    with pytest.raises(ValueError):
        fit(_stage(loss_fn=boom), _cfg(d))
    assert not (d / ckpt.LOCK_FILE).exists()
    rt = Runtime(torch.device("cpu"), None)
    with pytest.raises(SystemExit) as stopped:
        with hold_folder(rt, d):
            assert (d / ckpt.LOCK_FILE).is_file()
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM and not (d / ckpt.LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_only_rank_0_locks(tmp_path, sleeper):
    """Ranks other than 0 write nothing, so they neither take nor wait for the lock."""
    d = tmp_path / "run"
    d.mkdir()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    with hold_folder(Runtime(torch.device("cpu"), None, rank=1, world_size=1), d):
        pass
    assert json.loads((d / ckpt.LOCK_FILE).read_text())["pid"] == sleeper.pid


def test_the_lock_nests_within_one_process(tmp_path):
    outer = FolderLock.acquire(tmp_path)
    fit(_stage(), _cfg(tmp_path))  # e.g. a caller that took the folder before building the stage
    assert (tmp_path / ckpt.LOCK_FILE).is_file()
    outer.release()
    assert not (tmp_path / ckpt.LOCK_FILE).exists()


# ----------------------------------------------------------------------------- 4b. a full disk


def _full_disk_writer(raise_what):
    """A torch.save / safetensors save_file that dies as on a full disk, half way through."""
    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")
        raise raise_what
    return save


def _no_space(what: Path) -> str:
    return re.escape(f"No space left on device while writing {what}")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("basic_ios::clear: iostream error")])
def test_a_full_disk_ends_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, error):
    d = tmp_path / "run"
    fit(_stage(), _cfg(d, max_steps=2))
    monkeypatch.setattr(torch, "save", _full_disk_writer(error))
    monkeypatch.setattr(files, "free_bytes", lambda folder: 4096)  # what a full disk has left
    with pytest.raises(ckpt.CheckpointError, match=_no_space(d / ckpt.STATE_FILE)):
        fit(_stage(), _cfg(d, max_steps=4), resume=True)
    monkeypatch.undo()
    assert ckpt.load_train_state(d)["progress"]["step"] == 2  # the previous checkpoint survived
    assert [p.name for p in d.iterdir() if ".tmp" in p.name] == []


def test_a_failed_write_with_room_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk_writer(RuntimeError("basic_ios::clear: iostream error")))
    with pytest.raises(ckpt.CheckpointError, match=r"could not write .*train_state.pt \(basic_ios"):
        ckpt.save_train_state({"step": 1}, tmp_path)


def test_full_disk_while_writing_weights_or_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "save_file", _full_disk_writer(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ckpt.CheckpointError, match=_no_space(tmp_path / ckpt.MODEL_FILE)):
        ckpt.save_weights(nn.Linear(2, 2), tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ckpt.METRICS_FILE))

    monkeypatch.setattr(ckpt, "open", full, raising=False)  # shadows the builtin in that module only
    with pytest.raises(ckpt.CheckpointError, match=_no_space(tmp_path / ckpt.METRICS_FILE)):
        ckpt.append_metrics(tmp_path, {"event": "train", "step": 1})


def test_atomic_write_names_the_target_of_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(files, "free_bytes", lambda folder: 0)

    def write(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("basic_ios::clear: iostream error")

    with pytest.raises(OSError) as raised:
        files.atomic_write(target, write)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


# ----------------------------------------------------------------------------- 5. bad folders and files


def test_a_save_dir_that_is_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("not a folder")
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"train.save_dir {f} is a file, not a folder")):
        fit(_stage(), _cfg(f))
    with pytest.raises(ckpt.CheckpointError, match="cannot create train.save_dir"):
        fit(_stage(), _cfg(f / "inside"))


def test_an_unwritable_save_dir_is_refused_before_training(tmp_path, monkeypatch):
    # tests run as root, where chmod does not stop a write: the check itself is what is tested here
    d = tmp_path / "run"
    d.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != d)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"train.save_dir {d} is not writable")):
        fit(_stage(), _cfg(d))
    assert list(d.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: checked above with os.access")
def test_a_read_only_save_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o555)
    with pytest.raises(ckpt.CheckpointError, match="is not writable"):
        fit(_stage(), _cfg(d))


def _run(d: Path) -> Path:
    fit(_stage(), _cfg(d, max_steps=2))
    return d


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_truncated_or_corrupt_file_is_one_clear_error(tmp_path, name, damage):
    d = _run(tmp_path / "run")
    data = (d / name).read_bytes()
    garbage = random.Random(0).randbytes(len(data))
    (d / name).write_bytes(data[:len(data) // 2] if damage == "truncate" else garbage)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"{d / name} is truncated or corrupt")):
        if name == ckpt.MODEL_FILE:
            ckpt.load_weights(nn.Linear(4, 1), d)
        else:
            fit(_stage(), _cfg(d, max_steps=4), resume=True)


def test_any_damage_to_the_train_state_is_the_same_clear_error(tmp_path):
    """Random bytes, flipped bytes and cuts each raise what their bytes happen to trigger inside
    torch.load (IndexError, BadZipFile, UnicodeDecodeError...); the user must see a CheckpointError
    naming the file and what to do."""
    state = {k: {} for k in ckpt.STATE_KEYS} | {"model": {"w": torch.randn(30, 30)}}
    torch.save(state, tmp_path / ckpt.STATE_FILE)
    good = (tmp_path / ckpt.STATE_FILE).read_bytes()
    for seed in range(150):
        r, b = random.Random(seed), bytearray(good)
        if seed % 3 == 0:
            b = bytearray(r.randbytes(len(good)))
        elif seed % 3 == 1:
            for _ in range(8):
                b[r.randrange(len(b))] = r.getrandbits(8)
        else:
            b = b[:r.randrange(len(b))]
        (tmp_path / ckpt.STATE_FILE).write_bytes(bytes(b))
        try:
            ckpt.load_train_state(tmp_path)  # bytes flipped inside tensor data go unnoticed by torch
        except ckpt.CheckpointError as e:
            assert str(tmp_path / ckpt.STATE_FILE) in str(e) and "start over" in str(e), (seed, e)


def test_a_corrupt_config_json(tmp_path):
    (tmp_path / ckpt.CONFIG_FILE).write_text('{"model": {"d_model": 6')
    with pytest.raises(ckpt.CheckpointError, match=r"config.json:1:\d+: invalid JSON"):
        ckpt.read_config(tmp_path)
    (tmp_path / ckpt.CONFIG_FILE).write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ckpt.CheckpointError, match="not UTF-8"):
        ckpt.read_config(tmp_path)


def _raw(name: str) -> dict:
    return json.loads((ROOT / "configs" / name).read_text())


def test_another_stages_config_names_both_stages(tmp_path):
    ckpt.save_config(_raw("vision_tiny.json"), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=r"is a config of Stage C \(vision\) \(train_vision.py\), "
                                                   r"not of Stage A \(Thinker\): point at a folder that train_text.py wrote"):
        ckpt.read_stage_config(tmp_path, TextStageConfig)
    ckpt.save_config({"model": {}}, tmp_path)  # no stage's config at all
    with pytest.raises(ckpt.CheckpointError, match="is not a config of Stage A"):
        ckpt.read_stage_config(tmp_path, TextStageConfig)
    ckpt.save_config(tiny_config(tmp_path), tmp_path)
    assert ckpt.read_stage_config(tmp_path, TextStageConfig).model.d_model == 64


def test_a_loader_given_another_stages_folder_names_both(tmp_path):
    from omni.audio.stage import load_asr
    ckpt.save_config(tiny_config(tmp_path), tmp_path)  # a Stage A folder given where Stage B's belongs
    with pytest.raises(ckpt.CheckpointError, match=r"is a config of Stage A \(Thinker\) \(train_text.py\), not "
                                                   r"of Stage B \(audio encoder\): point at a folder that train_audio_enc.py"):
        load_asr(tmp_path, torch.device("cpu"))


def test_resume_with_a_changed_model_shape_is_one_clear_error(tmp_path):
    d = _run(tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"does not fit this model \(2 of another shape \(e.g. bias: "
                                                   r"\[1\] saved, \[2\] now\)\).*--overwrite"):
        fit(_stage(nn.Linear(4, 2)), _cfg(d, max_steps=4), resume=True)
    with pytest.raises(ckpt.CheckpointError, match="2 tensors missing .*2 unknown"):
        fit(_stage(nn.Sequential(nn.Linear(4, 1))), _cfg(d, max_steps=4), resume=True)


def test_resume_with_another_stages_state_names_it(tmp_path):
    d = tmp_path / "run"
    fit(_stage(config=_raw("vision_tiny.json")), _cfg(d, max_steps=2))
    with pytest.raises(ckpt.CheckpointError, match=r"holds a run of Stage C \(vision\) \(train_vision.py\), "
                                                   r"not of Stage A \(Thinker\)"):
        fit(_stage(nn.Linear(4, 2), config=tiny_config(tmp_path)), _cfg(d, max_steps=4), resume=True)


def test_the_cli_resume_with_another_model_size_exits_2(tmp_path, capsys):
    cfg = write_config(tmp_path, train={"max_steps": 2})
    assert train_text.main(["--config", str(cfg)]) == 0
    capsys.readouterr()
    assert train_text.main(["--config", str(cfg), "model.d_ff=96", "--resume"]) == 2
    [err] = _errors(capsys)
    assert "does not fit this model" in err and "--overwrite" in err


# ----------------------------------------------------------------------------- 7. temp files of killed saves


def test_temp_files_of_killed_saves_are_swept_at_start(tmp_path, sleeper, caplog):
    d = tmp_path / "run"
    (d / "best").mkdir(parents=True)
    dead = _dead_pid()
    (d / f".{ckpt.STATE_FILE}.tmp{dead}").write_bytes(b"x" * 1000)
    (d / "best" / f".{ckpt.MODEL_FILE}.tmp{dead}").write_bytes(b"x" * 234)
    live = d / f".{ckpt.MODEL_FILE}.tmp{sleeper.pid}"  # another process's write in progress
    live.write_bytes(b"x" * 10)
    keep = d / "notes.tmp1"  # not a name atomic_write makes
    keep.write_text("mine")
    with caplog.at_level(logging.INFO):
        fit(_stage(), _cfg(d))
    assert "removed 2 temp files left by killed saves (1,234 bytes freed)" in caplog.text
    assert live.exists() and keep.exists()
    assert not (d / f".{ckpt.STATE_FILE}.tmp{dead}").exists()
    assert not (d / "best" / f".{ckpt.MODEL_FILE}.tmp{dead}").exists()


def test_a_refused_run_sweeps_nothing(tmp_path, sleeper):
    d = tmp_path / "run"
    d.mkdir()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    orphan = d / f".{ckpt.STATE_FILE}.tmp{_dead_pid()}"
    orphan.write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointError):
        fit(_stage(), _cfg(d))
    assert orphan.exists()  # the folder belongs to the live run


def test_average_weights_skips_the_lock_and_temp_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        ckpt.save_weights(nn.Linear(2, 2), d)
    (a / ckpt.LOCK_FILE).write_text("{}")
    (a / ".config.json.tmp1").write_text("{}")
    ckpt.average_weights([a, b], tmp_path / "mean")
    assert not any(p.name.startswith(".") for p in (tmp_path / "mean").iterdir())


def test_stage_script_refuses_a_file_as_save_dir_before_writing_anything(tmp_path, capsys):
    """run_stage holds the folder from the start (Stage A writes its tokenizer before fit)."""
    from tests.conftest import write_config

    import train_text
    target = tmp_path / "afile"
    target.write_text("not a folder")
    assert train_text.main(["--config", str(write_config(tmp_path, train={"save_dir": str(target)}))]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and target.read_text() == "not a folder"
