"""A toy run for the engine's tests: a linear model fitted to a sum, in a few CPU milliseconds."""
import subprocess
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from omni.config import TrainConfig
from omni.engine.stage import Stage


def mse(model, batch):
    x, y = batch
    return ((model(x)[:, 0] - y) ** 2).mean(), {}


def toy_stage(model: nn.Module | None = None, config: dict | None = None, loss_fn=mse, n: int = 32) -> Stage:
    torch.manual_seed(0)
    x = torch.randn(n, 4)
    return Stage(name="toy", model=model or nn.Linear(4, 1), train_set=TensorDataset(x, x.sum(1)),
                 loss_fn=loss_fn, config=config or {})


def toy_cfg(save_dir: Path, **kw) -> TrainConfig:
    base = dict(batch_size=4, gradient_accumulation_steps=1, lr=0.05, weight_decay=0.0, warmup_steps=1,
                max_steps=2, max_epochs=100, max_grad_norm=10.0, val_freq=1000, checkpoint_freq=1000,
                precision="fp32", save_dir=str(save_dir), seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its PID names no process
    return child.pid


def cli_errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]
