"""Chat latency with spoken replies: time to first token, time to first audio, streaming RTF, and the
full-reply wait of speaking only after the reply is written, over N turns.

    python scripts/bench_latency.py --ckpt checkpoints/omni_sft_tiny --talker checkpoints/talker_tiny
    python scripts/bench_latency.py --untrained-default      # default-size models, untrained weights

Writes a JSON of every turn with --out. How untrained models are timed: omni/tools/latency.py.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from omni.cli.common import add_vocoder_args, vocoder_kwargs
from omni.cli.parser import Parser
from omni.tools.latency import build_untrained_default, codec_chunk_error_db, run
from omni.tools.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--ckpt", help="Stage E checkpoint folder")
    p.add_argument("--talker", help="Stage D checkpoint folder")
    p.add_argument("--untrained-default", action="store_true",
                   help="build default-size models with untrained weights and script their replies")
    p.add_argument("--turns", type=int, default=20, help="measured turns (after three warm-up turns)")
    add_vocoder_args(p)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="write the full result (every turn) to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.untrained_default:
            sft, talker = build_untrained_default(Path(tmp), ROOT / "configs")
        elif args.ckpt and args.talker:
            sft, talker = Path(args.ckpt), Path(args.talker)
        else:
            p.error("give --ckpt and --talker, or --untrained-default")
        res = run(sft, talker, args.turns, args.untrained_default, vocoder_kwargs(args.vocoder))
        res["codec_chunked_vs_whole_db"] = codec_chunk_error_db(talker)
    res.update(cpu=cpu_model(), torch=torch.__version__, python=platform.python_version())
    print(f"{res['cpu']}, {res['threads']} threads, torch {res['torch']}, vocoder {res['vocoder']}, "
          f"{res['turns']} turns{' (untrained default-size models, scripted replies)' if res['scripted'] else ''}")
    for key, name in (("ttft_s", "time to first token"), ("first_audio_s", "time to first audio"),
                      ("full_reply_wait_s", "full-reply wait (before streaming)"), ("audio_s", "reply audio")):
        s = res[key]
        print(f"  {name:36s} median {s['median'] * 1000:7.0f} ms  p90 {s['p90'] * 1000:7.0f} ms  "
              f"max {s['max'] * 1000:7.0f} ms")
    c = res["cold_first_turn"]
    print(f"  first turn after loading (cold): time to first token {c['ttft_s'] * 1000:.0f} ms, first audio "
          f"{c['first_audio_s'] * 1000:.0f} ms, turn {c['total_s']:.2f} s for {c['audio_s']:.2f} s of audio")
    s = res["rtf"]
    print(f"  {'streaming RTF':36s} median {s['median']:7.3f}     p90 {s['p90']:7.3f}     max {s['max']:7.3f}")
    print(f"  codec chunked vs whole decode: {res['codec_chunked_vs_whole_db']:.1f} dB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
