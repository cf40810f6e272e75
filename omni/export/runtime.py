"""μOmni on ONNX Runtime, without PyTorch: text, image and audio in; text and speech out.

    python -m omni.export.runtime EXPORT_DIR --text "What is in this picture?" --image cat.png
    python -m omni.export.runtime EXPORT_DIR --audio q.wav --text "Transcribe the audio." --audio-out reply.wav

EXPORT_DIR is what ``omni-export`` (scripts/export.py) wrote. This module imports only
onnxruntime, numpy, tokenizers, soundfile and Pillow (plus omni.export.dsp, numpy only): it runs on
a machine without torch. It ports what chat needs from the PyTorch code, step for step: the chat
template (omni/multimodal/template.py), eval image preprocessing (omni/images.py), the encoder
log-mel (omni/audio/features.py), ``generate_reply`` (prefill, then one-token decode steps over an
explicit KV cache), sampling (temperature / top-k / top-p, in numpy), the Talker's generation loop
with its depth chain (omni/talker/model.py), and streaming speech as chat speaks (the reply cut into
pieces as it is written, the codec decoder and HiFi-GAN run in chunks with their receptive radius of
context, block-wise Griffin-Lim in omni/export/dsp.py; omni/speech/streaming.py describes the
design). omni/export/parity.py checks each port against PyTorch when exporting.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
from tokenizers import Tokenizer as HFTokenizer

from omni.cli.parser import Parser
from omni.export.dsp import log_mel
from omni.export.ports import (
    AUDIO,
    IMAGE,
    SAMPLE_RATE,
    TEXT,
    RunError,
    Sampling,
    Turn,
    build_sequence,
    load_audio,
    load_image,
    sample_next,
)
from omni.export.voice import OnnxVoice, live_turn
from omni.talker.text import TextVocab


# ---------------------------------------------------------------- the model
class OnnxOmni:
    """The exported graphs of one folder, with the loops around them."""

    def __init__(self, folder: str | Path, threads: int = 0, verify: bool = False) -> None:
        self.dir = Path(folder)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise RunError(f"{self.dir}: no config.json; not a folder written by omni-export "
                                "(python scripts/export.py --ckpt ... --out DIR)")
        self.cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if verify:
            self.verify()
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = threads
        self.options.log_severity_level = 3
        # idle ONNX Runtime workers otherwise spin between runs, and on a few cores they take the CPU from
        # the numpy work between graph calls (Griffin-Lim, sampling), which then runs several times slower
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict[str, ort.InferenceSession] = {}
        tok = HFTokenizer.from_file(str(self.dir / "tokenizer.json"))
        tok.encode_special_tokens = True
        self.tok = tok
        self.special: dict[str, int] = self.cfg["special"]
        fe = np.load(self.dir / "frontend.npz", allow_pickle=False)
        self.frontend = {k: fe[k] for k in fe.files}
        self.th = self.cfg["thinker"]
        speech = self.cfg.get("speech")
        self.vocab = TextVocab.load(self.dir / speech["text_vocab"]) if speech else None
        self._voice: OnnxVoice | None = None

    @property
    def voice(self) -> OnnxVoice:
        """The speech half: Talker, codec and vocoder (omni/export/voice.py)."""
        if self._voice is None:
            if not self.cfg.get("speech"):
                raise RunError(f"{self.dir}: exported without a Talker (--talker): no speech out")
            self._voice = OnnxVoice(self)
        return self._voice

    # ------------------------------------------------ plumbing
    def verify(self) -> None:
        """Check every file against manifest.json's sha256 (raises on the first mismatch)."""
        manifest = json.loads((self.dir / "manifest.json").read_text(encoding="utf-8"))
        for name, meta in manifest["files"].items():
            h = hashlib.sha256()
            with open(self.dir / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != meta["sha256"]:
                raise RunError(f"{self.dir / name}: sha256 differs from manifest.json; copy the export again")

    def session(self, name: str) -> ort.InferenceSession:
        if name not in self._sessions:
            path = self.dir / f"{name}.onnx"
            if not path.is_file():
                raise RunError(f"{path} is missing: this export has no {name} graph")
            self._sessions[name] = ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
        return self._sessions[name]

    def run(self, name: str, **feeds) -> list[np.ndarray]:
        return self.session(name).run(None, feeds)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------ media
    def image_tensor(self, path: str | Path) -> np.ndarray:
        v = self.cfg["vision"]
        return load_image(path, v["img_size"], v["mean"], v["std"], v["max_side"])

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) -> (N, slots, D)."""
        return self.run("vision_encoder", images=np.ascontiguousarray(images, dtype=np.float32))[0]

    def audio_mel(self, wav: np.ndarray) -> np.ndarray:
        a = self.cfg["audio"]
        return log_mel(wav, self.frontend["encoder_fb"], self.frontend["encoder_window"], a["n_fft"], a["hop"])

    def audio_features(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) at 16 kHz -> (audio_slots, D)."""
        return self.run("audio_encoder", mel=self.audio_mel(wav)[None])[0][0]

    def audio_slots(self, n_samples: int) -> int:
        frames = n_samples // self.cfg["audio"]["hop"] + 1
        for _ in range(3):
            frames = (frames + 1) // 2
        return frames

    # ------------------------------------------------ the Thinker
    def inputs(self, ids: list[int], kinds: list[int], image_feats: list[np.ndarray],
               audio_feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids, kinds -> (ids (1,T), media (1,T,D), mask (1,T)); media slots filled in order
        (OmniModel.embed)."""
        kinds_a = np.asarray(kinds)
        media = np.zeros((1, len(ids), self.th["d_model"]), dtype=np.float32)
        for kind, feats in ((IMAGE, image_feats), (AUDIO, audio_feats)):
            where = np.flatnonzero(kinds_a == kind)
            if not len(where):
                continue
            f = np.concatenate([x.reshape(-1, self.th["d_model"]) for x in feats]) if feats else np.zeros((0,))
            if f.shape[0] != len(where):
                raise RunError(f"{len(where)} {'image' if kind == IMAGE else 'audio'} slots but "
                                    f"{f.shape[0]} encoder states: sequence and media disagree")
            media[0, where] = f
        return np.asarray([ids], dtype=np.int64), media, (kinds_a != TEXT)[None]

    def generate(self, ids: np.ndarray, media: np.ndarray, mask: np.ndarray, max_new_tokens: int,
                 stop_ids: tuple[int, ...], sampling: Sampling, rng: np.random.Generator,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """omni.multimodal.model.generate_reply: prefill, then one token per decode step."""
        T = ids.shape[1]
        max_new_tokens = min(max_new_tokens, self.th["ctx_len"] - T)
        if max_new_tokens <= 0:
            raise RunError(f"prompt of {T} positions fills the context ({self.th['ctx_len']})")
        logits, k, v = self.run("thinker_prefill", ids=ids, media=media, media_mask=mask)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = sample_next(logits[0], sampling.temperature, sampling.top_k, sampling.top_p, rng)
            if token in stop_ids:
                break
            out.append(token)
            if on_token is not None:
                on_token(token)
            if len(out) == max_new_tokens:
                break
            logits, k, v = self.run("thinker_decode", ids=np.asarray([[token]], dtype=np.int64), past_k=k, past_v=v)
        return out

# ---------------------------------------------------------------- a chat session
@dataclass
class _Entry:
    turn: Turn
    images: list[np.ndarray]          # projected features, (slots, D) each
    clips: list[np.ndarray]


class OnnxChat:
    """Multi-turn chat over OnnxOmni (omni.multimodal.chat.ChatSession without torch)."""

    def __init__(self, model: OnnxOmni, sampling: Sampling | None = None, system: str | None = None) -> None:
        self.model, self.sampling = model, sampling or Sampling()
        self.system = system if system is not None else model.cfg["system_prompt"]
        self.history: list[_Entry] = []
        self.pending_images: list[np.ndarray] = []
        self.pending_clips: list[np.ndarray] = []
        self.rng = np.random.default_rng(self.sampling.seed)

    def reset(self) -> None:
        self.history, self.pending_images, self.pending_clips = [], [], []

    def attach_image(self, path: str | Path) -> None:
        self.pending_images.append(self.model.image_features(self.model.image_tensor(path)[None])[0])

    def attach_audio(self, path: str | Path) -> None:
        self.pending_clips.append(self.model.audio_features(load_audio(path)))

    def _prompt(self, entries: list[_Entry]) -> tuple[list[int], list[int]]:
        return build_sequence(self.model.encode, self.model.special, [e.turn for e in entries], self.system)

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> tuple[str, dict[str, float]]:
        t0 = time.perf_counter()
        media = [(IMAGE, f.shape[0]) for f in self.pending_images] + [(AUDIO, f.shape[0]) for f in self.pending_clips]
        entries = self.history + [_Entry(Turn("user", text, media), self.pending_images, self.pending_clips)]
        self.pending_images, self.pending_clips = [], []
        ctx = self.model.th["ctx_len"]
        room = ctx - min(16, self.sampling.max_new_tokens)
        ids, kinds = self._prompt(entries)
        while len(ids) > room and len(entries) > 1:
            entries = entries[2:] if entries[0].turn.role == "user" and len(entries) > 2 else entries[1:]
            ids, kinds = self._prompt(entries)
        if len(ids) > room:
            raise RunError(f"this message needs {len(ids)} positions; the model's context is {ctx}: "
                                "send shorter audio or text")
        x = self.model.inputs(ids, kinds, [f for e in entries for f in e.images],
                              [f for e in entries for f in e.clips])
        out: list[int] = []
        first = [0.0]
        shown = [""]

        def on_token(token: int) -> None:
            if not out:
                first[0] = time.perf_counter() - t0
            out.append(token)
            if on_text is not None:
                now = self.model.decode(out)
                if not now.endswith("\ufffd") and len(now) > len(shown[0]):
                    on_text(now[len(shown[0]):])
                    shown[0] = now

        stop = (self.model.special["<|end|>"], self.model.special["<|eos|>"])
        self.model.generate(*x, self.sampling.max_new_tokens, stop, self.sampling, self.rng, on_token)
        reply = self.model.decode(out).strip()
        self.history = entries + [_Entry(Turn("assistant", reply), [], [])]
        total = time.perf_counter() - t0
        return reply, {"prompt_positions": len(ids), "new_tokens": len(out),
                       "ttft_s": first[0] if out else total, "total_s": total}


def save_wav(path: str | Path, wav: np.ndarray) -> None:
    sf.write(str(path), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m omni.export.runtime", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("dir", help="the folder omni-export wrote")
    p.add_argument("--text", required=True, help="the user message")
    p.add_argument("--image", action="append", default=[], help="attach an image (repeatable)")
    p.add_argument("--audio", action="append", default=[], help="attach an audio clip (repeatable)")
    p.add_argument("--audio-out", default=None, help="speak the reply into this WAV")
    p.add_argument("--temperature", type=float, default=0.0, help="reply sampling temperature; 0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0: all")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens "
                   "whose probability reaches p; 1: all")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    p.add_argument("--seed", type=int, default=None, help="seed sampling and speech for a repeatable answer")
    p.add_argument("--vocoder", choices=("griffinlim", "hifigan"), default=None,
                   help="speech-out vocoder (default: what the export chose)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 against manifest.json first")
    args = p.parse_args(argv)
    try:
        model = OnnxOmni(args.dir, args.threads, args.verify)
        if args.audio_out and not model.cfg.get("speech"):
            raise RunError(f"{args.dir}: exported without a Talker (--talker): no speech out")
        chat = OnnxChat(model, Sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed))
        for path in args.image:
            chat.attach_image(path)
        for path in args.audio:
            chat.attach_audio(path)
        def show(delta: str) -> None:
            print(delta, end="", flush=True)

        print("μOmni: ", end="", flush=True)
        if args.audio_out:
            utt = model.voice.start(args.seed, vocoder=args.vocoder)
            _, stats, audio = live_turn(chat, args.text, utt, on_text=show)
        else:
            utt, audio = None, []
            _, stats = chat.ask(args.text, on_text=show)
        print(flush=True)
        line = f"[ttft {stats['ttft_s'] * 1000:.0f} ms | {stats['new_tokens']} tokens"
        if utt is not None and audio:
            wav = np.concatenate(audio)
            save_wav(args.audio_out, wav)
            line += (f" | first audio {utt.first_audio_s * 1000:.0f} ms | speech {len(wav) / SAMPLE_RATE:.1f} s -> "
                     f"{args.audio_out}")
        elif utt is not None:
            line += " | nothing speakable in the reply"
        print(line + "]", flush=True)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
