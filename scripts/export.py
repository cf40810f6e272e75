"""Export μOmni to ONNX with a parity report (the omni-export command).

    python scripts/export.py --help

The program lives in omni.export.cli; this file runs it from a checkout.
"""
import sys

from omni.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
