"""Text to speech with a trained Talker + codec + Griffin-Lim: writes a 16 kHz WAV.

    python scripts/tts.py --text "Hello there." --out hello.wav [--talker checkpoints/talker_tiny]
        [--seed 0] [--device cpu] [--temperature 0.6] [--top-k 20] [--gl-iters 32]
        [--vocoder auto|griffinlim|checkpoints/vocoder_tiny]
"""
from __future__ import annotations

import logging
import sys

import torch

from omni.audio.features import save_wav
from omni.cli.common import Parser, add_device_arg, add_talker_args, add_vocoder_args, vocoder_kwargs
from omni.engine.checkpoint import CheckpointError
from omni.speech.synthesis import Synthesizer


def main(argv: list[str] | None = None) -> int:
    # --ckpt named the Talker here before every program used --ckpt for its own checkpoint and
    # --talker for the Talker
    p = Parser(description=__doc__.splitlines()[0], renamed={"--ckpt": "--talker"})
    p.add_argument("--text", required=True, help="what to say (English; characters the Talker cannot read are dropped)")
    p.add_argument("--out", required=True, help="the 16 kHz WAV file to write")
    p.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder (train_talker.py)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_device_arg(p)
    p.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations (when it is the vocoder)")
    add_talker_args(p)
    add_vocoder_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    try:
        synth = Synthesizer.load(args.talker, args.device, **vocoder_kwargs(args.vocoder), temperature=args.temperature,
                                 top_k=args.top_k, gl_iters=args.gl_iters, chunk_chars=args.chunk_chars, rate=args.rate)
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
