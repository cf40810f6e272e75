"""The main job: build small datasets, train every stage at demo size, chat with the result.

    python scripts/demo.py            # about 10 minutes on a 2-core CPU

The demo profile of the pipeline (scripts/train_all.py --profile demo): smoke-test data for every
stage (scripts/make_synthetic_datasets.py), then A the Thinker (Shakespeare's sonnets), B the audio
encoder (CTC on espeak-ng speech), C the vision encoder (CLIP-style on generated scenes), D the speech
codec and Talker, E multimodal SFT joining them, each for a minute or two, and the report card
(checkpoints/demo/REPORT.md): every stage's held-out metric beside a baseline measured in the same
run. Then one scripted chat session: an image question and an audio clip, replies spoken to WAV.
Run again, it trains only what changed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from omni.cli import train_all
from omni.cli.common import Parser

ROOT = Path(__file__).resolve().parents[1]
CHAT = "python infer_chat.py --ckpt checkpoints/demo/omni_sft --talker checkpoints/demo/talker"


def chat_session() -> int:
    """One scripted REPL session: a held-out scene with a question, then a held-out audio clip."""
    scene = json.loads((ROOT / "data/images/annotations_val.json").read_text())[0]
    question, answer = scene["qa"][0]
    clip = (ROOT / "data/audio/asr_val.csv").read_text().splitlines()[1].split(",")
    script = (f"/speak on\n/image data/images/{scene['image']}\n{question}\n"
              f"/audio data/audio/{clip[0]}\nTranscribe the audio.\n/quit\n")
    print(f"(expected answers: {answer!r}; {clip[1]!r})")
    cmd = ["infer_chat.py", "--ckpt", "checkpoints/demo/omni_sft", "--talker", "checkpoints/demo/talker",
           "--audio-out", "checkpoints/demo/reply.wav"]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, text=True, input=script, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30, help="held-out rows per metric in the report card")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    code = train_all.main(["--profile", "demo", "--n", str(args.n)])
    if code != 0:
        return code
    if chat_session() != 0:
        print("the scripted chat failed (output above)", file=sys.stderr)
        return 1
    print("\ncheckpoints: checkpoints/demo/{thinker,audio_enc,vision,talker,omni_sft} (each with best/, "
          "metrics.jsonl)")
    print("report card: checkpoints/demo/REPORT.md    spoken reply: checkpoints/demo/reply.wav    "
          "curves: checkpoints/demo/curves.png")
    print(f"total time:  {time.perf_counter() - t0:.0f} s")
    print(f"chat with it: {CHAT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
