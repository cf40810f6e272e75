"""The chat REPL (infer_chat.py = omni.cli.chat): Ctrl-C, bad attachment paths, the notices (history
trimmed, reply cut at its limit, media kept after a refused message), /set, /save, the input history
file and --play.

Ctrl-C is a real SIGINT: in-process tests raise it from inside the reply (or speech, or input()) with
signal.raise_signal, exactly where the terminal's would land; one test sends it to a chat process.
The checkpoint is a tiny untrained Stage E model written the way sft_omni.py writes one: what it
says does not matter here, only what the console does around it.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import omni.multimodal.chat as chat_lib
from omni.audio.features import AudioError, load_audio, save_wav
from omni.cli.chat import PROMPT_INTERRUPT_HINT, Chat, main, parse_args
from omni.images import BadImage, load_image
from omni.ocr.model import OcrModel, OcrModelConfig, OcrVocab
from tests.conftest import ROOT
from tests.multimodal.chat_helpers import INTERRUPT, FakeVoice, ScriptedStdin, argv, survives

# every test here relies on Python's own SIGINT handler and restores the logging level (conftest.py)
pytestmark = pytest.mark.usefixtures("default_sigint_and_logging")















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
