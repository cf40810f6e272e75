"""Continue a text prompt with a Stage A Thinker checkpoint (KV-cache generation).

    python scripts/generate_text.py --ckpt checkpoints/thinker_tiny --prompt "Shall I compare thee"
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omni.checkpoint import CheckpointError  # noqa: E402
from omni.data import DataError  # noqa: E402
from omni.runtime import pick_device, pick_inference_dtype  # noqa: E402
from omni.text import load_thinker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="checkpoints/thinker_tiny")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
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
