"""Command-line plumbing shared by the stage scripts: arguments, logging, the resolved config."""
from __future__ import annotations

import argparse
import logging


def stage_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, help=f"JSON config (default {default_config})")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, validated like the file, e.g. train.lr=3e-4 train.max_steps=100")
    p.add_argument("--resume", action="store_true", help="continue the run in train.save_dir exactly")
    p.add_argument("--overwrite", action="store_true", help="start over even if train.save_dir holds a run")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and stop after STEP (schedule still targets max_steps); resume later")
    return p


def setup_logging(rank: int = 0) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
