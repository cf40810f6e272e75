"""Speech that starts before the reply is finished: text pieces in, audio chunks out.

    reply text, as it streams -> TextPieces (cut at sentence / clause ends) -> for each piece:
        Talker.generate_iter (a group of codes at a time) -> LocalStream(codec.decode)
        -> BlockGriffinLim, or LocalStream(HiFi-GAN) -> 16 kHz chunks

The codec decoder and HiFi-GAN are stacks of convolutions: an output frame depends on the input
frames within a fixed radius of it. ``LocalStream`` runs such a function on the input seen so far
with ``radius`` frames of context on each side, and hands out only the outputs whose whole
receptive field is in, so its chunks joined are exactly the function on the whole input (the radius
is measured by ``probe_radius``, not assumed). Griffin-Lim is iterative over the whole signal and has no
such radius; BlockGriffinLim (omni/speech/griffinlim.py) is its block-wise form and the offline
path uses the same blocks (docs/architecture.md, "Streaming speech").
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

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


def probe_radius(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, ratio: int,
                 change: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """How many input frames on each side an output frame of ``fn`` depends on.

    ``fn`` maps inputs (1, T, ...) to outputs (1, T * ratio, ...); ``example`` is an input with T
    well above the radius; ``change`` returns one input frame altered. The outputs that move when
    the middle frame is altered span the receptive field; one frame more is kept for safety."""
    T = example.shape[1]
    mid = T // 2
    other = example.clone()
    other[:, mid] = change(example[:, mid])
    diff = (fn(example) - fn(other)).abs()[0]
    moved = torch.nonzero(diff.reshape(diff.shape[0], -1).amax(-1) > 0).flatten()
    if moved.numel() == 0:
        raise ValueError("probe_radius: altering an input frame changed no output (a dead function?)")
    reach = max(abs(int(moved.min()) // ratio - mid), abs(int(moved.max()) // ratio - mid))
    if reach >= mid - 1:
        raise ValueError(f"probe_radius: the receptive field reaches the example's edge (T={T}); probe longer")
    return reach + 1


class LocalStream:
    """Chunked evaluation of a function with a finite receptive field: ``push`` input frames (T, ...),
    get back the outputs that can no longer change; ``finish`` gives the rest. The chunks joined
    equal ``fn`` on the whole input (up to float rounding of the convolutions' different lengths)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], radius: int, ratio: int) -> None:
        self.fn, self.radius, self.ratio = fn, radius, ratio
        self.kept: torch.Tensor | None = None   # the inputs from global frame `base` on
        self.base = self.n_in = 0
        self.done = 0                           # input frames whose outputs were handed out

    def push(self, x: torch.Tensor) -> torch.Tensor | None:
        self.kept = x if self.kept is None else torch.cat([self.kept, x])
        self.n_in += x.shape[0]
        return self._emit(self.n_in - self.radius)

    def finish(self) -> torch.Tensor | None:
        return self._emit(self.n_in)

    def _emit(self, ready: int) -> torch.Tensor | None:
        if ready <= self.done:
            return None
        lo = max(0, self.done - self.radius)
        y = self.fn(self.kept[lo - self.base:][None])[0]
        out = y[(self.done - lo) * self.ratio:(ready - lo) * self.ratio]
        self.done = ready
        keep_from = max(0, ready - self.radius)     # older inputs are never looked at again
        self.kept, self.base = self.kept[keep_from - self.base:], keep_from
        return out


def silence(seconds: float, sample_rate: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(math.ceil(seconds * sample_rate), device=device)
