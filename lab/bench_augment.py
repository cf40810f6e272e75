#!/usr/bin/env python
"""Time Stage B's waveform augmentation (omni/audio/augment.py) on real training batches: prints
milliseconds per batch, asserts nothing.

Batches of ``--batch`` clips drawn (seeded) from the config's training manifest, padded as training
pads them, every effect at the config's probabilities.

  python lab/bench_augment.py                                  # configs/audio_enc_tiny.json, 12 batches
  python lab/bench_augment.py --batches 24 --threads 1
"""
from __future__ import annotations

import random
import sys
import time

import torch

from omni.audio.augment import augment_waveform
from omni.audio.ctc import CharVocab
from omni.audio.stage import AsrDataset, AsrStageConfig, collate_asr
from omni.cli.common import Parser
from omni.config import load_config
from omni.manifest import Manifest


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/audio_enc_tiny.json", help="a Stage B config")
    p.add_argument("--batches", type=int, default=12, help="batches to time")
    p.add_argument("--batch", type=int, default=16, help="clips per batch")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: all usable cores")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, AsrStageConfig)
    ds = AsrDataset(Manifest(cfg.data.train_csv), CharVocab.default(), cfg.data.max_seconds,
                    cfg.model.symbols_per_frame)
    rng = random.Random(0)
    batches = [collate_asr([ds[rng.randrange(len(ds))] for _ in range(args.batch)]) for _ in range(args.batches)]
    batches = [b for b in batches if b is not None]
    torch.manual_seed(0)
    augment_waveform(batches[0]["audio"], batches[0]["audio_lengths"], cfg.model.augment)   # warm-up
    t0 = time.perf_counter()
    for b in batches:
        augment_waveform(b["audio"], b["audio_lengths"], cfg.model.augment)
    ms = (time.perf_counter() - t0) / len(batches) * 1000
    padded = sum(b["audio"].shape[1] for b in batches) / len(batches) / 16000
    print(f"{cfg.data.train_csv}: {len(batches)} batches of {args.batch} clips, {padded:.1f} s padded on average, "
          f"{torch.get_num_threads()} threads: augmentation {ms:.1f} ms a batch ({cfg.model.augment})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
