"""Speech that starts before the reply is finished: text pieces in, audio chunks out.

    reply text, as it streams -> TextPieces (cut at sentence / clause ends) -> for each piece:
        Talker.generate_iter (a group of codes at a time) -> LocalStream(codec.decode)
        -> BlockGriffinLim, or LocalStream(HiFi-GAN) -> 16 kHz chunks

The codec decoder and HiFi-GAN are stacks of convolutions: an output frame depends on the input
frames within a fixed radius of it. ``LocalStream`` runs such a function on the input seen so far
with ``radius`` frames of context on each side, and hands out only the outputs whose whole
receptive field is in, so its chunks joined are exactly the function on the whole input (the radius
is measured by ``probe_radius``, not assumed). Griffin-Lim is iterative over the whole signal and has no
such radius; BlockGriffinLim (omni/speech/griffinlim.py) is its block-wise form and the offline
path uses the same blocks (docs/architecture.md, "Streaming speech"). TextPieces and LocalStream
are pure Python (omni/speech/chunks.py): the torch-free ONNX runtime streams with them too.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def probe_radius(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, ratio: int,
                 change: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """How many input frames on each side an output frame of ``fn`` depends on.

    ``fn`` maps inputs (1, T, ...) to outputs (1, T * ratio, ...); ``example`` is an input with T
    well above the radius; ``change`` returns one input frame altered. The outputs that move when
    the middle frame is altered span the receptive field; one frame more is kept for safety."""
    T = example.shape[1]
    mid = T // 2
    other = example.clone()
    other[:, mid] = change(example[:, mid])
    diff = (fn(example) - fn(other)).abs()[0]
    moved = torch.nonzero(diff.reshape(diff.shape[0], -1).amax(-1) > 0).flatten()
    if moved.numel() == 0:
        raise ValueError("probe_radius: altering an input frame changed no output (a dead function?)")
    reach = max(abs(int(moved.min()) // ratio - mid), abs(int(moved.max()) // ratio - mid))
    if reach >= mid - 1:
        raise ValueError(f"probe_radius: the receptive field reaches the example's edge (T={T}); probe longer")
    return reach + 1


def silence(seconds: float, sample_rate: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(math.ceil(seconds * sample_rate), device=device)
