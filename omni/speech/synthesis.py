"""Stage D synthesis: ``Synthesizer`` (text -> Talker codes -> codec -> vocoder -> 16 kHz audio).

text -> chunks (sentences / clauses / words of at most ``chunk_chars``, the Talker's own default
(``default_chunk_chars``) unless given, never more than its ``max_text_chars``) -> Talker codes ->
codec.decode -> log-mel (62.5 Hz; chunks joined by 0.15 s of silence) -> Griffin-Lim, or a trained
HiFi-GAN -> 16 kHz. The Talker's data and training pieces are in omni/talker/data.py.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from omni.audio.features import SAMPLE_RATE, SPEECH_OUT_MEL
from omni.codec.stage import load_codec
from omni.config import config_from_dict
from omni.engine.checkpoint import MODEL_FILE, CheckpointError, best_or_self, load_weights, read_config, read_metrics
from omni.engine.runtime import pick_device
from omni.files import file_sha1
from omni.speech.chunks import LocalStream, split_text
from omni.speech.griffinlim import BlockGriffinLim, inverter
from omni.speech.streaming import probe_radius
from omni.talker.data import CODEC_LINK, VOCAB_FILE
from omni.talker.model import Talker, TalkerConfig, build_talker
from omni.talker.text import TextVocab
from omni.vocoder.model import Generator, vocode
from omni.vocoder.stage import load_generator

log = logging.getLogger(__name__)

# the longest piece of text an attention Talker speaks at once: its speech drifts over long texts,
# and shorter pieces, cut at sentence / clause / word boundaries, are clearer; a duration Talker
# speaks whole sentences at least as clearly (docs/results.md, Stage D)
ATTENTION_CHUNK_CHARS = 60


def default_chunk_chars(cfg: TalkerConfig) -> int:
    """The longest piece of text a Talker speaks at once by default."""
    return ATTENTION_CHUNK_CHARS if cfg.alignment == "attention" else cfg.max_text_chars


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
                 pause_s: float = 0.15, chunk_chars: int | None = None, rate: float = 1.0) -> None:
        """``vocoder``: a trained HiFi-GAN generator (omni.vocoder.stage.load_generator), or None
        for Griffin-Lim (``gl_iters`` iterations). ``chunk_chars``: text is
        spoken in pieces of at most this many characters (capped at the Talker's max_text_chars,
        the longest text it was trained on). ``rate``: speaking rate (2.0 twice as fast), for a
        Talker with durations (talker.alignment=durations)."""
        chunk_chars = default_chunk_chars(talker.cfg) if chunk_chars is None else chunk_chars
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
        if rate != 1.0 and talker.cfg.alignment != "durations":
            raise ValueError(f"--rate {rate}: this Talker (talker.alignment={talker.cfg.alignment}) has no rate "
                             "control; a Talker trained with talker.alignment=durations has")
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.talker, self.vocab, self.codec, self.device = talker.eval(), vocab, codec.eval(), device
        self.vocoder = vocoder.eval() if vocoder is not None else None
        self.vocoder_name = "griffinlim" if vocoder is None else "hifigan"
        self.temperature, self.top_k, self.gl_iters, self.pause_s = temperature, top_k, gl_iters, pause_s
        self.chunk_chars = min(chunk_chars, talker.cfg.max_text_chars)
        self.last_stats: dict[str, float] = {}
        self._radii: dict[str, int] = {}

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str | torch.device = "cpu", vocoder: str = "griffinlim",
             vocoder_dir: str | Path = VOCODER_DIR, **kw) -> Synthesizer:
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
        talker = build_talker(talker_cfg)
        load_weights(talker, tdir)
        codec, _ = load_codec(codec_dir, device)
        log.info("Talker %s (%.2fM params) + codec %s on %s", tdir, talker.num_params() / 1e6, codec_dir, device)
        gen = load_generator(best_or_self(vocoder_dir), device) if vocoder == "hifigan" else None
        return cls(talker.to(device), vocab, codec, device, gen, **kw)

    @torch.no_grad()
    def codes(self, text: str, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Raw text -> one codes tensor (T, n_q) per chunk; [] when nothing speakable is left."""
        return [self.talker.generate(ids, self.temperature, self.top_k, generator=generator, rate=self.rate)
                for ids in self.pieces(text)]

    def pieces(self, text: str) -> list[list[int]]:
        """Raw text -> the Talker ids of each chunk it is spoken in (warns about dropped characters)."""
        clean, dropped = self.vocab.normalize(text)
        if dropped:
            log.warning("dropped %d character(s) the Talker cannot read: %s", sum(dropped.values()), dict(dropped))
        self.last_stats["dropped_chars"] = self.last_stats.get("dropped_chars", 0.0) + sum(dropped.values())
        pieces = [self.vocab.ids(p) for p in split_text(clean, self.chunk_chars)]
        lost = sum((d for _, d in pieces), Counter())
        if lost:
            log.warning("dropped %d symbol(s) outside the Talker's vocabulary: %s", sum(lost.values()), dict(lost))
        return [ids for ids, _ in pieces if ids]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """One chunk's codes (T, n_q) -> log-mel (1, frames, 128)."""
        return self.codec.decode(codes[None].to(self.device)).float()

    @torch.no_grad()
    def synthesize(self, text: str, seed: int | None = None) -> np.ndarray:
        """text -> (N,) float32 at 16 kHz: ``stream``'s chunks joined. Empty text, or text with no
        readable character, gives an empty array (and a warning), not an error: a chat turn may have
        nothing to say aloud."""
        chunks = list(self.stream(text, seed))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def radius(self, kind: str) -> int:
        """The codec decoder's / HiFi-GAN's receptive radius in input frames, probed once."""
        if kind not in self._radii:
            gen = torch.Generator(device="cpu").manual_seed(0)
            if kind == "codec":
                K = self.codec.codebook_size
                ex = torch.randint(0, K, (1, 96, self.talker.cfg.n_codebooks), generator=gen).to(self.device)
                self._radii[kind] = probe_radius(self.codec.decode, ex, self.codec.frames_per_code,
                                                 lambda c: (c + 1) % K)
            else:
                ex = (torch.randn(1, 128, SPEECH_OUT_MEL.n_mels, generator=gen) - 4).to(self.device)
                self._radii[kind] = probe_radius(lambda m: vocode(self.vocoder, m), ex,
                                                 SPEECH_OUT_MEL.hop_length, lambda f: f + 1.0)
        return self._radii[kind]

    def stream(self, text: str | Iterable[str], seed: int | None = None) -> Iterator[np.ndarray]:
        """Text, or the pieces of a reply as they are written -> 16 kHz float32 chunks, each yielded
        as soon as it is final (``Utterance.say`` for each piece); ``last_stats`` is the utterance's
        ``stats()`` once the generator is exhausted."""
        utt = self.start(seed)
        for piece in [text] if isinstance(text, str) else text:
            yield from utt.say(piece)
        self.last_stats = utt.stats()
        if not utt.n_chunks:
            log.warning("nothing to synthesise in %r", text[:80] if isinstance(text, str) else "the reply")

    def start(self, seed: int | None = None) -> Utterance:
        """A new spoken reply that text is added to piece by piece (live chat)."""
        return Utterance(self, seed)

    def _speak(self, ids: list[int], gen: torch.Generator | None, spent: dict[str, float]) -> Iterator[np.ndarray]:
        """One chunk's Talker ids -> its samples, a block at a time; adds the time of each part to ``spent``
        and the chunk's mel frame count as spent["frames"]."""
        codec = LocalStream(self.codec.decode, self.radius("codec"), self.codec.frames_per_code, torch.cat)
        voc = (LocalStream(lambda m: vocode(self.vocoder, m), self.radius("hifigan"), SPEECH_OUT_MEL.hop_length,
                           torch.cat)
               if self.vocoder is not None else BlockGriffinLim(inverter(self.device), n_iter=self.gl_iters))
        frames = 0
        groups = self.talker.generate_iter(ids, self.temperature, self.top_k, generator=gen, rate=self.rate)
        while True:
            t0 = time.perf_counter()
            group = next(groups, None)
            t1 = time.perf_counter()
            spent["talker_s"] += t1 - t0
            mel = codec.push(group.to(self.device)) if group is not None else codec.finish()
            t2 = time.perf_counter()
            spent["codec_s"] += t2 - t1
            wav = None
            if mel is not None and mel.shape[0]:
                frames += mel.shape[0]
                wav = voc.push(mel.float())
            if group is None:
                tail = voc.finish()
                wav = tail if wav is None else torch.cat([wav, tail])
            spent["vocoder_s"] += time.perf_counter() - t2
            if wav is not None and wav.numel():
                yield wav.float().cpu().numpy().astype(np.float32)
            if group is None:
                spent["frames"] = frames
                return


