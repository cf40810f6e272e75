"""Average the weights of several checkpoints of one model (e.g. the last rounds of a run).

    python lab/average_checkpoints.py --out checkpoints/talker_avg/talker \
        checkpoints/talker_auxs24L/talker/best checkpoints/talker_auxs24L/talker \
        checkpoints/talker_auxs26/talker/best checkpoints/talker_auxs26/talker

Each argument is a folder holding ``model.safetensors`` (a stage's save_dir, or its ``best/``). The
mean goes to ``--out`` with the first folder's config and vocabulary files, so every loader of that
stage reads it as it reads the first folder (for a Talker, ``--out <ckpt>/talker`` and then
``scripts/tts.py --talker <ckpt>``). Checkpoints near the end of one run, at a low learning rate, sit
around one minimum, and their mean can fit better than any one of them. Measured (docs/experiments.md, Stages B
and D): a lower validation loss for the Talker, but no better CER for the Talker or the recogniser.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omni.cli.common import Parser
from omni.engine.checkpoint import CheckpointError, average_weights


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="checkpoint folders holding model.safetensors")
    p.add_argument("--out", required=True, type=Path, help="folder to write the averaged checkpoint to")
    args = p.parse_args(argv)
    try:
        info = average_weights(args.folders, args.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the mean of {len(args.folders)} checkpoints ({info['params'] / 1e6:.2f}M values "
          f"in {info['tensors']} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
