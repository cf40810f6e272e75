"""Stage D phase 1 alone: train the RVQ mel codec on a TTS CSV (text,wav).

    python train_codec.py --config configs/codec_tiny.json [train.max_steps=...] [--resume]

train_talker.py runs the same phase (omni.codec.stage.build_stage + fit) before the Talker.
"""
import sys

from omni.cli.common import run_stage
from omni.codec import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
