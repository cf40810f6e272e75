"""Optional stage: train the OCR model (ViT over a text-line image + autoregressive character decoder
with cross-attention) on an OCR CSV (image,text).

    python train_ocr.py --config configs/ocr_tiny.json [train.max_steps=...] [--resume]

Validation: greedy CER/WER on the held-out CSV (fonts never seen in training with the production
builder); the best checkpoint by CER is kept in best/. ``scripts/evaluate.py ocr`` adds beam search,
per-font numbers and tesseract on the same images.
"""
import sys

from omni.cli.common import run_stage
from omni.ocr import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
