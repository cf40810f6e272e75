"""Stage B pieces: the ASR manifest dataset, the CTC model around AudioEncoderTiny, loss, metrics.

A manifest is a CSV with a header naming at least ``wav`` and ``text`` (more columns, e.g.
``engine,voice``, are kept for per-source reports), wav paths relative to the CSV; or the name of a
dataset registered by scripts/prepare_audio.py (its train/val TSV, transcripts from sidecar files).
Rows are reached through the offset index (``<csv>.row_offsets.npy``). A row that cannot be used
(missing or corrupt audio, empty transcript, too long, too fast to spell at the CTC rate) is
skipped and counted by reason; the engine reports the counts every epoch.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from omni.audio import ENCODER_MEL, LOG_FLOOR, AudioError, LogMel, MelSpec, load_audio, num_frames
from omni.audio_encoder import AudioEncoderTiny
from omni.checkpoint import load_with_vocab
from omni.config import AsrStageConfig, AudioEncConfig
from omni.ctc import BLANK, CharVocab, error_rates, greedy_decode, normalize_text
from omni.data import DataError, LineFile, SkipCountingDataset

log = logging.getLogger(__name__)


Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]   # log_probs (B, T, V), lengths (B,) -> texts
REGISTRY = Path("data/datasets.json")  # written by scripts/prepare_audio.py


def resolve_manifest(name_or_path: str, split: str, registry: Path = REGISTRY) -> Path:
    """A CSV path as given, or a dataset registered by prepare_audio.py -> its ``<split>.tsv``."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".csv", ".tsv"):
        return path
    if not registry.is_file():
        raise DataError(f"{name_or_path}: no such manifest, and no dataset registry at {registry} "
                        "(register a folder with scripts/prepare_audio.py --dataset NAME)")
    entries = json.loads(registry.read_text(encoding="utf-8"))
    if name_or_path not in entries:
        raise DataError(f"{name_or_path}: not a file and not a registered dataset "
                        f"(registered in {registry}: {', '.join(sorted(entries)) or 'none'})")
    return registry.parent / entries[name_or_path] / f"{split}.tsv"


class Manifest:
    """Random access to the rows of a ``wav,text[,...]`` CSV, or of a registered dataset's TSV
    (``path<TAB>num_samples<TAB>text``): ``m[i]`` -> dict with at least ``wav`` and ``text``
    (``path_key`` instead of ``wav`` for other media, e.g. ``image,text`` OCR manifests); the
    path is resolved relative to the manifest."""

    def __init__(self, path: str | Path, path_key: str = "wav") -> None:
        self.path, self.path_key = Path(path), path_key  # path_key: the column of file paths ("image" for OCR)
        self.delimiter = "\t" if self.path.suffix == ".tsv" else ","
        self.lines = LineFile(self.path, suffix=".row_offsets.npy")
        if len(self.lines) < 2:
            raise DataError(f"{self.path}: no rows (a header line and at least one row are needed)")
        self.header = [path_key if h == "path" else h for h in self._split(self.lines[0].decode("utf-8"))]
        missing = {path_key, "text"} - set(self.header)
        if missing:
            raise DataError(f"{self.path}:1: header {self.header} lacks column(s) {sorted(missing)}")

    def __len__(self) -> int:
        return len(self.lines) - 1

    def __getitem__(self, i: int) -> dict[str, str]:
        """Row i (0-based, after the header); a malformed row raises DataError with its line."""
        raw = self.lines[i + 1]
        try:
            values = self._split(raw.decode("utf-8"))
        except (UnicodeDecodeError, StopIteration, csv.Error) as e:
            raise DataError(f"{self.path}:{i + 2}: unreadable row ({e})") from e
        if len(values) != len(self.header):
            raise DataError(f"{self.path}:{i + 2}: {len(values)} fields, header has {len(self.header)}")
        row = dict(zip(self.header, values))
        row[self.path_key] = str(self.path.parent / row[self.path_key])
        return row

    def _split(self, line: str) -> list[str]:
        if self.delimiter == "\t":
            return line.split("\t")
        return next(csv.reader([line]))


