"""Text cut into pieces the Talker speaks one at a time, and the chunked evaluation that streaming
speech decodes with (pure Python: the torch-free ONNX runtime uses it too; the overview is in
omni/speech/streaming.py)."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")


def split_text(text: str, max_chars: int) -> list[str]:
    """Normalised text -> pieces of at most max_chars, cut after sentence ends, then after commas,
    then at spaces (a single word longer than max_chars is cut hard). No character is lost."""
    pieces: list[str] = []
    for sentence in _SENTENCE.split(text):
        pieces.extend(p for p in _fit(sentence.strip(), max_chars, [_CLAUSE, _SPACE]) if p)
    return pieces


_CLAUSE, _SPACE = re.compile(r"(?<=,)\s+"), re.compile(r"\s+")


def _fit(text: str, max_chars: int, cuts: list[re.Pattern]) -> list[str]:
    """Greedily join the parts of ``text`` split by cuts[0] into pieces <= max_chars (recursing
    into cuts[1:] for a part that is itself too long)."""
    if len(text) <= max_chars:
        return [text]
    if not cuts:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    out, cur = [], ""
    for part in cuts[0].split(text):
        joined = f"{cur} {part}" if cur else part
        if len(joined) <= max_chars:
            cur = joined
            continue
        if cur:
            out.append(cur)
        if len(part) > max_chars:
            out.extend(_fit(part, max_chars, cuts[1:]))
            cur = ""
        else:
            cur = part
    return out + ([cur] if cur else [])


_SENTENCE_END = re.compile(r"[.!?;:]\s")
_CLAUSE_END = re.compile(r",\s")


class TextPieces:
    """Reply text as it streams -> pieces to speak, cut at sentence ends, at clause ends once a piece
    has ``min_clause`` characters, and at the last space before ``max_chars``. Every character comes
    out exactly once, in order (``feed`` then ``flush``)."""

    def __init__(self, max_chars: int, min_clause: int = 12) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.max_chars, self.min_clause = max_chars, min_clause
        self.buf = ""

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; returns the pieces it completed (possibly none)."""
        self.buf += delta
        out = []
        while (cut := self._cut()) is not None:
            piece, self.buf = self.buf[:cut].strip(), self.buf[cut:].lstrip()
            if piece:
                out.append(piece)
        return out

    def flush(self) -> list[str]:
        """The text after the last cut (the reply has ended)."""
        piece, self.buf = self.buf.strip(), ""
        if len(piece) > self.max_chars:  # a reply ending in an over-long run of text
            self.buf = piece
            out = []
            while (cut := self._cut()) is not None:
                out.append(self.buf[:cut].strip())
                self.buf = self.buf[cut:].lstrip()
            piece, self.buf = self.buf.strip(), ""
            return [p for p in out if p] + ([piece] if piece else [])
        return [piece] if piece else []

    def _cut(self) -> int | None:
        """Where the next piece ends in the buffer, or None while it may still grow."""
        m = _SENTENCE_END.search(self.buf)
        if m and m.end() - 1 <= self.max_chars:
            return m.end()
        for m in _CLAUSE_END.finditer(self.buf):
            if self.min_clause <= m.end() - 1 <= self.max_chars:
                return m.end()
        if len(self.buf) > self.max_chars:
            space = self.buf.rfind(" ", 0, self.max_chars + 1)
            return space + 1 if space > 0 else self.max_chars
        return None


class LocalStream:
    """Chunked evaluation of a function with a finite receptive field: ``push`` input frames (T, ...),
    get back the outputs that can no longer change; ``finish`` gives the rest. The chunks joined
    equal ``fn`` on the whole input (up to float rounding of the convolutions' different lengths)."""

    def __init__(self, fn: Callable[[Any], Any], radius: int, ratio: int, cat: Callable[[list], Any]) -> None:
        """``cat`` joins arrays along their first axis: torch.cat, or np.concatenate in the ONNX runtime."""
        self.fn, self.radius, self.ratio, self.cat = fn, radius, ratio, cat
        self.kept: Any = None                   # the inputs from global frame `base` on
        self.base = self.n_in = 0
        self.done = 0                           # input frames whose outputs were handed out

    def push(self, x: Any) -> Any:
        self.kept = x if self.kept is None else self.cat([self.kept, x])
        self.n_in += x.shape[0]
        return self._emit(self.n_in - self.radius)

    def finish(self) -> Any:
        return self._emit(self.n_in)

    def _emit(self, ready: int) -> Any:
        if ready <= self.done:
            return None
        lo = max(0, self.done - self.radius)
        y = self.fn(self.kept[lo - self.base:][None])[0]
        out = y[(self.done - lo) * self.ratio:(ready - lo) * self.ratio]
        self.done = ready
        keep_from = max(0, ready - self.radius)     # older inputs are never looked at again
        self.kept, self.base = self.kept[keep_from - self.base:], keep_from
        return out
