"""Speech-out benchmarks that print numbers (not tests).

    OMP_NUM_THREADS=1 python lab/bench_tts.py gl [--csv data/audio/production_tts_val.csv] [--n-iter 32]
    python lab/bench_tts.py rtf [--talker checkpoints/talker_tiny] [--repeats 3] [--threads 2]
    python lab/bench_tts.py vocoder [--vocoder checkpoints/vocoder_tiny | --config configs/vocoder_tiny.json]

``gl``: the torch Griffin-Lim (omni/speech/griffinlim.py) against ``librosa.griffinlim`` on the same
STFT magnitude of real speech, at the same iterations and momentum, with the spectral convergence
of both from the same run. Each timing is the best of ``--repeats`` interleaved rounds after a
warm-up call. librosa's FFT is single-threaded: compare with OMP_NUM_THREADS=1.

``rtf``: ``Synthesizer.synthesize`` (text -> Talker -> codec -> Griffin-Lim) on fixed sentences
after one warm-up call: real-time factor = synthesis seconds / audio seconds, split by part.
Intelligibility of the same path: ``scripts/evaluate.py tts``.

``vocoder``: HiFi-GAN generator synthesis speed (RTF) on the mel of real speech, beside the torch
Griffin-Lim on the same mel; a trained checkpoint, or an untrained generator of ``--config`` (speed
does not depend on the weights).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from omni.audio.features import SPEECH_OUT_MEL, LogMel, load_audio
from omni.cli.common import Parser
from omni.config import load_config
from omni.speech.griffinlim import GriffinLim, block_mel_to_wav, spectral_convergence, stft_magnitude
from omni.speech.synthesis import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, Synthesizer
from omni.vocoder.model import Generator, vocode
from omni.vocoder.stage import VocoderStageConfig, load_generator

SENTENCES = ["Hello there.", "Shall I draw the curtain?",
             "The quick brown fox jumps over the lazy dog, and then it runs back into the forest.",
             "Often it has cast him both into the fire and into the water to destroy him."]


def speech_clip(csv_path: Path, seconds: float) -> np.ndarray:
    """The first rows of a ``text,wav`` CSV concatenated to at least ``seconds`` of 16 kHz audio."""
    parts, total = [], 0
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parts.append(load_audio(csv_path.parent / row["wav"]))
            total += len(parts[-1])
            if total >= seconds * 16000:
                break
    return np.concatenate(parts)[: int(seconds * 16000)]


def best_times(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Best wall time of each function over ``repeats`` interleaved rounds, after one warm-up call
    each (librosa/numba and torch first-call costs are not the steady state). Interleaving and the
    minimum make the comparison fair on a machine shared with other jobs."""
    outs = {name: fn() for name, fn in fns.items()}
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, outs


def bench_gl(csv_path: Path, seconds: float, n_iter: int, momentum: float, repeats: int) -> dict[str, float]:
    """Time torch vs librosa Griffin-Lim on one clip's magnitude; print and return the numbers."""
    s = SPEECH_OUT_MEL
    wav = torch.from_numpy(speech_clip(csv_path, seconds))[None]
    mag = stft_magnitude(wav)  # (1, F, T)
    gl = GriffinLim()
    mag_np = mag[0].numpy()
    times, outs = best_times({
        "torch": lambda: gl.griffinlim(mag, n_iter, momentum),
        "librosa": lambda: librosa.griffinlim(
            mag_np, n_iter=n_iter, hop_length=s.hop_length, win_length=s.win_length, n_fft=s.n_fft,
            window="hann", center=True, pad_mode="constant", momentum=momentum, init="random", random_state=0),
    }, repeats)
    (t_torch, y_torch), (t_lib, y_lib) = (times["torch"], outs["torch"]), (times["librosa"], outs["librosa"])
    sc_torch = spectral_convergence(y_torch, mag).item()
    sc_lib = spectral_convergence(torch.from_numpy(y_lib)[None], mag).item()
    sc_zero = spectral_convergence(gl.griffinlim(mag, 0, momentum), mag).item()
    print(f"Griffin-Lim on {seconds:.1f} s of speech from {csv_path} ({mag.shape[-1]} frames), "
          f"n_iter={n_iter}, momentum={momentum}, torch threads={torch.get_num_threads()}")
    print(f"  torch   {t_torch * 1000:8.1f} ms  (RTF {t_torch / seconds:.3f})  spectral convergence {sc_torch:.4f}")
    print(f"  librosa {t_lib * 1000:8.1f} ms  (RTF {t_lib / seconds:.3f})  spectral convergence {sc_lib:.4f}")
    print(f"  speed-up torch / librosa: {t_lib / t_torch:.2f}x   (random phases, 0 iterations: {sc_zero:.4f})")
    return {"torch_s": t_torch, "librosa_s": t_lib, "speedup": t_lib / t_torch, "sc_torch": sc_torch,
            "sc_librosa": sc_lib, "sc_zero_iter": sc_zero}


