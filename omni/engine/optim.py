"""The optimizer and its learning-rate schedule, shared by every stage (omni/engine/training.py)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from omni.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   lr_scales: Callable[[nn.Module], dict[str, float]] | None = None) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, biases or gains). ``lr_scales`` maps a
    parameter-name prefix to a multiplier of the schedule's lr (the vocoder's generator and
    discriminator learning rates); every other parameter gets 1."""
    scales = lr_scales(model) if lr_scales else {}
    by_scale: dict[float, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            scale = next((v for k, v in scales.items() if name.startswith(k)), 1.0)
            by_scale.setdefault(scale, []).append((name, p))
    groups = []
    for scale, named in by_scale.items():
        groups += [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda")
