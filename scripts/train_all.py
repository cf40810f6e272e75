"""Train the whole μOmni chain in one resumable command, then write its report card (omni-train-all).

    python scripts/train_all.py --help

The program lives in omni.cli.train_all; this file runs it from a checkout.
"""
import sys

from omni.cli.train_all import main

if __name__ == "__main__":
    sys.exit(main())
