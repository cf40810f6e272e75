"""Text to speech with a trained Talker + codec + Griffin-Lim: writes a 16 kHz WAV.

    python scripts/tts.py --text "Hello there." --out hello.wav [--ckpt checkpoints/talker_tiny]
        [--seed 0] [--device cpu] [--temperature 0.6] [--top-k 20] [--gl-iters 32]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cli import add_talker_args, add_vocoder_args  # noqa: E402
from omni.audio import save_wav  # noqa: E402
from omni.checkpoint import CheckpointError  # noqa: E402
from omni.tts import Synthesizer, resolve_vocoder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True, help="output .wav")
    p.add_argument("--ckpt", default="checkpoints/talker_tiny", help="folder written by train_talker.py")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    add_talker_args(p)
    add_vocoder_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    try:
        synth = Synthesizer.load(args.ckpt, args.device, vocoder=resolve_vocoder(args.vocoder, args.vocoder_dir),
                                 vocoder_dir=args.vocoder_dir, temperature=args.temperature, top_k=args.top_k,
                                 gl_iters=args.gl_iters, decoding=args.decoding,
                                 guidance=args.guidance, chunk_chars=args.chunk_chars)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wav = synth.synthesize(args.text, seed=args.seed)
    if len(wav) == 0:
        print("error: nothing to say (the text is empty or has no character the Talker reads)", file=sys.stderr)
        return 1
    save_wav(args.out, wav)
    s = synth.last_stats
    print(f"wrote {args.out}: {s['audio_s']:.2f} s of audio in {s['synth_s']:.2f} s (RTF {s['rtf']:.3f}; "
          f"talker {s['talker_s']:.2f} s, codec {s['codec_s']:.2f} s, {synth.vocoder_name} {s['vocoder_s']:.2f} s, "
          f"{int(s['chunks'])} chunk(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
