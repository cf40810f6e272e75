"""Issue 37 item 2: a Stage A run that fails on its data writes no tokenizer, and a tokenizer left in
a folder without a checkpoint beside it is never reused."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from omni.config import load_config
from omni.data import DataError
from omni.engine.checkpoint import MODEL_FILE
from omni.thinker.stage import TextStageConfig, build_stage, prepare_tokenizer, save_tokenizer
from omni.thinker.tokenizer import TokenizerError, load_tokenizer, train_bpe
from tests.conftest import ROOT, write_config

ONE_PROCESS = SimpleNamespace(is_main=True, world_size=1, barrier=lambda: None)


@pytest.mark.parametrize("text", ["", "   \n\t\n\n  \n"], ids=["empty", "whitespace"])
def test_no_usable_text_fails_before_any_tokenizer_is_trained_or_written(tmp_path, text):
    cfg = load_config(write_config(tmp_path), TextStageConfig)
    (tmp_path / "corpus.txt").write_text(text)  # the corpus the config names, emptied
    with pytest.raises(DataError, match="corpus.txt: no usable text"):
        prepare_tokenizer(cfg.data, cfg.model.vocab_size, tmp_path / "ckpt")
    with pytest.raises(DataError, match="corpus.txt: no usable text"):
        build_stage(cfg, ONE_PROCESS)
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()


def test_too_little_text_writes_no_tokenizer(tmp_path):
    cfg = load_config(write_config(tmp_path), TextStageConfig)
    (tmp_path / "corpus.txt").write_text("a few words\nand a few more\n")  # far below one window of ctx_len
    with pytest.raises(DataError, match="fewer than one window"):
        build_stage(cfg, ONE_PROCESS)
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()
    good = tmp_path / "good"
    good.mkdir()
    stage = build_stage(load_config(write_config(good), TextStageConfig), ONE_PROCESS)
    assert (good / "ckpt" / "tokenizer.json").is_file()  # written once the data proved usable
    assert stage.model.cfg.vocab_size == load_tokenizer(good / "ckpt" / "tokenizer.json").vocab_size


def test_a_tokenizer_without_a_checkpoint_beside_it_is_not_reused(tmp_path, caplog):
    cfg = load_config(write_config(tmp_path), TextStageConfig)
    save_dir = tmp_path / "ckpt"
    poisoned = train_bpe(iter(["x"]), 300)  # what a failed run on a near-empty corpus used to leave
    save_tokenizer(poisoned, save_dir)
    tok = prepare_tokenizer(cfg.data, cfg.model.vocab_size, save_dir)
    assert tok.vocab_size > poisoned.vocab_size + 100 and "no checkpoint beside it" in caplog.text
    (save_dir / MODEL_FILE).write_bytes(b"weights")  # a checkpoint vouches for the tokenizer beside it
    assert prepare_tokenizer(cfg.data, cfg.model.vocab_size, save_dir).fingerprint() == poisoned.fingerprint()


def test_whitespace_corpus_run_exits_2_and_leaves_nothing_for_the_next(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "corpus.txt").write_text("  \n\n \t \n")
    r = subprocess.run([sys.executable, "train_text.py", "--config", str(cfg)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no usable text" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()


def test_an_unreadable_tokenizer_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"})[:-3])
    with pytest.raises(TokenizerError, match=r"tokenizer.json: not a readable tokenizer.json"):
        load_tokenizer(bad)
    assert issubclass(TokenizerError, DataError)  # so a stage script prints one line and exits 2
