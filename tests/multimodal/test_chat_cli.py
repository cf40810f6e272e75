"""The chat REPL (infer_chat.py = omni.cli.chat): Ctrl-C, bad attachment paths, the notices (history
trimmed, reply cut at its limit, media kept after a refused message), /set, /save, the input history
file and --play.

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
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import omni.multimodal.chat as chat_lib
from omni.audio.encoder import AudioEncConfig
from omni.audio.features import AudioError, load_audio, save_wav
from omni.cli import console
from omni.cli.chat import PROMPT_INTERRUPT_HINT, Chat, LineHistory, main, parse_args
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


class SpokenInPieces:
    """TextPieces stand-in: every streamed bit of text is a piece of its own (speech during the reply)."""

    def __init__(self, max_chars: int) -> None:
        pass

    def feed(self, delta: str) -> list[str]:
        return [delta] if delta.strip() else []

    def flush(self) -> list[str]:
        return []


class SpokenAtTheEnd(SpokenInPieces):
    """TextPieces stand-in: nothing is cut while the reply is written; all of it is said at the end."""

    def feed(self, delta: str) -> list[str]:
        self.text = getattr(self, "text", "") + delta
        return []

    def flush(self) -> list[str]:
        return [self.text]


@pytest.mark.parametrize("pieces", [SpokenInPieces, SpokenAtTheEnd])
def test_ctrl_c_during_speech_cancels_it_and_the_session_goes_on(ckpt, replies, monkeypatch, capsys, tmp_path,
                                                                 pieces):
    from omni.multimodal import live
    _, tokens = replies
    wav = tmp_path / "reply.wav"
    chat = Chat(parse_args(argv(ckpt, "--audio-out", str(wav))))
    monkeypatch.setattr(live, "TextPieces", pieces)
    voice = FakeVoice(interrupt_at=1)
    monkeypatch.setattr(chat, "voice", lambda: voice)
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hello", "again"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert out.count(f"-> {wav}") == 1 and wav.is_file()        # only the second reply was spoken
    history = chat.session.history
    assert [e.turn.role for e in history] == ["user", "assistant"] * 2
    if pieces is SpokenAtTheEnd:
        # the reply was complete: kept whole, only its speech was cut
        assert out.count("| speech cancelled]") == 1
        assert history[1].turn.text == chat.session.tok.decode(tokens[0]).strip()
    else:
        # speech is part of the reply being written: Ctrl-C stops both, the reply is kept as far as it got
        assert out.count("[reply cancelled after 1 tokens") == 1
        assert history[1].turn.text == chat.session.tok.decode(tokens[0][:1]).strip()


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


# ---------------------------------------------------------------- notices

def test_history_trimmed_notice_says_how_many_exchanges_were_dropped(ckpt, replies, monkeypatch, capsys):
    long = "tell me again about the summer day and the darling buds of may " * 3
    chat = Chat(parse_args(argv(ckpt)))
    monkeypatch.setattr(sys, "stdin", ScriptedStdin([f"{long} {k}" for k in range(8)]))
    survives(chat.repl)
    out = capsys.readouterr().out
    turns = out.split("μOmni: ")[1:]
    dropped = [int(m) if m else 1 for t in turns
               for m in re.findall(r"\[history trimmed: the (\d+ )?oldest exchanges? no longer fits? the context]", t)]
    assert dropped and sum(dropped) == chat.session.dropped_turns  # one notice per turn that dropped any
    assert "[history trimmed" not in turns[0] and "[history trimmed" in turns[-1]
    assert chat.session.history[0].turn.text != f"{long} 0"  # the oldest exchange really is gone


def test_token_limit_notice_only_when_the_reply_did_not_end_by_itself(ckpt, monkeypatch, capsys):
    real = chat_lib.generate_reply
    ends: list[bool] = []  # per reply: True when it ends on a stop id
    lengths: list[int] = []

    def generate(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token):
        stop = ()
        if ends[-1]:  # the model's own 4th token stands in for its end token: the real loop stops on it
            stop = (real(model, x, max_new, (), temperature, top_k, top_p, generator)[3],)
        ids = real(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token)
        lengths.append(len(ids))
        return ids

    monkeypatch.setattr(chat_lib, "generate_reply", generate)
    chat = Chat(parse_args(argv(ckpt)))
    for ends_itself in (False, True):
        ends.append(ends_itself)
        assert chat.turn("hello")
    first, second = capsys.readouterr().out.split("μOmni: ")[1:]
    assert "[reply cut at the 24-token limit; /set max_new_tokens N for longer replies]" in first
    assert "[reply cut" not in second and "[ttft " in second
    assert lengths[0] == 24 and lengths[1] < 24


def test_a_reply_cut_by_the_full_context_says_so(ckpt, replies, monkeypatch, capsys):
    _, tokens = replies
    chat = Chat(parse_args(argv(ckpt)))
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["/set max_new_tokens 1000", "hi"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert "[max_new_tokens = 1000 (replies are also capped by the room left in the 256-position context)]" in out
    n = len(tokens[0])
    assert n < 256 and f"[reply cut at {n} tokens: the model's 256-position context is full]" in out
    assert "-token limit" not in out


@pytest.fixture
def media(tmp_path):
    image, clip = tmp_path / "cat.png", tmp_path / "meow.wav"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(image)
    save_wav(clip, np.sin(np.arange(8000) / 10).astype(np.float32) * 0.3)
    return image, clip


def test_a_refused_message_keeps_its_attachments_for_the_next(ckpt, replies, monkeypatch, capsys, media):
    image, clip = media
    chat = Chat(parse_args(argv(ckpt)))
    too_long = "shall I compare thee " * 200
    monkeypatch.setattr(sys, "stdin", ScriptedStdin([f"/image {image}", f"/audio {clip}", too_long, "and now?"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert "this message needs" in out and "send shorter audio or text" in out
    assert "[the image and the audio clip stay attached for your next message (/reset drops them)]" in out
    assert out.count("[ttft ") == 1
    history, session = chat.session.history, chat.session
    assert [e.turn.text for e in history] == ["and now?", history[1].turn.text]  # the refused one left no trace
    assert len(history[0].images) == 1 and len(history[0].clips) == 1
    assert history[0].sources == [("image", str(image)), ("audio", str(clip))]
    assert session.pending_images == [] and session.pending_clips == [] and session.pending_sources == []


def test_one_attachment_kept_is_said_in_the_singular(ckpt, replies, capsys, media):
    chat = Chat(parse_args(argv(ckpt)))
    assert chat.attach("image", str(media[0]))
    assert not chat.turn("thee " * 400)
    assert "[the image stays attached for your next message (/reset drops it)]" in capsys.readouterr().out
    chat.command("/reset")
    assert chat.session.pending_sources == [] and chat.session.pending_images == []


# ---------------------------------------------------------------- /set, /save

def test_set_changes_sampling_and_rejects_bad_names_and_values(ckpt, replies, monkeypatch, capsys):
    _, tokens = replies
    chat = Chat(parse_args(argv(ckpt)))
    script = ["/set", "/set temperature 0.7", "/set top_p 0", "/set top_k -1", "/set max_new_tokens abc",
              "/set temprature 1", "/set top_k", "/set temperature nan", "/set max_new_tokens 5", "/set", "hello"]
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(script))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert "[temperature 0.0 | top_p 1.0 | top_k 0 | max_new_tokens 24; /set NAME VALUE changes one]" in out
    assert "[temperature = 0.7]" in out
    assert "[/set top_p: top_p must be in (0, 1] (1: no truncation), not 0.0; it stays 1.0]" in out
    assert "[/set top_k: top_k must be >= 0 (0: no truncation), not -1; it stays 0]" in out
    assert "[/set max_new_tokens wants a whole number, not 'abc'; it stays 24]" in out
    assert "[/set: no setting 'temprature' (did you mean temperature?); one of temperature, top_p" in out
    assert "[/set top_k wants a whole number, not ''; it stays 0]" in out
    assert "[/set temperature: temperature must be a number >= 0 (0: greedy), not nan; it stays 0.7]" in out
    assert "[temperature 0.7 | top_p 1.0 | top_k 0 | max_new_tokens 5;" in out
    s = chat.session.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.7, 1.0, 0, 5)
    assert len(tokens) == 1 and len(tokens[0]) == 5  # the reply was sampled with the new settings
    assert "[reply cut at the 5-token limit;" in out


def test_bad_sampling_flags_are_usage_errors(ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv(ckpt, "--top-p", "1.5"))
    assert e.value.code == 2 and "top_p must be in (0, 1]" in capsys.readouterr().err


class FakeUtterance:
    def __init__(self, voice: "FakeVoice") -> None:
        self.voice, self.samples = voice, 0

    def say(self, text: str):
        FakeVoice.calls += 1
        if FakeVoice.calls == self.voice.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        self.samples += 1600
        yield np.full(1600, 0.1, dtype=np.float32)

    def stats(self) -> dict:
        return {"rtf": 0.1, "audio_s": self.samples / 16000}


class FakeVoice:
    """Stands in for the Talker + vocoder: a tenth of a second of tone per piece of the reply;
    ``interrupt_at``: the say() call (counting from 1 over the test) during which Ctrl-C lands."""
    vocoder_name = "test"
    chunk_chars = 60
    calls = 0

    def __init__(self, interrupt_at: int = 0) -> None:
        self.interrupt_at = interrupt_at
        FakeVoice.calls = 0

    def start(self, seed: int | None = None) -> FakeUtterance:
        return FakeUtterance(self)


def test_save_writes_the_turns_with_attachment_and_speech_paths(ckpt, replies, monkeypatch, capsys, media,
                                                               tmp_path):
    image, clip = media
    plan, _ = replies
    plan[3] = 2  # the third reply is cancelled: the transcript keeps it as far as it got, marked
    chat = Chat(parse_args(argv(ckpt, "--speak", "--audio-out", str(tmp_path / "said.wav"))))
    voice = FakeVoice()
    monkeypatch.setattr(chat, "voice", lambda: voice)
    saved = tmp_path / "talk.json"
    script = [f"/image {image}", "what is this?", "/reset", f"/audio {clip}", "and this?", "go on",
              f"/save {saved}", f"/save {tmp_path}"]
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(script))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert f"[saved 6 turns to {saved}]" in out
    assert f"[could not save the conversation to {tmp_path}: " in out  # a folder: a message, the session goes on
    doc = json.loads(saved.read_text(encoding="utf-8"))
    turns = doc["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "reset", "user", "assistant", "user", "assistant"]
    assert turns[0] == {"role": "user", "text": "what is this?", "images": [str(image)], "audio": []}
    assert turns[3] == {"role": "user", "text": "and this?", "images": [], "audio": [str(clip)]}
    history = chat.session.history
    assert turns[4]["text"] == history[1].turn.text and turns[6]["text"] == history[3].turn.text
    assert turns[1]["speech"] == turns[4]["speech"] == str(tmp_path / "said.wav")
    assert turns[6]["cancelled"] and turns[6]["speech"] is None and not turns[4]["cancelled"]
    assert doc["ckpt"] == str(ckpt)


# ---------------------------------------------------------------- input history

def test_history_file_is_written_bounded_and_can_be_turned_off(ckpt, replies, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # where the default ~/.omni_chat_history would go
    hist = tmp_path / "hist"
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hello", "", "/set", "/set"]))
    assert survives(main, argv(ckpt, "--history", str(hist))) == 0
    assert hist.read_text().splitlines() == ["hello", "/set"]  # blank lines and repeats are not kept
    monkeypatch.setattr(console, "HISTORY_LINES", 3)
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["/set top_k 2", "again"]))
    assert survives(main, argv(ckpt, "--history", str(hist))) == 0
    assert hist.read_text().splitlines() == ["/set", "/set top_k 2", "again"]  # appended, the newest 3 kept
    for off in (["--history", ""], []):  # '' keeps none; without the flag, piped stdin keeps none
        monkeypatch.setattr(sys, "stdin", ScriptedStdin(["hello"]))
        assert survives(main, argv(ckpt, *off)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist"]


def test_history_is_loaded_into_readline(tmp_path, capsys):
    class Readline:
        def __init__(self):
            self.lines = []

        def add_history(self, line):
            self.lines.append(line)

    hist = tmp_path / "hist"
    hist.write_text("one\ntwo\n")
    rl = Readline()
    LineHistory(hist, rl)
    assert rl.lines == ["one", "two"]
    LineHistory(tmp_path, Readline()).save()  # a folder: said, and left alone
    assert f"[input history off: cannot read {tmp_path}: " in capsys.readouterr().out


# ---------------------------------------------------------------- --play

def fake_player(folder, name: str, body: str):
    folder.mkdir(exist_ok=True)
    exe = folder / name
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)


def spoken_chat(ckpt, monkeypatch, tmp_path, lines: list[str]) -> Chat:
    chat = Chat(parse_args(argv(ckpt, "--audio-out", str(tmp_path / "r.wav"), "--play")))
    voice = FakeVoice()
    monkeypatch.setattr(chat, "voice", lambda: voice)
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(lines))
    return chat


def test_play_streams_the_reply_to_the_player_and_reports_its_failure(ckpt, replies, monkeypatch, capsys,
                                                                     tmp_path):
    import soundfile as sf
    bin_, args, pcm, failed = tmp_path / "bin", tmp_path / "args", tmp_path / "pcm", tmp_path / "failed"
    # paplay reads raw PCM from stdin while the reply is spoken; it fails on its second call, saying why
    fake_player(bin_, "paplay", f'echo "$@" >> {args}; /bin/cat >> {pcm}; '
                                f'[ -e {failed} ] && {{ echo "no sink" >&2; exit 3; }}; : > {failed}')
    monkeypatch.setenv("PATH", str(bin_))
    chat = spoken_chat(ckpt, monkeypatch, tmp_path, ["hello"])
    survives(chat.repl)
    first = sf.read(tmp_path / "r.wav", dtype="int16")[0]
    monkeypatch.setattr(sys, "stdin", ScriptedStdin(["again"]))
    survives(chat.repl)
    out = capsys.readouterr().out
    assert args.read_text().splitlines() == ["--raw --format=s16le --rate=16000 --channels=1"] * 2
    second = sf.read(tmp_path / "r.wav", dtype="int16")[0]
    # what the player got is exactly the two spoken replies, as written to the WAV
    assert np.array_equal(np.frombuffer(pcm.read_bytes(), "<i2"), np.concatenate([first, second]))
    assert "[paplay failed (exit status 3): no sink]" in out
    assert out.count("[ttft ") == 2


def test_a_player_that_cannot_stream_plays_the_wav_after_the_reply(ckpt, replies, monkeypatch, capsys, tmp_path):
    bin_, played = tmp_path / "bin", tmp_path / "played"
    fake_player(bin_, "afplay", f'echo "$@" >> {played}')
    monkeypatch.setenv("PATH", str(bin_))
    survives(spoken_chat(ckpt, monkeypatch, tmp_path, ["hello", "again"]).repl)
    assert played.read_text().splitlines() == [str(tmp_path / "r.wav")] * 2
    assert capsys.readouterr().out.count("[ttft ") == 2


def test_play_without_a_player_says_so_once(ckpt, replies, monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    survives(spoken_chat(ckpt, monkeypatch, tmp_path, ["hello", "again"]).repl)
    out = capsys.readouterr().out
    assert out.count("[--play: no audio player found (aplay, paplay, afplay, ffplay, play)") == 1
    assert out.count("[ttft ") == 2


def test_ctrl_c_during_playback_stops_it_and_the_session_goes_on(ckpt, replies, monkeypatch, capsys, tmp_path):
    bin_ = tmp_path / "bin"
    # the player takes the whole reply, then Ctrl-C lands while the chat waits for it to finish playing
    fake_player(bin_, "aplay", "cat > /dev/null; kill -INT $PPID; exec sleep 30")
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    t0 = time.monotonic()
    survives(spoken_chat(ckpt, monkeypatch, tmp_path, ["hello", "again"]).repl)
    out = capsys.readouterr().out
    assert out.count("[playback stopped]") == 2 and out.count("[ttft ") == 2
    assert time.monotonic() - t0 < 20  # the player was stopped, not waited for


def test_ctrl_c_while_the_reply_streams_to_the_player_stops_both(ckpt, replies, monkeypatch, capsys, tmp_path):
    bin_ = tmp_path / "bin"
    # Ctrl-C lands while the reply is written: half a second after the player starts (with the turn), so
    # that the chat is in its token loop by then even on a loaded machine, and well before the 2.4 s reply ends
    fake_player(bin_, "aplay", "sleep 0.5; kill -INT $PPID; exec sleep 30")
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    real = chat_lib.generate_reply

    def slow(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token):
        def tick(token):
            time.sleep(0.1)  # 24 tokens: 2.4 s, far longer than the player takes to send SIGINT
            on_token(token)
        return real(model, x, max_new, (), temperature, top_k, top_p, generator, tick)

    monkeypatch.setattr(chat_lib, "generate_reply", slow)
    t0 = time.monotonic()
    survives(spoken_chat(ckpt, monkeypatch, tmp_path, ["hello", "again"]).repl)
    out = capsys.readouterr().out
    assert out.count("[reply cancelled after ") == 2
    assert time.monotonic() - t0 < 20
