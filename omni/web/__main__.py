"""Chat with μOmni in a browser: type, record or upload speech, upload or paste images; the reply streams
as text and as speech.

    python -m omni.web --ckpt checkpoints/omni_sft_tiny --talker checkpoints/talker_tiny
    omni-web --port 0            # any free port; the URL is printed

Then open the printed URL. The server listens on 127.0.0.1 only unless --host says otherwise; it has no
authentication, and browsers allow the microphone only on https or localhost pages. When the Talker
(--talker) cannot load, the page says that speech is unavailable, and why, and chats in text.
"""
from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from omni.cli.common import add_device_arg, add_vocoder_args, non_negative, positive, setup_logging, vocoder_kwargs
from omni.cli.parser import Parser
from omni.config import ConfigError
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import pick_device
from omni.multimodal.chat import Sampling
from omni.multimodal.stage import load_omni
from omni.speech.synthesis import Synthesizer
from omni.web.media import Limits
from omni.web.server import Demo, create_app

log = logging.getLogger("omni.web")


def parse_args(argv: list[str] | None):
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--ckpt", default="checkpoints/omni_sft_tiny", help="Stage E checkpoint folder (sft_omni.py)")
    p.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder, for speech")
    add_vocoder_args(p)
    add_device_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=non_negative, default=8000, help="0: pick a free port")
    p.add_argument("--temperature", type=float, default=0.0, help="reply sampling temperature; 0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1: all tokens")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    p.add_argument("--seed", type=int, default=None, help="seed replies and speech (default: unseeded)")
    p.add_argument("--max-upload-mb", type=float, default=Limits.upload_bytes / 2**20, help="largest upload")
    p.add_argument("--max-audio-s", type=float, default=Limits.audio_s, help="longest audio clip, in seconds")
    p.add_argument("--max-image-pixels", type=positive, default=Limits.image_pixels,
                   help="largest image, width x height")
    args = p.parse_args(argv)
    try:
        # checked before the model loads: a bad value is a usage error, not a failure mid-reply
        args.sampling = Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    except ValueError as e:
        p.error(f"sampling: {e}")
    if args.max_upload_mb <= 0 or args.max_audio_s <= 0:
        p.error("--max-upload-mb and --max-audio-s must be > 0")
    return args


def load_voice(talker: str, device, vocoder: str) -> tuple[Synthesizer | None, str | None]:
    """The Talker, or (None, why not): the demo then chats in text and the page shows the reason."""
    try:
        return Synthesizer.load(talker, device, **vocoder_kwargs(vocoder)), None
    except (CheckpointError, ConfigError, DataError, OSError, ValueError) as e:
        log.warning("speech unavailable, replies are text only: %s", e)
        return None, str(e)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    device = pick_device(args.device)
    try:
        model, tok, _ = load_omni(args.ckpt, device)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    voice, why = load_voice(args.talker, device, args.vocoder)
    limits = Limits(round(args.max_upload_mb * 2**20), args.max_audio_s, args.max_image_pixels)
    demo = Demo(model, tok, args.sampling, voice, why, limits, args.seed)
    try:
        # bound here rather than by uvicorn so that the port --port 0 picked is known, and printed, first
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host
                                    else socket.AF_INET)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"μOmni web demo: http://{f'[{host}]' if ':' in host else host}:{port}/  "
          f"(speech {'on' if voice else 'unavailable'}; Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(create_app(demo), log_level="info")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
