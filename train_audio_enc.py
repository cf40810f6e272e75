"""Stage B: train AudioEncoderTiny as a character CTC recogniser on an ASR manifest (wav,text).

    python train_audio_enc.py --config configs/audio_enc_tiny.json [train.max_steps=...] [--resume]
"""
import sys

from omni.audio import stage
from omni.cli.common import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
