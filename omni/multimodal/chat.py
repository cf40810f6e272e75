"""A chat session over an OmniModel: multi-turn history with images and audio, streamed replies.

The prompt is built by omni.multimodal.template.build_sequence from the same turns SFT trains on, so
what the model sees in chat is, token for token, what it saw in training. SFT validation and
omni/cli/eval_omni.py (evaluate.py omni) answer through this class too.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

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


@dataclasses.dataclass
class TurnStats:
    prompt_positions: int
    new_tokens: int
    ttft_s: float                    # prompt in -> first reply token out
    total_s: float

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


class ChatSession:
    def __init__(self, model: OmniModel, tok: Tokenizer, sampling: Sampling | None = None,
                 system: str = SYSTEM_PROMPT) -> None:
        self.model, self.tok, self.system = model.eval(), tok, system
        self.sampling = sampling or Sampling()
        self.device = next(model.parameters()).device
        self.history: list[_Entry] = []
        self.pending_images: list[torch.Tensor] = []
        self.pending_clips: list[np.ndarray] = []
        self.dropped_turns = 0
        self.generator = torch.Generator(device=self.device)
        if self.sampling.seed is not None:
            self.generator.manual_seed(self.sampling.seed)

    def reset(self) -> None:
        self.history, self.pending_images, self.pending_clips = [], [], []

    def attach_image(self, path: str | Path) -> None:
        """Queue an image for the next user message (raises BadImage naming the file)."""
        self.pending_images.append(load_image_tensor(path, self.model.comp.vision.img_size))

    def attach_audio(self, path: str | Path) -> None:
        """Queue an audio clip for the next user message (raises AudioError naming the file)."""
        self.pending_clips.append(load_audio(path))

    def _user_entry(self, text: str) -> _Entry:
        media = [(IMAGE, self.model.image_slots()) for _ in self.pending_images]
        media += [(AUDIO, self.model.audio_slots(len(a))) for a in self.pending_clips]
        entry = _Entry(Turn("user", text, media), self.pending_images, self.pending_clips)
        self.pending_images, self.pending_clips = [], []
        return entry

    def prompt(self, entries: list[_Entry]) -> Sequence:
        return build_sequence(self.tok, [e.turn for e in entries], self.system, generation_prompt=True)

    def _fit_context(self, entries: list[_Entry]) -> tuple[list[_Entry], Sequence]:
        """Drop the oldest exchanges until the prompt leaves room for a reply of >= 16 tokens."""
        room = self.model.thinker.cfg.ctx_len - min(16, self.sampling.max_new_tokens)
        seq = self.prompt(entries)
        while len(seq) > room and len(entries) > 1:
            entries = entries[2:] if entries[0].turn.role == "user" and len(entries) > 2 else entries[1:]
            self.dropped_turns += 1
            seq = self.prompt(entries)
        if len(seq) > room:
            raise ValueError(f"this message needs {len(seq)} positions; the model's context is "
                             f"{self.model.thinker.cfg.ctx_len}: send shorter audio or text")
        return entries, seq

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

        A KeyboardInterrupt while answering keeps the exchange as far as it got and is re-raised as
        ReplyInterrupted (see there)."""
        t0 = time.perf_counter()
        entries = self.history + [self._user_entry(text)]
        ids: list[int] = []
        shown = [""]
        first = [0.0]

        def on_token(token: int) -> None:
            if not ids:
                first[0] = time.perf_counter() - t0
            ids.append(token)
            if on_text is not None:
                now = self.tok.decode(ids)
                if not now.endswith("\ufffd") and len(now) > len(shown[0]):
                    on_text(now[len(shown[0]):])
                    shown[0] = now

        def stats(prompt_positions: int) -> TurnStats:
            total = time.perf_counter() - t0
            return TurnStats(prompt_positions, len(ids), first[0] if ids else total, total)

        seq = None
        try:
            entries, seq = self._fit_context(entries)
            x = self.embeds(entries, seq)
            s = self.sampling
            stop = (self.tok.special["<|end|>"], self.tok.special["<|eos|>"])
            generate_reply(self.model, x, s.max_new_tokens, stop, s.temperature, s.top_k, s.top_p,
                           self.generator, on_token)
        except KeyboardInterrupt as e:
            # a cut-off reply can end inside a multi-byte character: keep only whole characters
            reply = self.tok.decode(ids).rstrip("\ufffd").strip()
            self.history = entries + [_Entry(Turn("assistant", reply), [], [])]
            log.info("reply interrupted after %d tokens; kept in the history", len(ids))
            raise ReplyInterrupted(reply, stats(len(seq) if seq is not None else 0)) from e
        reply = self.tok.decode(ids).strip()
        self.history = entries + [_Entry(Turn("assistant", reply), [], [])]
        return reply, stats(len(seq))
