"""Render loss curves from a checkpoint folder's metrics.jsonl to a PNG.

    python scripts/plot_metrics.py --ckpt checkpoints/thinker_tiny [--out loss.png]
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from omni.cli.common import Parser
from omni.engine.checkpoint import read_metrics


def plot(ckpt_dir: Path, out: Path) -> Path:
    records = read_metrics(ckpt_dir)
    train = [r for r in records if r["event"] == "train"]
    val = [r for r in records if r["event"] == "val"]
    if not train:
        raise SystemExit(f"{ckpt_dir}/metrics.jsonl has no training events yet")
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    val_keys = [k for k in ("val_loss",) if val and k in val[0]]
    for k in val_keys:
        ax.plot([r["step"] for r in val], [r[k] for r in val], "o-", label=k.replace("_", " "))
    ax.set_ylabel("loss (nats)")
    ax.set_title(str(ckpt_dir))
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder holding metrics.jsonl")
    p.add_argument("--out", type=Path, default=None, help="the PNG to write (default: CKPT/loss.png)")
    args = p.parse_args(argv)
    out = plot(args.ckpt, args.out or args.ckpt / "loss.png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
