"""Stage D synthesis: ``Synthesizer`` (text -> Talker codes -> codec -> vocoder -> 16 kHz audio).

text -> chunks (sentences / clauses / words of at most ``chunk_chars``, DEFAULT_CHUNK_CHARS unless
given, never more than the Talker's ``max_text_chars``) -> Talker codes ->
codec.decode -> log-mel (62.5 Hz; chunks joined by 0.15 s of silence) -> Griffin-Lim, or a trained
HiFi-GAN -> 16 kHz. The Talker's data and training pieces are in omni/talker/data.py.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from omni.audio.features import LOG_FLOOR, SAMPLE_RATE, SPEECH_OUT_MEL
from omni.codec.stage import load_codec
from omni.config import config_from_dict
from omni.engine.checkpoint import MODEL_FILE, CheckpointError, best_or_self, load_weights, read_config, read_metrics
from omni.engine.runtime import pick_device
from omni.files import file_sha1
from omni.speech.chunks import split_text
from omni.speech.griffinlim import mel_to_wav
from omni.talker.data import CODEC_LINK, VOCAB_FILE
from omni.talker.model import Talker, TalkerConfig
from omni.talker.text import TextVocab
from omni.vocoder.model import Generator, vocode
from omni.vocoder.stage import load_generator

log = logging.getLogger(__name__)

# the longest piece of text the Talker speaks at once: its speech drifts over long texts, and
# shorter pieces, cut at sentence / clause / word boundaries, are clearer (docs/results.md, Stage D)
DEFAULT_CHUNK_CHARS = 60


def talker_dir(ckpt_dir: Path) -> Path:
    """``<ckpt>/talker/best`` when validation saved one, else ``<ckpt>/talker``."""
    return best_or_self(ckpt_dir / "talker")


# Greedy codes by default: a trained Talker is at least as intelligible greedy as sampled
# (docs/results.md, Stage D). An undertrained one may hold a vowel greedily until the generation
# limit: sample it with --temperature 0.6.
DEFAULT_TEMPERATURE, DEFAULT_TOP_K = 0.0, 20


VOCODERS = ("griffinlim", "hifigan")
VOCODER_DIR = Path("checkpoints/vocoder_tiny")  # where train_vocoder.py writes by default


def resolve_vocoder(choice: str, vocoder_dir: str | Path = VOCODER_DIR) -> str:
    """``auto``: ``hifigan`` when ``vocoder_dir`` holds a trained vocoder, one whose validation
    measured a lower log-mel distance than Griffin-Lim's on the same mels (a barely started run
    would sound worse than Griffin-Lim); else ``griffinlim``."""
    if choice != "auto":
        return choice
    if not (best_or_self(vocoder_dir) / MODEL_FILE).is_file():
        return "griffinlim"
    vals = [r for r in read_metrics(vocoder_dir) if r["event"] == "val" and "val_gl_mel_l1" in r]
    if any(r["val_mel_l1"] < r["val_gl_mel_l1"] for r in vals):
        return "hifigan"
    log.info("%s: the vocoder has not beaten Griffin-Lim in validation yet; speaking with Griffin-Lim "
             "(--vocoder %s to use it anyway)", vocoder_dir, vocoder_dir)
    return "griffinlim"


class Synthesizer:
    """text -> 16 kHz float32 speech. ``last_stats`` after each call: audio_s, seconds spent per
    part, rtf (synthesis seconds / audio seconds), chunks, dropped characters. Codes are sampled
    (temperature, top_k per codebook); pass ``seed`` to ``synthesize`` for a repeatable result."""

    def __init__(self, talker: Talker, vocab: TextVocab, codec, device: torch.device, vocoder: Generator | None = None,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K, gl_iters: int = 32,
                 pause_s: float = 0.15, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> None:
        """``vocoder``: a trained HiFi-GAN generator (omni.vocoder.stage.load_generator), or None
        for Griffin-Lim (``gl_iters`` iterations). ``chunk_chars``: text is
        spoken in pieces of at most this many characters (capped at the Talker's max_text_chars,
        the longest text it was trained on)."""
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
        self.talker, self.vocab, self.codec, self.device = talker.eval(), vocab, codec.eval(), device
        self.vocoder = vocoder.eval() if vocoder is not None else None
        self.vocoder_name = "griffinlim" if vocoder is None else "hifigan"
        self.temperature, self.top_k, self.gl_iters, self.pause_s = temperature, top_k, gl_iters, pause_s
        self.chunk_chars = min(chunk_chars, talker.cfg.max_text_chars)
        self.last_stats: dict[str, float] = {}

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str | torch.device = "cpu", vocoder: str = "griffinlim",
             vocoder_dir: str | Path = VOCODER_DIR, **kw) -> "Synthesizer":
        """``ckpt_dir`` as written by train_talker.py: ``talker/`` (its ``best/`` if present) with
        config.json, model.safetensors, text_vocab.json, the codec it was trained on (``codec/``) and
        codec.json naming that folder relative to the Talker folder, with the codec weights' SHA-1.
        ``vocoder``: ``griffinlim``, or ``hifigan`` (the generator in ``vocoder_dir``, its best/ if present)."""
        if vocoder not in VOCODERS:
            raise ValueError(f"unknown vocoder '{vocoder}'; choose from {', '.join(VOCODERS)}")
        ckpt_dir = Path(ckpt_dir)
        tdir = talker_dir(ckpt_dir)
        link_path = tdir / CODEC_LINK
        if not link_path.is_file():
            raise CheckpointError(f"no {CODEC_LINK} in {tdir}: not a Talker checkpoint; train one with "
                                  "`python train_talker.py --config configs/talker_tiny.json`")
        device = pick_device(device) if isinstance(device, str) else device
        link = json.loads(link_path.read_text(encoding="utf-8"))
        codec_dir = tdir / link["codec_dir"]
        sha = file_sha1(codec_dir / MODEL_FILE) if (codec_dir / MODEL_FILE).is_file() else "missing"
        if sha != link["codec_sha1"]:
            raise CheckpointError(f"{codec_dir}/{MODEL_FILE} is not the codec {tdir} was trained with "
                                  f"(SHA-1 {sha} != {link['codec_sha1']}); retrain the Talker (train_talker.py)")
        talker_cfg = config_from_dict(read_config(tdir)["talker"], TalkerConfig)
        vocab = TextVocab.load(tdir / VOCAB_FILE)
        if vocab.kind != talker_cfg.text_input:
            raise CheckpointError(f"{tdir}: {VOCAB_FILE} reads {vocab.kind} but config.json says "
                                  f"talker.text_input={talker_cfg.text_input}; the folder mixes two Talkers")
        talker = Talker(talker_cfg)
        load_weights(talker, tdir)
        codec, _ = load_codec(codec_dir, device)
        log.info("Talker %s (%.2fM params) + codec %s on %s", tdir, talker.num_params() / 1e6, codec_dir, device)
        gen = load_generator(best_or_self(vocoder_dir), device) if vocoder == "hifigan" else None
        return cls(talker.to(device), vocab, codec, device, gen, **kw)

    @torch.no_grad()
    def codes(self, text: str, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Raw text -> one codes tensor (T, n_q) per chunk; [] when nothing speakable is left."""
        clean, dropped = self.vocab.normalize(text)
        if dropped:
            log.warning("dropped %d character(s) the Talker cannot read: %s", sum(dropped.values()), dict(dropped))
        self.last_stats["dropped_chars"] = float(sum(dropped.values()))
        pieces = [self.vocab.ids(p) for p in split_text(clean, self.chunk_chars)]
        lost = sum((d for _, d in pieces), Counter())
        if lost:
            log.warning("dropped %d symbol(s) outside the Talker's vocabulary: %s", sum(lost.values()), dict(lost))
        return [self.talker.generate(ids, self.temperature, self.top_k, generator=generator)
                for ids, _ in pieces if ids]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """One chunk's codes (T, n_q) -> log-mel (1, frames, 128)."""
        return self.codec.decode(codes[None].to(self.device)).float()

    @torch.no_grad()
    def synthesize(self, text: str, seed: int | None = None) -> np.ndarray:
        """text -> (N,) float32 at 16 kHz. Empty text, or text with no readable character, gives an
        empty array (and a warning), not an error: a chat turn may have nothing to say aloud."""
        self.last_stats = {}
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        t0 = time.perf_counter()
        chunks = self.codes(text, gen)
        t1 = time.perf_counter()
        if not chunks:
            log.warning("nothing to synthesise in %r", text[:80])
            self.last_stats.update(audio_s=0.0, synth_s=t1 - t0, rtf=0.0, chunks=0.0)
            return np.zeros(0, dtype=np.float32)
        pause = torch.full((1, round(self.pause_s * SPEECH_OUT_MEL.sample_rate / SPEECH_OUT_MEL.hop_length),
                            SPEECH_OUT_MEL.n_mels), float(np.log(LOG_FLOOR)), device=self.device)
        mels = []
        for k, c in enumerate(chunks):
            if k:
                mels.append(pause)
            mels.append(self.decode(c))
        mel = torch.cat(mels, dim=1)
        t2 = time.perf_counter()
        wav = (vocode(self.vocoder, mel) if self.vocoder is not None else mel_to_wav(mel, n_iter=self.gl_iters))
        wav = wav[0].float().cpu().numpy().astype(np.float32)
        t3 = time.perf_counter()
        audio_s = len(wav) / SAMPLE_RATE
        self.last_stats.update(audio_s=audio_s, talker_s=t1 - t0, codec_s=t2 - t1, vocoder_s=t3 - t2,
                               synth_s=t3 - t0, rtf=(t3 - t0) / max(audio_s, 1e-9), chunks=float(len(chunks)),
                               frames=float(mel.shape[1]))
        return wav
