"""Issue 37, the config side: values out of range, non-UTF-8 files and a dataclass's own checks are one
ConfigError naming the file and key (exit 2 from a stage script), never a traceback or a silent run.
Ends with a fuzz of the loader."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni.config import ConfigError, TrainConfig, config_from_dict, limits, load_config
from omni.thinker.stage import TextStageConfig
from tests.conftest import ROOT, tiny_config

BAD = [("batch_size", 0), ("batch_size", -4), ("gradient_accumulation_steps", 0), ("lr", -1e-3), ("lr", 0),
       ("weight_decay", -0.1), ("warmup_steps", -1), ("max_steps", 0), ("max_epochs", 0), ("max_grad_norm", 0),
       ("max_grad_norm", -1.0), ("val_freq", 0), ("val_freq", -5), ("checkpoint_freq", 0), ("seed", -1),
       ("min_lr_ratio", 1.5), ("min_lr_ratio", -0.1), ("betas", [0.9, 1.0]), ("betas", [-0.1, 0.95]),
       ("betas", [0.9]), ("val_batches", 0), ("log_freq", 0), ("max_bad_steps", 0), ("num_workers", -1)]


def _write(tmp_path, raw, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(raw, indent=2))
    return p


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_out_of_range_train_values_name_file_and_key(tmp_path, key, value):
    raw = tiny_config(tmp_path)
    raw["train"][key] = value
    with pytest.raises(ConfigError, match=rf"c\.json: train\.{key}(\[\d\])?: (must be|expected 2 values)"):
        load_config(_write(tmp_path, raw), TextStageConfig)
    # the same through an override, and through a checkpoint's config.json
    with pytest.raises(ConfigError, match=rf"train\.{key}"):
        load_config(_write(tmp_path, tiny_config(tmp_path)), TextStageConfig, [f"train.{key}={json.dumps(value)}"])
    with pytest.raises(ConfigError, match=rf"train\.{key}"):
        config_from_dict(raw, TextStageConfig)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path, text):
    with pytest.raises(ConfigError, match=r"train\.lr: expected a finite number"):
        load_config(_write(tmp_path, tiny_config(tmp_path)), TextStageConfig, [f"train.lr={text}"])


def test_edges_of_the_ranges_load(tmp_path):
    raw = tiny_config(tmp_path)
    raw["train"].update(batch_size=1, warmup_steps=0, weight_decay=0, max_steps=1, min_lr_ratio=0,
                        betas=[0, 0.999], seed=0, num_workers=0, lr=1e-12)
    cfg = load_config(_write(tmp_path, raw), TextStageConfig)
    assert cfg.train.max_steps == 1 and cfg.train.betas == [0.0, 0.999]


def test_every_shipped_config_is_in_range():
    import importlib
    homes = {"thinker": "thinker", "audio_enc": "audio", "vision": "vision", "codec": "codec", "talker": "talker",
             "omni_sft": "multimodal", "vocoder": "vocoder", "ocr": "ocr"}
    paths = sorted((ROOT / "configs").glob("*.json"))
    assert len(paths) >= 10
    for path in paths:
        stage = next(home for prefix, home in homes.items() if path.name.startswith(prefix + "_"))
        load_config(path, importlib.import_module(f"omni.{stage}.stage").CONFIG)


def test_non_utf8_config_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.json"
    p.write_bytes(json.dumps(tiny_config(tmp_path), indent=2).replace('"cpu"', '"caf\\u00e9"').encode("latin-1")
                  .replace(b"caf\\u00e9", b"caf\xe9"))
    line = p.read_bytes()[:p.read_bytes().index(b"\xe9")].count(b"\n") + 1
    with pytest.raises(ConfigError, match=rf"latin1\.json:{line}: not UTF-8 text \(byte 0xe9\)"):
        load_config(p, TextStageConfig)


def test_deep_nesting_and_non_objects_are_config_errors(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="deep.json"):
        load_config(p, TextStageConfig)
    with pytest.raises(ConfigError, match="expected a JSON object"):
        config_from_dict(["not", "a", "dict"], TextStageConfig)


def test_a_dataclass_own_check_becomes_a_config_error(tmp_path):
    from omni.codec.stage import CodecStageConfig
    raw = json.loads((ROOT / "configs" / "codec_tiny.json").read_text())
    raw["model"]["frames_per_code"] = 3
    with pytest.raises(ConfigError, match=r"c\.json: model: codec\.frames_per_code must be 1 or 2"):
        load_config(_write(tmp_path, raw), CodecStageConfig)


def test_limits_is_one_declaration_the_loader_reads():
    fields = {f.name: f for f in TrainConfig.__dataclass_fields__.values()}
    assert dict(fields["batch_size"].metadata["limits"]) == {"min": 1}
    assert dict(fields["lr"].metadata["limits"]) == {"gt": 0}
    with pytest.raises(TypeError, match="unknown bound"):
        limits(minimum=1)


@pytest.mark.parametrize("override,key", [("train.batch_size=0", "train.batch_size"), ("train.lr=0", "train.lr"),
                                          ("train.max_steps=0", "train.max_steps")])
def test_stage_script_exits_2_with_one_line(tmp_path, override, key):
    cfg = _write(tmp_path, tiny_config(tmp_path))
    r = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg), override], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and str(cfg) in lines[0] and key in lines[0], r.stderr
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written


# ---------------------------------------------------------------- fuzz
VALUES = st.one_of(st.integers(-3, 10**6) | st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.booleans(), st.none(), st.text(max_size=8), st.lists(st.floats(-2, 2), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
TRAIN_KEYS = [f.name for f in TrainConfig.__dataclass_fields__.values()]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(TRAIN_KEYS + ["bogus", "n_layers"]), VALUES, max_size=4),
       drop=st.lists(st.sampled_from(TRAIN_KEYS), max_size=2))
def test_fuzz_config_values_load_or_fail_naming_the_file(tmp_path, changes, drop):
    raw = tiny_config(tmp_path)
    raw["train"].update(changes)
    for key in drop:
        raw["train"].pop(key, None)
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(raw))  # NaN / Infinity written as JSON's extensions, which json.loads reads
    try:
        cfg = load_config(path, TextStageConfig)
    except ConfigError as e:
        assert str(e).startswith(f"{path}") or str(e).startswith("config file"), e
        return
    t = cfg.train
    assert t.batch_size >= 1 and t.lr > 0 and t.max_steps >= 1 and math.isfinite(t.lr)
    assert t.val_freq >= 1 and t.checkpoint_freq >= 1 and t.gradient_accumulation_steps >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_config_bytes_load_or_fail_naming_the_file(tmp_path, data):
    path = Path(tmp_path) / "bytes.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_config(path, TextStageConfig)  # no random bytes make a whole Stage A config
    assert str(path) in str(e.value)
