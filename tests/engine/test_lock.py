"""One run per folder (omni/engine/lock.py), and the sweep of temp files killed saves left behind."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch

import train_text
from omni.engine import checkpoint as ckpt
from omni.engine.lock import FolderLock, hold_folder
from omni.engine.runtime import Runtime
from omni.engine.training import fit
from tests.conftest import write_config
from tests.engine.toy_run import cli_errors, dead_pid, toy_cfg, toy_stage


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
        fit(toy_stage(), toy_cfg(d))
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
            fit(toy_stage(), toy_cfg(d))
    finally:
        child.kill()
        child.wait()
    fit(toy_stage(), toy_cfg(d))  # the kernel dropped the dead holder's flock: the folder is free again


def test_the_cli_exits_2_with_one_line_for_a_held_folder(tmp_path, sleeper, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    assert train_text.main(["--config", str(cfg)]) == 2
    [err] = cli_errors(capsys)
    assert f"PID {sleeper.pid}" in err and str(tmp_path / "ckpt") in err


def test_a_dead_holders_lock_is_stale(tmp_path, caplog):
    d = tmp_path / "run"
    d.mkdir()
    pid = dead_pid()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING):
        assert fit(toy_stage(), toy_cfg(d))["status"] == "done"
    assert f"stale lock of PID {pid}" in caplog.text
    assert not (d / ckpt.LOCK_FILE).exists()  # released at the end


def test_the_lock_is_released_on_error_and_on_sigterm(tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this test process has its own SIGTERM handler, which hold_folder keeps")
    d = tmp_path / "run"

    def boom(model, batch):
        raise ValueError("a bug in the loss")

    with pytest.raises(ValueError):
        fit(toy_stage(loss_fn=boom), toy_cfg(d))
    assert not (d / ckpt.LOCK_FILE).exists()
    rt = Runtime(torch.device("cpu"), None)
    with pytest.raises(SystemExit) as stopped, hold_folder(rt, d):
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
    fit(toy_stage(), toy_cfg(tmp_path))  # e.g. a caller that took the folder before building the stage
    assert (tmp_path / ckpt.LOCK_FILE).is_file()
    outer.release()
    assert not (tmp_path / ckpt.LOCK_FILE).exists()


# ----------------------------------------------------------------------------- 7. temp files of killed saves


def test_temp_files_of_killed_saves_are_swept_at_start(tmp_path, sleeper, caplog):
    d = tmp_path / "run"
    (d / "best").mkdir(parents=True)
    dead = dead_pid()
    (d / f".{ckpt.STATE_FILE}.tmp{dead}").write_bytes(b"x" * 1000)
    (d / "best" / f".{ckpt.MODEL_FILE}.tmp{dead}").write_bytes(b"x" * 234)
    live = d / f".{ckpt.MODEL_FILE}.tmp{sleeper.pid}"  # another process's write in progress
    live.write_bytes(b"x" * 10)
    keep = d / "notes.tmp1"  # not a name atomic_write makes
    keep.write_text("mine")
    with caplog.at_level(logging.INFO):
        fit(toy_stage(), toy_cfg(d))
    assert "removed 2 temp files left by killed saves (1,234 bytes freed)" in caplog.text
    assert live.exists() and keep.exists()
    assert not (d / f".{ckpt.STATE_FILE}.tmp{dead}").exists()
    assert not (d / "best" / f".{ckpt.MODEL_FILE}.tmp{dead}").exists()


def test_a_refused_run_sweeps_nothing(tmp_path, sleeper):
    d = tmp_path / "run"
    d.mkdir()
    (d / ckpt.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    orphan = d / f".{ckpt.STATE_FILE}.tmp{dead_pid()}"
    orphan.write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointError):
        fit(toy_stage(), toy_cfg(d))
    assert orphan.exists()  # the folder belongs to the live run


