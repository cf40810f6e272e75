"""Intelligibility of the speech-out paths, scored by pocketsphinx against the text (CER/WER).

    python scripts/eval_tts_paths.py [--codec checkpoints/codec_tiny/best] \
        [--csv data/audio/production_tts_val.csv] [--n 50] [--n-iter 32] [--paths original,griffinlim,codec] \
        [--json out.json]

Paths: original (the CSV's recordings), griffinlim (their log-mel -> Griffin-Lim), codec
(log-mel -> codec -> Griffin-Lim; needs --codec). Also prints codebook usage of the codec on the
same rows.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omni.audio import SPEECH_OUT_MEL, LogMel  # noqa: E402
from omni.codec_stage import load_codec  # noqa: E402
from omni.intelligibility import codec_path, griffinlim_path, original_path, read_rows, report_paths  # noqa: E402
from omni.rvq import usage_stats  # noqa: E402

PATHS = ("original", "griffinlim", "codec")


def codec_usage(codec, rows) -> str:
    """Per-codebook usage fraction and perplexity of the codes of ``rows``' log-mels."""
    logmel = LogMel(SPEECH_OUT_MEL)
    codes = torch.cat([codec.encode(logmel(torch.from_numpy(a)[None]))[0] for _, a in rows])
    usage, perp = usage_stats(codes, codec.codebook_size)
    return "  ".join(f"q{i}: usage {u:.2f} perplexity {p:.1f}" for i, (u, p) in enumerate(zip(usage, perp)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default="data/audio/production_tts_val.csv", help="text,wav CSV (held out)")
    p.add_argument("--codec", default="", help="codec checkpoint folder (for the codec path)")
    p.add_argument("--n", type=int, default=50, help="rows to evaluate")
    p.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations")
    p.add_argument("--paths", default="original,griffinlim,codec", help=f"comma list from {','.join(PATHS)}")
    p.add_argument("--json", default="", help="also write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = [s.strip() for s in args.paths.split(",") if s.strip()]
    if set(names) - set(PATHS):
        p.error(f"unknown --paths {sorted(set(names) - set(PATHS))}; choose from {','.join(PATHS)}")
    if "codec" in names and not args.codec:
        p.error("the codec path needs --codec CKPT_DIR (or drop it from --paths)")
    rows, skipped = read_rows(args.csv, args.n)
    paths = {"original": original_path(), "griffinlim": griffinlim_path(args.n_iter)}
    codec = None
    if "codec" in names:
        codec, _ = load_codec(args.codec, "cpu")
        paths["codec_griffinlim"] = codec_path(codec, args.n_iter)
    chosen = {k: v for k, v in paths.items() if k.split("_")[0] in names}
    report = report_paths(rows, chosen)
    print(f"{args.csv}: {len(rows)} rows (skipped {skipped or 'none'}), Griffin-Lim {args.n_iter} iterations")
    print(f"{'path':<20} {'CER':>6} {'WER':>6} {'synth RTF':>10}")
    for name, r in report.items():
        print(f"{name:<20} {r['cer']:6.3f} {r['wer']:6.3f} {r['synth_s'] / max(r['audio_s'], 1e-9):10.3f}")
        for ref, hyp in r["examples"][:2]:
            print(f"    ref: {ref}\n    hyp: {hyp}")
    if codec is not None:
        print("codec usage on these rows: " + codec_usage(codec, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
