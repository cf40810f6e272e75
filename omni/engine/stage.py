"""What a stage hands to the training loop (omni/engine/training.py): its model, data, loss and
evaluation as a ``Stage``; a stage trained first in the same command (the Talker's codec) as a ``Phase``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from omni.config import TrainConfig
from omni.engine.runtime import Runtime

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class Stage:
    """What a stage hands to ``fit``. ``config`` is the resolved config saved as config.json."""
    name: str
    model: nn.Module
    train_set: Dataset
    loss_fn: LossFn
    config: dict[str, Any]
    collate: Callable[[list], Any] = default_collate
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    count_items: Callable[[Any], float] = lambda batch: 0  # tokens/frames per micro-batch, for speed
    items_unit: str = "items"
    best_metric: str | None = None  # a key of evaluate()'s result; lower is better unless best_max
    best_max: bool = False
    lengths: np.ndarray | None = None  # per-sample lengths: batches are bucketed by length
    # samples a dataset skipped this epoch ({"seen": n, "skipped": k, reason: count}); reset on read
    skip_report: Callable[[], dict[str, int]] | None = None
    save_extra: Callable[[Path], None] = lambda ckpt_dir: None  # e.g. the tokenizer
    # DDP: set when some trainable parameters sit out some batches (SFT: a batch without audio)
    find_unused_parameters: bool = False
    # parameter-name prefix -> lr multiplier (the vocoder: generator and discriminator rates)
    lr_scales: Callable[[nn.Module], dict[str, float]] | None = None


@dataclass
class Phase:
    """A stage trained before another in one command (the Talker's codec): its name, how to build
    it on a runtime, and its training config."""
    name: str
    build: Callable[[Runtime], Stage]
    train: TrainConfig
