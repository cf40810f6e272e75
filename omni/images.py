"""Image preprocessing shared by Stage C (training), Stage E (SFT) and chat: Pillow + torch only.

Eval: resize the short side to ``img_size`` and take the centre crop. Train: resize the short side
to a random size in [img_size, img_size * max_zoom], random crop, optional horizontal flip (off by
default: flipping a scene whose caption says "on the left" makes the caption wrong). Both end in
the same per-channel normalisation. Loading goes through omni/image_data.load_image, which
converts palette/alpha/greyscale/16-bit images to RGB and raises BadImage on unusable files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omni.image_data import MAX_SIDE, load_image, to_rgb

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
