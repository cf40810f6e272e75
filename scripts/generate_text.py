"""Continue a text prompt with a Stage A Thinker checkpoint (KV-cache generation).

    python scripts/generate_text.py --ckpt checkpoints/thinker_tiny --prompt "Shall I compare thee"
"""
from __future__ import annotations

import sys
import time

import torch

from omni.cli.common import Parser, add_device_arg
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import pick_device, pick_inference_dtype
from omni.thinker.stage import load_thinker


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="checkpoints/thinker_tiny", help="Stage A checkpoint folder (train_text.py)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=80, help="longest continuation, in tokens (the "
                   "model's context caps it)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0: greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling: the smallest set of tokens "
                   "holding this much probability; 1: all")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_device_arg(p)
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16, fp16")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    model, tok, cfg = load_thinker(args.ckpt, device)
    model.to(pick_inference_dtype(device, args.dtype))
    eos = tok.special["<|eos|>"]
    # documents were packed as "... <eos> doc <eos>", so a leading EOS means "a document starts"
    ids = torch.tensor([[eos] + tok.encode(args.prompt)], device=device)
    room = cfg.model.ctx_len - ids.shape[1]
    if room <= 0:
        raise SystemExit(f"the prompt is {ids.shape[1]} tokens; the model's context is {cfg.model.ctx_len}")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(ids, min(args.max_new_tokens, room), args.temperature, args.top_k, args.top_p,
                         stop_ids=(eos,), generator=gen)
    dt = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    print(args.prompt + tok.decode([t for t in new if t != eos]))
    print(f"[{len(new)} tokens in {dt:.2f} s, {len(new) / dt:.0f} tokens/s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
