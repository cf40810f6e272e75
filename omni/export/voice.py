"""The speech half of the torch-free runtime: the exported Talker, codec decoder and vocoder, speaking
as PyTorch's Synthesizer does (omni/speech/synthesis.py): text cut into pieces, the Talker's groups of
codes decoded by the codec in chunks with its receptive radius of context (LocalStream), mel frames
turned into samples by block-wise Griffin-Lim (omni/export/dsp.py) or HiFi-GAN in chunks, a pause
between pieces. ``live_turn`` speaks a chat reply while it is written (omni/multimodal/live.py).
Imports numpy and onnxruntime (through the runtime) only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from omni.export.dsp import BlockGriffinLim, GriffinLim
from omni.export.ports import SAMPLE_RATE, RunError, sample_codes
from omni.speech.chunks import LocalStream, TextPieces, split_text

if TYPE_CHECKING:
    from omni.export.runtime import OnnxChat, OnnxOmni


def round_durations(frames: np.ndarray) -> np.ndarray:
    """omni.talker.align.round_durations: integer frames per symbol from the rounded running sum."""
    ends = np.round(np.cumsum(np.maximum(frames, 0).astype(np.float64))).astype(np.int64)
    d = np.diff(ends, prepend=0)
    if d.sum() < 1:
        d[-1] += 1 - d.sum()
    return d


def frame_places(path: np.ndarray, n_sym: int, r: int, places: int) -> tuple[np.ndarray, ...]:
    """omni.talker.duration.frame_places for one row of real frames (T,) -> sym, since, to_end (G r,)."""
    T = len(path)
    t = np.arange(-(-T // r) * r)
    src = np.minimum(t, T - 1)
    sym = path[src]
    counts = np.bincount(path, minlength=n_sym)
    ends = np.cumsum(counts)
    since = np.clip(src - (ends - counts)[sym], 0, places - 1)
    to_end = np.clip(ends[sym] - 1 - src, 0, places - 1)
    return sym.astype(np.int64), since.astype(np.int64), to_end.astype(np.int64)


class OnnxVoice:
    """Speech out of an export folder's graphs (``OnnxOmni.voice``)."""

    def __init__(self, model: OnnxOmni) -> None:
        self.model = model
        self._gl: GriffinLim | None = None

    def talker_groups(self, text_ids: list[int], temperature: float, top_k: int, rng: np.random.Generator
                      ) -> Iterator[np.ndarray]:
        """omni.talker.model.Talker.generate_iter: groups of codes (frames_per_step, n_q) int64, each
        yielded as soon as it is picked."""
        tk = self.model.cfg["speech"]["talker"]
        r, n_q = tk["frames_per_step"], tk["n_codebooks"]
        if tk.get("alignment") == "durations":
            yield from self._duration_groups(text_ids, temperature, top_k, rng)
            return
        frames = math.ceil(tk["max_frames_per_char"] * max(len(text_ids), 1)) + 8
        limit = -(-frames // r)
        L = len(text_ids) + 1
        if L + 1 + limit > tk["ctx_len"]:
            limit = tk["ctx_len"] - L - 1
            if limit < 1:
                raise RunError(f"text of {len(text_ids)} characters leaves no room in ctx_len {tk['ctx_len']}")
        text = np.asarray([[tk["start_id"]] + list(text_ids)], dtype=np.int64)
        outs = self.model.run("talker_prefill", text=text)
        for k in range(limit):
            h, stop = outs[0], outs[1]
            if k and self.stops(float(stop[0])):
                return
            if tk["depth"]:
                group = self._depth_chain(h, temperature, top_k, rng, r, n_q)
            else:
                group = sample_codes(outs[2][0], temperature, top_k, rng)
            yield group
            outs = self.model.run("talker_decode", groups=group[None, None].astype(np.int64), past_k=outs[-2],
                            past_v=outs[-1])

    def _duration_groups(self, text_ids: list[int], temperature: float, top_k: int, rng: np.random.Generator
                         ) -> Iterator[np.ndarray]:
        """omni.talker.duration.DurationTalker.generate_iter: plan (encoder, durations), one condition
        per group, then one group a step."""
        tk = self.model.cfg["speech"]["talker"]
        r, n_q = tk["frames_per_step"], tk["n_codebooks"]
        if not text_ids:
            raise RunError("generate: empty text (nothing to say)")
        text = np.asarray([[tk["start_id"]] + list(text_ids)], dtype=np.int64)
        enc, log_frames = self.model.run("talker_plan", text=text)
        path = np.repeat(np.arange(len(text_ids)), round_durations(np.exp(log_frames[0].astype(np.float32))))
        sym, since, to_end = frame_places(path, len(text_ids), r, tk["places"])
        cond = self.model.run("talker_cond", enc=enc, sym=sym[None], since=since[None], to_end=to_end[None])[0]
        limit = min(cond.shape[1], tk["ctx_len"])
        outs = self.model.run("talker_start", cond=cond[:, :1])
        for j in range(limit):
            if tk["depth"]:
                group = self._depth_chain(outs[0], temperature, top_k, rng, r, n_q)
            else:
                group = sample_codes(outs[1][0], temperature, top_k, rng)
            yield group
            if j + 1 < limit:
                outs = self.model.run("talker_step", groups=group[None, None].astype(np.int64),
                                      cond=cond[:, j + 1:j + 2], past_k=outs[-2], past_v=outs[-1])

    @staticmethod
    def stops(stop_logit: float) -> bool:
        """The Talker's stop flag (its probability past 0.5), checked before each group but the first."""
        return 1.0 / (1.0 + math.exp(-stop_logit)) > 0.5

    def talker_codes(self, text_ids: list[int], temperature: float, top_k: int, rng: np.random.Generator
                     ) -> np.ndarray:
        """omni.talker.model.Talker.generate -> codes (T, n_q) int64."""
        return np.concatenate(list(self.talker_groups(text_ids, temperature, top_k, rng)), axis=0)

    def _depth_chain(self, h: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator,
                     r: int, n_q: int) -> np.ndarray:
        prev = np.zeros_like(h)
        code = np.zeros((h.shape[0],), dtype=np.int64)
        ids = []
        for s in range(r * n_q):
            logits, prev = self.model.run("talker_depth", hidden=h, prev=prev, code=code,
                                    slot=np.asarray(s, dtype=np.int64))
            code = np.asarray([sample_codes(logits[0], temperature, top_k, rng)], dtype=np.int64)
            ids.append(int(code[0]))
        return np.asarray(ids, dtype=np.int64).reshape(r, n_q)

    def codes_to_mel(self, codes: np.ndarray) -> np.ndarray:
        """(T, n_q) -> log-mel (T * fpc, 128)."""
        return self.model.run("codec_decoder", codes=codes[None].astype(np.int64))[0][0]

    @property
    def griffin_lim(self) -> GriffinLim:
        """The mel -> magnitude half of Griffin-Lim, with the filterbanks PyTorch uses (made once)."""
        if self._gl is None:
            fe, mel = self.model.frontend, self.model.cfg["speech"]["mel"]
            self._gl = GriffinLim(fe["speech_fb"], fe["speech_fb_pinv"], fe["speech_window"], mel["n_fft"], mel["hop"])
        return self._gl

    def speech_chunks(self, text: str) -> list[list[int]]:
        """Raw text -> the Talker ids of each chunk (Synthesizer.pieces)."""
        sp = self.model.cfg.get("speech")
        if not sp:
            raise RunError(f"{self.model.dir}: exported without a Talker (--talker): no speech out")
        clean, _ = self.model.vocab.normalize(text)
        pieces = [self.model.vocab.ids(p)[0] for p in split_text(clean, sp["chunk_chars"])]
        return [p for p in pieces if p]

    def start(self, seed: int | None = None, temperature: float | None = None, top_k: int | None = None,
              vocoder: str | None = None) -> OnnxUtterance:
        """A spoken reply that text is added to piece by piece (Synthesizer.start)."""
        return OnnxUtterance(self, seed, temperature, top_k, vocoder)

    def synthesize(self, text: str, seed: int | None = None, temperature: float | None = None,
                   top_k: int | None = None, vocoder: str | None = None) -> np.ndarray:
        """text -> (N,) float32 at 16 kHz; empty when nothing is speakable (Synthesizer.synthesize)."""
        chunks = list(self.start(seed, temperature, top_k, vocoder).say(text))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


class OnnxUtterance:
    """omni.speech.synthesis.Utterance on ONNX Runtime: ``say(text)`` yields that text's audio as it
    becomes final, after ``pause_s`` of silence when something was said before. The Talker's groups of
    codes are decoded by the codec with its receptive radius of context (LocalStream), and the mel
    frames turned into samples by the block-wise Griffin-Lim, or by HiFi-GAN through LocalStream: the
    same blocks as PyTorch, so the audio is the same. ``first_audio_s``: creation -> first chunk."""

    def __init__(self, model: OnnxVoice, seed: int | None, temperature: float | None, top_k: int | None,
                 vocoder: str | None) -> None:
        sp = model.model.cfg["speech"]
        if not sp:
            raise RunError(f"{model.model.dir}: exported without a Talker (--talker): no speech out")
        self.model, self.sp = model, sp
        self.temperature = sp["temperature"] if temperature is None else temperature
        self.top_k = sp["top_k"] if top_k is None else top_k
        self.vocoder = vocoder or sp["vocoder"]
        if self.vocoder == "hifigan" and not sp["has_vocoder"]:
            raise RunError(f"{model.model.dir}: exported without a vocoder; speak with griffinlim")
        self.rng = np.random.default_rng(seed)
        self.t_start = time.perf_counter()
        self.first_audio_s: float | None = None
        self.n_chunks = self.n_samples = 0

    def say(self, text: str) -> Iterator[np.ndarray]:
        for ids in self.model.speech_chunks(text):
            if self.n_chunks:
                pause = np.zeros(round(self.sp["pause_s"] * SAMPLE_RATE), dtype=np.float32)
                self.n_samples += len(pause)
                yield pause
            self.n_chunks += 1
            for wav in self._speak(ids):
                if self.first_audio_s is None:
                    self.first_audio_s = time.perf_counter() - self.t_start
                self.n_samples += len(wav)
                yield wav

    def _speak(self, ids: list[int]) -> Iterator[np.ndarray]:
        """One chunk's Talker ids -> its samples, a block at a time (Synthesizer._speak)."""
        m, sp = self.model, self.sp
        codec = LocalStream(lambda c: m.model.run("codec_decoder", codes=c.astype(np.int64))[0], sp["codec_radius"],
                            sp["frames_per_code"], np.concatenate)
        if self.vocoder == "hifigan":
            voc = LocalStream(lambda x: m.model.run("vocoder", mel=x.astype(np.float32))[0], sp["vocoder_radius"],
                              sp["mel"]["hop"], np.concatenate)
        else:
            voc = BlockGriffinLim(m.griffin_lim, n_iter=sp["gl_iters"], **sp["gl_block"])
        for group in m.talker_groups(ids, self.temperature, self.top_k, self.rng):
            mel = codec.push(group)
            wav = voc.push(mel) if mel is not None and len(mel) else None
            if wav is not None and len(wav):
                yield wav.astype(np.float32)
        mel = codec.finish()
        parts = [voc.push(mel) if mel is not None and len(mel) else None, voc.finish()]
        tail = [x for x in parts if x is not None and len(x)]
        if tail:
            yield np.concatenate(tail).astype(np.float32)


def live_turn(chat: OnnxChat, text: str, utt: OnnxUtterance, on_text: Callable[[str], None] | None = None
              ) -> tuple[str, dict[str, float], list[np.ndarray]]:
    """Answer ``text`` and speak the reply while it is written (omni.multimodal.live.live_turn): pieces
    cut at sentence and clause ends go to ``utt`` as soon as they are complete -> (reply, stats, audio
    chunks); ``utt.first_audio_s`` is the time from ``utt``'s creation to its first chunk."""
    pieces = TextPieces(chat.model.cfg["speech"]["chunk_chars"])
    audio: list[np.ndarray] = []

    def got_text(delta: str) -> None:
        if on_text is not None:
            on_text(delta)
        for piece in pieces.feed(delta):
            audio.extend(utt.say(piece))

    reply, stats = chat.ask(text, on_text=got_text)
    for piece in pieces.flush():
        audio.extend(utt.say(piece))
    return reply, stats, audio
