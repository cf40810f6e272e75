"""A chat session over an OmniModel: multi-turn history with images and audio, streamed replies.

The prompt is built by omni.multimodal.template.build_sequence from the same turns SFT trains on, so
what the model sees in chat is, token for token, what it saw in training. SFT validation and
omni/cli/eval_omni.py (evaluate.py omni) answer through this class too.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from omni.audio.features import load_audio
from omni.images import load_image_tensor
from omni.multimodal.model import OmniModel, generate_reply
from omni.multimodal.template import AUDIO, IMAGE, SYSTEM_PROMPT, Sequence, Turn, build_sequence
from omni.thinker.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Sampling:
    temperature: float = 0.0         # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        # checked here so a bad flag or /set fails with the reason, not as NaN probabilities mid-reply
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0 (0: greedy), not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: no truncation), not {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no truncation), not {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")


@dataclasses.dataclass
class TurnStats:
    prompt_positions: int
    new_tokens: int
    ttft_s: float                    # prompt in -> first reply token out
    total_s: float
    max_tokens: int                  # this reply's cap: max_new_tokens, or less when the context had less room
    hit_limit: bool                  # the reply ran to max_tokens; it did not end on the end token
    trimmed: int                     # oldest exchanges dropped from the history to fit this turn

    @property
    def tokens_per_s(self) -> float:
        decode = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else float("nan")


class ReplyInterrupted(KeyboardInterrupt):
    """Ctrl-C (KeyboardInterrupt) arrived while ChatSession.ask was answering.

    The session has already recorded the exchange as far as it got: the user message and the reply
    generated so far (``reply``, possibly empty) are the last two history entries, so the next ask
    sees what the user saw. It stays a KeyboardInterrupt so callers that do not expect it (SFT
    validation, evaluation) stop as they would on any Ctrl-C.
    """

    def __init__(self, reply: str, stats: TurnStats) -> None:
        super().__init__(f"reply interrupted after {stats.new_tokens} tokens")
        self.reply, self.stats = reply, stats


@dataclasses.dataclass
class _Entry:
    turn: Turn
    images: list[torch.Tensor]
    clips: list[np.ndarray]
    # ("image" | "audio", path) of each attachment, in the order attached: transcripts name the files
    sources: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class ChatSession:
    def __init__(self, model: OmniModel, tok: Tokenizer, sampling: Sampling | None = None,
                 system: str = SYSTEM_PROMPT) -> None:
        self.model, self.tok, self.system = model.eval(), tok, system
        self.sampling = sampling or Sampling()
        self.device = next(model.parameters()).device
        self.history: list[_Entry] = []
        self.pending_images: list[torch.Tensor] = []
        self.pending_clips: list[np.ndarray] = []
        self.pending_sources: list[tuple[str, str]] = []
        self.dropped_turns = 0
        self.generator = torch.Generator(device=self.device)
        if self.sampling.seed is not None:
            self.generator.manual_seed(self.sampling.seed)

    def reset(self) -> None:
        self.history = []
        self._clear_pending()

    def _clear_pending(self) -> None:
        self.pending_images, self.pending_clips, self.pending_sources = [], [], []

    def attach_image(self, path: str | Path) -> None:
        """Queue an image for the next user message (raises BadImage naming the file)."""
        self.pending_images.append(load_image_tensor(path, self.model.comp.vision.img_size))
        self.pending_sources.append(("image", str(path)))

    def attach_audio(self, path: str | Path) -> None:
        """Queue an audio clip for the next user message (raises AudioError naming the file)."""
        self.pending_clips.append(load_audio(path))
        self.pending_sources.append(("audio", str(path)))

    def _user_entry(self, text: str) -> _Entry:
        """The next user message with the pending media; they stay pending until ask records it."""
        media = [(IMAGE, self.model.image_slots()) for _ in self.pending_images]
        media += [(AUDIO, self.model.audio_slots(len(a))) for a in self.pending_clips]
        return _Entry(Turn("user", text, media), self.pending_images, self.pending_clips, self.pending_sources)

    def _record(self, entries: list[_Entry], reply: str) -> None:
        """The exchange is in the history now: its media are no longer pending."""
        self.history = entries + [_Entry(Turn("assistant", reply), [], [])]
        self._clear_pending()

    def prompt(self, entries: list[_Entry]) -> Sequence:
        return build_sequence(self.tok, [e.turn for e in entries], self.system, generation_prompt=True)

    def _fit_context(self, entries: list[_Entry]) -> tuple[list[_Entry], Sequence, int]:
        """Drop the oldest exchanges until the prompt leaves room for a reply of >= 16 tokens; also
        returns how many were dropped. ValueError when the last message alone does not fit."""
        room = self.model.thinker.cfg.ctx_len - min(16, self.sampling.max_new_tokens)
        seq = self.prompt(entries)
        dropped = 0
        while len(seq) > room and len(entries) > 1:
            entries = entries[2:] if entries[0].turn.role == "user" and len(entries) > 2 else entries[1:]
            dropped += 1
            seq = self.prompt(entries)
        if len(seq) > room:
            raise ValueError(f"this message needs {len(seq)} positions; the model's context is "
                             f"{self.model.thinker.cfg.ctx_len}: send shorter audio or text")
        return entries, seq, dropped

    @torch.no_grad()
    def embeds(self, entries: list[_Entry], seq: Sequence) -> torch.Tensor:
        images = [im for e in entries for im in e.images]
        clips = [a for e in entries for a in e.clips]
        audio = lengths = None
        if clips:
            lengths = torch.tensor([len(a) for a in clips], device=self.device)
            audio = torch.zeros(len(clips), int(lengths.max()), device=self.device)
            for k, a in enumerate(clips):
                audio[k, :len(a)] = torch.from_numpy(a)
        ids = torch.tensor([seq.ids], device=self.device)
        kinds = torch.tensor([seq.kinds], device=self.device)
        img = torch.stack(images).to(self.device) if images else None
        return self.model.embed(ids, kinds, img, audio, lengths)

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> tuple[str, TurnStats]:
        """Send a user message (with any attached media); returns the reply and its timings.
        ``on_text`` receives the reply as it grows, one printable piece at a time.

        A message too long for the context raises ValueError and changes nothing: its media stay pending
        for the next message. A KeyboardInterrupt while answering keeps the exchange as far as it got and
        is re-raised as ReplyInterrupted (see there)."""
        t0 = time.perf_counter()
        entries = self.history + [self._user_entry(text)]
        ids: list[int] = []
        shown = [""]
        first = [0.0]
        seq, cap, dropped = None, 0, 0

        def on_token(token: int) -> None:
            if not ids:
                first[0] = time.perf_counter() - t0
            ids.append(token)
            if on_text is not None:
                now = self.tok.decode(ids)
                if not now.endswith("\ufffd") and len(now) > len(shown[0]):
                    on_text(now[len(shown[0]):])
                    shown[0] = now

        def stats(hit_limit: bool) -> TurnStats:
            total = time.perf_counter() - t0
            return TurnStats(len(seq) if seq is not None else 0, len(ids), first[0] if ids else total, total,
                             cap, hit_limit, dropped)

        try:
            entries, seq, dropped = self._fit_context(entries)
            x = self.embeds(entries, seq)
            s = self.sampling
            # the room left in the context caps the reply as well; asking for exactly that cap makes
            # "ran to the cap" the one way a reply ends without its end token
            cap = min(s.max_new_tokens, self.model.thinker.cfg.ctx_len - len(seq))
            stop = (self.tok.special["<|end|>"], self.tok.special["<|eos|>"])
            generate_reply(self.model, x, cap, stop, s.temperature, s.top_k, s.top_p, self.generator, on_token)
        except KeyboardInterrupt as e:
            # a cut-off reply can end inside a multi-byte character: keep only whole characters
            reply = self.tok.decode(ids).rstrip("\ufffd").strip()
            self._record(entries, reply)
            self.dropped_turns += dropped
            log.info("reply interrupted after %d tokens; kept in the history", len(ids))
            raise ReplyInterrupted(reply, stats(hit_limit=False)) from e
        reply = self.tok.decode(ids).strip()
        self._record(entries, reply)
        self.dropped_turns += dropped
        return reply, stats(hit_limit=len(ids) == cap)