class Utterance:
    """One spoken reply built piece by piece: ``say(text)`` yields that text's audio as it becomes
    final, after ``pause_s`` of silence when something was said before. Codes come a group at a
    time from the Talker, the codec decodes them with its receptive field of context (LocalStream),
    and the vocoder turns the final mel frames into samples (BlockGriffinLim, or HiFi-GAN through
    LocalStream). ``stats()``: audio_s, first_audio_s (creation -> first chunk), seconds per part,
    synth_s, rtf, chunks, frames, dropped_chars."""

    def __init__(self, synth: Synthesizer, seed: int | None) -> None:
        self.synth = synth
        self.gen = torch.Generator(device=synth.device).manual_seed(seed) if seed is not None else None
        self.t_start = time.perf_counter()
        self.spent = {"talker_s": 0.0, "codec_s": 0.0, "vocoder_s": 0.0}
        self.n_chunks = self.n_frames = self.n_samples = 0
        self.first: float | None = None
        self.synth.last_stats = {}

    @torch.no_grad()
    def say(self, text: str) -> Iterator[np.ndarray]:
        for ids in self.synth.pieces(text):
            if self.n_chunks:
                pause = np.zeros(round(self.synth.pause_s * SAMPLE_RATE), dtype=np.float32)
                self.n_samples += len(pause)
                yield pause
            self.n_chunks += 1
            for wav in self.synth._speak(ids, self.gen, self.spent):
                if self.first is None:
                    self.first = time.perf_counter() - self.t_start
                self.n_samples += len(wav)
                yield wav
            self.n_frames += int(self.spent.pop("frames"))

    def stats(self) -> dict[str, float]:
        synth = sum(self.spent.values())
        audio_s = self.n_samples / SAMPLE_RATE
        return {**self.spent, "audio_s": audio_s, "synth_s": synth, "rtf": synth / audio_s if audio_s else 0.0,
                "first_audio_s": self.first if self.first is not None else float("nan"),
                "chunks": float(self.n_chunks), "frames": float(self.n_frames),
                "dropped_chars": self.synth.last_stats.get("dropped_chars", 0.0)}
