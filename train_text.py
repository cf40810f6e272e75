"""Stage A: train the byte-level BPE tokenizer (if absent) and the Thinker LM on a text corpus.

    python train_text.py --config configs/thinker_tiny.json [train.max_steps=100 ...] [--resume]
    torchrun --nproc_per_node=2 train_text.py --config configs/thinker_tiny.json
"""
import sys

from omni.cli.common import run_stage
from omni.thinker import stage


def main(argv: list[str] | None = None) -> int:
    return run_stage(stage, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
