"""Retrieval evaluation of a Stage C (vision) checkpoint on any image manifest.

    python scripts/evaluate.py vision --ckpt checkpoints/vision_tiny/best \
        --manifest data/images/production_annotations_val.json --candidates 100 --examples 3

Prints image->text and text->image R@1/R@5 overall and per source, chance, and the colour-
histogram nearest-neighbour baseline (through the checkpoint's training manifest), measured in the
same run, plus a few example retrievals. ``add_parser`` registers the same subcommand in
scripts/evaluate.py.
"""
from __future__ import annotations

import argparse
import time

import torch

from omni.cli.common import add_device_arg
from omni.engine.runtime import pick_device
from omni.vision.data import caption_features, read_manifest
from omni.vision.stage import RetrievalSet, load_clip


def _pct(m: dict[str, float], *keys: str) -> str:
    return " ".join(f"{100 * m[k]:5.1f}" if k in m else "    -" for k in keys)


def print_table(val: RetrievalSet, m: dict[str, float]) -> None:
    """One line per source and one overall: R@1 R@5 (%) of the model, the baseline and chance."""
    print(f"  {'source':<10} {'n':>6} {'C':>5} | model i2t R@1 R@5  t2i R@1 R@5 | hist i2t R@1 R@5  t2i R@1 R@5"
          f" | chance R@1 R@5")
    lines = [(name, len(c), c.shape[1], f"{name}/") for name, c in val.cands.items()] if len(val.cands) > 1 else []
    lines.append(("overall", sum(len(c) for c in val.cands.values()), max(c.shape[1] for c in val.cands.values()), ""))
    for name, n, c, pre in lines:
        model = f"{_pct(m, pre + 'i2t_r1', pre + 'i2t_r5')}  {_pct(m, pre + 't2i_r1', pre + 't2i_r5')}"
        hist = f"{_pct(m, 'hist_' + pre + 'i2t_r1', 'hist_' + pre + 'i2t_r5')}  " \
               f"{_pct(m, 'hist_' + pre + 't2i_r1', 'hist_' + pre + 't2i_r5')}"
        ch = _pct(m, "chance_r1", "chance_r5") if not pre else f"{100 / c:5.1f} {min(100.0, 500 / c):5.1f}"
        print(f"  {name:<10} {n:>6} {c:>5} |      {model} |      {hist} |      {ch}")


def print_examples(val: RetrievalSet, sim: torch.Tensor, per_source: int) -> None:
    """The top 3 captions among each example query's candidates, for the first images of each source."""
    for name, c in val.cands.items():
        for q in range(min(per_source, len(c))):
            cand = c[q]
            i = int(cand[0])
            top = sim[i, cand].topk(min(3, len(cand))).indices
            print(f"  [{name}] {val.rows[i].image.name}  true: {val.rows[i].caption}")
            for rank, t in enumerate(top.tolist(), 1):
                j = int(cand[t])
                mark = "*" if val.caption_ids[j] == val.caption_ids[i] else " "
                print(f"     {rank}{mark} {sim[i, j]:.3f}  {val.rows[j].caption}")


def eval_vision(args: argparse.Namespace) -> int:
    """R@1/R@5 of a Stage C checkpoint on a manifest, per source, beside chance and the baseline."""
    device = pick_device(args.device)
    t0 = time.perf_counter()
    model, cfg, thinker, tok = load_clip(args.ckpt, device)
    manifest = args.manifest or cfg.data.val_manifest
    rows, dropped = read_manifest(manifest)
    feats = caption_features(thinker, tok, [r.caption for r in rows], cfg.clip.max_caption_tokens)
    val = RetrievalSet(rows, feats, cfg.model.img_size, args.candidates, args.seed)
    metrics = val.evaluate(model, args.batch_size)
    t_model = time.perf_counter() - t0
    train_manifest = args.train_manifest or cfg.data.train_manifest
    if not args.no_baseline:
        train_rows, _ = read_manifest(train_manifest)
        skipped = val.add_baseline(train_rows)
        metrics.update(val.baseline)
        if skipped:
            print(f"baseline: skipped training images {skipped}")
    n_params = sum(p.numel() for p in model.vit.parameters())
    print(f"checkpoint   {args.ckpt}  (ViTTiny {n_params / 1e6:.3f}M params, Thinker {cfg.clip.thinker})")
    print(f"manifest     {manifest}: {len(val.rows)} images scored, {sum(val.skipped.values())} skipped "
          f"{dict(val.skipped) if val.skipped else ''}".rstrip() + f", {dropped} rows without a caption ({t_model:.1f} s)")
    print(f"candidates   each query vs its match + up to {args.candidates - 1} distractors from its source"
          + ("" if args.no_baseline else f"; baseline: colour-histogram kNN through {train_manifest}"))
    print_table(val, metrics)
    if args.examples:
        print("examples (image -> top-3 captions among its candidates; * = correct)")
        print_examples(val, val.scores(model, args.batch_size), args.examples)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``vision`` subcommand in scripts/evaluate.py."""
    v = subparsers.add_parser("vision", help="image<->caption retrieval R@1/R@5 of the vision encoder (Stage C)")
    v.add_argument("--ckpt", default="checkpoints/vision_tiny/best", help="Stage C checkpoint folder (train_vision.py)")
    v.add_argument("--manifest", default="", help="image manifest (JSON / JSON Lines); default: the "
                   "checkpoint's validation manifest")
    v.add_argument("--train-manifest", default="", help="the baseline's neighbours; default: the checkpoint's")
    v.add_argument("--candidates", type=int, default=100, help="retrieval pool per query: its match and up "
                   "to this many - 1 distractors from its source")
    v.add_argument("--examples", type=int, default=3, help="example retrievals per source")
    v.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    v.add_argument("--seed", type=int, default=0, help="draws the distractors")
    v.add_argument("--no-baseline", action="store_true", help="skip the colour-histogram nearest-neighbour baseline")
    add_device_arg(v)
    v.set_defaults(run=eval_vision)
    return v

