"""Stage D phase 1 alone: train the RVQ mel codec on a TTS CSV (text,wav).

    python scripts/train_codec.py --config configs/codec_tiny.json [train.max_steps=...] [--resume]

train_talker.py runs the same phase (omni.codec_stage.build_codec_stage + fit) before the Talker.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import run_stage  # noqa: E402
from omni.codec_stage import CodecStageConfig, build_codec_stage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/codec_tiny.json", CodecStageConfig,
                     lambda cfg, rt, args: (build_codec_stage(cfg), cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
