"""Fault injection for the engine (issue #37): a full disk during a save, truncated and mixed-up
checkpoint files, a save_dir that cannot be used. One run per folder and the temp-file sweep: test_lock.py."""
import errno
import json
import os
import random
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import train_text
from omni import files
from omni.engine import checkpoint as ckpt
from omni.engine.training import fit
from omni.thinker.stage import TextStageConfig
from tests.conftest import ROOT, tiny_config, write_config
from tests.engine.toy_run import cli_errors, toy_cfg, toy_stage

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
    fit(toy_stage(), toy_cfg(d, max_steps=2))
    monkeypatch.setattr(torch, "save", _full_disk_writer(error))
    monkeypatch.setattr(files, "free_bytes", lambda folder: 4096)  # what a full disk has left
    with pytest.raises(ckpt.CheckpointError, match=_no_space(d / ckpt.STATE_FILE)):
        fit(toy_stage(), toy_cfg(d, max_steps=4), resume=True)
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
        fit(toy_stage(), toy_cfg(f))
    with pytest.raises(ckpt.CheckpointError, match="cannot create train.save_dir"):
        fit(toy_stage(), toy_cfg(f / "inside"))


def test_an_unwritable_save_dir_is_refused_before_training(tmp_path, monkeypatch):
    # tests run as root, where chmod does not stop a write: the check itself is what is tested here
    d = tmp_path / "run"
    d.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != d)
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"train.save_dir {d} is not writable")):
        fit(toy_stage(), toy_cfg(d))
    assert list(d.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: checked above with os.access")
def test_a_read_only_save_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o555)
    with pytest.raises(ckpt.CheckpointError, match="is not writable"):
        fit(toy_stage(), toy_cfg(d))


def _run(d: Path) -> Path:
    fit(toy_stage(), toy_cfg(d, max_steps=2))
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
            fit(toy_stage(), toy_cfg(d, max_steps=4), resume=True)


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
        fit(toy_stage(nn.Linear(4, 2)), toy_cfg(d, max_steps=4), resume=True)
    with pytest.raises(ckpt.CheckpointError, match="2 tensors missing .*2 unknown"):
        fit(toy_stage(nn.Sequential(nn.Linear(4, 1))), toy_cfg(d, max_steps=4), resume=True)


def test_resume_with_another_stages_state_names_it(tmp_path):
    d = tmp_path / "run"
    fit(toy_stage(config=_raw("vision_tiny.json")), toy_cfg(d, max_steps=2))
    with pytest.raises(ckpt.CheckpointError, match=r"holds a run of Stage C \(vision\) \(train_vision.py\), "
                                                   r"not of Stage A \(Thinker\)"):
        fit(toy_stage(nn.Linear(4, 2), config=tiny_config(tmp_path)), toy_cfg(d, max_steps=4), resume=True)


def test_the_cli_resume_with_another_model_size_exits_2(tmp_path, capsys):
    cfg = write_config(tmp_path, train={"max_steps": 2})
    assert train_text.main(["--config", str(cfg)]) == 0
    capsys.readouterr()
    assert train_text.main(["--config", str(cfg), "model.d_ff=96", "--resume"]) == 2
    [err] = cli_errors(capsys)
    assert "does not fit this model" in err and "--overwrite" in err


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
    import train_text
    from tests.conftest import write_config
    target = tmp_path / "afile"
    target.write_text("not a folder")
    assert train_text.main(["--config", str(write_config(tmp_path, train={"save_dir": str(target)}))]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and target.read_text() == "not a folder"
