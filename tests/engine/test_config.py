import json

import pytest

from omni.config import ConfigError, load_config
from omni.thinker.stage import TextStageConfig
from tests.conftest import tiny_config


def _write(tmp_path, raw):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(raw))
    return p


def test_loads_and_applies_overrides(tmp_path):
    p = _write(tmp_path, tiny_config(tmp_path))
    cfg = load_config(p, TextStageConfig, ["train.lr=1e-3", "model.dropout=0", "train.save_dir=out/x"])
    assert cfg.train.lr == 1e-3 and cfg.model.dropout == 0.0 and cfg.train.save_dir == "out/x"
    assert isinstance(cfg.model.dropout, float)


def test_unknown_key_names_path_and_suggests(tmp_path):
    raw = tiny_config(tmp_path)
    raw["train"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rate'"):
        load_config(_write(tmp_path, raw), TextStageConfig)
    raw["train"].pop("learning_rate")
    raw["model"]["n_layer"] = 3
    with pytest.raises(ConfigError, match=r"'model.n_layer'.*did you mean 'n_layers'"):
        load_config(_write(tmp_path, raw), TextStageConfig)


def test_missing_required_key(tmp_path):
    raw = tiny_config(tmp_path)
    del raw["model"]["d_model"]
    with pytest.raises(ConfigError, match=r"missing required key 'model.d_model'"):
        load_config(_write(tmp_path, raw), TextStageConfig)


@pytest.mark.parametrize("key,value", [("model.d_model", "64"), ("train.precision", 1),
                                       ("model.n_layers", 2.5), ("train.batch_size", True),
                                       ("train.betas", 0.9)])
def test_wrong_type(tmp_path, key, value):
    section, name = key.split(".")
    raw = tiny_config(tmp_path)
    raw[section][name] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, raw), TextStageConfig)


def test_override_goes_through_same_validation(tmp_path):
    p = _write(tmp_path, tiny_config(tmp_path))
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        load_config(p, TextStageConfig, ["train.max_step=10"])
    with pytest.raises(ConfigError, match="train.max_steps: expected int"):
        load_config(p, TextStageConfig, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(p, TextStageConfig, ["train.max_steps"])


def test_invalid_json_reports_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "model": {,\n}')
    with pytest.raises(ConfigError, match=r"bad.json:2:\d+: invalid JSON"):
        load_config(p, TextStageConfig)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json", TextStageConfig)


def test_shipped_configs_load():
    cfg = load_config("configs/thinker_tiny.json", TextStageConfig)
    assert cfg.model.d_model == 256 and cfg.model.n_kv_heads == 2


@pytest.mark.parametrize("use_amp,precision", [(True, "auto"), (False, "fp32")])
def test_saved_use_amp_reads_as_precision(tmp_path, use_amp, precision):
    """Checkpoints written before train.precision existed keep loading: use_amp true meant auto."""
    raw = tiny_config(tmp_path)
    del raw["train"]["precision"]
    raw["train"]["use_amp"] = use_amp
    assert load_config(_write(tmp_path, raw), TextStageConfig).train.precision == precision
    raw["train"]["precision"] = "bf16"
    with pytest.raises(ConfigError, match="use_amp and precision both given"):
        load_config(_write(tmp_path, raw), TextStageConfig)


def test_unknown_precision(tmp_path):
    raw = tiny_config(tmp_path)
    raw["train"]["precision"] = "int8"
    with pytest.raises(ConfigError, match=r"precision: 'int8' is not one of auto, fp32, bf16, fp16"):
        load_config(_write(tmp_path, raw), TextStageConfig)
