import json

import pytest
import torch

from omni.engine import checkpoint as ckpt
from omni.thinker.model import ThinkerLM
from tests.thinker.test_thinker import tiny


def test_weights_round_trip_strict(tmp_path):
    torch.manual_seed(0)
    a = ThinkerLM(tiny())
    ckpt.save_weights(a, tmp_path, {"step": "3"})
    torch.manual_seed(1)
    b = ThinkerLM(tiny())
    ckpt.load_weights(b, tmp_path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_mismatched_or_missing_weights_are_clear_errors(tmp_path):
    ckpt.save_weights(ThinkerLM(tiny()), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.load_weights(ThinkerLM(tiny(d_ff=96)), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no weights at"):
        ckpt.load_weights(ThinkerLM(tiny()), tmp_path / "missing")


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "train_state.pt"
    state = {k: {} for k in ckpt.STATE_KEYS} | {"progress": {"step": 1}}
    ckpt.save_train_state(state, tmp_path)

    def crash(path):
        path.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of the save

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, crash)
    assert ckpt.load_train_state(tmp_path) == state


def test_metrics_truncate_and_torn_line(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.append_metrics(tmp_path, {"event": "train", "step": step})
    with open(tmp_path / ckpt.METRICS_FILE, "a") as f:
        f.write('{"event": "tra')  # killed mid-append
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2, 3, 4]
    ckpt.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in ckpt.read_metrics(tmp_path)] == [1, 2]
    (tmp_path / ckpt.METRICS_FILE).write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ckpt.CheckpointError, match=":2: corrupt"):
        ckpt.read_metrics(tmp_path)


def test_config_round_trip(tmp_path):
    ckpt.save_config({"model": {"d_model": 8}}, tmp_path)
    assert ckpt.read_config(tmp_path) == {"model": {"d_model": 8}}
    assert json.loads((tmp_path / "config.json").read_text())["model"]["d_model"] == 8
    with pytest.raises(ckpt.CheckpointError, match="not a μOmni checkpoint"):
        ckpt.read_config(tmp_path / "nope")


def test_average_weights_is_the_mean_and_loads(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(ThinkerLM(tiny()))
        ckpt.save_weights(models[-1], tmp_path / f"m{seed}")
        ckpt.save_config({"model": {"seed": seed}}, tmp_path / f"m{seed}")
        (tmp_path / f"m{seed}" / "vocab.json").write_text(f"[{seed}]")
        ckpt.append_metrics(tmp_path / f"m{seed}", {"event": "train", "step": 1})
    info = ckpt.average_weights([tmp_path / f"m{s}" for s in range(3)], tmp_path / "avg")
    assert info["folders"][0].endswith("m0") and info["params"] == sum(p.numel() for p in models[0].state_dict().values())
    avg = ThinkerLM(tiny())
    ckpt.load_weights(avg, tmp_path / "avg")
    for k, v in avg.state_dict().items():
        want = sum(m.state_dict()[k] for m in models) / 3
        assert torch.allclose(v, want, atol=1e-6), k
    assert any(not torch.equal(v, models[0].state_dict()[k]) for k, v in avg.state_dict().items())
    # the first folder's files come along, its metrics do not
    assert (tmp_path / "avg" / "vocab.json").read_text() == "[0]"
    assert ckpt.read_config(tmp_path / "avg")["model"]["seed"] == 0
    assert not (tmp_path / "avg" / ckpt.METRICS_FILE).exists()
    assert json.loads((tmp_path / "avg" / "averaged_from.json").read_text())["folders"] == info["folders"]
    # the script: same result, and clear errors
    r = subprocess.run([sys.executable, str(ROOT / "lab" / "average_checkpoints.py"), "--out", str(tmp_path / "avg2"),
                        str(tmp_path / "m0"), str(tmp_path / "m1"), str(tmp_path / "m2")], capture_output=True, text=True)
    assert r.returncode == 0 and "mean of 3 checkpoints" in r.stdout, r.stderr
    ckpt.save_weights(ThinkerLM(tiny(d_ff=96)), tmp_path / "other")
    r = subprocess.run([sys.executable, str(ROOT / "lab" / "average_checkpoints.py"), "--out", str(tmp_path / "avg3"),
                        str(tmp_path / "m0"), str(tmp_path / "other")], capture_output=True, text=True)
    assert r.returncode == 2 and "not the same model" in r.stderr and "other" in r.stderr
    with pytest.raises(ckpt.CheckpointError, match="no weights at"):
        ckpt.average_weights([tmp_path / "m0", tmp_path / "missing"], tmp_path / "avg4")
    with pytest.raises(ckpt.CheckpointError, match="one of the folders"):
        ckpt.average_weights([tmp_path / "m0", tmp_path / "m1"], tmp_path / "m1")
    with pytest.raises(ckpt.CheckpointError, match="at least two"):
        ckpt.average_weights([tmp_path / "m0"], tmp_path / "avg5")
