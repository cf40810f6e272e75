"""A 2-process gloo DDP run must train like one process with the same global batch."""
import os
import subprocess
import sys

import pytest

from omni.engine import checkpoint as ckpt
from tests.conftest import ROOT, write_config


def _losses(d):
    return [r["loss"] for r in ckpt.read_metrics(d) if r["event"] == "train"]


def test_ddp_two_processes_match_single_process(tmp_path):
    # dropout 0 so both runs draw no random numbers; global batch 4 x accumulation 2 in both
    cfg = write_config(tmp_path, model={"dropout": 0.0}, train={"max_steps": 3, "val_freq": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg),
                             f"train.save_dir={tmp_path / 'one'}", "train.batch_size=4"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train_text.py", "--config", str(cfg), f"train.save_dir={tmp_path / 'two'}",
                          "train.batch_size=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=1e-4)
    val_one = [r["val_loss"] for r in ckpt.read_metrics(tmp_path / "one") if r["event"] == "val"]
    val_two = [r["val_loss"] for r in ckpt.read_metrics(tmp_path / "two") if r["event"] == "val"]
    assert val_one == pytest.approx(val_two, rel=1e-4)
    assert ckpt.load_train_state(tmp_path / "two")["world_size"] == 2
