import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import train_text
from omni.config import TrainConfig
from omni.engine import checkpoint as ckpt
from omni.engine.optim import lr_at
from omni.engine.runtime import unwrap
from omni.engine.training import TrainingError, fit
from tests.conftest import SONNETS, write_config
from tests.engine.toy_run import mse, toy_cfg, toy_stage


def _train(cfg_path, *extra):
    return train_text.main(["--config", str(cfg_path), *extra])


def test_resume_is_bitwise_identical(tmp_path):
    cfg = write_config(tmp_path)  # dropout 0.1: the RNG state must be restored too
    assert _train(cfg, f"train.save_dir={tmp_path / 'a'}") == 0
    assert _train(cfg, f"train.save_dir={tmp_path / 'b'}", "--stop-at", "2") == 0
    assert ckpt.read_metrics(tmp_path / "b")[-1]["step"] == 2
    assert _train(cfg, f"train.save_dir={tmp_path / 'b'}", "--resume") == 0
    a, b = load_file(str(tmp_path / "a" / ckpt.MODEL_FILE)), load_file(str(tmp_path / "b" / ckpt.MODEL_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [(r["step"], r["loss"]) for r in ckpt.read_metrics(tmp_path / "a") if r["event"] == "train"]
    lb = [(r["step"], r["loss"]) for r in ckpt.read_metrics(tmp_path / "b") if r["event"] == "train"]
    assert la == lb and [s for s, _ in la] == [1, 2, 3, 4]
    sa = ckpt.load_train_state(tmp_path / "a")
    sb = ckpt.load_train_state(tmp_path / "b")
    assert sa["progress"] == sb["progress"]


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys):
    cfg = write_config(tmp_path, train={"max_steps": 2})
    assert _train(cfg) == 0
    before = (tmp_path / "ckpt" / ckpt.MODEL_FILE).read_bytes()
    assert _train(cfg) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / ckpt.MODEL_FILE).read_bytes() == before
    assert _train(cfg, "--overwrite") == 0


def test_resume_without_checkpoint_is_clear(tmp_path, capsys):
    assert _train(write_config(tmp_path), "--resume") == 2
    assert "no train_state.pt" in capsys.readouterr().err


def test_checkpoint_layout(tmp_path):
    cfg = write_config(tmp_path)
    assert _train(cfg) == 0
    d = tmp_path / "ckpt"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_state.pt", "metrics.jsonl"):
        assert (d / name).is_file(), name
    assert (d / "best" / "model.safetensors").is_file()
    records = ckpt.read_metrics(d)
    assert {r["event"] for r in records} == {"start", "train", "val", "end"}
    assert records[-1]["event"] == "end" and records[-1]["status"] == "done"   # how the run ended
    start = records[0]  # the run says what it computed in, and why
    assert start["event"] == "start" and start["precision"] == "fp32" and start["precision_reason"]
    assert all(r["rss_peak_gib"] > 0 for r in records if r["event"] == "train")
    saved = ckpt.read_config(d)
    assert saved["model"]["vocab_size"] <= 512  # the tokenizer's real size, so the model rebuilds


def test_bad_corpus_lines_survive(tmp_path, caplog):
    corpus = tmp_path / "corpus.txt"
    lines = SONNETS.read_bytes().splitlines()
    bad = [b"", b"\xff\xfe\xfd not utf-8", b"   ", b"\xc3\x28"]
    corpus.write_bytes(b"\n".join(l for pair in zip(lines, bad * 40) for l in pair) + b"\n")
    cfg = write_config(tmp_path, train={"max_steps": 2})
    with caplog.at_level("WARNING"):
        assert _train(cfg) == 0
    assert "lines skipped (empty or not UTF-8)" in caplog.text


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("\n\n\n")
    cfg = write_config(tmp_path)
    code = _train(cfg)
    assert code == 2 and "corpus.txt" in capsys.readouterr().err


def test_lr_schedule():
    cfg = TrainConfig(batch_size=1, gradient_accumulation_steps=1, lr=1.0, weight_decay=0, warmup_steps=10,
                      max_steps=110, max_epochs=1, max_grad_norm=1, val_freq=1, checkpoint_freq=1,
                      precision="fp32", save_dir="x", seed=0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def _toy_stage(tmp_path, loss_fn, n=64):
    return toy_stage(loss_fn=loss_fn, n=n)


def _toy_cfg(tmp_path, **kw):
    kw = {"save_dir": tmp_path / "toy", "max_steps": 20, "max_bad_steps": 3, **kw}
    return toy_cfg(kw.pop("save_dir"), **kw)


def test_non_finite_steps_are_skipped_then_stop(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(model, batch):
        calls["n"] += 1
        loss, logs = mse(model, batch)
        return (loss * math.nan if calls["n"] in (3, 4) else loss), logs

    result = fit(_toy_stage(tmp_path, sometimes_nan), _toy_cfg(tmp_path))
    assert result["step"] == 20 and result["skipped_steps"] == 2
    skips = [r for r in ckpt.read_metrics(tmp_path / "toy") if r["event"] == "skip"]
    assert len(skips) == 2

    always_nan = lambda m, b: (mse(m, b)[0] * math.nan, {})  # noqa: E731
    with pytest.raises(TrainingError, match="3 steps in a row"):
        fit(_toy_stage(tmp_path, always_nan), _toy_cfg(tmp_path, save_dir=str(tmp_path / "nan")))


def test_accumulation_matches_bigger_batch(tmp_path):
    a = _toy_stage(tmp_path, mse)
    fit(a, _toy_cfg(tmp_path, batch_size=8, max_steps=5, save_dir=str(tmp_path / "a")))
    b = _toy_stage(tmp_path, mse)
    fit(b, _toy_cfg(tmp_path, batch_size=4, gradient_accumulation_steps=2, max_steps=5,
                    save_dir=str(tmp_path / "b")))
    assert torch.allclose(a.model.weight, b.model.weight, atol=1e-6)


def test_too_few_samples_for_a_batch(tmp_path):
    with pytest.raises(TrainingError, match="fewer than one global batch"):
        fit(_toy_stage(tmp_path, mse, n=3), _toy_cfg(tmp_path))


@pytest.mark.slow
def test_compiled_run_saves_plain_weights(tmp_path):
    cfg = write_config(tmp_path, model={"dropout": 0.0}, train={"max_steps": 2})
    assert _train(cfg, f"train.save_dir={tmp_path / 'eager'}") == 0
    assert _train(cfg, f"train.save_dir={tmp_path / 'compiled'}", "train.compile=true") == 0
    eager = load_file(str(tmp_path / "eager" / ckpt.MODEL_FILE))
    compiled = load_file(str(tmp_path / "compiled" / ckpt.MODEL_FILE))
    assert eager.keys() == compiled.keys()  # no "_orig_mod." prefixes: saved from the raw module
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-4) for k in eager)


