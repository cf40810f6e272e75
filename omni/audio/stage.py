"""Stage B pieces: the ASR manifest dataset, the CTC model around AudioEncoderTiny, loss, metrics.

A manifest is a CSV with a header naming at least ``wav`` and ``text`` (more columns, e.g.
``engine,voice``, are kept for per-source reports), wav paths relative to the CSV; or the name of a
dataset registered by scripts/prepare_audio.py (its train/val TSV, transcripts from sidecar files).
Rows are reached through the offset index (``<csv>.row_offsets.npy``). A row that cannot be used
(malformed, a wav path outside the manifest's folder, missing or corrupt audio, empty transcript,
too long, too fast to spell at the CTC rate) is skipped and counted by reason; the engine reports
the counts every epoch.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from omni.audio.augment import augment_waveform
from omni.audio.ctc import BLANK, CharVocab, error_rates, greedy_decode, normalize_text
from omni.audio.encoder import AudioEncConfig, AudioEncoderTiny
from omni.audio.features import ENCODER_MEL, LogMel, num_frames
from omni.config import TrainConfig, to_dict
from omni.data import BadRow, DataError
from omni.engine.checkpoint import load_with_vocab
from omni.engine.runtime import Runtime
from omni.engine.stage import Stage
from omni.manifest import AudioRows, Manifest, resolve_manifest

log = logging.getLogger(__name__)


Decoder = Callable[[torch.Tensor, torch.Tensor], list[str]]   # log_probs (B, T, V), lengths (B,) -> texts


class AsrDataset(AudioRows):
    """item i -> (audio (N,) float32 at 16 kHz, label ids) or None when the row is unusable."""

    def __init__(self, manifest: Manifest, vocab: CharVocab, max_seconds: float, symbols_per_frame: int) -> None:
        super().__init__(manifest)
        self.vocab = vocab
        self.max_samples = int(max_seconds * 16000)
        self.symbols_per_frame = symbols_per_frame

    def durations(self) -> np.ndarray:
        """Seconds per row from the file headers (0 for unusable rows and unreadable files, which are
        counted when the sample itself is read): for length bucketing."""
        out = np.zeros(len(self), dtype=np.float32)
        for i, row in self.m.scan():
            if isinstance(row, BadRow) or not Path(row["wav"]).is_file():
                continue
            try:
                info = sf.info(row["wav"])
            except (RuntimeError, sf.LibsndfileError):
                continue
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
                                        cfg.dropout, cfg.max_frames)
        self.head = nn.Linear(cfg.d_model, vocab_size * cfg.symbols_per_frame)
        self.vocab_size = vocab_size

    def features(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N), lengths (B,) samples -> log-mel (B, T, n_mels), frame lengths (B,)."""
        if self.training:
            audio, lengths = augment_waveform(audio, lengths, self.cfg.augment)
        mel = self.mel(audio)
        frames = lengths // ENCODER_MEL.hop_length + 1
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
                 max_items: int | None = None, decode: Decoder | None = None, rows: Sequence[int] | None = None
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


@dataclasses.dataclass
class AsrDataConfig:
    """``wav,text`` CSVs, or a dataset name registered by scripts/prepare_audio.py (its train/val TSV)."""
    train_csv: str
    val_csv: str
    max_seconds: float = 15.0
    val_items: int = 200             # utterances decoded at each validation
    allow_outside_paths: bool = False  # read wav paths outside the manifest's folder (../, absolute, symlinks out)


@dataclasses.dataclass
class AsrStageConfig:
    model: AudioEncConfig
    data: AsrDataConfig
    train: TrainConfig


def build_stage(cfg: AsrStageConfig, rt: Runtime) -> Stage:
    vocab = CharVocab.default()
    sym = cfg.model.symbols_per_frame

    def dataset(name: str, split: str) -> AsrDataset:
        manifest = Manifest(resolve_manifest(name, split), allow_outside=cfg.data.allow_outside_paths)
        return AsrDataset(manifest, vocab, cfg.data.max_seconds, sym)

    train_set, val_set = dataset(cfg.data.train_csv, "train"), dataset(cfg.data.val_csv, "val")
    torch.manual_seed(cfg.train.seed)
    model = AsrModel(cfg.model, len(vocab))
    stats = mel_statistics(train_set, seed=cfg.train.seed)
    model.encoder.mel_mean.copy_(stats.mean)
    model.encoder.mel_std.copy_(stats.std)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    log.info("AudioEncoderTiny: %.2fM parameters (+ %.0fK CTC head)", n_enc / 1e6,
             sum(p.numel() for p in model.head.parameters()) / 1e3)
    lengths = train_set.durations()
    log.info("%s: %d rows, %.2f h of audio", cfg.data.train_csv, len(train_set), lengths.sum() / 3600)

    def save_extra(d: Path) -> None:
        vocab.save(d / "vocab.json")

    return Stage(
        name="audio_enc", model=model, train_set=train_set, loss_fn=ctc_loss, config=to_dict(cfg),
        collate=collate_asr, lengths=lengths, skip_report=train_set.report,
        evaluate=lambda m: evaluate_asr(m, val_set, vocab, cfg.train.batch_size, cfg.data.val_items)[0],
        count_items=lambda b: float(b["audio_lengths"].sum()) / 16000, items_unit="audio_s",
        best_metric="val_cer", save_extra=save_extra)


CONFIG = AsrStageConfig
DEFAULT_CONFIG = "configs/audio_enc_tiny.json"
