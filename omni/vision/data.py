"""Stage C data: image-caption manifests, frozen-Thinker caption features, the training dataset.

Manifest (docs/architecture.md): a JSON array of objects, or JSON Lines, each with `image` (path relative to
the manifest) and `caption`; `source` (scenes, tuxpaint, emoji, ...) is optional. Rows with an
empty caption are dropped at load (counted); unusable images are skipped when read (counted per
reason) and reported through ``VisionDataset.report`` at the end of each epoch.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omni.data import DataError, SkipCountingDataset
from omni.images import MAX_SIDE, BadImage, load_image, preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    image: Path      # absolute (resolved against the manifest's folder)
    caption: str
    source: str


def manifest_objects(path: str | Path) -> list[dict]:
    """The rows of an image manifest (a JSON array, or JSON Lines), each an object with a string
    ``image``; a missing file, invalid JSON or a row without an image is a DataError naming the
    file and the line or row. Stage C (``read_manifest``) and Stage E (``sft_data``) both read
    their manifests through this."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image manifest not found: {path} (build it: python scripts/make_synthetic_datasets.py "
                        "--out data, or scripts/download_production_image.py)")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):  # JSON Lines
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: invalid JSON Lines row ({e.msg})") from e
    for n, raw in enumerate(rows, 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
            raise DataError(f"{path}: row {n} is not an object with an 'image' path: {str(raw)[:80]}")
    return rows


def read_manifest(path: str | Path) -> tuple[list[Row], int]:
    """A JSON array / JSON Lines manifest -> (rows with a non-empty caption, rows dropped)."""
    path = Path(path)
    rows, dropped = [], 0
    for raw in manifest_objects(path):
        caption = raw.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            dropped += 1
            continue
        rows.append(Row(path.parent / raw["image"], " ".join(caption.split()), str(raw.get("source", "-"))))
    if not rows:
        raise DataError(f"{path}: no rows with an image and a non-empty caption")
    if dropped:
        log.warning("%s: dropped %d rows without a caption", path, dropped)
    return rows, dropped


@torch.no_grad()
def caption_features(thinker: nn.Module, tokenizer, captions: list[str], max_tokens: int,
                     batch_size: int = 64) -> torch.Tensor:
    """Frozen-Thinker caption features: hidden states mean-pooled over the real tokens.

    captions (N,) -> (N, thinker d_model), float32 on the Thinker's device. Padding is on the right
    and the Thinker is causal, so real tokens never see it; the mean skips it.
    """
    device = next(thinker.parameters()).device
    max_tokens = min(max_tokens, thinker.cfg.ctx_len)
    out = []
    for lo in range(0, len(captions), batch_size):
        ids = [tokenizer.encode(c)[:max_tokens] or [tokenizer.special["<|eos|>"]]
               for c in captions[lo:lo + batch_size]]
        T = max(len(x) for x in ids)
        batch = torch.full((len(ids), T), tokenizer.special["<|pad|>"], dtype=torch.long)
        mask = torch.zeros(len(ids), T)
        for k, x in enumerate(ids):
            batch[k, :len(x)] = torch.tensor(x)
            mask[k, :len(x)] = 1.0
        h = thinker.hidden(batch.to(device)).float()  # (B, T, D)
        mask = mask.to(device)[:, :, None]
        out.append((h * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


class VisionDataset(SkipCountingDataset):
    """item i -> (image (3, S, S), caption feature (D,), caption id) or None if the image is unusable."""

    def __init__(self, rows: list[Row], features: torch.Tensor, img_size: int, train: bool, flip: bool,
                 max_zoom: float) -> None:
        if len(rows) != len(features):
            raise ValueError(f"{len(rows)} rows but {len(features)} caption features")
        self.rows, self.features = rows, features.cpu()
        self.img_size, self.train, self.flip, self.max_zoom = img_size, train, flip, max_zoom
        ids: dict[str, int] = {}
        self.caption_ids = torch.tensor([ids.setdefault(r.caption, len(ids)) for r in rows])
        super().__init__()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        self.counts["seen"] += 1
        row = self.rows[i]
        try:
            img, notes = load_image(row.image, max_side=max(MAX_SIDE, self.img_size))
        except BadImage as e:
            log.warning("skipping image row %d: %s", i, e)
            self.counts["skipped"] += 1
            self.counts[e.reason] += 1
            return None
        for note in notes:
            self.counts[f"converted_{note}"] += 1
        x = preprocess(img, self.img_size, train=self.train, flip=self.flip, max_zoom=self.max_zoom)
        return x, self.features[i], self.caption_ids[i]



def collate_pairs(items: list) -> dict[str, torch.Tensor] | None:
    """Stack the usable (image, feature, caption id) items; None when none is usable."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    images, feats, cids = zip(*items)
    return {"images": torch.stack(images), "text": torch.stack(feats), "caption_ids": torch.stack(cids)}
