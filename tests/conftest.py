import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SONNETS = ROOT / "assets" / "text" / "sonnets.txt"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A Stage A config small enough for CPU tests; ``sections`` update model/data/train."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        shutil.copy(SONNETS, corpus)
    cfg = {
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                  "d_ff": 128, "ctx_len": 64, "dropout": 0.1},
        "data": {"train_file": str(corpus), "val_file": "", "val_fraction": 0.1, "tokenizer": ""},
        "train": {"batch_size": 4, "gradient_accumulation_steps": 2, "lr": 3e-3, "weight_decay": 0.1,
                  "warmup_steps": 2, "max_steps": 4, "max_epochs": 100, "max_grad_norm": 1.0,
                  "val_freq": 2, "checkpoint_freq": 2, "precision": "fp32",
                  "save_dir": str(tmp_path / "ckpt"), "seed": 0, "val_batches": 2, "log_freq": 1,
                  "device": "cpu"},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def write_config(tmp_path: Path, name: str = "cfg.json", **sections) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(tiny_config(tmp_path, **sections), indent=2))
    return path
