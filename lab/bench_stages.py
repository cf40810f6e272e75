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
import importlib.util
import json
import sys
from pathlib import Path

import torch

from omni.cli.common import Parser
from omni.engine.runtime import pick_precision
from omni.engine.stage import Stage
from omni.tools.bench import STAGES, Built, Shape, build, count_micro_flops, default_config, step_stats
from omni.tools.machine import cpu_model, matmul_peak

REFERENCE = "thinker_ref"  # lab/reference_thinker.py: the design the Thinker's step is compared with


def reference_thinker(shape: Shape) -> Built:
    """The reference design (lab/reference_thinker.py) at the default Thinker's shape, batch and
    train config, around the same kind of batch."""
    spec = importlib.util.spec_from_file_location("reference_thinker", Path(__file__).with_name("reference_thinker.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    cfg = default_config("thinker")
    m = cfg.model
    torch.manual_seed(0)
    model = ref.RefThinker(m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff, m.dropout, m.rope_theta)
    thinker = build("thinker", shape)
    stage = Stage("thinker_ref", model, [], ref.ref_loss, {}, count_items=lambda x: x[0].numel(), items_unit="tok")
    return Built(stage, cfg.train, thinker.batch, thinker.shape + ", reference design")


def build_any(name: str, shape: Shape) -> Built:
    return reference_thinker(shape) if name == REFERENCE else build(name, shape)


def measure(name: str, precision: str | None, compiled: bool, device: str, shape: Shape, warmup: int,
            steps: int, flops: dict[str, int], peaks: dict[str, float]) -> dict:
    """Stage ``name`` built afresh from its default config, then stepped (omni/tools/bench.py); its
    achieved FLOP/s and MFU against the matmul peak of the precision that ran."""
    if name not in flops:  # counted once per stage, on an eager fp32 step
        flops[name] = count_micro_flops(build_any(name, shape), device)
    r = {"stage": name, **step_stats(build_any(name, shape), device, precision, compiled, warmup, steps, shape)}
    r["flops_per_step"] = flops[name] * r["accumulation"]
    r["achieved_flops"] = r["flops_per_step"] / r["step_s"]
    r["peak_flops"] = peaks[r["precision"]]
    r["mfu"] = r["achieved_flops"] / r["peak_flops"]
    return r


class Peaks(dict):
    """The square-matmul peak of each precision, measured when a run in it first needs its MFU (an
    emulated bf16 peak costs time that an fp32-only run should not spend)."""

    def __init__(self, device: torch.device, dtypes: dict[str, torch.dtype], sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.device, self.dtypes, self.sizes = device, dtypes, sizes

    def __missing__(self, key: str) -> float:
        self[key] = matmul_peak(self.device, self.dtypes[key], self.sizes)
        print(f"square-matmul peak {key}: {self[key] / 1e12:.3f} TFLOP/s", flush=True)
        return self[key]


def write_json(path: Path, where: str, quick: bool, results: list[dict], peaks: dict[str, float]) -> None:
    path.write_text(json.dumps({"torch": torch.__version__, "device": where, "threads": torch.get_num_threads(),
                                "quick": quick, "matmul_peak_flops": peaks, "results": results}, indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--stages", nargs="+", choices=STAGES + (REFERENCE,), default=list(STAGES) + [REFERENCE],
                   help=f"the stages to measure; {REFERENCE}: the reference design at the Thinker's shape")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument("--precision", choices=("config", "fp32", "auto", "bf16", "both"), default="both",
                   help="config: each config's train.precision; both: fp32 and auto (what train.precision=auto "
                        "picks on this machine)")
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
    precisions = {"config": [None], "both": ["fp32", "auto"]}.get(args.precision, [args.precision])
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    where = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_model()} ({pick_precision(torch.device('cpu'))[1]})"
    print(f"torch {torch.__version__}, {device} ({where}), {torch.get_num_threads()} threads"
          + (" [quick: not the default shapes]" if args.quick else ""), flush=True)
    shape = Shape(args.quick, args.batch or None, args.accum or None)
    dev = torch.device(device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} | ({"fp16": torch.float16} if device == "cuda" else {})
    sizes = (512,) if args.quick else (2048, 4096)
    print(f"precision auto here: {pick_precision(dev)[1]}", flush=True)
    peaks = Peaks(dev, dtypes, sizes)
    results, flops = [], {}
    for name in args.stages:
        for precision in precisions:
            for compiled in compiles:
                try:
                    r = measure(name, precision, compiled, device, shape, args.warmup, args.steps, flops, peaks)
                except Exception as e:  # one stage failing must not hide the others' numbers
                    print(f"{name} precision={precision} compile={compiled}: FAILED {type(e).__name__}: {e}",
                          flush=True)
                    results.append({"stage": name, "precision": precision, "compile": compiled,
                                    "error": f"{type(e).__name__}: {e}"})
                    continue
                results.append(r)
                if args.json:  # after every stage: a run cut short keeps what it measured
                    write_json(Path(args.json), where, args.quick, results, peaks)
                print(f"{name:11s} {r['precision']:5s} compile={compiled!s:5s} step {r['step_s'] * 1000:8.1f} ms  "
                      f"{r['items_per_s']:10,.0f} {r['items_unit']}/s  {r['achieved_flops'] / 1e9:7.1f} GFLOP/s  "
                      f"MFU {r['mfu'] * 100:5.1f}%  "
                      + (f"peak {r['peak_alloc_gib']:.3f} GiB  " if "peak_alloc_gib" in r else "")
                      + f"loss {r['losses'][0]:.3f}->{r['losses'][-1]:.3f}  [{r['shape']}]", flush=True)
    print("\n| stage | precision | compile | params (M, trainable) | step | throughput | GFLOP/step | GFLOP/s "
          "| MFU | peak allocated | autotune estimate | max_steps at this speed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['stage']} | {r['precision']} | {r['compile']} | FAILED: {r['error'][:80]} |||||||||")
            continue
        peak = f"{r['peak_alloc_gib']:.2f} GiB" if "peak_alloc_gib" in r else "n/a"
        est = f"{r['estimate_gib']:.2f} GiB" if r["estimate_gib"] is not None else "-"
        print(f"| {r['stage']} | {r['precision']} | {'on' if r['compile'] else 'off'} | {r['params_m']:.2f} "
              f"({r['trainable_m']:.2f}) | {r['step_s'] * 1000:.1f} ms | {r['items_per_s']:,.0f} {r['items_unit']}/s "
              f"| {r['flops_per_step'] / 1e9:.1f} | {r['achieved_flops'] / 1e9:.1f} | {r['mfu'] * 100:.1f}% "
              f"| {peak} | {est} | {r['max_steps']:,}: {r['default_run_h'] * 60:.1f} min |")
    if args.json:
        write_json(Path(args.json), where, args.quick, results, peaks)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
