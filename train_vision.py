"""Stage C: train ViTTiny to match images and captions (CLIP-style InfoNCE) against the frozen Thinker.

    python train_vision.py --config configs/vision_tiny.json [train.max_steps=...] [--resume]
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from cli import run_stage
from omni.config import to_dict
from omni.runtime import Runtime
from omni.training import Stage
from omni.vision import (ClipModel, RetrievalSet, VisionStageConfig, clip_loss, load_frozen_thinker,
                         save_text_side)
from omni.vision_data import VisionDataset, caption_features, collate_pairs, read_manifest

log = logging.getLogger("train_vision")


def build_stage(cfg: VisionStageConfig, rt: Runtime) -> Stage:
    thinker, tok, sha = load_frozen_thinker(cfg.clip.thinker, rt.device)
    train_rows, _ = read_manifest(cfg.data.train_manifest)
    val_rows, _ = read_manifest(cfg.data.val_manifest)
    # the Thinker is frozen: its pooled caption features are computed once, here, not every step
    feats = caption_features(thinker, tok, [r.caption for r in train_rows + val_rows], cfg.clip.max_caption_tokens)
    train_feats, val_feats = feats[:len(train_rows)].cpu(), feats[len(train_rows):].cpu()
    log.info("cached %d caption features (%d-d) from the frozen Thinker %s", len(feats), feats.shape[1],
             cfg.clip.thinker)
    text_dim = thinker.cfg.d_model
    del thinker
    train_set = VisionDataset(train_rows, train_feats, cfg.model.img_size, train=True, flip=cfg.data.flip,
                              max_zoom=cfg.data.max_zoom)
    val_set = RetrievalSet(val_rows, val_feats, cfg.model.img_size, cfg.data.candidates)  # seed 0, as eval_vision
    if rt.is_main:
        skipped = val_set.add_baseline(train_rows)
        log.info("colour-histogram baseline (%d-candidate pools): %s%s", cfg.data.candidates,
                 "  ".join(f"{k} {v:.3f}" for k, v in val_set.baseline.items()),
                 f" (skipped training images: {skipped})" if skipped else "")
    torch.manual_seed(cfg.train.seed)
    model = ClipModel(cfg.model, cfg.clip, text_dim)
    model.set_text_stats(train_feats)
    log.info("ViTTiny: %.3fM parameters (+ %.0fK projection and text head)",
             sum(p.numel() for p in model.vit.parameters()) / 1e6,
             sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vit.")) / 1e3)
    log.info("%s: %d train rows; %s: %d validation images", cfg.data.train_manifest, len(train_set),
             cfg.data.val_manifest, len(val_set.rows))

    def save_extra(d: Path) -> None:
        save_text_side(d, cfg.clip.thinker, sha, tok)

    return Stage(
        name="vision", model=model, train_set=train_set, loss_fn=clip_loss, config=to_dict(cfg),
        collate=collate_pairs, skip_report=train_set.report,
        evaluate=lambda m: val_set.evaluate(m, cfg.train.batch_size),
        count_items=lambda b: float(len(b["images"])), items_unit="img",
        best_metric="i2t_r1", best_max=True, save_extra=save_extra)


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/vision_tiny.json", VisionStageConfig,
                     lambda cfg, rt, args: (build_stage(cfg, rt), cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
