"""NumPy ports of the PyTorch-side pieces the torch-free runtime (omni/export/runtime.py) needs:
sampling (temperature / top-k / top-p), the chat template (omni/multimodal/template.py), the Talker's
character vocabulary, and media loading with eval image preprocessing (omni/images.py) and audio
loading (omni/audio/features.py). omni/export/parity.py checks each against PyTorch. Imports only
numpy, soundfile and Pillow."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from omni.export.dsp import resample

SAMPLE_RATE = 16000


TEXT, IMAGE, AUDIO = 0, 1, 2


MEDIA_MARKERS = {IMAGE: ("<|image_start|>", "<|image_end|>"), AUDIO: ("<|audio_start|>", "<|audio_end|>")}


class RunError(RuntimeError):
    """A bad export folder or input file; the message names it and says what to do."""


# ---------------------------------------------------------------- sampling (numpy)
@dataclass
class Sampling:
    temperature: float = 0.0        # 0: greedy
    top_k: int = 0                  # 0: all tokens
    top_p: float = 1.0              # 1: no nucleus cut
    max_new_tokens: int = 64
    seed: int | None = None


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sample_next(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                rng: np.random.Generator) -> int:
    """logits (V,) -> a token id; as omni.thinker.model.sample_next (temperature 0: argmax)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float32) / np.float32(temperature)
    if top_k > 0:
        kth = np.partition(logits, -min(top_k, logits.size))[-min(top_k, logits.size)]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(-logits, kind="stable")
        ranked = logits[order]
        probs = softmax(ranked)
        ranked = np.where(np.cumsum(probs) - probs >= top_p, -np.inf, ranked)
        logits = np.full_like(logits, -np.inf)
        logits[order] = ranked
    return int(rng.choice(logits.size, p=softmax(logits)))


def sample_codes(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> np.ndarray:
    """logits (..., K) -> ids (...): argmax for temperature 0, else top-k sampling per codebook."""
    if temperature <= 0:
        return logits.argmax(-1)
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float32) / np.float32(temperature)
    if top_k > 0:
        k = min(top_k, flat.shape[-1])
        kth = np.partition(flat, -k, axis=-1)[:, -k:-k + 1]
        flat = np.where(flat < kth, -np.inf, flat)
    probs = softmax(flat)
    ids = np.array([rng.choice(p.size, p=p) for p in probs])
    return ids.reshape(logits.shape[:-1])


# ---------------------------------------------------------------- text: chat template, Talker text
@dataclass
class Turn:
    role: str
    text: str
    media: list[tuple[int, int]] = field(default_factory=list)   # (kind, n_slots), before the text


def build_sequence(encode: Callable[[str], list[int]], sp: dict[str, int], turns: list[Turn], system: str,
                   generation_prompt: bool = True) -> tuple[list[int], list[int]]:
    """omni.multimodal.template.build_sequence -> (ids, kinds)."""
    ids, kinds = [], []

    def add(new: list[int], kind: int = TEXT) -> None:
        ids.extend(new)
        kinds.extend([kind] * len(new))

    add([sp["<|bos|>"], sp["<|system|>"]] + encode(system) + [sp["<|end|>"]])
    for turn in turns:
        add([sp[f"<|{turn.role}|>"]])
        for kind, n in turn.media:
            start, end = MEDIA_MARKERS[kind]
            add([sp[start]])
            add([sp["<|pad|>"]] * n, kind)
            add([sp[end]])
        add(encode(turn.text) + [sp["<|end|>"]])
    if generation_prompt:
        add([sp["<|assistant|>"]])
    return ids, kinds


# ---------------------------------------------------------------- media loading
def load_audio(path: str | Path) -> np.ndarray:
    """Any file soundfile reads -> (samples,) float32 mono at 16 kHz (omni.audio.features.load_audio)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such audio file")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types for undecodable files
        raise RunError(f"{path}: cannot decode audio ({e})") from e
    if audio.shape[0] == 0 or not np.isfinite(audio).all() or not audio.any():
        raise RunError(f"{path}: empty, non-finite or silent audio")
    mono = audio.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(resample(mono, sr, SAMPLE_RATE), dtype=np.float32)


def _to_rgb(img: Image.Image, max_side: int) -> Image.Image:
    """omni.images.to_rgb: palette/alpha/greyscale/16-bit -> RGB on white, long side <= max_side."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) * (255.0 / span) if span > 0 else np.zeros_like(a)
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def load_image(path: str | Path, img_size: int, mean: list[float], std: list[float], max_side: int = 256
               ) -> np.ndarray:
    """An image file -> normalised (3, img_size, img_size) float32 (omni.images.load_image_tensor)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such image file")
    max_side = max(max_side, img_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (max_side, max_side))
                img.load()
                img = _to_rgb(img, max_side)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise RunError(f"{path}: not a usable image ({e})") from e
    w, h = img.size
    scale = img_size / min(w, h)
    size = (max(img_size, round(w * scale)), max(img_size, round(h * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    x0, y0 = (img.size[0] - img_size) // 2, (img.size[1] - img_size) // 2
    arr = np.asarray(img.crop((x0, y0, x0 + img_size, y0 + img_size)), dtype=np.uint8)
    x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


