"""Choose the LM weight and length bonus of Stage B's beam search on a slice of a manifest.

    python scripts/tune_ctc_lm.py --ckpt checkpoints/audio_enc_tiny/best \
        --csv data/audio/production_asr_val.csv --max-items 100 \
        --lm-weight 0.3 0.5 0.8 1.0 --length-bonus 0.5 1.0 1.5 2.0

Runs the model once over the rows, builds the character LM as ``evaluate.py asr --lm`` does (the
checkpoint's training transcripts unless ``--lm-text``), then decodes the stored log-probabilities
with every pair of settings and prints a CER/WER table, greedy CTC first. Score the chosen pair on
other rows (``evaluate.py asr --lm --skip N``) so the reported number is not the tuned one.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.asr import AsrDataset, Manifest, load_asr, resolve_manifest  # noqa: E402
from omni.checkpoint import CheckpointError  # noqa: E402
from omni.ctc import error_rates  # noqa: E402
from omni.ctc_lm import beam_decode  # noqa: E402
from omni.data import DataError  # noqa: E402
from omni.runtime import pick_device  # noqa: E402
from scripts.eval_asr import greedy_pass, non_negative, positive, selected_rows, train_lm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="checkpoints/audio_enc_tiny/best")
    p.add_argument("--csv", required=True)
    p.add_argument("--skip", type=non_negative, default=0)
    p.add_argument("--max-items", type=positive, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lm-text", default="")
    p.add_argument("--lm-order", type=int, default=6)
    p.add_argument("--beam", type=int, default=16)
    p.add_argument("--lm-weight", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.0])
    p.add_argument("--length-bonus", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    model, vocab, cfg = load_asr(args.ckpt, pick_device(args.device))
    manifest = Manifest(resolve_manifest(args.csv, "val"))
    dataset = AsrDataset(manifest, vocab, cfg.data.max_seconds, cfg.model.symbols_per_frame)
    rows = selected_rows(args, manifest)
    metrics, results, stored = greedy_pass(model, dataset, vocab, args.batch_size, rows)
    refs = [r for r, _, _ in results]
    source, _, lm = train_lm(args, cfg.data.train_csv, vocab, refs)
    print(f"{len(refs)} rows ({rows.start}-{rows.stop - 1}) of {manifest.path}; LM order {args.lm_order} from {source}")
    print(f"greedy                           CER {metrics['val_cer']:.4f}  WER {metrics['val_wer']:.4f}")
    best = None
    for w, b in itertools.product(args.lm_weight, args.length_bonus):
        t0 = time.perf_counter()
        hyps = [h for lp, n in stored for h in beam_decode(lp, n, vocab, lm, args.beam, w, b)]
        r = error_rates(refs, hyps)
        print(f"lm weight {w:<5} length bonus {b:<5} CER {r['cer']:.4f}  WER {r['wer']:.4f}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if best is None or r["cer"] < best[0]:
            best = (r["cer"], w, b)
    print(f"best: --lm-weight {best[1]} --length-bonus {best[2]} (CER {best[0]:.4f} on these rows)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