class AudioRows(SkipCountingDataset):
    """A dataset over the rows of an audio manifest: ``_audio_row(i)`` reads row i and its audio,
    counting it as seen, or counts why it is unusable (``malformed_row``, ``audio_<reason>``)."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.m = manifest

    def __len__(self) -> int:
        return len(self.m)

    def _audio_row(self, i: int) -> tuple[dict[str, str], np.ndarray] | None:
        self.counts["seen"] += 1
        try:
            row = self.m[i]
            return row, load_audio(row["wav"])
        except DataError as e:
            log.warning("%s", e)
            return self._skip("malformed_row")
        except AudioError as e:
            log.warning("%s:%d: %s", self.m.path, i + 2, e)
            return self._skip(f"audio_{e.reason}")


class AsrDataset(AudioRows):
    """item i -> (audio (N,) float32 at 16 kHz, label ids) or None when the row is unusable."""

    def __init__(self, manifest: Manifest, vocab: CharVocab, max_seconds: float, symbols_per_frame: int) -> None:
        super().__init__(manifest)
        self.vocab = vocab
        self.max_samples = int(max_seconds * 16000)
        self.symbols_per_frame = symbols_per_frame

    def durations(self) -> np.ndarray:
        """Seconds per row from the file headers (0 for unreadable files): for length bucketing."""
        out = np.zeros(len(self), dtype=np.float32)
        for i in range(len(self)):
            path = Path(self.m[i]["wav"])
            if path.is_file():
                try:
                    info = sf.info(str(path))
                except (RuntimeError, sf.LibsndfileError):
                    continue  # counted when the sample itself is read
                out[i] = info.frames / info.samplerate
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, list[int]] | None:
        got = self._audio_row(i)
        if got is None:
            return None
        row, audio = got
        text = normalize_text(row["text"])
        if not text:
            return self._skip("empty_text")
        if len(audio) > self.max_samples:
            return self._skip("too_long")
        ids = self.vocab.encode(text)
        frames = -(-num_frames(len(audio), ENCODER_MEL) // 8) * self.symbols_per_frame
        if len(ids) + sum(a == b for a, b in zip(ids, ids[1:])) > frames:
            return self._skip("too_fast_for_ctc")
        return audio, ids



def collate_asr(items: list) -> dict[str, torch.Tensor] | None:
    """Pad audio to the longest; concatenate labels (CTC's packed targets). None if all unusable."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    lengths = torch.tensor([len(a) for a, _ in items])
    audio = torch.zeros(len(items), int(lengths.max()))
    for k, (a, _) in enumerate(items):
        audio[k, :len(a)] = torch.from_numpy(a)
    labels = torch.tensor([t for _, ids in items for t in ids], dtype=torch.long)
    label_lengths = torch.tensor([len(ids) for _, ids in items])
    return {"audio": audio, "audio_lengths": lengths, "labels": labels, "label_lengths": label_lengths}


class AsrModel(nn.Module):
    """log-mel front end -> AudioEncoderTiny -> CTC head (symbols_per_frame symbols per frame)."""

    def __init__(self, cfg: AudioEncConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = LogMel(ENCODER_MEL)
        self.encoder = AudioEncoderTiny(ENCODER_MEL.n_mels, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff,
                                        cfg.dropout, cfg.max_frames, cfg.utterance_norm)
        self.head = nn.Linear(cfg.d_model, vocab_size * cfg.symbols_per_frame)
        self.vocab_size = vocab_size
        self.mel_centres = mel_bin_centres(ENCODER_MEL)

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N), lengths (B,) samples -> log-mel (B, T, n_mels), frame lengths (B,)."""
        mel = self.mel(audio)
        frames = lengths // ENCODER_MEL.hop_length + 1
        if self.training and (self.cfg.tempo_perturb or self.cfg.vtlp):
            B = mel.shape[0]
            mel, frames = perturb_speaker(mel, frames, uniform_factors(B, self.cfg.tempo_perturb),
                                          uniform_factors(B, self.cfg.vtlp), self.mel_centres)
        if self.training and self.cfg.spec_augment:
            mel = spec_augment(mel, frames, self.cfg.freq_mask, self.cfg.time_mask, self.cfg.n_masks)
        return mel, frames

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> CTC log-probs (B, T' * symbols_per_frame, V) and their lengths (B,)."""
        mel, frames = self.features(audio, lengths)
        states, out_lengths = self.encoder(mel, frames)
        B, T, _ = states.shape
        logits = self.head(states).view(B, T * self.cfg.symbols_per_frame, self.vocab_size)
        return logits.float().log_softmax(-1), out_lengths * self.cfg.symbols_per_frame


def mel_bin_centres(spec: MelSpec) -> np.ndarray:
    """Centre frequency in Hz of each of the ``n_mels`` filters (the Slaney scale of LogMel)."""
    return librosa.mel_frequencies(spec.n_mels + 2, fmin=spec.f_min, fmax=spec.f_max)[1:-1]


def perturb_speaker(mel: torch.Tensor, frames: torch.Tensor, tempo: torch.Tensor, warp: torch.Tensor,
                    centres: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Make each example sound like another speaker: log-mel (B, T, n_mels), frames (B,),
    factors tempo (B,) and warp (B,) -> (B, T', n_mels), new frames (B,).

    Tempo: example b's frames are stretched to round(frames * tempo[b]) (linear interpolation).
    Vocal tract length perturbation: every frequency is scaled by warp[b], i.e. filter i reads the
    mel-axis value at centres[i] / warp[b] (edge filters held). Frames past the new length hold
    log(LOG_FLOOR), as zero-padded audio would.
    """
    B, T, M = mel.shape
    dev = mel.device
    frames = frames.to(dev)
    new = torch.clamp((frames.float() * tempo.to(dev)).round().long(), min=1)
    # time: output frame j of example b reads input frame j * (frames - 1) / (new - 1), linearly
    j = torch.arange(int(new.max()), device=dev)[None].float()                        # (1, T')
    src = (j * ((frames - 1) / (new - 1).clamp(min=1))[:, None]).clamp(max=(frames - 1)[:, None].float())
    t0 = src.floor().long()
    t1 = torch.minimum(t0 + 1, (frames - 1)[:, None])
    wt = (src - t0)[..., None].to(mel.dtype)
    x = (mel.gather(1, t0[..., None].expand(-1, -1, M)) * (1 - wt)
         + mel.gather(1, t1[..., None].expand(-1, -1, M)) * wt)                        # (B, T', M)
    # frequency: filter i of example b reads the mel-axis position of centres[i] / warp[b]
    bins = np.arange(M, dtype=np.float64)
    srcf = torch.from_numpy(np.stack([np.interp(centres / float(w), centres, bins) for w in warp]))
    srcf = srcf.to(dev, mel.dtype)
    f0 = srcf.floor().long().clamp(max=M - 2)
    wf = (srcf - f0)[:, None, :]
    x = (x.gather(2, f0[:, None, :].expand(-1, x.shape[1], -1)) * (1 - wf)
         + x.gather(2, (f0 + 1)[:, None, :].expand(-1, x.shape[1], -1)) * wf)
    past = j >= new[:, None]                                                           # (B, T')
    return x.masked_fill(past[..., None], math.log(LOG_FLOOR)), new


def uniform_factors(n: int, spread: float) -> torch.Tensor:
    """n factors drawn uniformly from [1 - spread, 1 + spread]."""
    return 1 + (torch.rand(n) * 2 - 1) * spread


def spec_augment(mel: torch.Tensor, frames: torch.Tensor, freq_mask: int, time_mask: int,
                 n_masks: int) -> torch.Tensor:
    """Zero ``n_masks`` random frequency bands (<= freq_mask bins) and time spans (<= time_mask
    frames, within each example's length) in normalised-feature space (the per-utterance mean)."""
    B, T, M = mel.shape
    mel = mel.clone()
    fill = mel.mean(dim=(1, 2), keepdim=True)
    for _ in range(n_masks):
        f = torch.randint(0, freq_mask + 1, (B,))
        f0 = (torch.rand(B) * (M - f)).long()
        t = torch.minimum(torch.randint(0, time_mask + 1, (B,)), frames.cpu() // 5)
        t0 = (torch.rand(B) * (frames.cpu() - t).clamp(min=1)).long()
        bins, steps = torch.arange(M), torch.arange(T)
        fm = (bins[None] >= f0[:, None]) & (bins[None] < (f0 + f)[:, None])
        tm = (steps[None] >= t0[:, None]) & (steps[None] < (t0 + t)[:, None])
        mask = (fm[:, None, :] | tm[:, :, None]).to(mel.device)
        mel = torch.where(mask, fill, mel)
    return mel


def ctc_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    log_probs, out_lengths = model(batch["audio"], batch["audio_lengths"])
    loss = F.ctc_loss(log_probs.transpose(0, 1), batch["labels"], out_lengths, batch["label_lengths"],
                      blank=BLANK, reduction="mean", zero_infinity=True)
    return loss, {}


@torch.no_grad()
def evaluate_asr(model: AsrModel, dataset: AsrDataset, vocab: CharVocab, batch_size: int,
                 max_items: int | None = None, decode: Decoder | None = None, rows: range | None = None
                 ) -> tuple[dict[str, float], list[tuple[str, str, int]]]:
    """CTC loss, CER and WER over ``rows`` (default: the first ``max_items``) with ``decode``
    (greedy by default); also (reference, hypothesis, row) per item."""
    decode = decode or (lambda lp, n: greedy_decode(lp, n, vocab))
    device = next(model.parameters()).device
    if rows is None:
        rows = range(len(dataset) if max_items is None else min(len(dataset), max_items))
    order = list(rows)
    refs, hyps, done, losses = [], [], [], []
    for lo in range(0, len(order), batch_size):
        items = [(i, dataset[i]) for i in order[lo:lo + batch_size]]
        kept = [(i, x) for i, x in items if x is not None]
        batch = collate_asr([x for _, x in kept])
        if batch is None:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, _ = ctc_loss(model, batch)
        log_probs, out_lengths = model(batch["audio"], batch["audio_lengths"])
        losses.append(loss.item())
        hyps += decode(log_probs, out_lengths)
        refs += [vocab.decode(ids) for _, (_, ids) in kept]
        done += [i for i, _ in kept]
    dataset.report()  # evaluation skips are not training skips
    rates = error_rates(refs, hyps) if refs else {"cer": float("nan"), "wer": float("nan")}
    metrics = {"val_ctc_loss": float(np.mean(losses)) if losses else float("nan"), "val_cer": rates["cer"],
               "val_wer": rates["wer"], "val_items": float(len(refs))}
    return metrics, list(zip(refs, hyps, done))


@dataclass
class MelStats:
    mean: torch.Tensor
    std: torch.Tensor


def mel_statistics(dataset: AsrDataset, n: int = 200, seed: int = 0) -> MelStats:
    """Per-bin mean/std of log-mel over up to ``n`` training utterances (the encoder's input norm)."""
    mel = LogMel(ENCODER_MEL)
    rng = np.random.default_rng(seed)
    frames = []
    for i in rng.permutation(len(dataset))[:n]:
        item = dataset[int(i)]
        if item is not None:
            frames.append(mel(torch.from_numpy(item[0])[None])[0])
    dataset.report()
    if not frames:
        raise DataError(f"{dataset.m.path}: no readable audio among {n} sampled rows")
    allf = torch.cat(frames)
    return MelStats(allf.mean(0), allf.std(0).clamp(min=1e-3))


def load_asr(ckpt_dir: str | Path, device: torch.device) -> tuple[AsrModel, CharVocab, AsrStageConfig]:
    """Rebuild the Stage B model from its checkpoint folder (config.json, vocab.json, weights)."""
    return load_with_vocab(ckpt_dir, AsrStageConfig, CharVocab, "vocab.json", lambda c, n: AsrModel(c.model, n),
                           device, "a Stage B checkpoint (train_audio_enc.py writes it)")


def per_source_report(manifest: Manifest, results: list[tuple[str, str, int]],
                      key: str) -> dict[str, dict[str, float]]:
    """CER/WER grouped by a manifest column (e.g. engine or voice); rows without it -> '-'."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for ref, hyp, row in results:
        name = manifest[row].get(key, "-")
        refs, hyps = groups.setdefault(name, ([], []))
        refs.append(ref)
        hyps.append(hyp)
    return {name: {**error_rates(r, h), "n": float(len(r))} for name, (r, h) in sorted(groups.items())}


def transcriber(model: AsrModel, vocab: CharVocab):
    """A Stage B model as a recogniser: (N,) float audio at 16 kHz -> greedy CTC transcript."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def run(wav: np.ndarray) -> str:
        audio = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None].to(device)
        if audio.shape[1] == 0:
            return ""
        log_probs, lengths = model(audio, torch.tensor([audio.shape[1]], device=device))
        return greedy_decode(log_probs, lengths, vocab)[0]
    return run
