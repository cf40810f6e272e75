"""Stage E: multimodal SFT — join the Thinker, audio encoder and vision encoder through projectors
and train on paired conversations (captions, VQA, transcription, text), loss on assistant tokens.

    python sft_omni.py --config configs/omni_sft_tiny.json [train.max_steps=...] [--resume]
"""
from __future__ import annotations

import sys

from cli import run_stage
from omni.sft import SftStageConfig, build_sft_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/omni_sft_tiny.json", SftStageConfig,
                     lambda cfg, rt, args: (build_sft_stage(cfg, rt.device), cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
