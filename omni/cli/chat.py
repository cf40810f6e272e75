"""Chat with μOmni: text, images and audio in; streamed text and (optionally) speech out.

    python infer_chat.py --ckpt checkpoints/omni_sft_tiny                  # interactive
    python infer_chat.py --ckpt ... --image cat.png --text "What is this?"  # one shot
    python infer_chat.py --ckpt ... --audio q.wav --text "" --audio-out reply.wav

In the REPL: /image PATH, /audio PATH (attach to your next message), /ocr PATH (read a line image),
/speak on|off, /set NAME VALUE (sampling), /save FILE (transcript as JSON), /reset, /help, /quit.
Each turn ends with a latency line: time to first token, tokens/s, and the real-time factor of the
spoken reply. Notices say when older exchanges were dropped to fit the context, when a reply was cut
at its token limit rather than ending by itself, and when a refused (too long) message leaves its
attachments for the next one. At a terminal the prompt has readline line editing, and the lines
typed are kept in ~/.omni_chat_history (--history FILE, or '' for none). --play plays each spoken
reply with the first of aplay, paplay, afplay, ffplay or play found on PATH.

Ctrl-C while a reply (or its speech, or /ocr) runs cancels just that and keeps the session; the
conversation keeps the reply as far as it got. Ctrl-C at the prompt prints a hint; a second one in a
row, or Ctrl-D, leaves (exit status 0). One shot exits 1 when there is no full answer (the message
is too long for the context, or Ctrl-C cancelled the reply or its speech).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from omni.audio.features import AudioError, save_wav
from omni.cli.common import Parser, add_device_arg, add_vocoder_args, setup_logging, vocoder_kwargs
from omni.cli.console import DEFAULT_HISTORY, LineHistory, Playback, PlaybackError, line_editing
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import pick_device
from omni.images import BadImage
from omni.multimodal.chat import ChatSession, ReplyInterrupted, Sampling, TurnStats
from omni.multimodal.live import LiveTurn, SpeechInterrupted, live_turn
from omni.multimodal.stage import load_omni
from omni.ocr.stage import load_ocr, read_image
from omni.speech.synthesis import Synthesizer

HELP = """commands:
  /image PATH    attach an image to your next message
  /audio PATH    attach an audio clip (any rate; resampled to 16 kHz) to your next message
  /ocr PATH      read the text of a line image with the OCR model (--ocr-ckpt)
  /speak on|off  speak replies (written to --audio-out, default reply.wav; --play plays them)
  /set           show the sampling settings
  /set NAME VAL  change one: temperature (0: greedy), top_p (0-1], top_k (0: all), max_new_tokens
  /save FILE     write the conversation so far as JSON: each turn's role and text, the paths of the
                 images and audio attached to it and of the spoken reply's WAV ("reset" marks /reset)
  /reset         forget the conversation (and anything attached but not yet sent)
  /help          this text
  /quit          leave (Ctrl-D, or Ctrl-C twice at the prompt, works too)
