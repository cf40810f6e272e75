#!/usr/bin/env python
"""CPU benchmark of the Thinker stack: prints numbers, asserts nothing about time.

Measured in one run:
  1. training throughput (tokens/s): forward + cross-entropy + backward + grad clip + AdamW step
     of ThinkerLM on random token batches at the config's model, batch_size and ctx_len, in fp32
     and under bf16 autocast;
  2. achieved FLOP/s and MFU against a large square matmul measured in the same run;
  3. data pipeline: PackedTokens + default_collate batches/s at the training batch shape;
  4. batch-1 greedy generation tokens/s with and without the KV cache (and whether they agree);
  5. line-offset index: build_line_offsets vs a plain sequential read, and reopening the cache.

Examples:
  python lab/bench.py                      # full run (minutes on 2 cores)
  python lab/bench.py --quick              # smoke run
  python lab/bench.py --threads 1 --json bench.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from omni.cli.common import Parser
from omni.config import load_config
from omni.data import LineFile, PackedTokens, build_line_offsets
from omni.engine.optim import make_optimizer
from omni.thinker.model import ThinkerConfig, ThinkerLM
from omni.thinker.stage import TextStageConfig, lm_loss
from omni.tools.machine import cpu_model, matmul_peak

# Per trained token: each matmul weight costs 2 FLOPs forward + 4 backward (6 * N_matmul, lm_head
# included, embedding lookup excluded); attention adds QK^T and AV, 2 * ctx_len * d_model FLOPs each
# per layer forward, x3 for fwd+bwd: 6 * 2 * n_layers * ctx_len * d_model (causal half not discounted).
FLOP_FORMULA = ("FLOPs/token = 6 * N_matmul + 12 * n_layers * ctx_len * d_model  "
                "(N_matmul: weights of every nn.Linear incl. lm_head, no embedding lookup; "
                "12 = 6 (fwd+bwd) * 2 (QK^T and AV), full T x T attention counted)")
CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    """--config, --quick, --json, --threads."""
    p = Parser(description=__doc__)
    p.add_argument("--config", default="configs/thinker_tiny.json", help="a Thinker stage config")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke run")
    p.add_argument("--json", default="", help="also write every number to this JSON file")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: all usable cores")
    return p.parse_args()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flops_per_token(model: ThinkerLM, cfg: ThinkerConfig) -> dict[str, float]:
    """Training FLOPs per token (see FLOP_FORMULA): matmul weights + attention scores/values."""
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attn = 12 * cfg.n_layers * cfg.ctx_len * cfg.d_model
    return {"n_matmul_params": n_matmul, "n_params": model.num_params(),
            "flops_per_token": 6 * n_matmul + attn, "attn_flops_per_token": attn}


def train_step(model: ThinkerLM, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp_dtype: torch.dtype | None, max_grad_norm: float) -> float:
    """One optimizer step on x, y (B, T) as the trainer does it; returns the loss."""
    opt.zero_grad(set_to_none=True)
    amp = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with amp:
        loss, _ = lm_loss(model, (x, y))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return loss.item()


def bench_training(cfg: TextStageConfig, amp_dtype: torch.dtype | None, batch: int,
                   warmup: int, steps: int) -> dict[str, Any]:
    """Step times of ThinkerLM training on random (batch, ctx_len) token batches."""
    torch.manual_seed(cfg.train.seed)
    model = ThinkerLM(cfg.model).train()
    opt = make_optimizer(model, cfg.train, CPU)
    T, V = cfg.model.ctx_len, cfg.model.vocab_size
    times, losses = [], []
    for i in range(warmup + steps):
        xy = torch.randint(0, V, (batch, T + 1))
        t0 = time.perf_counter()
        losses.append(train_step(model, opt, xy[:, :-1], xy[:, 1:], amp_dtype, cfg.train.max_grad_norm))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    tokens = batch * T
    med, mean = statistics.median(times), statistics.fmean(times)
    return {"batch": batch, "ctx_len": T, "warmup_steps": warmup, "timed_steps": steps,
            "step_s_median": med, "step_s_mean": mean, "step_s_min": min(times),
            "tok_s_median": tokens / med, "tok_s_mean": tokens / mean, "last_loss": losses[-1]}


def bench_data(ctx_len: int, batch: int, vocab: int, n_tokens: int, n_batches: int,
               seed: int) -> dict[str, Any]:
    """Tokens/s of PackedTokens windows + default_collate, random window order like an epoch."""
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, vocab, size=n_tokens, dtype=np.uint32)
    ds = PackedTokens(stream, ctx_len, "bench stream")
    order = rng.permutation(len(ds))

    def run() -> None:
        """n_batches batches, as the trainer's DataLoader (num_workers=0) would build them."""
        for m in range(n_batches):
            idx = np.take(order, np.arange(m * batch, (m + 1) * batch), mode="wrap")
            default_collate([ds[int(i)] for i in idx])  # -> x, y (batch, ctx_len) int64
    run()  # warmup
    dt = timed(run)
    return {"stream_tokens": n_tokens, "batches": n_batches, "batch": batch, "ctx_len": ctx_len,
            "batches_s": n_batches / dt, "tok_s": n_batches * batch * ctx_len / dt}


