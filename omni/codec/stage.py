"""Stage D phase 1: training and evaluating the mel codec (omni/codec/model.py) on a TTS CSV.

A TTS manifest is a CSV ``text,wav`` (wav paths relative to the CSV; docs/architecture.md). The codec only
needs the audio: each row becomes its SPEECH_OUT_MEL log-mel; training takes a random crop of
``crop_frames`` frames (shorter utterances are padded and masked), validation takes whole
utterances. Unusable rows (missing/corrupt/silent audio, too long) are skipped and counted.

    stage = build_stage(cfg, rt)            # cfg: CodecStageConfig (model, data, train)
    fit(stage, cfg.train)                   # writes cfg.train.save_dir
    codec, codec_cfg = load_codec(cfg.train.save_dir, device)
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omni.audio.features import LOG_FLOOR, SPEECH_OUT_MEL, LogMel
from omni.codec.model import CODE_RATE_HZ, CodecConfig, MelCodec
from omni.codec.rvq import usage_stats
from omni.config import TrainConfig, to_dict
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError, load_weights, read_stage_config
from omni.engine.runtime import Runtime, unwrap
from omni.engine.stage import Stage
from omni.manifest import AudioRows, Manifest, resolve_manifest

log = logging.getLogger(__name__)

SILENCE = float(np.log(LOG_FLOOR))  # log-mel of digital silence: the padding value


@dataclasses.dataclass
class CodecDataConfig:
    """``text,wav`` CSVs. ``crop_frames``: training crop at 62.5 Hz (128 = 2.05 s)."""
    train_csv: str
    val_csv: str
    crop_frames: int = 128
    max_seconds: float = 20.0
    val_items: int = 100
    allow_outside_paths: bool = False  # read wav paths outside the CSV's folder (../, absolute, symlinks out)


@dataclasses.dataclass
class CodecStageConfig:
    model: CodecConfig
    data: CodecDataConfig
    train: TrainConfig


class MelDataset(AudioRows):
    """item i -> log-mel (T, 128) float32 (a random ``crop_frames`` crop when set), or None when the
    row is unusable. Crops draw from torch's global RNG, which the engine restores on resume."""

    def __init__(self, manifest: Manifest, max_seconds: float, crop_frames: int | None) -> None:
        super().__init__(manifest)
        self.max_samples, self.crop = int(max_seconds * 16000), crop_frames
        self.logmel = LogMel(SPEECH_OUT_MEL)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        got = self._audio_row(i)
        if got is None:
            return None
        audio = got[1]
        if len(audio) > self.max_samples:
            return self._skip("too_long")
        with torch.no_grad():
            mel = self.logmel(torch.from_numpy(audio)[None])[0]
        if self.crop is not None and mel.shape[0] > self.crop:
            start = int(torch.randint(0, mel.shape[0] - self.crop + 1, ()))
            mel = mel[start:start + self.crop]
        return mel



def collate_mels(items: list) -> dict[str, torch.Tensor] | None:
    """Pad log-mels (T_i, 128) with silence to (B, T_max, 128) + lengths (B,); None if all unusable."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    lengths = torch.tensor([x.shape[0] for x in items])
    mel = torch.full((len(items), int(lengths.max()), SPEECH_OUT_MEL.n_mels), SILENCE)
    for k, x in enumerate(items):
        mel[k, :x.shape[0]] = x
    return {"mel": mel, "lengths": lengths}


def recon_errors(out: dict[str, torch.Tensor], lengths: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masked L1 / MSE of the reconstruction: normalised ("l1_norm", "mse_norm") and in log-mel units."""
    mask = (torch.arange(out["recon"].shape[1], device=lengths.device)[None] < lengths[:, None])[..., None]
    n = mask.sum().clamp(min=1) * out["recon"].shape[-1]
    diff = (out["recon"].float() - out["target"]) * mask
    return {"l1_norm": diff.abs().sum() / n, "mse_norm": diff.pow(2).sum() / n,
            "l1": (diff * std).abs().sum() / n, "mse": (diff * std).pow(2).sum() / n}


