"""The chat REPL (infer_chat.py = omni.cli.chat) under Ctrl-C and bad attachment paths.

Ctrl-C is a real SIGINT: in-process tests raise it from inside the reply (or speech, or input()) with
signal.raise_signal, exactly where the terminal's would land; one test sends it to a chat process.
The checkpoint is a tiny untrained Stage E model written the way sft_omni.py writes one: what it
says does not matter here, only what the console does around it.
"""
import dataclasses
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import omni.multimodal.chat as chat_lib
from omni.audio.encoder import AudioEncConfig
from omni.audio.features import AudioError, load_audio
from omni.cli.chat import PROMPT_INTERRUPT_HINT, Chat, main, parse_args
from omni.config import load_config, to_dict
from omni.engine.checkpoint import save_config, save_weights
from omni.images import BadImage, load_image
from omni.multimodal.model import Components, OmniModel
from omni.multimodal.stage import SftStageConfig
from omni.ocr.model import OcrModel, OcrModelConfig, OcrVocab
from omni.thinker.model import ThinkerConfig
from omni.thinker.stage import save_tokenizer
from omni.thinker.tokenizer import train_bpe
from omni.vision.encoder import VisionConfig
from tests.conftest import ROOT, SONNETS

INTERRUPT = object()  # a ScriptedStdin line: Ctrl-C while input() waits at the prompt


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


@pytest.fixture(autouse=True)
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


class ScriptedStdin(io.TextIOBase):
    """stdin for input(): one script line per read; INTERRUPT raises SIGINT while input() waits."""

    def __init__(self, lines: list) -> None:
        self.lines = list(lines)

    def readline(self, size: int = -1) -> str:
        if not self.lines:
            return ""  # EOF: Ctrl-D
        line = self.lines.pop(0)
        if line is INTERRUPT:
            signal.raise_signal(signal.SIGINT)
        return line + "\n"


def survives(run, *args):
    """run(*args), failing the test (not the whole pytest session) if a Ctrl-C escapes it."""
    try:
        return run(*args)
    except KeyboardInterrupt as e:
        pytest.fail(f"Ctrl-C escaped the chat: {e!r}")


def argv(ckpt, *more: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--device", "cpu", "--max-new-tokens", "24", "--seed", "0", *more]


def test_ctrl_c_during_a_reply_cancels_it_and_the_session_goes_on(ckpt, replies, monkeypatch, capsys):
    plan, tokens = replies
    plan[1] = 3
    chat = Chat(parse_args(argv(ckpt)))
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["tell me a story", "and then?"]))
    survives(chat.repl)  # returns at EOF: the Ctrl-C did not end it
    out = capsys.readouterr().out
    assert "[reply cancelled after 3 tokens" in out
    assert out.count("μOmni: ") == 2 and out.count("[ttft ") == 1  # the next message got a full reply
    history = chat.session.history
    assert [e.turn.role for e in history] == ["user", "assistant"] * 2
    # the cancelled reply is kept as far as it got: the next message was asked on top of it
    assert history[0].turn.text == "tell me a story" and history[2].turn.text == "and then?"
    assert history[1].turn.text == chat.session.tok.decode(tokens[0][:3]).rstrip("\ufffd").strip()
    assert len(tokens[0]) == 3 and len(tokens[1]) == 24


def test_ctrl_c_at_the_prompt_hints_once_then_leaves_with_status_0(ckpt, replies, monkeypatch, capsys):
    stdin = ScriptedStdin(["hello", INTERRUPT, "again", INTERRUPT, INTERRUPT, "never read"])
    monkeypatch.setattr(sys, "stdin", stdin)
    assert survives(main, argv(ckpt)) == 0
    out = capsys.readouterr().out
    assert out.count(PROMPT_INTERRUPT_HINT) == 2   # once per stray Ctrl-C, not on the second in a row
    assert out.count("[ttft ") == 2                # the message after the first Ctrl-C was answered
    assert stdin.lines == ["never read"]           # the second Ctrl-C in a row ended the session


