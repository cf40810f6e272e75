"""Image preprocessing shared by Stage C (training), Stage E (SFT) and chat: Pillow + torch only.

Eval: resize the short side to ``img_size`` and take the centre crop. Train: resize the short side
to a random size in [img_size, img_size * max_zoom], random crop, optional horizontal flip (off by
default: flipping a scene whose caption says "on the left" makes the caption wrong). Both end in
the same per-channel normalisation. Loading goes through omni.images.load_image, which
converts palette/alpha/greyscale/16-bit images to RGB and raises BadImage on unusable files.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# per-channel mean/std of natural RGB images (CLIP's), applied after scaling to [0, 1]
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
MAX_ZOOM = 1.14  # train-time short side up to 224 * 1.14 = 256, then a random 224 crop


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _resize_short(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image (W, H) -> normalised float tensor (3, H, W)."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    return (arr.permute(2, 0, 1).float() / 255.0 - MEAN) / STD


def preprocess(img: Image.Image, img_size: int, train: bool = False, generator: torch.Generator | None = None,
               flip: bool = False, max_zoom: float = MAX_ZOOM) -> torch.Tensor:
    """Any PIL image -> normalised tensor (3, img_size, img_size).

    ``train=False`` is deterministic (resize + centre crop). ``train=True`` draws the zoom, the crop
    offset and (with ``flip``) a horizontal flip from ``generator`` (the global torch RNG if None).
    """
    if img.mode != "RGB":
        img = to_rgb(img, max_side=max(img.size))[0]
    if train:
        short = round(img_size * (1.0 + (max_zoom - 1.0) * _uniform(generator)))
        img = _resize_short(img, short)
        x0 = int(_uniform(generator) * (img.size[0] - img_size + 1))
        y0 = int(_uniform(generator) * (img.size[1] - img_size + 1))
        if flip and _uniform(generator) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x0 = img.size[0] - img_size - x0
    else:
        img = _resize_short(img, img_size)
        x0, y0 = (img.size[0] - img_size) // 2, (img.size[1] - img_size) // 2
    return to_tensor(img.crop((x0, y0, x0 + img_size, y0 + img_size)))


def load_image_tensor(path: str | Path, img_size: int) -> torch.Tensor:
    """Eval preprocessing of an image file -> (3, img_size, img_size); raises BadImage with the path."""
    img, _ = load_image(Path(path), max_side=max(MAX_SIDE, img_size))
    return preprocess(img, img_size, train=False)


MAX_SIDE, MIN_SIDE, SCENE_SIZE = 256, 8, 224  # stored long side, smallest usable long side, scenes


MAX_PIXELS = 64_000_000  # bigger inputs are skipped ("too_large"), never decoded


class BadImage(ValueError):
    """An input image that cannot be used; `reason` is a short key for the skip counts."""

    def __init__(self, path: Path | str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason} ({detail})")
        self.reason = reason


def to_rgb(img: Image.Image, max_side: int = MAX_SIDE) -> tuple[Image.Image, list[str]]:
    """Any PIL image -> RGB, alpha composited on white, long side <= max_side; plus notes."""
    notes = []
    if img.mode in ("P", "PA"):  # via RGBA so a transparent palette entry becomes white
        img, notes = img.convert("RGBA"), ["palette"]
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        a = (a - a.min()) * (255.0 / span) if span > 0 else np.zeros_like(a)
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    if img.mode in ("1", "L"):
        notes.append("greyscale")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        notes.append("alpha")
    img = img.convert("RGB")  # also a copy, so thumbnail() never touches the caller's image
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        notes.append("resized")
    return img, notes


def load_image(path: Path, max_side: int = MAX_SIDE) -> tuple[Image.Image, list[str]]:
    """Open, fully decode and normalise an image file; raises BadImage with a reason key."""
    if Path(path).is_dir():  # a distinct reason: "no such file" would send the user looking for a typo
        raise BadImage(path, "is_directory", "is a directory, not an image file")
    if not Path(path).is_file():
        raise BadImage(path, "missing", "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadImage(path, "too_large", f"{w}x{h} > {MAX_PIXELS} pixels")
                if max(w, h) < MIN_SIDE:
                    raise BadImage(path, "too_small", f"{w}x{h}: both sides < {MIN_SIDE} px")
                img.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced scale
                img.load()
                return to_rgb(img, max_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(path, "too_large", str(e)) from e
    except Image.UnidentifiedImageError as e:
        raise BadImage(path, "not_an_image", "Pillow cannot identify it") from e
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e) or isinstance(e, EOFError) else "corrupt"
        raise BadImage(path, reason, str(e) or type(e).__name__) from e
