"""Speak text with a trained Talker (the omni-tts command).

    python scripts/tts.py --help

The program lives in omni.cli.tts; this file runs it from a checkout.
"""
import sys

from omni.cli.tts import main

if __name__ == "__main__":
    sys.exit(main())
