"""Stage D, the Talker half: TTS data as codec codes, the Talker stage, and ``Synthesizer``.

Training data: a ``text,wav`` CSV. Every utterance is turned into codec codes once, with the frozen
codec, and cached beside the Talker checkpoint (``<save_dir>/codes/<csv name>.npy`` + ``.json``),
stamped with the CSV's size/mtime and the codec weights' SHA-1 so a changed codec or CSV rebuilds
it. Rows that cannot be used (missing/corrupt audio, no speakable text, too long) are recorded in
the cache and skipped, counted by reason, every epoch.

Synthesis: text -> chunks (sentences / clauses / words under ``max_text_chars``) -> Talker codes ->
codec.decode -> log-mel (62.5 Hz; chunks joined by 0.15 s of silence) -> Griffin-Lim -> 16 kHz.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omni.asr import Manifest
from omni.audio import LOG_FLOOR, SPEECH_OUT_MEL, SAMPLE_RATE, AudioError, LogMel, load_audio
from omni.checkpoint import CheckpointError, MODEL_FILE, best_or_self, load_weights, read_config, read_metrics
from omni.codec_stage import CodecStageConfig, load_codec
from omni.config import TrainConfig, config_from_dict
from omni.data import DataError, SkipCountingDataset
from omni.files import atomic_write, write_json_atomic
from omni.griffinlim import mel_to_wav
from omni.runtime import pick_device
from omni.talker import (PAD, START, Talker, TalkerConfig, TalkerLossConfig, TextVocab, talker_loss)
from omni.vocoder import Generator, vocode
from omni.vocoder_stage import load_generator

log = logging.getLogger(__name__)

VOCAB_FILE = "text_vocab.json"
CACHE_VERSION = 1


@dataclass
class TtsDataConfig:
    """``text,wav`` CSVs (wav paths relative to the CSV)."""
    train_csv: str
    val_csv: str
    max_seconds: float = 12.0
    val_items: int = 100           # validation utterances (teacher-forced)


@dataclass
class TalkerStageConfig:
    """train_talker.py: phase 1 trains the codec (``codec``: a whole codec stage config, as in
    configs/codec_tiny.json) into ``codec.train.save_dir``, skipped when that folder holds a
    finished codec; phase 2 trains the Talker (``talker``, ``loss``, ``data``) into ``train.save_dir``."""
    codec: CodecStageConfig
    talker: TalkerConfig
    loss: TalkerLossConfig
    data: TtsDataConfig
    train: TrainConfig


def codec_dir_of(save_dir: str | Path) -> Path:
    """The codec a Talker is trained on: ``<save_dir>/best`` (best val_l1) when present, else the folder."""
    return best_or_self(save_dir)


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- the code cache
class CodeCache:
    """Codes of every row of a CSV: codes (N_frames, n_q) int16 concatenated, offsets (rows+1,),
    and per-row skip reasons. Built with ``build`` (slow: loads and encodes all audio) or loaded."""

    def __init__(self, codes: np.ndarray, offsets: np.ndarray, reasons: dict[int, str]) -> None:
        self.codes, self.offsets, self.reasons = codes, offsets, reasons

    @staticmethod
    def paths(cache_dir: Path, csv: Path) -> tuple[Path, Path]:
        return cache_dir / f"{csv.name}.codes.npy", cache_dir / f"{csv.name}.codes.json"

    @classmethod
    def load_or_build(cls, csv: Path, cache_dir: Path, codec, codec_sha: str, max_seconds: float) -> "CodeCache":
        npy, meta_path = cls.paths(cache_dir, csv)
        st = csv.stat()
        stamp = {"version": CACHE_VERSION, "csv_size": st.st_size, "csv_mtime_ns": st.st_mtime_ns,
                 "codec_sha1": codec_sha, "max_seconds": max_seconds}
        if npy.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta["stamp"] == stamp:
                reasons = {int(k): v for k, v in meta["skipped"].items()}
                return cls(np.load(npy, allow_pickle=False), np.asarray(meta["offsets"], dtype=np.int64), reasons)
            log.info("%s is stale (CSV or codec changed); re-encoding", meta_path)
        cache = cls.build(Manifest(csv), codec, max_seconds)
        atomic_write(npy, lambda p: _save_npy(p, cache.codes), fsync=False)
        write_json_atomic(meta_path, {"stamp": stamp, "offsets": cache.offsets.tolist(),
                                      "skipped": {str(k): v for k, v in cache.reasons.items()}}, indent=None)
        return cache

    @classmethod
    @torch.no_grad()
    def build(cls, manifest: Manifest, codec, max_seconds: float) -> "CodeCache":
        device = next(codec.parameters()).device
        logmel = LogMel(SPEECH_OUT_MEL).to(device)
        chunks, offsets, reasons, t0 = [], [0], {}, time.perf_counter()
        for i in tqdm(range(len(manifest)), desc=f"encoding {manifest.path.name}", unit="utt", leave=False):
            codes = np.zeros((0, codec.n_codebooks), dtype=np.int16)
            try:
                audio = load_audio(manifest[i]["wav"])
                if len(audio) > max_seconds * SAMPLE_RATE:
                    reasons[i] = "too_long"
                else:
                    mel = logmel(torch.from_numpy(audio).to(device)[None])
                    codes = codec.encode(mel)[0].cpu().numpy().astype(np.int16)
            except DataError as e:
                log.warning("%s", e)
                reasons[i] = "malformed_row"
            except AudioError as e:
                log.warning("%s:%d: %s", manifest.path, i + 2, e)
                reasons[i] = f"audio_{e.reason}"
            chunks.append(codes)
            offsets.append(offsets[-1] + len(codes))
        log.info("encoded %s: %d rows, %d frames, %d unusable, %.1f s", manifest.path, len(manifest),
                 offsets[-1], len(reasons), time.perf_counter() - t0)
        return cls(np.concatenate(chunks), np.asarray(offsets, dtype=np.int64), reasons)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


class TalkerDataset(SkipCountingDataset):
    """item i -> (text ids (L,) long, codes (T, n_q) long) or None when the row is unusable."""

    def __init__(self, manifest: Manifest, cache: CodeCache, vocab: TextVocab, max_text_chars: int) -> None:
        self.m, self.cache, self.vocab = manifest, cache, vocab
        super().__init__()
        self.text: list[list[int] | None] = []
        dropped: Counter = Counter()
        for i in range(len(manifest)):
            try:
                ids, lost = vocab.encode(manifest[i]["text"])
            except DataError as e:
                log.warning("%s", e)
                ids, lost = [], Counter()
            dropped.update(lost)
            self.text.append(ids if 0 < len(ids) <= max_text_chars else None)
        if dropped:
            log.warning("%s: characters outside the Talker vocabulary were dropped: %s",
                        manifest.path, dict(dropped.most_common(20)))

    def __len__(self) -> int:
        return len(self.m)

    def reason(self, i: int) -> str | None:
        if i in self.cache.reasons:
            return self.cache.reasons[i]
        if self.text[i] is None:
            return "text_empty_or_too_long"
        if self.cache.offsets[i + 1] == self.cache.offsets[i]:
            return "no_frames"
        return None

    def lengths(self) -> np.ndarray:
        """Sequence length per row (text + frames; 0 when unusable), for length bucketing."""
        frames = np.diff(self.cache.offsets)
        return np.array([0 if self.reason(i) else len(self.text[i]) + frames[i] for i in range(len(self))],
                        dtype=np.float32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        self.counts["seen"] += 1
        why = self.reason(i)
        if why is not None:
            self.counts["skipped"] += 1
            self.counts[why] += 1
            return None
        a, b = self.cache.offsets[i], self.cache.offsets[i + 1]
        return torch.tensor(self.text[i]), torch.from_numpy(self.cache.codes[a:b].astype(np.int64))



def collate_talker(items: list) -> dict[str, torch.Tensor] | None:
    """-> text (B, L) ``[<s>, chars]`` right-padded, text_lens (B,), codes (B, T, n_q) zero-padded,
    code_lens (B,). None when every item was unusable."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    L = 1 + max(len(t) for t, _ in items)
    T = max(len(c) for _, c in items)
    text = torch.full((len(items), L), PAD, dtype=torch.long)
    text[:, 0] = START
    codes = torch.zeros(len(items), T, items[0][1].shape[1], dtype=torch.long)
    for b, (t, c) in enumerate(items):
        text[b, 1:1 + len(t)] = t
        codes[b, :len(c)] = c
    return {"text": text, "text_lens": torch.tensor([1 + len(t) for t, _ in items]), "codes": codes,
            "code_lens": torch.tensor([len(c) for _, c in items])}


