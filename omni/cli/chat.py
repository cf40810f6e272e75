"""Chat with μOmni: text, images and audio in; streamed text and (optionally) speech out.

    python infer_chat.py --ckpt checkpoints/omni_sft_tiny                  # interactive
    python infer_chat.py --ckpt ... --image cat.png --text "What is this?"  # one shot
    python infer_chat.py --ckpt ... --audio q.wav --text "" --audio-out reply.wav

In the REPL: /image PATH, /audio PATH (attach to your next message), /ocr PATH (read a line image),
/speak on|off, /reset, /help, /quit. Each turn ends with a latency line: time to first token,
tokens/s, and the real-time factor of the spoken reply.

Ctrl-C while a reply (or its speech, or /ocr) runs cancels just that and keeps the session; the
conversation keeps the reply as far as it got. Ctrl-C at the prompt prints a hint; a second one in a
row, or Ctrl-D, leaves (exit status 0). One shot exits 1 when there is no full answer (the message
is too long for the context, or Ctrl-C cancelled the reply or its speech).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from omni.audio.features import AudioError, save_wav
from omni.cli.common import Parser, add_device_arg, add_vocoder_args, setup_logging, vocoder_kwargs
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import pick_device
from omni.images import BadImage
from omni.multimodal.chat import ChatSession, ReplyInterrupted, Sampling
from omni.multimodal.stage import load_omni
from omni.ocr.stage import load_ocr, read_image
from omni.speech.synthesis import Synthesizer

HELP = """commands:
  /image PATH    attach an image to your next message
  /audio PATH    attach an audio clip (any rate; resampled to 16 kHz) to your next message
  /ocr PATH      read the text of a line image with the OCR model (--ocr-ckpt)
  /speak on|off  speak replies (written to --audio-out, default reply.wav)
  /reset         forget the conversation
  /help          this text
  /quit          leave (Ctrl-D, or Ctrl-C twice at the prompt, works too)
