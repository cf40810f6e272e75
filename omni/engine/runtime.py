"""The one place that picks device, precision and the distributed setup.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) a process group is created:
nccl on CUDA, gloo on CPU. Precision (``train.precision``, default ``auto``): bf16 autocast where the
device supports it (CPUs with AVX-512 BF16 or AMX, Ampere+ GPUs), fp16 autocast + GradScaler on
older GPUs; fp32 otherwise (a CPU without native bf16 only emulates it, several times slower).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    precision_reason: str = ""

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, else MPS, else CPU. An explicit ``cuda`` without CUDA fails."""
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{pref}' requested but CUDA is not available; use device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def cpu_bf16_units() -> str:
    """The CPU's native bf16 matrix instructions ("AMX-BF16", "AVX512-BF16"), or "" where bf16 is
    only emulated (several times slower than fp32 there: docs/results.md, CPU performance)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX-BF16"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return ""


def pick_precision(device: torch.device, requested: str = "auto") -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, why) for ``train.precision`` on ``device``.

    ``auto`` picks what is fast on the machine: bf16 where the hardware multiplies bf16 natively,
    fp16 + GradScaler on GPUs without bf16, fp32 elsewhere. A forced choice is kept, with a warning
    where it will be slow.
    """
    if requested == "fp32":
        return None, "fp32 as configured"
    if requested not in ("auto", "bf16", "fp16"):
        raise ValueError(f"unknown precision '{requested}'; choose from auto, fp32, bf16, fp16")
    forced = requested != "auto"
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        if forced:
            if requested == "bf16" and not bf16:
                log.warning("precision bf16: %s has no native bf16; it will be emulated or fail", name)
            return _DTYPES[requested], f"{requested} as configured on {name}"
        if bf16:
            return torch.bfloat16, f"auto: {name} supports bf16"
        return torch.float16, f"auto: {name} has no bf16, so fp16 autocast with a GradScaler"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if forced:
            if not units:
                log.warning("precision %s: this CPU has no native bf16/fp16 matrix unit; the step will be "
                            "several times slower than fp32", requested)
            return _DTYPES[requested], f"{requested} as configured" + (f" ({units})" if units else " (emulated)")
        if units:
            return torch.bfloat16, f"auto: this CPU has {units}"
        return None, "auto: this CPU has no native bf16 (no AMX-BF16 or AVX512-BF16), and emulated bf16 is slower than fp32"
    if forced:
        return _DTYPES[requested], f"{requested} as configured on {device.type}"
    return None, f"auto: fp32 on {device.type}"


def setup_runtime(device_pref: str = "auto", precision: str = "fp32") -> Runtime:
    """Create the runtime; initialise the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("DDP: rank %d/%d on %s (%s)", rank, world, device, backend)
    amp_dtype, why = pick_precision(device, precision)
    rt = Runtime(device, amp_dtype, rank, world, local_rank, why)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return rt


def peak_rss_bytes() -> int:
    """The peak resident set size of this process (Linux and macOS; 0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(rt: Runtime, value: float) -> float:
    """Mean of a Python float over all ranks (identity when not distributed)."""
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world_size


def any_rank(rt: Runtime, flag: bool) -> bool:
    """True if ``flag`` is True on any rank, so every rank takes the same branch."""
    if not rt.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() > 0


def pick_inference_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Weights/KV-cache dtype for generation. ``auto``: fp32 on CPU (exact, and with the
    transposed output projection as fast as bf16 there: lab/bench.py section 4), bf16 on
    Ampere+ GPUs, fp16 on older ones."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype '{name}'; choose from auto, {', '.join(_DTYPES)}")
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers: for its attributes and for gradient-free
    passes that must not go through DDP's gradient reduction."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


@contextlib.contextmanager
def exit_on_sigterm(enabled: bool = True):
    """Within the block SIGTERM raises SystemExit(143), the status its default action gives, rather
    than ending the process on the spot, so ``finally`` blocks run (the folder lock is released).
    StopOnSignal replaces it inside the training loop. A handler someone else set (or SIG_IGN) is
    kept, and only the main thread may set one: elsewhere this does nothing."""
    if (not enabled or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _exit(signum, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class StopOnSignal:
    """First Ctrl-C / SIGTERM sets ``requested`` (the loop finishes its step, checkpoints and exits);
    a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("signal %d: stopping after this step with a checkpoint (again to abort)", signum)

    def __enter__(self) -> "StopOnSignal":
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self.old.items():
            signal.signal(s, h)
        return False
