"""Interactive chat with a trained Stage E model: text, images (/image), audio (/audio), spoken replies.

    python infer_chat.py --ckpt checkpoints/omni_sft_tiny

The program lives in omni.cli.chat (also installed as the omni-chat command); this file runs it
from a checkout.
"""
import sys

from omni.cli.chat import main

if __name__ == "__main__":
    sys.exit(main())
