"""Stage B: train AudioEncoderTiny as a character CTC recogniser on an ASR manifest (wav,text).

    python train_audio_enc.py --config configs/audio_enc_tiny.json [train.max_steps=...] [--resume]
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from omni.asr import (AsrDataset, AsrModel, Manifest, collate_asr, ctc_loss, evaluate_asr, mel_statistics,
                      resolve_manifest)
from cli import run_stage
from omni.config import AsrStageConfig, to_dict
from omni.ctc import CharVocab
from omni.training import Stage

log = logging.getLogger("train_audio_enc")


def build_stage(cfg: AsrStageConfig) -> Stage:
    vocab = CharVocab.default()
    sym = cfg.model.symbols_per_frame
    train_set = AsrDataset(Manifest(resolve_manifest(cfg.data.train_csv, "train")), vocab, cfg.data.max_seconds, sym)
    val_set = AsrDataset(Manifest(resolve_manifest(cfg.data.val_csv, "val")), vocab, cfg.data.max_seconds, sym)
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


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/audio_enc_tiny.json", AsrStageConfig,
                     lambda cfg, rt, args: (build_stage(cfg), cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