def test_ctrl_d_leaves_with_status_0(ckpt, replies, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hello"]))
    assert survives(main, argv(ckpt)) == 0
    assert capsys.readouterr().out.count("[ttft ") == 1


def test_ctrl_c_during_speech_cancels_the_speech_and_keeps_the_reply(ckpt, replies, monkeypatch, capsys,
                                                                       tmp_path):
    _, tokens = replies
    wav = tmp_path / "reply.wav"
    chat = Chat(parse_args(argv(ckpt, "--audio-out", str(wav))))

    class Voice:  # stands in for the Talker + vocoder: the first synthesis is interrupted
        vocoder_name = "test"
        calls = 0

        def synthesize(self, text: str, seed: int | None = None) -> np.ndarray:
            Voice.calls += 1
            if Voice.calls == 1:
                signal.raise_signal(signal.SIGINT)
            return np.full(1600, 0.1, dtype=np.float32)

    monkeypatch.setattr(chat, "voice", Voice)
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hello", "again"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert out.count("| speech cancelled]") == 1 and out.count(f"-> {wav}") == 1
    assert out.count("[ttft ") == 2  # both replies finished; only the first one's speech was cut
    history = chat.session.history
    assert [e.turn.role for e in history] == ["user", "assistant"] * 2
    assert history[1].turn.text == chat.session.tok.decode(tokens[0]).strip()


def test_a_directory_is_reported_as_a_directory(ckpt, monkeypatch, capsys, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    chat = Chat(parse_args(argv(ckpt)))
    # an OCR model in place of --ocr-ckpt: /ocr must get as far as reading the path
    ocr_cfg = OcrModelConfig(32, 256, 8, 32, 1, 2, 64, 32, 1, 2, 64, 40, 0.0)
    chat._ocr = (OcrModel(ocr_cfg, len(OcrVocab.ascii())).eval(), OcrVocab.ascii())
    monkeypatch.setattr(sys, "stdin", ScriptedStdin([f"/image {folder}", f"/audio {folder}", f"/ocr {folder}"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert f"[could not use image {folder}: " in out and "is a directory, not an image file" in out
    assert f"[could not use audio {folder}: " in out and "is a directory, not an audio file" in out
    assert f"[could not read text from {folder}: " in out
    assert out.count("is a directory") == 3 and "no such" not in out
    assert chat.session.pending_images == [] and chat.session.pending_clips == []


def test_loaders_give_a_directory_its_own_reason(tmp_path):
    with pytest.raises(BadImage) as e:
        load_image(tmp_path)
    assert e.value.reason == "is_directory"
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path)
    assert e.value.reason == "is_directory"
    with pytest.raises(BadImage) as e:  # a path that does not exist is still "missing"
        load_image(tmp_path / "nope.png")
    assert e.value.reason == "missing"


# the chat program with every reply slowed to 20 tokens/s and no stop ids: long enough to Ctrl-C
SLOW_CHAT = """
import sys, time
import omni.multimodal.chat as chat
real = chat.generate_reply
def slow(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token):
    def tick(token):
        time.sleep(0.05)
        on_token(token)
    return real(model, x, max_new, (), temperature, top_k, top_p, generator, tick)
chat.generate_reply = slow
from omni.cli.chat import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_to_the_chat_process_cancels_the_reply_not_the_session(ckpt):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CHAT, *argv(ckpt, "--max-new-tokens", "200")],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")),
                              daemon=True)
    reader.start()

    def wait_for(text: str, count: int = 1, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while b"".join(chunks).decode(errors="replace").count(text) < count:
            assert proc.poll() is None, f"chat exited ({proc.returncode}):\n{b''.join(chunks).decode()}"
            assert time.monotonic() < end, f"no {text!r} after {timeout} s:\n{b''.join(chunks).decode()}"
            time.sleep(0.02)

    def send(line: str) -> None:
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    try:
        wait_for("you> ")
        send("tell me a story")
        wait_for("μOmni: ")
        time.sleep(0.3)                       # a few tokens in; the whole reply would take 10 s
        os.kill(proc.pid, signal.SIGINT)
        wait_for("[reply cancelled after ")
        wait_for("you> ", 2)
        time.sleep(0.2)  # CPython acts on a SIGINT landing between the prompt and read() only at the next line
        os.kill(proc.pid, signal.SIGINT)      # at the prompt: a hint, the session stays
        wait_for(PROMPT_INTERRUPT_HINT)
        send("and then?")
        wait_for("μOmni: ", 2)
        os.kill(proc.pid, signal.SIGINT)
        wait_for("[reply cancelled after ", 2)
        proc.stdin.close()                    # Ctrl-D
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    out = b"".join(chunks).decode()
    assert "Traceback" not in out and out.count(PROMPT_INTERRUPT_HINT) == 1
