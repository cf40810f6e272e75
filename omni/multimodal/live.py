"""One live chat turn: the reply is spoken while it is still being written.

    user message -> ChatSession.ask streams the reply's text -> TextPieces cuts it at sentence /
    clause ends -> each finished piece is spoken at once (Synthesizer Utterance.say), its audio
    handed to ``on_audio`` a block at a time -> the Thinker goes on with the next piece

Everything runs in the caller's thread, one model at a time: on a 2-core CPU the Thinker and the
Talker would only slow each other down running side by side, and the audio already handed out
plays while the next piece is written. The chat CLI, the web demo and scripts/bench_latency.py
all answer through ``live_turn``.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from omni.multimodal.chat import ChatSession, TurnStats
from omni.speech.chunks import TextPieces
from omni.speech.synthesis import Synthesizer


class Cancelled(KeyboardInterrupt):
    """Raised from inside a turn (``should_stop`` said so) to end it like Ctrl-C does: the session
    keeps the reply as far as it got (ChatSession.ask raises ReplyInterrupted)."""


class SpeechInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a cancel) arrived while the end of a finished reply was being spoken: the reply is
    complete and in the session's history, its speech was cut."""

    def __init__(self, reply: str, stats: TurnStats) -> None:
        super().__init__("speech interrupted")
        self.reply, self.stats = reply, stats


@dataclasses.dataclass
class LiveTurn:
    reply: str
    stats: TurnStats                       # the Thinker's side: ttft, tokens, ...
    speech: dict[str, float]               # Utterance.stats(); empty when not speaking
    first_audio_s: float | None            # end of the user's message -> first audio chunk
    total_s: float
    audio: np.ndarray | None               # the whole spoken reply (None when not speaking)


def live_turn(session: ChatSession, text: str, voice: Synthesizer | None = None,
              on_text: Callable[[str], None] | None = None,
              on_audio: Callable[[np.ndarray], None] | None = None,
              seed: int | None = None, should_stop: Callable[[], bool] | None = None) -> LiveTurn:
    """Answer ``text`` (with the session's attached media); with a ``voice`` speak the reply as it
    is written. ``on_text`` gets each new piece of reply text, ``on_audio`` each 16 kHz float32
    chunk as soon as it is final. ``should_stop()`` is polled between tokens and audio blocks; True
    cancels the turn (Cancelled, a KeyboardInterrupt: ReplyInterrupted comes out of ask while the
    reply is being written, SpeechInterrupted once it is complete and only its speech was left).

    Raises ValueError when the message does not fit the context (ChatSession.ask)."""
    t0 = time.perf_counter()
    first: list[float] = []
    chunks: list[np.ndarray] = []
    utt = voice.start(seed) if voice is not None else None
    pieces = TextPieces(voice.chunk_chars) if voice is not None else None

    def check() -> None:
        if should_stop is not None and should_stop():
            raise Cancelled("the turn was cancelled")

    def speak(piece: str) -> None:
        for wav in utt.say(piece):
            if not first:
                first.append(time.perf_counter() - t0)
            chunks.append(wav)
            if on_audio is not None:
                on_audio(wav)
            check()

    def got_text(delta: str) -> None:
        if on_text is not None:
            on_text(delta)
        check()
        if pieces is not None:
            for piece in pieces.feed(delta):
                speak(piece)

    reply, stats = session.ask(text, on_text=got_text)
    if pieces is not None:
        try:
            for piece in pieces.flush():
                speak(piece)
        except KeyboardInterrupt as e:
            # ask handles Ctrl-C only while the Thinker writes; here the reply is complete and kept
            raise SpeechInterrupted(reply, stats) from e
    total = time.perf_counter() - t0
    audio = (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)) if voice is not None else None
    return LiveTurn(reply, stats, utt.stats() if utt is not None else {}, first[0] if first else None, total, audio)
