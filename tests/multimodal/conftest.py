"""Fixtures of the chat CLI tests (test_chat_cli.py, test_chat_play.py): a tiny untrained Stage E
checkpoint, replies that can be interrupted at a chosen token, and the SIGINT / logging guard."""
import dataclasses
import json
import logging
import signal

import pytest
import torch

import omni.multimodal.chat as chat_lib
from omni.audio.encoder import AudioEncConfig
from omni.config import load_config, to_dict
from omni.engine.checkpoint import save_config, save_weights
from omni.multimodal.model import Components, OmniModel
from omni.multimodal.stage import SftStageConfig
from omni.thinker.model import ThinkerConfig
from omni.thinker.stage import save_tokenizer
from omni.thinker.tokenizer import train_bpe
from omni.vision.encoder import VisionConfig
from tests.conftest import ROOT, SONNETS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("omni_sft")
    lines = [line for line in SONNETS.read_text().splitlines() if line.strip()]
    tok = train_bpe(iter(lines), 400)
    torch.manual_seed(0)
    comp = Components(ThinkerConfig(tok.vocab_size, 32, 2, 2, 1, 64, 256, 0.0),
                      AudioEncConfig(24, 1, 2, 48, 0.0, 256),
                      VisionConfig(32, 8, 16, 1, 2, 32, 0.0))
    cfg = load_config(ROOT / "configs/omni_sft_demo.json", SftStageConfig, ["model.projector_hidden=16"])
    save_config(to_dict(cfg), d)
    save_weights(OmniModel(comp, cfg.model), d)
    save_tokenizer(tok, d)
    (d / "components.json").write_text(json.dumps(dataclasses.asdict(comp)))
    return d


@pytest.fixture
def default_sigint_and_logging():
    # the tests rely on Python's own SIGINT handler (KeyboardInterrupt); main() lowers the root level
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def replies(monkeypatch):
    """Replies never end early (no stop ids), so they are long enough to interrupt; ``plan[k] = n``
    delivers SIGINT right after the n-th token of the k-th reply (counting from 1). ``tokens`` holds
    each reply's token ids."""
    real = chat_lib.generate_reply
    plan: dict[int, int] = {}
    tokens: list[list[int]] = []

    def generate(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token):
        tokens.append([])
        mine, at = tokens[-1], plan.get(len(tokens))

        def tick(token: int) -> None:
            mine.append(token)
            on_token(token)
            if len(mine) == at:
                signal.raise_signal(signal.SIGINT)
        return real(model, x, max_new, (), temperature, top_k, top_p, generator, tick)

    monkeypatch.setattr(chat_lib, "generate_reply", generate)
    return plan, tokens
