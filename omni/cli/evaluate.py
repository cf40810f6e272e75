"""Evaluate μOmni checkpoints. One subcommand per stage.

    python scripts/evaluate.py text --ckpt checkpoints/thinker_tiny --file data/text/production_val.txt
    python scripts/evaluate.py asr --ckpt checkpoints/audio_enc_tiny/best --csv data/audio/production_asr_val.csv
    python scripts/evaluate.py asr-tune --ckpt checkpoints/audio_enc_tiny/best --csv ... --n 100
    python scripts/evaluate.py vision --ckpt checkpoints/vision_tiny/best --candidates 100
    python scripts/evaluate.py ocr --ckpt checkpoints/ocr_tiny/best --beam 4
    python scripts/evaluate.py tts --talker checkpoints/talker_tiny --asr-ckpt checkpoints/audio_enc_tiny/best
    python scripts/evaluate.py tts-compare a.json b.json   # two `tts --json` reports of the same rows
    python scripts/evaluate.py talker --talker checkpoints/talker_tiny --csv data/audio/production_tts_val.csv
    python scripts/evaluate.py omni --ckpt checkpoints/omni_sft_tiny/best --talker checkpoints/talker_tiny
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from omni.cli import eval_asr, eval_ocr, eval_omni, eval_talker, eval_tts, eval_vision
from omni.cli.common import Parser, add_device_arg
from omni.data import DataError, PackedTokens, tokenize_corpus
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import pick_device
from omni.thinker.stage import corpus_bytes, evaluate_lm, load_thinker


def eval_text(args: argparse.Namespace) -> int:
    """Perplexity and bits per byte of a Stage A checkpoint on any one-document-per-line file."""
    device = pick_device(args.device)
    model, tok, cfg = load_thinker(args.ckpt, device)
    corpus = tokenize_corpus(args.file, tok, tok.special["<|eos|>"])
    tokens = np.asarray(corpus.tokens)
    ctx = cfg.model.ctx_len
    windows = PackedTokens(tokens, ctx, args.file)
    t0 = time.perf_counter()
    m = evaluate_lm(model, windows, args.batch_size, None)
    dt = time.perf_counter() - t0
    n_bytes = corpus_bytes(args.file)
    # bits per byte: the model's nats over all scored tokens, spread over the bytes they encode
    bpb = m["val_loss"] / math.log(2) * len(tokens) / n_bytes
    print(f"checkpoint   {args.ckpt}  ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)")
    print(f"file         {args.file}: {len(corpus.line_starts) - 1} lines, {corpus.n_skipped} skipped, "
          f"{n_bytes:,} bytes, {len(tokens):,} tokens ({n_bytes / len(tokens):.2f} bytes/token)")
    print(f"scored       {int(m['val_tokens']):,} tokens in {len(windows)} windows of {ctx} ({dt:.1f} s)")
    print(f"loss         {m['val_loss']:.4f} nats/token")
    print(f"perplexity   {m['val_ppl']:.2f}")
    print(f"bits/byte    {bpb:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="task", required=True, help="what to evaluate")
    t = sub.add_parser("text", help="perplexity and bits/byte of the Thinker on a text file")
    t.add_argument("--ckpt", default="checkpoints/thinker_tiny", help="Stage A checkpoint folder (train_text.py)")
    t.add_argument("--file", required=True, help="one document per line, UTF-8")
    t.add_argument("--batch-size", type=int, default=8, help="windows of ctx_len tokens per forward pass")
    add_device_arg(t)
    t.set_defaults(run=eval_text)
    eval_asr.add_parser(sub)
    eval_vision.add_parser(sub)
    eval_tts.add_parser(sub)
    eval_tts.add_compare_parser(sub)
    eval_talker.add_parser(sub)
    eval_ocr.add_parser(sub)
    eval_omni.add_parser(sub)
    args = p.parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
