"""Stage D: train the speech codec (phase 1), then the text-conditioned Talker over its codes (phase 2).

    python train_talker.py --config configs/talker_tiny.json [section.key=value ...] [--resume]
        [--overwrite] [--retrain-codec] [--stop-at STEP]

Phase 1 is skipped when ``codec.train.save_dir`` already holds a finished codec (weights, and a
training state at max_steps if one is there); ``--retrain-codec`` trains it again (with
``--overwrite``). Phase 2 encodes the TTS CSVs once with the frozen codec (cached in
``train.save_dir/codes/``), then trains the Talker; ``--resume``/``--stop-at`` apply to the phase
being trained. Checkpoints: ``<codec.train.save_dir>`` and ``<train.save_dir>`` (best/ by val_loss; by
val_fed_loss, the self-fed validation loss, when ``loss.self_feed`` > 0).
"""
import sys

from omni.cli.common import run_stage
from omni.talker import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