def test_resume_with_another_best_metric_keeps_the_old_best(tmp_path):
    def stage(metric):
        s = _toy_stage(tmp_path, mse)
        s.evaluate, s.best_metric = (lambda m: {"a": 1.0, "b": 5.0}), metric
        return s

    def step_of(d):
        with safe_open(str(d / ckpt.MODEL_FILE), "pt") as f:
            return f.metadata()["step"]

    d = tmp_path / "toy"
    fit(stage("a"), _toy_cfg(tmp_path, max_steps=4, val_freq=2))
    assert step_of(d / "best") == "2"
    # b (5.0) compared with a's best (1.0) would never count as better: best/ would freeze at step 2
    fit(stage("b"), _toy_cfg(tmp_path, max_steps=8, val_freq=2), resume=True)
    assert step_of(d / "best_a") == "2"          # the old best is kept under its metric's name
    assert step_of(d / "best") == "6"            # the first validation after the resume
    fit(stage("b"), _toy_cfg(tmp_path, max_steps=10, val_freq=2), resume=True)
    assert step_of(d / "best") == "6" and not (d / "best_b").exists()  # same metric: nothing retired


def test_unwrap_returns_the_module_inside_torch_compile():
    model = nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(torch.compile(model)) is model  # wrapping only: nothing is compiled until called


def test_deadline_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    """--deadline (train_all --hours) stops after the step that crosses it, exit 75, and --resume
    ends where an uninterrupted run ends."""
    cfg = write_config(tmp_path)
    assert _train(cfg, f"train.save_dir={tmp_path / 'a'}") == 0
    assert _train(cfg, f"train.save_dir={tmp_path / 'b'}", "--deadline", "0") == 75
    assert ckpt.load_train_state(tmp_path / "b")["progress"]["step"] == 1
    assert _train(cfg, f"train.save_dir={tmp_path / 'b'}", "--resume") == 0
    a, b = load_file(str(tmp_path / "a" / ckpt.MODEL_FILE)), load_file(str(tmp_path / "b" / ckpt.MODEL_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patience_stops_when_the_held_out_metric_stalls(tmp_path):
    """train.patience: a run whose validation loss stops improving ends early; a learning rate of
    ~0 means no evaluation after the first is better."""
    cfg = write_config(tmp_path, train={"max_steps": 12, "val_freq": 1, "checkpoint_freq": 100, "lr": 1e-12,
                                        "warmup_steps": 0, "patience": 2})
    assert _train(cfg) == 0
    state = ckpt.load_train_state(tmp_path / "ckpt")["progress"]
    assert state["step"] < 12 and state["since_best"] >= 2


class _Killed(Exception):
    """Stands for a kill no handler sees (SIGKILL, a lost machine): nothing runs after it."""


def test_checkpoint_minutes_bound_what_a_killed_run_loses(tmp_path):
    """train.checkpoint_minutes saves between checkpoint_freq steps once that much time has passed;
    the run resumed from it ends where an uninterrupted one ends."""
    def dies_at(step):
        calls = {"n": 0}

        def loss(model, batch):
            calls["n"] += 1
            if calls["n"] == step:
                raise _Killed
            return mse(model, batch)
        return loss

    for minutes, kept in ((0.0, None), (1e-9, 4)):   # 1e-9 minutes: a save is due after every step
        d = tmp_path / f"m{minutes}"
        with pytest.raises(_Killed):
            fit(_toy_stage(tmp_path, dies_at(5)), _toy_cfg(tmp_path, max_steps=8, save_dir=str(d),
                                                           checkpoint_minutes=minutes))
        assert (ckpt.load_train_state(d)["progress"]["step"] if ckpt.has_train_state(d) else None) == kept
    fit(_toy_stage(tmp_path, mse), _toy_cfg(tmp_path, max_steps=8, save_dir=str(tmp_path / "m1e-09")), resume=True)
    fit(_toy_stage(tmp_path, mse), _toy_cfg(tmp_path, max_steps=8, save_dir=str(tmp_path / "whole")))
    a, b = (load_file(str(tmp_path / n / ckpt.MODEL_FILE)) for n in ("whole", "m1e-09"))
    assert all(torch.equal(a[k], b[k]) for k in a)
