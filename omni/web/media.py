"""What the web demo accepts from a page and sends back: the upload limits, the check that decodes an
uploaded image or clip as the model will read it (so a bad file is refused at upload, with its name),
and the reply audio's wire format (omni/web/server.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from omni.audio.features import SAMPLE_RATE, AudioError, load_audio
from omni.images import BadImage, load_image_tensor


@dataclasses.dataclass(frozen=True)
class Limits:
    upload_bytes: int = 10 * 2**20
    audio_s: float = 30.0
    image_pixels: int = 16_000_000    # width * height, read from the header before decoding
    text_chars: int = 4000            # a longer message cannot fit the model's context anyway


class UploadError(ValueError):
    """An upload the demo refuses; the message names the file and is shown on the page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_upload(path: Path, kind: str, name: str, limits: Limits, img_size: int) -> str:
    """Decode an uploaded file as the model will read it -> a short description ("640x480", "2.4 s").
    Raises UploadError naming ``name`` (the user's file name, not the temporary path)."""
    if path.stat().st_size == 0:
        raise UploadError(f"{name}: the file is empty")
    try:
        return _check_image(path, name, limits, img_size) if kind == "image" else _check_audio(path, name, limits)
    except (BadImage, AudioError) as e:
        raise UploadError(str(e).replace(str(path), name)) from e


def _check_image(path: Path, name: str, limits: Limits, img_size: int) -> str:
    try:
        with Image.open(path) as img:  # reads the header only: the size is known before decoding
            w, h = img.size
    except Image.UnidentifiedImageError as e:
        raise UploadError(f"{name}: not an image Pillow can read; upload a PNG, JPEG, GIF or WebP file") from e
    except Image.DecompressionBombError as e:
        raise UploadError(f"{name}: far too many pixels ({e})", 413) from e
    if w * h > limits.image_pixels:
        raise UploadError(f"{name}: {w}x{h} is {w * h:,} pixels, over the {limits.image_pixels:,}-pixel limit; "
                          "scale it down", 413)
    load_image_tensor(path, img_size)  # a full decode: a truncated file fails now, not when the message is sent
    return f"{w}x{h}"


def _check_audio(path: Path, name: str, limits: Limits) -> str:
    seconds = len(load_audio(path)) / SAMPLE_RATE
    if seconds > limits.audio_s:
        raise UploadError(f"{name}: {seconds:.1f} s of audio, over the {limits.audio_s:g} s limit; "
                          "send a shorter clip", 413)
    return f"{seconds:.1f} s"


def pcm16(wav: np.ndarray) -> bytes:
    """float32 samples (N,) in [-1, 1] -> N little-endian int16 samples, the page's audio frames."""
    return (np.clip(wav, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()