def bench_generate(cfg: ThinkerConfig, dtype: torch.dtype, prompt_len: int, new_tokens: int,
                   repeats: int, seed: int) -> dict[str, Any]:
    """Batch-1 greedy generation (eval, weights and KV cache in ``dtype``) with and without the
    KV cache, best of ``repeats``."""
    torch.manual_seed(seed)
    model = ThinkerLM(cfg).eval().to(dtype)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len))
    model.generate(prompt, 4, temperature=0, use_cache=True)  # warmup
    res: dict[str, Any] = {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats}
    outs = {}
    for use_cache in (True, False):
        dt = float("inf")
        for _ in range(repeats):  # best of: one stray stall should not decide a 1-row decode
            t0 = time.perf_counter()
            outs[use_cache] = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
            dt = min(dt, time.perf_counter() - t0)
        n_new = outs[use_cache].shape[1] - prompt_len
        res["cache_tok_s" if use_cache else "nocache_tok_s"] = n_new / dt
    res["speedup"] = res["cache_tok_s"] / res["nocache_tok_s"]
    res["identical"] = bool(torch.equal(outs[True], outs[False]))
    diff = (outs[True] != outs[False])[0, prompt_len:].nonzero()
    res["first_mismatch"] = int(diff[0, 0]) if len(diff) else -1
    return res


def write_lines(path: Path, n_lines: int, seed: int) -> int:
    """Write ``n_lines`` random lowercase lines of 50-150 bytes (newline included); returns bytes."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 151, size=n_lines)
    buf = rng.integers(ord("a"), ord("z") + 1, size=int(lengths.sum()), dtype=np.uint8)
    buf[np.cumsum(lengths) - 1] = ord("\n")
    path.write_bytes(buf.tobytes())
    return buf.size


def sequential_read(path: Path, chunk: int = 1 << 24) -> int:
    """Read ``path`` start to end in ``chunk``-byte reads; returns bytes read."""
    n = 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            n += len(data)
    return n


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages; needs no privileges)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold(fn: Callable[[], Any], path: Path) -> float:
    evict(path)
    return timed(fn)


def bench_offsets(n_lines: int, repeats: int, seed: int) -> dict[str, Any]:
    """build_line_offsets vs a plain read of the same file, page-cached and cold (evicted before
    each run); cached LineFile reopen."""
    with tempfile.TemporaryDirectory(prefix="omni_bench_") as tmp:
        path = Path(tmp) / "lines.txt"
        size = write_lines(path, n_lines, seed)
        sequential_read(path)  # into the page cache for both contestants
        t_read = min(timed(lambda: sequential_read(path)) for _ in range(repeats))
        t_index = min(timed(lambda: build_line_offsets(path)) for _ in range(repeats))
        c_read = min(cold(lambda: sequential_read(path), path) for _ in range(repeats))
        c_index = min(cold(lambda: build_line_offsets(path), path) for _ in range(repeats))
        sequential_read(path)
        n_found = len(build_line_offsets(path)) - 1
        t_first = timed(lambda: LineFile(path))  # builds and saves <file>.line_offsets.npy
        reopen = [timed(lambda: LineFile(path)) for _ in range(max(5, repeats))]
        n_reopened = len(LineFile(path))
    mb = size / 1e6
    return {"lines": n_lines, "bytes": size, "read_MB_s": mb / t_read, "index_MB_s": mb / t_index,
            "index_vs_read": t_index / t_read, "cold_read_MB_s": mb / c_read, "cold_index_MB_s": mb / c_index,
            "cold_index_vs_read": c_index / c_read, "lines_found": n_found, "lines_reopened": n_reopened,
            "first_open_ms": t_first * 1e3, "reopen_ms_median": statistics.median(reopen) * 1e3,
            "reopen_ms_min": min(reopen) * 1e3}


def fmt(v: float, unit: str = "") -> str:
    """Human number: 1.23e9 -> '1.23 G'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:,.2f} {prefix}{unit}"
    return f"{v:,.3g} {unit}".rstrip()


