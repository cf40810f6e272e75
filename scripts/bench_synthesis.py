"""Text-to-speech benchmark: intelligibility (pocketsphinx CER/WER of text -> Talker -> codec ->
Griffin-Lim on held-out sentences) and end-to-end real-time factor on this machine.

    python scripts/bench_synthesis.py cer [--ckpt checkpoints/talker_tiny] [--csv data/audio/production_tts_val.csv]
        [--n 50] [--with-codec] [--json out.json]
    python scripts/bench_synthesis.py rtf [--ckpt checkpoints/talker_tiny] [--repeats 3]

``cer`` scores the Talker path (and, with --with-codec, ground-truth mel -> the same codec ->
Griffin-Lim on the same rows, its ceiling). ``rtf`` times ``Synthesizer.synthesize`` on fixed
sentences after one warm-up call: RTF = synthesis seconds / audio seconds, split by part.
Set OMP_NUM_THREADS / --threads to the cores you mean to measure.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni.intelligibility import codec_path, read_rows, report_paths  # noqa: E402
from omni.tts import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, Synthesizer  # noqa: E402

SENTENCES = ["Hello there.", "Shall I draw the curtain?",
             "The quick brown fox jumps over the lazy dog, and then it runs back into the forest.",
             "Often it has cast him both into the fire and into the water to destroy him."]


def bench_cer(args: argparse.Namespace, synth: Synthesizer) -> int:
    rows, skipped = read_rows(args.csv, args.n)
    paths = {"talker_codec_griffinlim": lambda text, audio: synth.synthesize(text, seed=args.seed)}
    if args.with_codec:
        paths = {"codec_griffinlim": codec_path(synth.codec, synth.gl_iters), **paths}
    t0 = time.perf_counter()
    report = report_paths(rows, paths)
    print(f"{args.csv}: {len(rows)} rows (skipped {skipped or 'none'}); ckpt {args.ckpt}; "
          f"temperature {synth.temperature}, top-k {synth.top_k}; Griffin-Lim {synth.gl_iters} iterations; {time.perf_counter() - t0:.0f} s")
    print(f"{'path':<26} {'CER':>6} {'WER':>6} {'synth RTF':>10}")
    for name, r in report.items():
        print(f"{name:<26} {r['cer']:6.3f} {r['wer']:6.3f} {r['synth_s'] / max(r['audio_s'], 1e-9):10.3f}")
        for ref, hyp in r["examples"]:
            print(f"    ref: {ref}\n    hyp: {hyp}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def bench_rtf(args: argparse.Namespace, synth: Synthesizer) -> int:
    synth.synthesize(SENTENCES[0], seed=0)  # warm-up (allocations, filterbank pseudo-inverse)
    totals = {"audio_s": 0.0, "talker_s": 0.0, "codec_s": 0.0, "vocoder_s": 0.0, "synth_s": 0.0}
    for _ in range(args.repeats):
        for text in SENTENCES:
            synth.synthesize(text, seed=0)
            for k in totals:
                totals[k] += synth.last_stats[k]
    a = totals["audio_s"]
    print(f"{len(SENTENCES) * args.repeats} syntheses, {a:.1f} s of audio, torch threads {torch.get_num_threads()}, "
          f"Griffin-Lim {synth.gl_iters} iterations")
    print(f"RTF end to end {totals['synth_s'] / a:.3f}  (talker {totals['talker_s'] / a:.3f}, codec decode "
          f"{totals['codec_s'] / a:.3f}, griffin-lim {totals['vocoder_s'] / a:.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=["cer", "rtf"])
    p.add_argument("--ckpt", default="checkpoints/talker_tiny")
    p.add_argument("--csv", default="data/audio/production_tts_val.csv")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--with-codec", action="store_true", help="cer: also score ground truth -> codec -> Griffin-Lim")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--gl-iters", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    synth = Synthesizer.load(args.ckpt, "cpu", temperature=args.temperature, top_k=args.top_k, gl_iters=args.gl_iters)
    return bench_cer(args, synth) if args.section == "cer" else bench_rtf(args, synth)


if __name__ == "__main__":
    sys.exit(main())
