"""Helpers of the chat CLI tests: scripted stdin (with Ctrl-C at the prompt), a stand-in voice, and
the chat's command line."""
import io
import signal

import numpy as np
import pytest

INTERRUPT = object()  # a ScriptedStdin line: Ctrl-C while input() waits at the prompt


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
