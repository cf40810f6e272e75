"""Stage A as a user runs it: the script, Ctrl-C, --resume, evaluation, and learning on real text."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from omni.engine import checkpoint as ckpt
from tests.conftest import ROOT, write_config


def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path):
    cfg = write_config(tmp_path, train={"max_steps": 100000, "checkpoint_freq": 100000, "val_freq": 100000})
    proc = subprocess.Popen([sys.executable, "train_text.py", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(ckpt.read_metrics(tmp_path / "ckpt")) < 5:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert "continue with --resume" in out
    state = ckpt.load_train_state(tmp_path / "ckpt")
    step = state["progress"]["step"]
    assert step >= 5 and metrics.is_file()
    code = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg), "--resume",
                           f"train.max_steps={step + 3}"], cwd=ROOT, capture_output=True, timeout=120).returncode
    assert code == 0
    assert ckpt.load_train_state(tmp_path / "ckpt")["progress"]["step"] == step + 3


def test_bad_config_key_exits_with_hint(tmp_path):
    cfg = write_config(tmp_path)
    r = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg), "train.lrr=0.1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "did you mean 'lr'" in r.stderr


@pytest.mark.slow
def test_learns_real_text_well_below_unigram(tmp_path):
    """Sonnets, a 2-layer model, 300 steps: validation loss must beat the unigram baseline by far."""
    from omni.config import load_config
    from omni.thinker.stage import TextStageConfig, load_streams, tokenizer_in, unigram_loss

    cfg_path = write_config(tmp_path, model={"ctx_len": 128, "dropout": 0.0},
                            train={"max_steps": 300, "val_freq": 300, "checkpoint_freq": 300, "lr": 3e-3,
                                   "warmup_steps": 20, "batch_size": 8, "gradient_accumulation_steps": 1,
                                   "val_batches": 50, "log_freq": 50})
    r = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config(cfg_path, TextStageConfig)
    tok = tokenizer_in(tmp_path / "ckpt")
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    baseline = unigram_loss(np.asarray(streams.train), np.asarray(streams.val), tok.vocab_size)
    val = [m["val_loss"] for m in ckpt.read_metrics(tmp_path / "ckpt") if m["event"] == "val"][-1]
    print(f"unigram {baseline:.3f} nats/token, model {val:.3f}")
    assert val < baseline - 0.7


def test_evaluate_text_reports_perplexity_and_bpb(tmp_path):
    cfg = write_config(tmp_path, train={"max_steps": 2})
    assert subprocess.run([sys.executable, "train_text.py", "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, timeout=120).returncode == 0
    held = tmp_path / "held.txt"
    held.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 20)
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "text", "--ckpt", str(tmp_path / "ckpt"),
                        "--file", str(held)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "perplexity" in r.stdout and "bits/byte" in r.stdout
