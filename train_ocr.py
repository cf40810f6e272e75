"""Optional stage: train the OCR model (ViT over a text-line image + autoregressive character decoder
with cross-attention) on an OCR CSV (image,text).

    python train_ocr.py --config configs/ocr_tiny.json [train.max_steps=...] [--resume]

Validation: greedy CER/WER on the held-out CSV (fonts never seen in training with the production
builder); the best checkpoint by CER is kept in best/. ``scripts/evaluate.py ocr`` adds beam search,
per-font numbers and tesseract on the same images.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from cli import run_stage
from omni.config import to_dict
from omni.ocr import VOCAB_FILE, OcrDataset, OcrStageConfig, collate_ocr, evaluate_ocr, ocr_loss
from omni.ocr_model import OcrModel, OcrVocab
from omni.training import Stage

log = logging.getLogger("train_ocr")


def build_stage(cfg: OcrStageConfig) -> Stage:
    vocab = OcrVocab.ascii()
    train_set = OcrDataset(cfg.data.train_csv, vocab, cfg.model)
    val_set = OcrDataset(cfg.data.val_csv, vocab, cfg.model)
    torch.manual_seed(cfg.train.seed)
    model = OcrModel(cfg.model, len(vocab))
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    log.info("OCR model: %.2fM parameters (encoder %.2fM, decoder %.2fM), %d symbols", model.num_params() / 1e6,
             n_enc / 1e6, (model.num_params() - n_enc) / 1e6, len(vocab))
    widths = train_set.widths()
    log.info("%s: %d rows, mean scaled width %.0f px", cfg.data.train_csv, len(train_set), widths.mean())

    def save_extra(d: Path) -> None:
        vocab.save(d / VOCAB_FILE)

    return Stage(
        name="ocr", model=model, train_set=train_set, loss_fn=ocr_loss, config=to_dict(cfg), collate=collate_ocr,
        lengths=widths, skip_report=train_set.report,
        evaluate=lambda m: evaluate_ocr(m, val_set, vocab, cfg.train.batch_size, cfg.data.val_items)[0],
        count_items=lambda b: float(b["widths"].shape[0]), items_unit="lines", best_metric="val_cer",
        save_extra=save_extra)


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/ocr_tiny.json", OcrStageConfig,
                     lambda cfg, rt, args: (build_stage(cfg), cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
