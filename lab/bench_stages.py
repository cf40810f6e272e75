#!/usr/bin/env python
"""Peak memory and speed of every stage's training step at its default config: prints numbers,
asserts nothing.

Each stage's real model (built from its configs/*_tiny.json), loss and collate run under the
engine's own step (``omni.engine.training.Trainer``: autocast, GradScaler, gradient accumulation,
clipping, fused AdamW on CUDA, ``torch.compile`` when asked) on the worst-case batch the config
admits (``omni/tools/bench.py`` says which). Real batches are never larger, so the peak printed
here bounds a real run's; the CUDA context, which the allocator does not count, comes on top. Where
the autotuner has a memory model for the kind, its estimate (``omni/tools/autotune.py``) is printed
beside the measurement. ``lab/gpu_check.sh`` runs the GPU checks built on this.

  python lab/bench_stages.py                      # every stage, as configured, on cuda if present
  python lab/bench_stages.py --stages thinker sft --precision both --compile both
  python lab/bench_stages.py --quick --device cpu # smoke run: batch 2, short shapes, 2 steps
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from omni.cli.common import Parser
from omni.tools.bench import STAGES, Shape, build, step_stats


def measure(name: str, precision: str | None, compiled: bool, device: str, shape: Shape, warmup: int,
            steps: int) -> dict:
    """Stage ``name`` built afresh from its default config, then stepped (omni/tools/bench.py)."""
    return {"stage": name, **step_stats(build(name, shape), device, precision, compiled, warmup, steps, shape)}


def write_json(path: Path, where: str, quick: bool, results: list[dict]) -> None:
    path.write_text(json.dumps({"torch": torch.__version__, "device": where, "quick": quick, "results": results},
                               indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the stages to measure")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument("--precision", choices=("config", "fp32", "amp", "both"), default="config",
                   help="config: each config's train.use_amp; both: fp32 and amp (bf16, fp16 on pre-Ampere GPUs)")
    p.add_argument("--compile", choices=("off", "on", "both"), default="off", help="train.compile")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--quick", action="store_true", help="batch 2, short shapes: a smoke run")
    p.add_argument("--batch", type=int, default=0, help="per-device batch instead of the config's")
    p.add_argument("--accum", type=int, default=0, help="gradient accumulation instead of the config's")
    p.add_argument("--json", default="", help="also write every number to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    amps = {"config": [None], "fp32": [False], "amp": [True], "both": [False, True]}[args.precision]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    where = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, {device} ({where}), {torch.get_num_threads()} threads"
          + (" [quick: not the default shapes]" if args.quick else ""), flush=True)
    shape = Shape(args.quick, args.batch or None, args.accum or None)
    results = []
    for name in args.stages:
        for amp in amps:
            for compiled in compiles:
                try:
                    r = measure(name, amp, compiled, device, shape, args.warmup, args.steps)
                except Exception as e:  # one stage failing must not hide the others' numbers
                    print(f"{name} amp={amp} compile={compiled}: FAILED {type(e).__name__}: {e}", flush=True)
                    results.append({"stage": name, "amp": amp, "compile": compiled,
                                "error": f"{type(e).__name__}: {e}"})
                    continue
                results.append(r)
                if args.json:  # after every stage: a run cut short keeps what it measured
                    write_json(Path(args.json), where, args.quick, results)
                print(f"{name:9s} {r['precision']:8s} compile={compiled!s:5s} step {r['step_s'] * 1000:8.1f} ms  "
                      f"{r['items_per_s']:12,.0f} {r['items_unit']}/s  peak "
                      + (f"{r['peak_alloc_gib']:.3f} GiB (reserved {r['peak_reserved_gib']:.3f})"
                         if "peak_alloc_gib" in r else "n/a (cpu)")
                      + f"  loss {r['losses'][0]:.3f}->{r['losses'][-1]:.3f}  [{r['shape']}]", flush=True)
    print("\n| stage | precision | compile | params (M, trainable) | step | throughput | peak allocated "
          "| peak reserved | autotune estimate | max_steps at this speed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['stage']} | amp={r['amp']} | {r['compile']} | FAILED: {r['error'][:80]} |||||||")
            continue
        peak = f"{r['peak_alloc_gib']:.2f} GiB" if "peak_alloc_gib" in r else "n/a"
        res = f"{r['peak_reserved_gib']:.2f} GiB" if "peak_reserved_gib" in r else "n/a"
        est = f"{r['estimate_gib']:.2f} GiB" if r["estimate_gib"] is not None else "-"
        print(f"| {r['stage']} | {r['precision']} | {'on' if r['compile'] else 'off'} | {r['params_m']:.2f} "
              f"({r['trainable_m']:.2f}) | {r['step_s'] * 1000:.1f} ms | {r['items_per_s']:,.0f} {r['items_unit']}/s "
              f"| {peak} | {res} | {est} | {r['max_steps']:,}: {r['default_run_h'] * 60:.1f} min |")
    if args.json:
        write_json(Path(args.json), where, args.quick, results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
