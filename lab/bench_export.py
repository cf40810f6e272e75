"""Batch-1 speed of ONNX Runtime (fp32, and the INT8 copy when present) against PyTorch, in one run.

    python lab/bench_export.py --ckpt checkpoints/omni_sft_tiny --talker checkpoints/talker_tiny --onnx export/

Measures, best of --repeats, with the same number of threads on both sides:
- Thinker greedy generation of --tokens tokens after a chat prompt (no stop): prefill ms and decode
  tokens/s. PyTorch runs its best inference path (generate_reply: KV cache, the CPU decode head).
- a fixed reply spoken as chat streams it (Talker groups -> chunked codec -> block Griffin-Lim or
  chunked HiFi-GAN, chunks yielded as they are final): time to the first audio chunk, the whole
  synthesis and its real-time factor (medians over --repeats, after one warm-up). Greedy codes on both
  sides, and the Talker's stop flag ignored on both (it speaks each piece to its length limit), so
  both do the same work whether or not the Talker is trained.
Prints a table and one JSON line.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omni.cli.parser import Parser
from omni.export import runtime as R
from omni.multimodal.model import generate_reply
from omni.multimodal.stage import load_omni
from omni.multimodal.template import Turn, build_sequence
from omni.speech.synthesis import Synthesizer

PROMPT = "Continue the text: the old man walked down to the harbour and"
REPLY = "I see a red kettle on the table. It is next to a blue cup, and the window is open."


def spoken(chunks, repeats: int) -> dict[str, float]:
    """``chunks()`` -> an iterator of audio chunks: one warm-up pass, then the medians over ``repeats``
    passes of the time to the first chunk and to the last, and the real-time factor."""
    def once():
        t0 = time.perf_counter()
        first, n = None, 0
        for wav in chunks():
            first = time.perf_counter() - t0 if first is None else first
            n += len(wav)
        return first, time.perf_counter() - t0, n / 16000
    once()
    got = [once() for _ in range(repeats)]
    total = statistics.median(g[1] for g in got)
    return {"first_audio_s": statistics.median(g[0] for g in got), "speech_s": total, "audio_s": got[0][2],
            "rtf": total / got[0][2]}


def best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_torch(model, tok, synth, tokens: int, repeats: int) -> dict[str, float]:
    seq = build_sequence(tok, [Turn("user", PROMPT)], generation_prompt=True)
    x = model.thinker.tok_emb(torch.tensor([seq.ids]))
    n = min(tokens, model.thinker.cfg.ctx_len - len(seq))
    with torch.no_grad():
        prefill, _ = best(lambda: generate_reply(model, x, 1, ()), repeats)
        total, _ = best(lambda: generate_reply(model, x, n, ()), repeats)
    speech = {}
    if synth is not None:
        synth.talker.stop_logit = lambda h: torch.full(h.shape[:-1], -30.0)   # never stop: see the docstring
        speech = spoken(lambda: synth.stream(REPLY), repeats)
    return {"prefill_ms": prefill * 1000, "decode_tok_s": (n - 1) / max(total - prefill, 1e-9), "tokens": n,
            **speech}


def bench_onnx(folder: Path, tokens: int, repeats: int, threads: int) -> dict[str, float]:
    m = R.OnnxOmni(folder, threads)
    ids, kinds = R.build_sequence(m.encode, m.special, [R.Turn("user", PROMPT)], m.cfg["system_prompt"])
    x = m.inputs(ids, kinds, [], [])
    n = min(tokens, m.th["ctx_len"] - len(ids))
    rng = np.random.default_rng(0)
    m.generate(*x, 2, (), R.Sampling(), rng)                      # load the sessions outside the timing
    prefill, _ = best(lambda: m.generate(*x, 1, (), R.Sampling(), rng), repeats)
    total, _ = best(lambda: m.generate(*x, n, (), R.Sampling(), rng), repeats)
    speech = {}
    if m.cfg.get("speech"):
        m.voice.stops = lambda stop_logit: False
        speech = spoken(lambda: m.voice.start().say(REPLY), repeats)
    return {"prefill_ms": prefill * 1000, "decode_tok_s": (n - 1) / max(total - prefill, 1e-9), "tokens": n,
            **speech}


def main() -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="Stage E checkpoint folder (the PyTorch side)")
    p.add_argument("--talker", default=None, help="Stage D checkpoint folder, for the spoken-reply timing")
    p.add_argument("--onnx", required=True, help="the export folder (its int8/ is measured too when present)")
    p.add_argument("--int8", default=None, help="an INT8 folder (default: the export's int8/ when present)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per timed generation")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch and ONNX Runtime threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = load_omni(args.ckpt, torch.device("cpu"))
    synth = Synthesizer.load(args.talker, "cpu") if args.talker else None
    rows = {"pytorch": bench_torch(model, tok, synth, args.tokens, args.repeats),
            "onnx_fp32": bench_onnx(Path(args.onnx), args.tokens, args.repeats, args.threads)}
    int8 = Path(args.int8) if args.int8 else Path(args.onnx) / "int8"
    if (int8 / "config.json").is_file():
        rows["onnx_int8"] = bench_onnx(int8, args.tokens, args.repeats, args.threads)
    print(f"threads {args.threads}, {os.cpu_count()} cores, torch {torch.__version__}, batch 1, greedy")
    print(f"{'path':<10} {'prefill ms':>10} {'decode tok/s':>13} {'first audio ms':>15} {'speech s':>9} {'RTF':>6}")
    for name, r in rows.items():
        speech = f"{r['first_audio_s'] * 1000:>15.0f} {r['speech_s']:>9.3f} {r['rtf']:>6.3f}" if "rtf" in r else ""
        print(f"{name:<10} {r['prefill_ms']:>10.1f} {r['decode_tok_s']:>13.1f} {speech}")
    base = rows["pytorch"]["decode_tok_s"]
    for r in rows.values():
        r["decode_speedup_vs_pytorch"] = r["decode_tok_s"] / base
    print(json.dumps({"threads": args.threads, **rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
