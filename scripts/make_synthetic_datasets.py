"""Small but real-format datasets for every stage, in well under a minute, on any machine.

    python scripts/make_synthetic_datasets.py --out data/

text   data/text/tiny_corpus.txt + tiny_val.txt        Shakespeare's sonnets (bundled)
images data/images/annotations.json + _val             generated scenes, captions and exact VQA
speech data/audio/asr.csv + tts.csv (+ _val: held-out voices and sentences) espeak-ng if installed, else the bundled clips
OCR    data/ocr/ocr_train.csv + ocr_val.csv             sonnet lines rendered in DejaVu fonts
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omni.builders.image import make_synthetic_images
from omni.builders.ocr import make_synthetic_ocr
from omni.builders.speech import make_synthetic_speech
from omni.builders.text import make_synthetic_text
from omni.cli.common import Parser

ROOT = Path(__file__).resolve().parents[1]

SONNETS = ROOT / "assets" / "text" / "sonnets.txt"


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--out", type=Path, default=Path("data"), help="data root: text/, images/, audio/, ocr/ go here")
    p.add_argument("--seed", type=int, default=0, help="seeds the scenes, the voices and the fonts")
    p.add_argument("--images", type=int, default=300, help="generated scenes (10%% held out)")
    p.add_argument("--speech", type=int, default=60, help="utterances for ASR and for TTS")
    p.add_argument("--ocr", type=int, default=200, help="OCR training lines (+10%% held out)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    train_txt, val_txt = make_synthetic_text(SONNETS, args.out / "text")
    print(f"text    {train_txt}, {val_txt}")
    images = make_synthetic_images(args.out / "images", args.images, args.seed)
    print(f"images  {images[0]}, {images[1]}")
    speech = make_synthetic_speech(args.out / "audio", args.speech, args.seed)
    print(f"speech  {speech.asr_csv}, {speech.tts_csv}: {speech.n} utterances from {speech.source}")
    ocr = make_synthetic_ocr(args.out / "ocr", args.ocr, args.seed, train_text=train_txt, val_text=val_txt)
    print(f"ocr     {ocr[0]}, {ocr[1]}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
