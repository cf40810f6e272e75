"""Evaluate μOmni checkpoints, one subcommand per stage (the omni-evaluate command).

    python scripts/evaluate.py --help

The program lives in omni.cli.evaluate; this file runs it from a checkout.
"""
import sys

from omni.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