def unigram_code_ce(train: np.ndarray, val: np.ndarray, codebook_size: int) -> float:
    """The baseline a Talker must beat: cross-entropy (nats, mean over codebooks) of the val codes
    (N, n_q) under each codebook's code frequencies in the training codes (add-one smoothed)."""
    ces = []
    for q in range(train.shape[1]):
        counts = np.bincount(train[:, q].astype(np.int64), minlength=codebook_size) + 1.0
        logp = np.log(counts / counts.sum())
        ces.append(-float(logp[val[:, q].astype(np.int64)].mean()))
    return float(np.mean(ces))


@torch.no_grad()
def evaluate_talker(model: Talker, data: TalkerDataset, loss_cfg: TalkerLossConfig, batch_size: int,
                    n_items: int) -> dict[str, float]:
    """Teacher-forced metrics over the first n_items usable rows (by length, for tight batches):
    val_loss = CE (mean over codebooks) + stop BCE; also per-codebook CE, accuracy, end-of-speech
    accuracy and the guided-attention penalty (low = the attention follows the text)."""
    device = next(model.parameters()).device
    usable = [i for i in range(len(data)) if data.reason(i) is None][:n_items]
    usable.sort(key=lambda i: int(data.cache.offsets[i + 1] - data.cache.offsets[i]))
    sums: Counter = Counter()
    n = 0
    for s in range(0, len(usable), batch_size):
        batch = collate_talker([data[i] for i in usable[s:s + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        _, logs = talker_loss(model, batch, loss_cfg, model.cfg.frames_per_step)
        k = batch["text"].shape[0]
        for key, v in logs.items():
            sums[key] += v * k
        n += k
    data.report()  # evaluation reads are not training skips
    out = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
    out["val_loss"] = out["val_ce"] + out["val_stop_bce"]
    return out


# ---------------------------------------------------------------- synthesis
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


def talker_dir(ckpt_dir: Path) -> Path:
    """``<ckpt>/talker/best`` when validation saved one, else ``<ckpt>/talker``."""
    return best_or_self(ckpt_dir / "talker")


CODEC_LINK = "codec.json"  # in the Talker folder: which codec (folder + weights SHA-1) its codes are from


# Sampled, not greedy: greedy codes fall into a held vowel and never reach the end of the text
# (talker_tiny at step 600: greedy audio ~2.3x the reference length). Temperature 0.6 / 0.8 / 1.0
# (top-k 20) gave CER 0.76 / 0.84 / 0.81 on 15 held-out rows (val rows 60-74) at step 1600.
DEFAULT_TEMPERATURE, DEFAULT_TOP_K = 0.6, 20


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
             "(--vocoder hifigan to use it anyway)", vocoder_dir)
    return "griffinlim"


class Synthesizer:
    """text -> 16 kHz float32 speech. ``last_stats`` after each call: audio_s, seconds spent per
    part, rtf (synthesis seconds / audio seconds), chunks, dropped characters. Codes are sampled
    (temperature, top_k per codebook); pass ``seed`` to ``synthesize`` for a repeatable result."""

    def __init__(self, talker: Talker, vocab: TextVocab, codec, device: torch.device, vocoder: Generator | None = None,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K, gl_iters: int = 32,
                 pause_s: float = 0.15) -> None:
        """``vocoder``: a trained HiFi-GAN generator (omni/vocoder_stage.load_generator), or None
        for Griffin-Lim (``gl_iters`` iterations)."""
        self.talker, self.vocab, self.codec, self.device = talker.eval(), vocab, codec.eval(), device
        self.vocoder = vocoder.eval() if vocoder is not None else None
        self.vocoder_name = "griffinlim" if vocoder is None else "hifigan"
        self.temperature, self.top_k, self.gl_iters, self.pause_s = temperature, top_k, gl_iters, pause_s
        self.last_stats: dict[str, float] = {}

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str | torch.device = "cpu", vocoder: str = "griffinlim",
             vocoder_dir: str | Path = VOCODER_DIR, **kw) -> "Synthesizer":
        """``ckpt_dir`` as written by train_talker.py: ``talker/`` (its ``best/`` if present) with
        config.json, model.safetensors, text_vocab.json and codec.json naming the codec folder.
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
        codec_dir = Path(link["codec_dir"])
        sha = file_sha1(codec_dir / MODEL_FILE) if (codec_dir / MODEL_FILE).is_file() else "missing"
        if sha != link["codec_sha1"]:
            raise CheckpointError(f"{codec_dir}/{MODEL_FILE} is not the codec {tdir} was trained with "
                                  f"(SHA-1 {sha} != {link['codec_sha1']}); retrain the Talker or restore the codec")
        talker_cfg = config_from_dict(read_config(tdir)["talker"], TalkerConfig)
        talker = Talker(talker_cfg)
        load_weights(talker, tdir)
        codec, _ = load_codec(codec_dir, device)
        log.info("Talker %s (%.2fM params) + codec %s on %s", tdir, talker.num_params() / 1e6, codec_dir, device)
        gen = load_generator(best_or_self(vocoder_dir), device) if vocoder == "hifigan" else None
        return cls(talker.to(device), TextVocab.load(tdir / VOCAB_FILE), codec, device, gen, **kw)

    @torch.no_grad()
    def codes(self, text: str, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Raw text -> one codes tensor (T, n_q) per chunk; [] when nothing speakable is left."""
        clean, dropped = self.vocab.normalize(text)
        if dropped:
            log.warning("dropped %d character(s) the Talker cannot read: %s", sum(dropped.values()), dict(dropped))
        self.last_stats["dropped_chars"] = float(sum(dropped.values()))
        pieces = split_text(clean, self.talker.cfg.max_text_chars)
        return [self.talker.generate([self.vocab.index[c] for c in p], self.temperature, self.top_k,
                                     generator=generator) for p in pieces]

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
            mels.append(self.codec.decode(c[None].to(self.device)).float())
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
