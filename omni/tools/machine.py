"""The machine a benchmark runs on: its name and the peak FLOP/s its matrix units reach (the
denominator of MFU in omni/tools/bench.py, lab/bench.py and lab/bench_stages.py)."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 4096),
                repeats: int = 5, budget_s: float = 3.0) -> float:
    """The best FLOP/s of square n x n matmuls on ``device`` in ``dtype`` (2 n^3 per product): the
    machine's reachable peak, the denominator of MFU.

    Each size stops repeating once it has spent ``budget_s``, and a size whose single product takes
    longer than that ends the sweep: a dtype the hardware only emulates (bf16 on a CPU without bf16
    matrix units) takes minutes per 4096 product, and a larger matrix would not change its peak."""
    best = 0.0
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g).to(device, dtype)
        b = torch.randn(n, n, generator=g).to(device, dtype)
        out = torch.empty(n, n, dtype=dtype, device=device)
        t_start = time.perf_counter()
        torch.mm(a, b, out=out)  # warmup: thread pool, packing buffers, kernels
        sync_device(device)
        slow = time.perf_counter() - t_start > budget_s
        for _ in range(repeats):
            sync_device(device)
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            sync_device(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
            if time.perf_counter() - t_start > budget_s:
                break
        if slow:
            break
    return best


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (or the platform's processor string)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
