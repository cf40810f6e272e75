"""The main job: build small datasets for every stage, train what exists at demo size, show it works.

    python scripts/demo.py            # about a minute on a 2-core CPU

Today: smoke-test data for every stage (scripts/make_synthetic_datasets.py), then Stage A: the
Thinker learns Shakespeare's sonnets (bundled, public domain), is evaluated on held-out sonnets
against a unigram baseline, and writes a sample. Later stages join this script as they land.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from omni.checkpoint import read_metrics  # noqa: E402
from omni.config import TextStageConfig, load_config  # noqa: E402
from omni.text import load_streams, tokenizer_in, unigram_loss  # noqa: E402

THINKER_CFG = ROOT / "configs" / "thinker_demo.json"


def run(cmd: list[str]) -> str:
    """Run a project command, echoing it; stop the demo with its output if it fails."""
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"demo step failed (exit {r.returncode}): {' '.join(cmd)}")
    return r.stdout


def stage_a(steps: int | None) -> dict[str, float]:
    cfg = load_config(THINKER_CFG, TextStageConfig)
    ckpt = ROOT / cfg.train.save_dir
    extra = [f"train.max_steps={steps}"] if steps else []
    run(["train_text.py", "--config", str(THINKER_CFG.relative_to(ROOT)), "--overwrite", *extra])
    tok = tokenizer_in(ckpt)
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    baseline = unigram_loss(np.asarray(streams.train), np.asarray(streams.val), tok.vocab_size)
    vals = [m for m in read_metrics(ckpt) if m["event"] == "val"]
    best = min(v["val_loss"] for v in vals)
    run(["scripts/evaluate.py", "text", "--ckpt", str(ckpt / "best"), "--file", cfg.data.val_file])
    run(["scripts/generate_text.py", "--ckpt", str(ckpt / "best"), "--prompt", "Shall I compare thee",
         "--max-new-tokens", "60", "--seed", "0"])
    run(["scripts/plot_metrics.py", str(ckpt)])
    return {"unigram_val_loss": baseline, "first_val_loss": vals[0]["val_loss"], "best_val_loss": best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="override Stage A max_steps (a faster smoke run)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    run(["scripts/make_synthetic_datasets.py", "--out", "data"])
    a = stage_a(args.steps)
    learned = a["best_val_loss"] < a["unigram_val_loss"]
    print("\n== μOmni demo summary")
    print(f"Stage A Thinker: held-out loss {a['best_val_loss']:.3f} nats/token (first eval "
          f"{a['first_val_loss']:.3f}; unigram baseline {a['unigram_val_loss']:.3f}) -> "
          f"{'learning: beats the baseline' if learned else 'NOT better than the unigram baseline'}")
    print("checkpoints: checkpoints/demo/thinker (latest), checkpoints/demo/thinker/best (best val)")
    print("loss curve:  checkpoints/demo/thinker/loss.png    metrics: checkpoints/demo/thinker/metrics.jsonl")
    print(f"total time:  {time.perf_counter() - t0:.0f} s")
    (ROOT / "checkpoints" / "demo").mkdir(parents=True, exist_ok=True)
    (ROOT / "checkpoints" / "demo" / "summary.json").write_text(json.dumps(a, indent=2) + "\n")
    return 0 if learned else 1


if __name__ == "__main__":
    sys.exit(main())
