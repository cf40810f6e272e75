"""The chat CLI's input history (readline) and --play (the spoken reply through an audio player, fake
players on PATH). Fixtures: conftest.py."""
import sys
import time

import numpy as np
import pytest

import omni.multimodal.chat as chat_lib
from omni.cli import console
from omni.cli.chat import Chat, LineHistory, main, parse_args
from tests.multimodal.chat_helpers import FakeVoice, ScriptedStdin, argv, survives

# every test here relies on Python's own SIGINT handler and restores the logging level (conftest.py)
pytestmark = pytest.mark.usefixtures("default_sigint_and_logging")


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
