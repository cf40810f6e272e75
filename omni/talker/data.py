"""Stage D phase 2 data: TTS utterances as codec codes, the dataset and its validation (the stage
config and build_stage are in omni/talker/stage.py).

Training data: a ``text,wav`` CSV. Every utterance is turned into codec codes once, with the frozen
codec, and cached beside the Talker checkpoint (``<save_dir>/codes/<csv name>.npy`` + ``.json``),
stamped with the CSV's size/mtime and the codec weights' SHA-1 so a changed codec or CSV rebuilds
it (an unreadable cache is rebuilt too). Rows that cannot be used (malformed, a wav path outside the
CSV's folder, missing/corrupt audio, no speakable text, too long) are recorded in the cache and
skipped, counted by reason, every epoch.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omni.audio.features import SAMPLE_RATE, SPEECH_OUT_MEL, AudioError, LogMel, load_audio
from omni.data import BadRow, SkipCountingDataset
from omni.engine.checkpoint import best_or_self
from omni.files import atomic_write, write_json_atomic
from omni.manifest import Manifest
from omni.talker.loss import TalkerLossConfig, talker_loss
from omni.talker.model import Talker
from omni.talker.text import PAD, START, TextVocab

log = logging.getLogger(__name__)

VOCAB_FILE = "text_vocab.json"
CODEC_LINK = "codec.json"  # in the Talker folder: which codec (folder + weights SHA-1) its codes are from
CODEC_SUBDIR = "codec"  # the copy of that codec inside the Talker folder (codec.json's path is relative to the folder)
CACHE_VERSION = 1


def codec_dir_of(save_dir: str | Path) -> Path:
    """The codec a Talker is trained on: ``<save_dir>/best`` (best val_l1) when present, else the folder."""
    return best_or_self(save_dir)


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
    def load_or_build(cls, csv: Path, cache_dir: Path, codec, codec_sha: str, max_seconds: float,
                      allow_outside: bool = False) -> "CodeCache":
        """The cache of ``csv`` when its stamp matches, else encode every row (``allow_outside``: wav
        paths may leave the CSV's folder, ``data.allow_outside_paths``) and write the cache."""
        npy, meta_path = cls.paths(cache_dir, csv)
        st = csv.stat()
        stamp = {"version": CACHE_VERSION, "csv_size": st.st_size, "csv_mtime_ns": st.st_mtime_ns,
                 "codec_sha1": codec_sha, "max_seconds": max_seconds}
        if allow_outside:  # only then, so that the caches written before the option existed stay valid
            stamp["allow_outside_paths"] = True
        manifest = Manifest(csv, allow_outside=allow_outside)
        if npy.is_file() and meta_path.is_file():
            cached = cls._load(npy, meta_path, stamp, len(manifest))
            if cached is not None:
                return cached
        cache = cls.build(manifest, codec, max_seconds)
        atomic_write(npy, lambda p: _save_npy(p, cache.codes), fsync=False)
        write_json_atomic(meta_path, {"stamp": stamp, "offsets": cache.offsets.tolist(),
                                      "skipped": {str(k): v for k, v in cache.reasons.items()}}, indent=None)
        return cache

    @classmethod
    def _load(cls, npy: Path, meta_path: Path, stamp: dict, n_rows: int) -> "CodeCache | None":
        """The cache of a CSV of ``n_rows`` rows when its stamp matches; None when it is stale or cannot
        be read (then it is re-encoded)."""
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta["stamp"] != stamp:
                log.info("%s is stale (CSV or codec changed); re-encoding", meta_path)
                return None
            codes, offsets = np.load(npy, allow_pickle=False), np.asarray(meta["offsets"], dtype=np.int64)
            reasons = {int(k): str(v) for k, v in meta["skipped"].items()}
            if codes.ndim != 2 or offsets.shape != (n_rows + 1,) or offsets[-1] != len(codes):
                raise ValueError("the codes, their offsets and the CSV disagree")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s cannot be read (%s); re-encoding", meta_path, e)
            return None
        return cls(codes, offsets, reasons)

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
            except BadRow as e:
                reasons[i] = e.reason
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
    """item i -> (text ids (L,) long, codes (T, n_q) long) or None when the row is unusable;
    ``n_codebooks``: the first that many of the cached codebooks (all by default); ``aligned``: a
    row needs at least one frame per symbol (a duration Talker gives every symbol a frame)."""

    def __init__(self, manifest: Manifest, cache: CodeCache, vocab: TextVocab, max_text_chars: int,
                 n_codebooks: int | None = None, aligned: bool = False) -> None:
        self.m, self.cache, self.vocab, self.aligned = manifest, cache, vocab, aligned
        self.n_q = n_codebooks or cache.codes.shape[1]
        super().__init__()
        self.text: list[list[int] | None] = []
        # rows this manifest refuses, whatever the cache holds (it may come from allow_outside_paths=true)
        self.bad_rows: dict[int, str] = {}
        dropped: Counter = Counter()
        for i, row in manifest.scan():
            if isinstance(row, BadRow):
                self.bad_rows[i] = row.reason
                ids, lost = [], Counter()
            else:
                ids, lost = vocab.encode(row["text"])
            dropped.update(lost)
            self.text.append(ids if 0 < len(ids) <= max_text_chars else None)
        if dropped:
            log.warning("%s: characters outside the Talker vocabulary were dropped: %s",
                        manifest.path, dict(dropped.most_common(20)))

    def __len__(self) -> int:
        return len(self.m)

    def reason(self, i: int) -> str | None:
        if i in self.bad_rows:
            return self.bad_rows[i]
        if i in self.cache.reasons:
            return self.cache.reasons[i]
        if self.text[i] is None:
            return "text_empty_or_too_long"
        frames = self.cache.offsets[i + 1] - self.cache.offsets[i]
        if frames == 0:
            return "no_frames"
        if self.aligned and frames < len(self.text[i]):
            return "fewer_frames_than_symbols"
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
        return torch.tensor(self.text[i]), torch.from_numpy(self.cache.codes[a:b, :self.n_q].astype(np.int64))


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


def held_out_items(data: TalkerDataset, n_items: int) -> list:
    """The first n_items usable rows, sorted by length so that validation batches are tight."""
    usable = [i for i in range(len(data)) if data.reason(i) is None][:n_items]
    usable.sort(key=lambda i: int(data.cache.offsets[i + 1] - data.cache.offsets[i]))
    return [data[i] for i in usable]


def mean_over_batches(data: TalkerDataset, items: list, batch_size: int, device: torch.device,
                      logs_of: Callable[[dict[str, torch.Tensor], int], dict[str, float]]) -> dict[str, float]:
    """Every log of logs_of(batch, first row) averaged over the rows of all batches, as val_<key>."""
    sums: Counter = Counter()
    n = 0
    for s in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_talker(items[s:s + batch_size]).items()}
        k = batch["text"].shape[0]
        for key, v in logs_of(batch, s).items():
            sums[key] += v * k
        n += k
    data.report()  # evaluation reads are not training skips
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def evaluate_talker(model: Talker, data: TalkerDataset, loss_cfg: TalkerLossConfig, batch_size: int,
                    n_items: int) -> dict[str, float]:
    """Teacher-forced metrics over the first n_items usable rows (by length, for tight batches):
    val_loss = CE (mean over codebooks) + stop BCE; also per-codebook CE, accuracy, end-of-speech
    accuracy and the guided-attention penalty (low = the attention follows the text). With
    ``loss_cfg.self_feed`` > 0 also val_fed_ce / val_fed_loss: the same rows with that share of the
    input frames replaced by the Talker's own predictions (seeded: the same swaps at every validation),
    the objective that run trains.

    Also val_text_gain (and val_text_gain_q0 for the base codebook): how much worse the same codes are
    predicted when each row is given another row's text (its neighbour by length, so that the
    lengths are close), in nats. It measures how much the Talker reads the text rather than continuing the sound
    it has heard: a Talker that ignored the text would score 0."""
    device = next(model.parameters()).device
    items = held_out_items(data, n_items)
    other = [(items[(j + 1) % len(items)][0], codes) for j, (_, codes) in enumerate(items)]
    gen = torch.Generator(device=device).manual_seed(0)

    def logs_of(batch: dict[str, torch.Tensor], s: int) -> dict[str, float]:
        _, logs = talker_loss(model, batch, loss_cfg, model.cfg.frames_per_step)
        if loss_cfg.self_feed > 0:
            _, fed = talker_loss(model, batch, loss_cfg, model.cfg.frames_per_step, loss_cfg.self_feed, gen)
            logs.update(fed_ce=fed["ce"], fed_stop_bce=fed["stop_bce"])
        if len(items) > 1:
            wrong = {k: v.to(device) for k, v in collate_talker(other[s:s + batch_size]).items()}
            _, w = talker_loss(model, wrong, loss_cfg, model.cfg.frames_per_step)
            logs.update(text_gain=w["ce"] - logs["ce"], text_gain_q0=w["ce_q0"] - logs["ce_q0"])
        return logs

    out = mean_over_batches(data, items, batch_size, device, logs_of)
    out["val_loss"] = out["val_ce"] + out["val_stop_bce"]
    if "val_fed_ce" in out:
        out["val_fed_loss"] = out["val_fed_ce"] + out["val_fed_stop_bce"]
    return out