Ctrl-C during a reply stops it (and its speech or playback); the conversation keeps the reply as far
as it got (/reset forgets it) and the session goes on. A message too long for the context is refused;
what was attached to it stays attached for the next message."""
PROMPT_INTERRUPT_HINT = "[Ctrl-C: the conversation is kept; /quit, Ctrl-D or Ctrl-C again leaves]"
SETTINGS = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int}  # what /set changes
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--ckpt", default="checkpoints/omni_sft_tiny", help="Stage E checkpoint folder (sft_omni.py)")
    p.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder, for speech")
    p.add_argument("--rate", type=float, default=1.0,
                   help="speaking rate, 2.0 twice as fast (a Talker with talker.alignment=durations)")
    add_vocoder_args(p)
    p.add_argument("--ocr-ckpt", default="checkpoints/ocr_tiny/best", help="OCR checkpoint for /ocr (train_ocr.py)")
    p.add_argument("--text", default=None, help="one-shot: send this message and exit")
    p.add_argument("--image", default=None, help="one-shot: attach this image")
    p.add_argument("--audio", default=None, help="one-shot: attach this audio clip")
    p.add_argument("--audio-out", default=None, help="speak the reply into this WAV (turns speech on)")
    p.add_argument("--speak", action="store_true", help="REPL: start with speech on")
    p.add_argument("--play", action="store_true", help="play each spoken reply (aplay, paplay, afplay, ffplay "
                   "or play, the first found)")
    p.add_argument("--history", default=None, metavar="FILE", help=f"REPL: keep the lines you type in FILE "
                   f"('' keeps none; default {DEFAULT_HISTORY} when stdin is a terminal)")
    p.add_argument("--temperature", type=float, default=0.0, help="reply sampling temperature; 0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens "
                   "holding this much probability; 1: all")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    p.add_argument("--seed", type=int, default=None, help="seed replies and speech for a repeatable session "
                   "(default: unseeded)")
    add_device_arg(p)
    args = p.parse_args(argv)
    try:
        # checked before the model loads: a bad value is a usage error, not a failure mid-reply
        args.sampling = Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    except ValueError as e:
        p.error(f"sampling: {e}")
    return args


class Chat:
    """The console around a ChatSession: commands, streaming, speech, latency lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = pick_device(args.device)
        model, tok, _ = load_omni(args.ckpt, self.device)
        self.session = ChatSession(model, tok, args.sampling)
        self.speak = bool(args.audio_out) or args.speak
        self.audio_out = Path(args.audio_out or "reply.wav")
        self._voice: Synthesizer | None = None
        self._ocr = None
        self.playback = Playback(args.play)
        self.turns = 0
        self.spoken: Path | None = None    # the WAV say() wrote for the current reply
        self.transcript: list[dict] = []   # every exchange since the start, for /save

    def say(self, text: str = "", end: str = "\n") -> None:
        """The chat's own output: the conversation and its bracketed status lines, for the person at
        the terminal, written at once (diagnostics go to logging). sys.stdout is looked up on each
        call, so whatever stands in for it then (a pipe, a test's capture) gets the text."""
        sys.stdout.write(text + end)
        sys.stdout.flush()

    def voice(self) -> Synthesizer:
        if self._voice is None:
            self._voice = Synthesizer.load(self.args.talker, self.device, **vocoder_kwargs(self.args.vocoder),
                                           rate=self.args.rate)
        return self._voice

    def attach(self, kind: str, path: str) -> bool:
        """Queue media; a bad path or file prints why and keeps the session going."""
        try:
            (self.session.attach_image if kind == "image" else self.session.attach_audio)(path)
        except (BadImage, AudioError, DataError, OSError) as e:
            self.say(f"[could not use {kind} {path}: {e}]")
            return False
        self.say(f"[{kind} attached: {path}]")
        return True

    def turn(self, text: str) -> bool:
        """Answer one message: streamed reply, spoken while it is written when speech is on, then a
        latency line. False when there is no complete answer: the message was refused, or Ctrl-C
        cancelled the reply or its speech."""
        self.say("μOmni: ", end="")
        self.spoken = None
        voice = self.loaded_voice() if self.speak else None
        sink = self.playback.sink() if voice is not None else None
        try:
            t = live_turn(self.session, text, voice, on_text=lambda s: self.say(s, end=""),
                          on_audio=sink.write if sink is not None else None, seed=self.args.seed)
        except ValueError as e:
            self.say(f"\n[{e}]")
            self.still_attached()
            return False
        except ReplyInterrupted as e:
            self.say(f"\n[reply cancelled after {e.stats.new_tokens} tokens; the conversation keeps it as far "
                  "as it got (/reset forgets it)]")
            self.notices(e.stats)
            self.record(text, e.reply, cancelled=True)
            return False
        except SpeechInterrupted as e:
            self.say(f"\n[ttft {e.stats.ttft_s * 1000:.0f} ms | {e.stats.new_tokens} tokens | speech cancelled]")
            self.notices(e.stats)
            self.record(text, e.reply)
            return False
        except PlaybackError as e:
            self.say(f"\n[{e}; --play is off for this session]")
            self.playback.off()
            return False
        finally:
            if sink is not None and sys.exc_info()[0] is not None:
                sink.close(wait=False)   # the reply was cancelled: so is what is left to play
        if sink is not None:
            self.playback.finish(sink)
        self.say()
        self.turns += 1
        self.notices(t.stats)
        said = self.record(text, t.reply)
        rate = f"{t.stats.tokens_per_s:.1f} tok/s" if t.stats.new_tokens > 1 else "- tok/s"
        line = f"[ttft {t.stats.ttft_s * 1000:.0f} ms | {t.stats.new_tokens} tokens, {rate}"
        if voice is not None and t.reply:
            line += self.said(t)
        self.say(line + "]")
        if self.spoken is not None:
            said["speech"] = os.path.abspath(self.spoken)
            if sink is None and self.playback.player:
                self.playback.play(self.spoken)   # a player that cannot stream plays the whole reply now
        return True

    def loaded_voice(self) -> Synthesizer | None:
        """The Synthesizer, loaded on first use; a missing or broken Talker is said once per turn and
        the reply is text only."""
        try:
            return self.voice()
        except (CheckpointError, DataError, OSError) as e:
            self.say(f"[no speech: {e}]\nμOmni: ", end="")
            return None

    def notices(self, stats: TurnStats) -> None:
        """What the reply itself does not show: older exchanges dropped to fit, a reply cut short."""
        if stats.trimmed:
            what = "oldest exchange no longer fits" if stats.trimmed == 1 else \
                f"{stats.trimmed} oldest exchanges no longer fit"
            self.say(f"[history trimmed: the {what} the context]")
        if stats.hit_limit and stats.max_tokens == self.session.sampling.max_new_tokens:
            self.say(f"[reply cut at the {stats.max_tokens}-token limit; /set max_new_tokens N for longer replies]")
        elif stats.hit_limit:
            self.say(f"[reply cut at {stats.max_tokens} tokens: the model's {self.session.model.thinker.cfg.ctx_len}"
                  "-position context is full]")

    def still_attached(self) -> None:
        """After a refused message: say which attachments wait for the next one."""
        counts = Counter(kind for kind, _ in self.session.pending_sources)
        if not counts:
            return
        names = {"image": ("image", "images"), "audio": ("audio clip", "audio clips")}
        what = " and the ".join(names[k][0] if n == 1 else f"{n} {names[k][1]}" for k, n in counts.items())
        one = sum(counts.values()) == 1
        self.say(f"[the {what} {'stays' if one else 'stay'} attached for your next message "
              f"(/reset drops {'it' if one else 'them'})]")

    def record(self, text: str, reply: str, cancelled: bool = False) -> dict:
        """Add the exchange ask just made to the transcript (/save); returns the reply's entry."""
        sources = self.session.history[-2].sources  # ask always ends the history with this user message + reply
        self.transcript.append({"role": "user", "text": text,
                                "images": [os.path.abspath(p) for kind, p in sources if kind == "image"],
                                "audio": [os.path.abspath(p) for kind, p in sources if kind == "audio"]})
        self.transcript.append({"role": "assistant", "text": reply, "speech": None, "cancelled": cancelled})
        return self.transcript[-1]

    def said(self, t: LiveTurn) -> str:
        """Write the spoken reply to its WAV; the latency line's speech part."""
        if t.audio is None or len(t.audio) == 0:
            return " | nothing speakable in the reply"
        out = self.audio_out if self.turns <= 1 or self.args.audio_out else \
            self.audio_out.with_name(f"{self.audio_out.stem}_{self.turns}{self.audio_out.suffix}")
        save_wav(out, t.audio)
        self.spoken = out  # turn() plays it (--play without a streaming player) and names it in the transcript
        return (f" | first audio {t.first_audio_s * 1000:.0f} ms | speech {len(t.audio) / 16000:.1f} s -> {out}, "
                f"RTF {t.speech['rtf']:.2f} ({self.voice().vocoder_name})")

    def read_text(self, path: str) -> None:
        """/ocr: the OCR model's reading of a line image; a missing model or bad file is a message."""
        try:
            if self._ocr is None:
                self._ocr = load_ocr(self.args.ocr_ckpt, self.device)[:2]
            self.say(f"[ocr {path}: {read_image(*self._ocr, path)!r}]")
        except (BadImage, CheckpointError, DataError, OSError) as e:
            self.say(f"[could not read text from {path}: {e}]")

    def set_sampling(self, arg: str) -> None:
        """/set: show the sampling settings, or change one (validated by Sampling)."""
        s = self.session.sampling
        if not arg:
            now = " | ".join(f"{name} {getattr(s, name)}" for name in SETTINGS)
            self.say(f"[{now}; /set NAME VALUE changes one]")
            return
        name, _, value = arg.partition(" ")
        value = value.strip()
        if name not in SETTINGS:
            near = difflib.get_close_matches(name, SETTINGS, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            self.say(f"[/set: no setting {name!r}{hint}; one of {', '.join(SETTINGS)}]")
            return
        try:
            parsed = SETTINGS[name](value)
        except ValueError:
            kind = "number" if SETTINGS[name] is float else "whole number"
            self.say(f"[/set {name} wants a {kind}, not {value!r}; it stays {getattr(s, name)}]")
            return
        try:
            new = dataclasses.replace(s, **{name: parsed})  # Sampling checks the range
        except ValueError as e:
            self.say(f"[/set {name}: {e}; it stays {getattr(s, name)}]")
            return
        self.session.sampling = new
        ctx = self.session.model.thinker.cfg.ctx_len
        room = f" (replies are also capped by the room left in the {ctx}-position context)" \
            if name == "max_new_tokens" and new.max_new_tokens > ctx else ""
        self.say(f"[{name} = {getattr(new, name)}{room}]")

    def save(self, path: str) -> None:
        """/save: the transcript as JSON; a path that cannot be written is a message, not the end."""
        out = Path(path).expanduser()
        doc = {"ckpt": os.path.abspath(self.args.ckpt), "turns": self.transcript}
        try:
            out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            self.say(f"[could not save the conversation to {out}: {e}]")
            return
        self.say(f"[saved {sum(t['role'] != 'reset' for t in self.transcript)} turns to {out}]")

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
            self.say(f"[speech {'on: replies go to ' + str(self.audio_out) if self.speak else 'off'}]")
        elif cmd == "/set":
            self.set_sampling(arg)
        elif cmd == "/save" and arg:
            self.save(arg)
        elif cmd == "/reset":
            self.session.reset()
            self.transcript.append({"role": "reset"})
            self.say("[conversation cleared]")
        else:
            self.say(HELP)
        return True

    def read_line(self) -> str | None:
        """The next line typed at the prompt; None to leave (Ctrl-D, or Ctrl-C twice in a row)."""
        interrupted = False
        while True:
            try:
                return input("you> ").strip()
            except EOFError:
                self.say()
                return None
            except KeyboardInterrupt:
                # one stray Ctrl-C must not silently end a conversation; a second one means it
                self.say()
                if interrupted:
                    return None
                interrupted = True
                self.say(PROMPT_INTERRUPT_HINT)

    def handle(self, line: str) -> bool:
        """Run one input line (a message or a /command); False means quit."""
        if line.startswith("/"):
            return self.command(line)
        self.turn(line)
        return True

    def history_path(self) -> Path | None:
        """--history, or by default DEFAULT_HISTORY when a person types at a terminal: lines piped in
        by a script do not belong in that person's history."""
        if self.args.history is None:
            return Path(DEFAULT_HISTORY).expanduser() if sys.stdin.isatty() else None
        return Path(self.args.history).expanduser() if self.args.history else None

    def repl(self) -> None:
        history = LineHistory(self.history_path(), line_editing())
        try:
            self.say(f"μOmni chat ({self.args.ckpt}, {self.device}). /help for commands.")
            while (line := self.read_line()) is not None:
                if not line:
                    continue
                history.add(line)
                try:
                    if not self.handle(line):
                        return
                except KeyboardInterrupt:
                    # Ctrl-C outside a reply's own handling (/ocr loading a model, a second Ctrl-C while the
                    # first was being reported): stop that line, keep the session
                    self.say("\n[cancelled]")
        finally:
            history.save()


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