def codec_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE on normalised log-mel + commitment_weight * commitment."""
    codec: MelCodec = unwrap(model)
    out = model(batch["mel"], batch["lengths"])
    err = recon_errors(out, batch["lengths"], codec.mel_std)
    loss = err["l1_norm"] + err["mse_norm"] + codec.cfg.commitment_weight * out["commit"]
    logs = {"l1": err["l1"].item(), "commit": out["commit"].item()}
    logs.update({f"perplexity_q{i}": p.item() for i, p in enumerate(out["perplexity"])})
    logs.update({f"resets_q{i}": float(r) for i, r in enumerate(codec.rvq.pop_resets())})
    return loss, logs


@torch.no_grad()
def codec_metrics(codec: MelCodec, dataset: MelDataset, batch_size: int = 8,
                  max_items: int | None = None) -> dict[str, float]:
    """Whole-utterance reconstruction error (log-mel units) and per-codebook usage fraction and
    perplexity over the first ``max_items`` rows: val_l1, val_mse, val_usage_q{i},
    val_perplexity_q{i}, val_min_usage, val_items."""
    device = next(codec.parameters()).device
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    l1 = mse = frames = 0.0
    all_codes, used = [], 0
    for lo in range(0, n, batch_size):
        batch = collate_mels([dataset[i] for i in range(lo, min(lo + batch_size, n))])
        if batch is None:
            continue
        mel, lengths = batch["mel"].to(device), batch["lengths"].to(device)
        used += len(lengths)
        out = codec(mel, lengths)
        err = recon_errors(out, lengths, codec.mel_std)
        k = float(lengths.sum())
        l1, mse, frames = l1 + err["l1"].item() * k, mse + err["mse"].item() * k, frames + k
        mask = torch.arange(out["codes"].shape[1], device=device)[None] < codec.code_lengths(lengths)[:, None]
        all_codes.append(out["codes"][mask].cpu())
    dataset.report()  # evaluation skips are not training skips
    if not all_codes:
        raise DataError(f"{dataset.m.path}: none of the first {n} rows is usable audio")
    usage, perp = usage_stats(torch.cat(all_codes), codec.codebook_size)
    metrics = {"val_l1": l1 / frames, "val_mse": mse / frames}
    metrics.update({f"val_usage_q{i}": u.item() for i, u in enumerate(usage)})
    metrics.update({f"val_perplexity_q{i}": p.item() for i, p in enumerate(perp)})
    metrics["val_min_usage"] = usage.min().item()
    metrics["val_items"] = float(used)
    return metrics


def mel_statistics(dataset: MelDataset, n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin mean and std (128,) of log-mel over up to ``n`` random rows (the codec's input norm)."""
    rng = np.random.default_rng(seed)
    mels = [m for m in (dataset[int(i)] for i in rng.permutation(len(dataset))[:n]) if m is not None]
    dataset.report()
    if not mels:
        raise DataError(f"{dataset.m.path}: no readable audio among {n} sampled rows")
    allf = torch.cat(mels)
    return allf.mean(0), allf.std(0).clamp(min=1e-3)


def build_stage(cfg: CodecStageConfig, rt: Runtime) -> Stage:
    """The codec Stage for ``omni.engine.training.fit``: MelCodec with data-derived normalisation, random
    crops of the training CSV, whole-utterance validation; best checkpoint by val_l1. The saved
    config.json is ``to_dict(cfg)`` (a CodecStageConfig), which ``load_codec`` reads back."""
    train_path, val_path = resolve_manifest(cfg.data.train_csv, "train"), resolve_manifest(cfg.data.val_csv, "val")
    outside = cfg.data.allow_outside_paths
    full = MelDataset(Manifest(train_path, allow_outside=outside), cfg.data.max_seconds, None)
    train_set = MelDataset(Manifest(train_path, allow_outside=outside), cfg.data.max_seconds, cfg.data.crop_frames)
    val_set = MelDataset(Manifest(val_path, allow_outside=outside), cfg.data.max_seconds, None)
    torch.manual_seed(cfg.train.seed)
    model = MelCodec(cfg.model)
    mean, std = mel_statistics(full, seed=cfg.train.seed)
    model.mel_mean.copy_(mean)
    model.mel_std.copy_(std)
    log.info("MelCodec: %.2fM parameters, %d x %d codes of dim %d at %.2f Hz (%d mel frames per code)",
             sum(p.numel() for p in model.parameters()) / 1e6, cfg.model.n_codebooks, cfg.model.codebook_size,
             cfg.model.codebook_dim, CODE_RATE_HZ[cfg.model.frames_per_code], cfg.model.frames_per_code)
    return Stage(
        name="codec", model=model, train_set=train_set, loss_fn=codec_loss, config=to_dict(cfg),
        collate=collate_mels, skip_report=train_set.report,
        evaluate=lambda m: codec_metrics(m, val_set, cfg.train.batch_size, cfg.data.val_items),
        count_items=lambda b: float(b["lengths"].sum()) * SPEECH_OUT_MEL.hop_length / 16000,
        items_unit="audio_s", best_metric="val_l1")


def load_codec(ckpt_dir: str | Path, device: torch.device | str = "cpu") -> tuple[MelCodec, CodecConfig]:
    """Rebuild a trained codec from its folder (config.json written by build_stage, weights
    strict); eval mode, on ``device``. An untrained (never k-means-initialised) codec is an error."""
    cfg = read_stage_config(ckpt_dir, CodecStageConfig)
    model = MelCodec(cfg.model)
    load_weights(model, ckpt_dir)
    if not all(bool(vq.initialised) for vq in model.rvq.layers):
        raise CheckpointError(f"{ckpt_dir}: the codec's codebooks were never initialised (no training step)")
    return model.to(device).eval(), cfg.model


CONFIG = CodecStageConfig
DEFAULT_CONFIG = "configs/codec_tiny.json"
