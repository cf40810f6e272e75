"""Stage C data: image-caption manifests, frozen-Thinker caption features, the training dataset.

Manifest (docs/architecture.md): a JSON array of objects, or JSON Lines, each with `image` (path relative to
the manifest, inside its folder) and `caption`; `source` (scenes, tuxpaint, emoji, ...) is optional.
Rows with an empty caption or an image path outside the manifest's folder are dropped at load
(counted); unusable images are skipped when read (counted per reason) and reported through
``VisionDataset.report`` at the end of each epoch.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from omni.data import BadRow, DataError, SkipCountingDataset, read_utf8
from omni.images import MAX_SIDE, BadImage, load_image, preprocess
from omni.manifest import PathGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    image: Path      # absolute (resolved against the manifest's folder)
    caption: str
    source: str


def manifest_objects(path: str | Path, allow_outside: bool = False) -> tuple[list[dict], Counter]:
    """The rows of an image manifest (a JSON array, or JSON Lines), each an object whose ``image`` is
    resolved against the manifest's folder, and the rows dropped by reason: an image path that leaves
    that folder (``outside_data_dir``, unless ``allow_outside``). A missing or non-UTF-8 file, invalid
    JSON or a row without an image is a DataError naming the file and the line or row. Stage C
    (``read_manifest``) and Stage E (``read_image_manifest``) both read their manifests through this."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image manifest not found: {path} (build it: python scripts/make_synthetic_datasets.py "
                        "--out data, or scripts/download_production_image.py)")
    rows = _json_rows(path, read_utf8(path))
    guard, out, dropped = PathGuard(path, allow_outside), [], Counter()
    for n, raw in enumerate(rows, 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
            raise DataError(f"{path}: row {n} is not an object with an 'image' path: {str(raw)[:80]}")
        try:
            out.append({**raw, "image": str(guard(raw["image"], f"{path}: row {n}"))})
        except BadRow as e:
            log.warning("%s", e)
            dropped[e.reason] += 1
    return out, dropped


def _json_rows(path: Path, text: str) -> list:
    """The values of a JSON array or of JSON Lines; invalid JSON is a DataError with the line."""
    try:
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):  # JSON Lines
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: invalid JSON Lines row ({e.msg})") from None
        return rows
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply)") from None


def read_manifest(path: str | Path, allow_outside: bool = False) -> tuple[list[Row], int]:
    """A JSON array / JSON Lines manifest -> (rows with a non-empty caption and an image path inside the
    manifest's folder unless ``allow_outside``, rows dropped)."""
    path = Path(path)
    objects, dropped = manifest_objects(path, allow_outside)
    rows = []
    for raw in objects:
        caption = raw.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            dropped["no_caption"] += 1
            continue
        rows.append(Row(Path(raw["image"]), " ".join(caption.split()), str(raw.get("source", "-"))))
    if not rows:
        raise DataError(f"{path}: no rows with an image and a non-empty caption" +
                        (f" ({dict(dropped)} dropped)" if dropped else ""))
    if dropped:
        log.warning("%s: dropped %d rows (%s)", path, sum(dropped.values()), dict(dropped))
    return rows, sum(dropped.values())


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
