"""Stage C: train ViTTiny to match images and captions (CLIP-style InfoNCE) against the frozen Thinker.

    python train_vision.py --config configs/vision_tiny.json [train.max_steps=...] [--resume]
"""
import sys

from omni.cli.common import run_stage
from omni.vision import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