def bench_rtf(args: argparse.Namespace) -> None:
    synth = Synthesizer.load(args.talker, "cpu", temperature=args.temperature, top_k=args.top_k, gl_iters=args.n_iter)
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


def bench_vocoder(args: argparse.Namespace) -> None:
    if args.vocoder:
        gen, what = load_generator(args.vocoder, torch.device("cpu")), args.vocoder
    else:
        cfg = load_config(args.config, VocoderStageConfig)
        gen, what = Generator(cfg.model).eval(), f"untrained generator of {args.config}"
    mel = LogMel(SPEECH_OUT_MEL)(torch.from_numpy(speech_clip(args.csv, args.seconds))[None])
    # Griffin-Lim block-wise, as the Synthesizer speaks
    times, _ = best_times({"hifigan": lambda: vocode(gen, mel), "griffinlim": lambda: block_mel_to_wav(mel, n_iter=32)},
                          args.repeats)
    n = sum(p.numel() for p in gen.parameters())
    print(f"{args.seconds:.1f} s of speech from {args.csv}, torch threads {torch.get_num_threads()}; {what} "
          f"({n / 1e6:.2f}M params)")
    for name, t in times.items():
        print(f"  {name:<10} {t * 1000:8.1f} ms  RTF {t / args.seconds:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True, help="what to time")
    g = sub.add_parser("gl", help="torch Griffin-Lim vs librosa.griffinlim")
    g.add_argument("--csv", type=Path, default=Path("data/audio/production_tts_val.csv"),
                   help="TTS manifest whose speech is the test clip")
    g.add_argument("--seconds", type=float, default=5.0, help="length of the test clip")
    g.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations")
    g.add_argument("--momentum", type=float, default=0.99, help="Griffin-Lim momentum (fast Griffin-Lim)")
    g.add_argument("--repeats", type=int, default=7, help="timed rounds; the best is reported")
    # --ckpt named the Talker here before every program used --talker for it
    r = sub.add_parser("rtf", help="end-to-end synthesis real-time factor", renamed={"--ckpt": "--talker"})
    r.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder (train_talker.py)")
    r.add_argument("--repeats", type=int, default=3, help="passes over the fixed sentences")
    r.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations")
    r.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="Talker sampling; 0: greedy")
    r.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="Talker sampling; 0: all codes")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    v = sub.add_parser("vocoder", help="HiFi-GAN generator speed beside Griffin-Lim")
    v.add_argument("--vocoder", default="", help="a trained HiFi-GAN checkpoint folder (default: an untrained "
                   "generator of --config; the speed does not depend on the weights)")
    v.add_argument("--config", default="configs/vocoder_tiny.json", help="vocoder config of the untrained generator")
    v.add_argument("--csv", type=Path, default=Path("data/audio/production_tts_val.csv"),
                   help="TTS manifest whose speech is the test clip")
    v.add_argument("--seconds", type=float, default=5.0, help="length of the test clip")
    v.add_argument("--repeats", type=int, default=5, help="timed rounds; the best is reported")
    args = p.parse_args(argv)
    if args.what == "vocoder":
        bench_vocoder(args)
    elif args.what == "gl":
        bench_gl(args.csv, args.seconds, args.n_iter, args.momentum, args.repeats)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        bench_rtf(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