Ctrl-C during a reply stops it (and its speech); the conversation keeps the reply as far as it got
(/reset forgets it) and the session goes on."""
PROMPT_INTERRUPT_HINT = "[Ctrl-C: the conversation is kept; /quit, Ctrl-D or Ctrl-C again leaves]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--ckpt", default="checkpoints/omni_sft_tiny", help="Stage E checkpoint folder (sft_omni.py)")
    p.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder, for speech")
    add_vocoder_args(p)
    p.add_argument("--ocr-ckpt", default="checkpoints/ocr_tiny/best", help="OCR checkpoint for /ocr (train_ocr.py)")
    p.add_argument("--text", default=None, help="one-shot: send this message and exit")
    p.add_argument("--image", default=None, help="one-shot: attach this image")
    p.add_argument("--audio", default=None, help="one-shot: attach this audio clip")
    p.add_argument("--audio-out", default=None, help="speak the reply into this WAV (turns speech on)")
    p.add_argument("--speak", action="store_true", help="REPL: start with speech on")
    p.add_argument("--temperature", type=float, default=0.0, help="reply sampling temperature; 0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens "
                   "holding this much probability; 1: all")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    p.add_argument("--seed", type=int, default=None, help="seed replies and speech for a repeatable session "
                   "(default: unseeded)")
    add_device_arg(p)
    return p.parse_args(argv)


class Chat:
    """The console around a ChatSession: commands, streaming, speech, latency lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = pick_device(args.device)
        model, tok, _ = load_omni(args.ckpt, self.device)
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
        self.session = ChatSession(model, tok, sampling)
        self.speak = bool(args.audio_out) or args.speak
        self.audio_out = Path(args.audio_out or "reply.wav")
        self._voice: Synthesizer | None = None
        self._ocr = None
        self.turns = 0

    def voice(self) -> Synthesizer:
        if self._voice is None:
            self._voice = Synthesizer.load(self.args.talker, self.device, **vocoder_kwargs(self.args.vocoder))
        return self._voice

    def attach(self, kind: str, path: str) -> bool:
        """Queue media; a bad path or file prints why and keeps the session going."""
        try:
            (self.session.attach_image if kind == "image" else self.session.attach_audio)(path)
        except (BadImage, AudioError, DataError, OSError) as e:
            print(f"[could not use {kind} {path}: {e}]", flush=True)
            return False
        print(f"[{kind} attached: {path}]", flush=True)
        return True

    def turn(self, text: str) -> bool:
        """Answer one message: streamed reply, latency line, speech when on. False when there is no
        complete answer: the message was refused, or Ctrl-C cancelled the reply or its speech."""
        print("μOmni: ", end="", flush=True)
        try:
            reply, stats = self.session.ask(text, on_text=lambda s: print(s, end="", flush=True))
        except ValueError as e:
            print(f"\n[{e}]", flush=True)
            return False
        except ReplyInterrupted as e:
            print(f"\n[reply cancelled after {e.stats.new_tokens} tokens; the conversation keeps it as far "
                  "as it got (/reset forgets it)]", flush=True)
            return False
        print(flush=True)
        self.turns += 1
        rate = f"{stats.tokens_per_s:.1f} tok/s" if stats.new_tokens > 1 else "- tok/s"
        line = f"[ttft {stats.ttft_s * 1000:.0f} ms | {stats.new_tokens} tokens, {rate}"
        if self.speak and reply:
            try:
                line += self.say(reply)
            except KeyboardInterrupt:
                # speech is part of the reply: Ctrl-C stops it; save_wav is atomic, so no partial file
                print(line + " | speech cancelled]", flush=True)
                return False
        print(line + "]", flush=True)
        return True

    def say(self, reply: str) -> str:
        t0 = time.perf_counter()
        try:
            wav = self.voice().synthesize(reply, seed=self.args.seed)
        except (CheckpointError, DataError, ValueError) as e:
            return f" | no speech: {e}"
        dt = time.perf_counter() - t0
        if len(wav) == 0:
            return " | nothing speakable in the reply"
        out = self.audio_out if self.turns <= 1 or self.args.audio_out else \
            self.audio_out.with_name(f"{self.audio_out.stem}_{self.turns}{self.audio_out.suffix}")
        save_wav(out, wav)
        secs = len(wav) / 16000
        rtf = dt / max(secs, 1e-9)
        return f" | speech {secs:.1f} s -> {out}, RTF {rtf:.2f} ({self.voice().vocoder_name})"

    def read_text(self, path: str) -> None:
        """/ocr: the OCR model's reading of a line image; a missing model or bad file is a message."""
        try:
            if self._ocr is None:
                self._ocr = load_ocr(self.args.ocr_ckpt, self.device)[:2]
            print(f"[ocr {path}: {read_image(*self._ocr, path)!r}]", flush=True)
        except (BadImage, CheckpointError, DataError, OSError) as e:
            print(f"[could not read text from {path}: {e}]", flush=True)

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/quit", "/exit"):
            return False
        if cmd in ("/image", "/audio") and arg:
            self.attach(cmd[1:], arg)
        elif cmd == "/ocr" and arg:
            self.read_text(arg)
        elif cmd == "/speak" and arg in ("on", "off"):
            self.speak = arg == "on"
            print(f"[speech {'on: replies go to ' + str(self.audio_out) if self.speak else 'off'}]")
        elif cmd == "/reset":
            self.session.reset()
            print("[conversation cleared]")
        else:
            print(HELP)
        return True

    def read_line(self) -> str | None:
        """The next line typed at the prompt; None to leave (Ctrl-D, or Ctrl-C twice in a row)."""
        interrupted = False
        while True:
            try:
                return input("you> ").strip()
            except EOFError:
                print(flush=True)
                return None
            except KeyboardInterrupt:
                # one stray Ctrl-C must not silently end a conversation; a second one means it
                print(flush=True)
                if interrupted:
                    return None
                interrupted = True
                print(PROMPT_INTERRUPT_HINT, flush=True)

    def handle(self, line: str) -> bool:
        """Run one input line (a message or a /command); False means quit."""
        if line.startswith("/"):
            return self.command(line)
        self.turn(line)
        return True

    def repl(self) -> None:
        print(f"μOmni chat ({self.args.ckpt}, {self.device}). /help for commands.", flush=True)
        while (line := self.read_line()) is not None:
            if not line:
                continue
            try:
                if not self.handle(line):
                    return
            except KeyboardInterrupt:
                # Ctrl-C outside a reply's own handling (/ocr loading a model, a second Ctrl-C while the
                # first was being reported): stop that line, keep the session
                print("\n[cancelled]", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    logging.getLogger().setLevel(logging.WARNING)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    try:
        chat = Chat(args)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.text is None and args.image is None and args.audio is None:
        try:
            chat.repl()
        except KeyboardInterrupt:
            # a Ctrl-C the loop cannot catch (during the banner, or while an earlier one is reported)
            print(flush=True)
        return 0
    ok = all(chat.attach(kind, path) for kind, path in (("image", args.image), ("audio", args.audio)) if path)
    if not ok:
        return 2
    return 0 if chat.turn(args.text or "") else 1


if __name__ == "__main__":
    sys.exit(main())
