"""Render training curves from checkpoint folders' metrics.jsonl to one PNG: for each folder, the
training and validation loss, the learning rate, and every other validation metric it logged (CER,
R@1, VQA accuracy, code CE, ...), each against its baseline when the run logged one.

    python scripts/plot_metrics.py --ckpt checkpoints/thinker_tiny [--out curves.png]
    python scripts/plot_metrics.py --ckpt checkpoints/demo/thinker --ckpt checkpoints/demo/vision --out demo.png
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from omni.cli.common import Parser
from omni.engine.checkpoint import read_metrics

# validation keys that are bookkeeping, not a quality metric worth a panel
SKIP = ("val_tokens", "val_items", "val_n", "step", "epoch", "time", "event")
# a metric the run logs as its baseline (measured once, flat) is drawn dashed in its metric's panel
BASELINES = {"val_loss": ("val_unigram_loss",), "val_ce": ("val_unigram_ce",), "i2t_r1": ("chance_r1", "hist_i2t_r1"),
             "t2i_r1": ("chance_r1", "hist_t2i_r1"), "val_vqa_acc": ("val_vqa_prior",),
             "val_mel_l1": ("val_gl_mel_l1",)}


def metric_keys(val: list[dict]) -> list[str]:
    """The validation metrics to draw, in the order first logged: numeric keys other than the loss
    (drawn with the training loss), bookkeeping and baselines."""
    baselines = {b for bs in BASELINES.values() for b in bs}
    keys: list[str] = []
    for r in val:
        for k, v in r.items():
            if (k not in keys and k != "val_loss" and k not in SKIP and k not in baselines
                    and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                keys.append(k)
    return keys


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _draw_metric(ax, val: list[dict], key: str) -> None:
    ax.plot(*_series(val, key), "o-", ms=3, label=key)
    for b in BASELINES.get(key, ()):
        steps, values = _series(val, b)
        if values:
            ax.axhline(values[-1], ls="--", lw=1, color="gray")
            ax.annotate(b, (steps[-1], values[-1]), fontsize=7, color="gray", va="bottom", ha="right")
    ax.set_title(key, fontsize=9)
    ax.grid(alpha=0.3)


def plot(ckpt_dirs: list[Path], out: Path, max_metrics: int = 4) -> Path:
    """One row per folder: loss (train, validation, its baseline), lr, then up to ``max_metrics``
    validation metrics."""
    rows = []
    for d in ckpt_dirs:
        records = read_metrics(d)
        train = [r for r in records if r["event"] == "train"]
        if not train:
            raise SystemExit(f"{d}/metrics.jsonl has no training events yet")
        val = [r for r in records if r["event"] == "val"]
        rows.append((d, train, val, metric_keys(val)[:max_metrics]))
    cols = 2 + max(len(r[3]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 2.6 * len(rows)), squeeze=False)
    for (d, train, val, keys), ax_row in zip(rows, axes):
        ax = ax_row[0]
        ax.plot(*_series(train, "loss"), lw=1, label="train loss")
        if any("val_loss" in r for r in val):
            _draw_metric(ax, val, "val_loss")
        ax.set_title(f"{d.name}: loss (nats)" if len(rows) > 1 else str(d), fontsize=9)
        ax.legend(fontsize=7)
        ax_row[1].plot(*_series(train, "lr"), color="gray")
        ax_row[1].set_title("learning rate", fontsize=9)
        ax_row[1].grid(alpha=0.3)
        for ax, key in zip(ax_row[2:], keys):
            _draw_metric(ax, val, key)
        for ax in ax_row[2 + len(keys):]:
            ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, action="append", required=True,
                   help="checkpoint folder holding metrics.jsonl; repeat it for one row per folder")
    p.add_argument("--out", type=Path, default=None,
                   help="the PNG to write (default: curves.png in the first --ckpt folder)")
    p.add_argument("--max-metrics", type=int, default=4, help="validation metrics drawn per folder, at most")
    args = p.parse_args(argv)
    out = plot(args.ckpt, args.out or args.ckpt[0] / "curves.png", args.max_metrics)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
