"""Optional stage: train a HiFi-GAN vocoder on the speech-out mel the codec decodes, so chat and
scripts/tts.py can use it instead of Griffin-Lim.

    python train_vocoder.py --config configs/vocoder_tiny.json [train.max_steps=...] [--resume]

Random crops of ``data.max_audio_length`` samples; generator and discriminators train in one step
(omni/vocoder/model.py explains how) with their own learning rates (``gan.lr_g``, ``gan.lr_d``; the
schedule's warmup/cosine shape comes from ``train``). Validation: log-mel L1 distance of the
vocoded validation clips, beside Griffin-Lim's on the same mels; best/ keeps the lowest.
"""
import sys

from omni.cli.common import run_stage
from omni.vocoder import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