def print_section(title: str, rows: list[tuple[str, str]]) -> None:
    """A titled two-column table."""
    width = max(len(k) for k, _ in rows)
    print(f"\n== {title}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def report_training(r: dict[str, Any]) -> None:
    """Print sections 1-3 (training, FLOPs/MFU, data pipeline) from the results dict."""
    f = r["flops"]
    rows = [("model params (matmul / total)", f"{fmt(f['n_matmul_params'])} / {fmt(f['n_params'])}"),
            ("FLOPs per token", f"{fmt(f['flops_per_token'], 'FLOP')} "
                                f"(attention {fmt(f['attn_flops_per_token'], 'FLOP')})")]
    for name in ("fp32", "bf16"):
        t = r[f"train_{name}"]
        rows += [(f"{name} step time median / mean / min",
                  f"{t['step_s_median'] * 1e3:,.1f} / {t['step_s_mean'] * 1e3:,.1f} / "
                  f"{t['step_s_min'] * 1e3:,.1f} ms"),
                 (f"{name} tokens/s median (mean)", f"{t['tok_s_median']:,.0f} ({t['tok_s_mean']:,.0f})"),
                 (f"{name} achieved FLOP/s", fmt(t["achieved_flops"], "FLOP/s")),
                 (f"{name} MFU vs {name} matmul peak", f"{t['mfu'] * 100:.1f} %  "
                                                           f"(last loss {t['last_loss']:.3f})")]
    t = r["train_fp32"]
    print_section(f"1-2. training step, batch {t['batch']} x ctx {t['ctx_len']}, "
                  f"{t['warmup_steps']} warmup + {t['timed_steps']} timed steps", rows)
    print(f"  {FLOP_FORMULA}")
    pk = r["peak"]
    print_section("peak: square matmul, best of repeats",
                  [(k, fmt(v["flops"], "FLOP/s")) for k, v in pk.items()])
    d = r["data"]
    print_section(f"3. data: PackedTokens + default_collate ({fmt(d['stream_tokens'])} token stream)", [
        ("batches/s", f"{d['batches_s']:,.0f}"), ("tokens/s", f"{d['tok_s']:,.0f}"),
        ("x fp32 training tokens/s", f"{d['vs_train_fp32']:,.0f}x"),
        ("x bf16 training tokens/s", f"{d['vs_train_bf16']:,.0f}x")])


def report_rest(r: dict[str, Any]) -> None:
    """Print sections 4-5 (generation, offset index)."""
    for name, g in r["generate"].items():
        print_section(f"4. generation, batch 1, greedy, {name} weights, prompt {g['prompt_len']} + "
                      f"{g['new_tokens']} new, best of {g['repeats']}", [
            ("KV cache tokens/s", f"{g['cache_tok_s']:,.1f}"),
            ("no cache tokens/s", f"{g['nocache_tok_s']:,.1f}"),
            ("cache speedup", f"{g['speedup']:.2f}x"),
            ("outputs identical (cache vs none)", str(g["identical"]) if g["identical"] else
             f"False (first mismatch at new token {g['first_mismatch']})")])
    o = r["offsets"]
    print_section(f"5. line-offset index, {o['lines']:,} lines, {o['bytes'] / 1e6:,.1f} MB (page-cached unless cold)", [
        ("sequential read (16 MiB chunks)", f"{o['read_MB_s']:,.0f} MB/s"),
        ("build_line_offsets", f"{o['index_MB_s']:,.0f} MB/s"),
        ("index time / read time", f"{o['index_vs_read']:.2f}x"),
        ("cold: sequential read (evicted first)", f"{o['cold_read_MB_s']:,.0f} MB/s"),
        ("cold: build_line_offsets", f"{o['cold_index_MB_s']:,.0f} MB/s"),
        ("cold: index speed / read speed", f"{1 / o['cold_index_vs_read'] * 100:.0f} %"),
        ("lines found (index / LineFile)", f"{o['lines_found']:,} / {o['lines_reopened']:,}"),
        ("first LineFile (build + save cache)", f"{o['first_open_ms']:,.1f} ms"),
        ("reopen LineFile (cached) median / min",
         f"{o['reopen_ms_median']:.3f} / {o['reopen_ms_min']:.3f} ms")])


def plan(quick: bool, cfg: TextStageConfig) -> dict[str, Any]:
    """Sizes of every measurement; --quick shrinks them all."""
    if quick:
        return {"batch": min(2, cfg.train.batch_size), "warmup": 1, "steps": 2, "mm_sizes": (1024,),
                "mm_repeats": 3, "data_tokens": 500_000, "data_batches": 100, "new_tokens": 32,
                "gen_repeats": 2, "lines": 100_000, "file_repeats": 2}
    return {"batch": cfg.train.batch_size, "warmup": 3, "steps": 10, "mm_sizes": (2048, 4096),
            "mm_repeats": 5, "data_tokens": 4_000_000, "data_batches": 1000,
            "new_tokens": min(256, cfg.model.ctx_len - 16), "gen_repeats": 3,
            "lines": 1_000_000, "file_repeats": 3}


def run_all(cfg: TextStageConfig, p: dict[str, Any]) -> dict[str, Any]:
    """Every measurement, printed section by section as it finishes; returns all numbers."""
    r: dict[str, Any] = {"plan": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}}
    r["peak"] = {name: {"flops": matmul_peak(CPU, dt, p["mm_sizes"], p["mm_repeats"])}
                 for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    r["flops"] = flops_per_token(ThinkerLM(cfg.model), cfg.model)
    for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
        t = bench_training(cfg, dt, p["batch"], p["warmup"], p["steps"])
        t["achieved_flops"] = r["flops"]["flops_per_token"] * t["tok_s_median"]
        t["mfu"] = t["achieved_flops"] / r["peak"][name]["flops"]
        r[f"train_{name}"] = t
    r["data"] = bench_data(cfg.model.ctx_len, p["batch"], cfg.model.vocab_size, p["data_tokens"],
                           p["data_batches"], cfg.train.seed)
    for name in ("fp32", "bf16"):
        r["data"][f"vs_train_{name}"] = r["data"]["tok_s"] / r[f"train_{name}"]["tok_s_median"]
    report_training(r)
    r["generate"] = {name: bench_generate(cfg.model, dt, 16, p["new_tokens"], p["gen_repeats"], cfg.train.seed)
                     for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    r["offsets"] = bench_offsets(p["lines"], p["file_repeats"], cfg.train.seed)
    report_rest(r)
    return r


def main() -> None:
    """Set threads, load the config, print the header, run everything, optionally write JSON."""
    args = parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    cfg = load_config(args.config, TextStageConfig)
    p = plan(args.quick, cfg)
    m = cfg.model
    header = {"torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
              "cpu": cpu_model(), "config": args.config, "quick": args.quick}
    print("μOmni bench  " + "  ".join(f"{k}={v}" for k, v in header.items()))
    print(f"model: d_model={m.d_model} n_layers={m.n_layers} n_heads={m.n_heads} n_kv_heads={m.n_kv_heads} "
          f"d_ff={m.d_ff} ctx_len={m.ctx_len} vocab_size={m.vocab_size} dropout={m.dropout}")
    results = {"header": header, "model": vars(m).copy(), **run_all(cfg, p)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
