"""Stage D in one command: the Talker recipe that speaks most clearly so far (docs/results.md, Stage D).

    python lab/train_talker_recipe.py [--config configs/talker_attention_tiny.json] [--save-dir checkpoints/talker_read]
        [--read 3000,6000] [--self-fed 8000,10000,12000,16000,18000,20000,24000,26000] [--keep-rounds] [section.key=value ...]

It runs train_talker.py in phases on one folder, each resuming the last (``--resume``), exactly as
the measurements in docs/results.md were made:
  1. reading: ``talker.dropout=0 talker.text_aux_layer=2`` to each step count of ``--read`` (each
     phase re-spans the warmup + cosine schedule to its new ``train.max_steps``: a warm restart);
  2. self-fed: the same plus ``loss.self_feed=0.5`` to each step count of ``--self-fed``.
A phase already trained that far is skipped, so running the command again after an interruption
continues where it stopped. ``--keep-rounds`` copies the weights after each phase to
``<save-dir>/after_<step>/talker`` (no code cache, no optimizer state) for scoring the curve with
``scripts/evaluate.py tts --talker <save-dir>/after_<step>``. Other ``section.key=value`` arguments
go to every phase after the recipe's own (so they may change them; e.g. ``codec.train.save_dir=...``
to reuse a trained codec).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from omni.cli.common import Parser, run_stage
from omni.engine import checkpoint as ckpt
from omni.talker import stage as talker_stage

READ = ["talker.dropout=0", "talker.text_aux_layer=2"]
SELF_FEED = ["loss.self_feed=0.5"]


def step_list(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts separated by commas, got {text!r}") from None
    if any(b <= a for a, b in zip(steps, steps[1:])) or any(s <= 0 for s in steps):
        raise argparse.ArgumentTypeError(f"step counts must be positive and rising, got {text!r}")
    return steps


def phases(read: list[int], self_fed: list[int]) -> list[tuple[int, list[str]]]:
    """(max_steps, recipe overrides) of each phase, in order."""
    if read and self_fed and self_fed[0] <= read[-1]:
        raise ValueError(f"the self-fed phases must go past the reading ones ({self_fed[0]} <= {read[-1]})")
    return [(s, READ) for s in read] + [(s, READ + SELF_FEED) for s in self_fed]


def trained_steps(talker_dir: Path) -> int:
    return ckpt.load_train_state(talker_dir)["progress"]["step"] if ckpt.has_train_state(talker_dir) else 0


def keep_round(talker_dir: Path, step: int) -> Path:
    dest = talker_dir.parent / f"after_{step}" / "talker"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(talker_dir, dest, ignore=shutil.ignore_patterns("codes", ckpt.STATE_FILE))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/talker_attention_tiny.json", help="Stage D config every phase starts from")
    p.add_argument("--save-dir", default="checkpoints/talker_read", type=Path,
                   help="the run's folder (train.save_dir's parent), resumed phase by phase")
    p.add_argument("--read", default=[3000, 6000], type=step_list, help="reading phases' step counts")
    p.add_argument("--self-fed", default=[8000, 10000, 12000, 16000, 18000, 20000, 24000, 26000], type=step_list,
                   help="self-fed phases' step counts")
    p.add_argument("--keep-rounds", action="store_true", help="copy the weights after each phase")
    p.add_argument("overrides", nargs="*", help="section.key=value, passed to every phase")
    args = p.parse_args(argv)
    try:
        plan = phases(args.read, args.self_fed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    owned = [o for o in args.overrides if o.split("=", 1)[0] in ("train.save_dir", "train.max_steps")]
    if owned:
        print(f"error: {' '.join(owned)}: the recipe sets these itself; use --save-dir, --read and --self-fed",
              file=sys.stderr)
        return 2
    talker_dir = args.save_dir / "talker"
    for max_steps, recipe in plan:
        done = trained_steps(talker_dir)
        if done >= max_steps:
            print(f"== recipe: {talker_dir} is at step {done}; skipping the phase to {max_steps}", flush=True)
            continue
        print(f"== recipe: step {done} -> {max_steps} with {' '.join(recipe)}", flush=True)
        rc = run_stage(talker_stage, "Stage D: one phase of the Talker recipe",
                       ["--config", args.config, *recipe, *args.overrides, f"train.save_dir={talker_dir}",
                        f"train.max_steps={max_steps}", "--resume"])
        if rc != 0:
            print(f"error: the phase to step {max_steps} " + ("was interrupted; run the same command again to "
                  "continue from its last checkpoint" if rc == 130 else "failed (the error is above)"), file=sys.stderr)
            return rc
        if trained_steps(talker_dir) < max_steps:  # stopped early (Ctrl-C / --stop-at): continue later
            return 0
        if args.keep_rounds:
            print(f"== recipe: kept the weights at step {max_steps} in {keep_round(talker_dir, max_steps)}")
    print(f"== recipe: done; speak with: python scripts/tts.py --ckpt {args.save_dir} --text \"Hello there.\" "
          f"--out hello.wav", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
