"""Stage A: train the byte-level BPE tokenizer (if absent) and the Thinker LM on a text corpus.

    python train_text.py --config configs/thinker_tiny.json [train.max_steps=100 ...] [--resume]
    torchrun --nproc_per_node=2 train_text.py --config configs/thinker_tiny.json
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import torch

from cli import run_stage
from omni.config import TextStageConfig, to_dict
from omni.data import PackedTokens
from omni.text import evaluate_lm, lm_loss, load_streams, prepare_tokenizer, save_tokenizer
from omni.thinker import ThinkerLM
from omni.training import Stage

log = logging.getLogger("train_text")


def build_stage(cfg: TextStageConfig, rt, overwrite: bool) -> tuple[Stage, TextStageConfig]:
    save_dir = Path(cfg.train.save_dir)
    if overwrite and rt.is_main and not cfg.data.tokenizer and (save_dir / "tokenizer.json").exists():
        (save_dir / "tokenizer.json").unlink()  # --overwrite starts over, tokenizer included
    # rank 0 trains the tokenizer and builds the token caches; the others then read them
    if not rt.is_main:
        rt.barrier()
    tok = prepare_tokenizer(cfg.data, cfg.model.vocab_size, save_dir)
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    if rt.is_main:
        rt.barrier()
    if tok.vocab_size != cfg.model.vocab_size:
        log.info("model.vocab_size %d -> %d (the tokenizer's real size)", cfg.model.vocab_size, tok.vocab_size)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    torch.manual_seed(cfg.train.seed)
    model = ThinkerLM(cfg.model)
    log.info("ThinkerLM: %.2fM parameters", model.num_params() / 1e6)
    train_set = PackedTokens(streams.train, cfg.model.ctx_len, f"{cfg.data.train_file} (train split)")
    val_set = PackedTokens(streams.val, cfg.model.ctx_len, f"{cfg.data.val_file or cfg.data.train_file} (val split)")
    stage = Stage(
        name="thinker", model=model, train_set=train_set, loss_fn=lm_loss, config=to_dict(cfg),
        # val_batches counts global batches, so the metric is the same on 1 or N processes
        evaluate=lambda m: evaluate_lm(m, val_set, cfg.train.batch_size, cfg.train.val_batches * rt.world_size),
        count_items=lambda batch: batch[0].numel(), items_unit="tok", best_metric="val_loss",
        save_extra=lambda d: save_tokenizer(tok, d))
    return stage, cfg


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, "configs/thinker_tiny.json", TextStageConfig,
                     lambda cfg, rt, args: build_stage(cfg, rt, args.overwrite), argv)


if __name__ == "__main__":
    sys.exit(main())
