"""Stage E: multimodal SFT — join the Thinker, audio encoder and vision encoder through projectors
and train on paired conversations (captions, VQA, transcription, text), loss on assistant tokens.

    python sft_omni.py --config configs/omni_sft_tiny.json [train.max_steps=...] [--resume]
"""
import sys

from omni.cli.common import run_stage
from omni.multimodal import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
