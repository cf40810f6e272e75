"""Stage C: CLIP-style image-caption matching. ViTTiny (trained) against the frozen Stage A Thinker
(mean-pooled hidden states, cached once per run) through a small trainable text head.

The checkpoint folder holds the trainable parts (ViT, image projection, text head, temperature),
config.json (with the Thinker's path), the Thinker's tokenizer, and thinker.json (the Thinker
weights' sha256, so a changed Thinker is an error rather than silently different text features).
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from omni.config import TrainConfig, to_dict
from omni.data import DataError
from omni.engine.checkpoint import MODEL_FILE, CheckpointError, copy_weights, load_weights, read_stage_config
from omni.engine.runtime import Runtime
from omni.engine.stage import Stage
from omni.files import file_sha256, write_text_atomic
from omni.images import BadImage, load_image_tensor
from omni.thinker.stage import load_thinker, save_tokenizer
from omni.vision.data import Row, VisionDataset, caption_features, collate_pairs, read_manifest
from omni.vision.encoder import VisionConfig, ViTTiny
from omni.vision.retrieval import candidate_sets, chance, colour_histogram, histogram_baseline, recall_at

log = logging.getLogger(__name__)

THINKER_FILE = "thinker.json"
THINKER_SUBDIR = "thinker"  # the copy of the frozen Thinker inside a Stage C folder


@dataclass
class ClipConfig:
    """The text side: ``thinker`` is a Stage A checkpoint folder, frozen; only the head trains."""
    thinker: str
    embed_dim: int = 128
    text_hidden: int = 512
    init_temperature: float = 0.07
    max_caption_tokens: int = 64


@dataclass
class VisionDataConfig:
    """Image manifests (JSON array or JSON Lines of {image, caption, source})."""
    train_manifest: str
    val_manifest: str
    flip: bool = False       # horizontal flips break "on the left" captions: off for scenes
    max_zoom: float = 1.14   # train crops: short side resized to img_size * U(1, max_zoom)
    candidates: int = 100    # retrieval pool per query at validation
    allow_outside_paths: bool = False  # read image paths outside the manifest's folder (../, absolute, symlinks out)


@dataclass
class VisionStageConfig:
    model: VisionConfig
    clip: ClipConfig
    data: VisionDataConfig
    train: TrainConfig


class ClipModel(nn.Module):
    """ViTTiny + image projection, and a text head over frozen Thinker features."""

    def __init__(self, vcfg: VisionConfig, ccfg: ClipConfig, text_dim: int) -> None:
        super().__init__()
        self.vit = ViTTiny(vcfg)
        self.img_proj = nn.Linear(vcfg.d_model, ccfg.embed_dim, bias=False)
        # pooled states of a small LM share one dominant direction (mean cosine 0.82 between
        # captions for thinker_tiny); standardising with training-set statistics removes it
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_std", torch.ones(text_dim))
        self.text_head = nn.Sequential(nn.Linear(text_dim, ccfg.text_hidden), nn.GELU(),
                                       nn.Linear(ccfg.text_hidden, ccfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / ccfg.init_temperature)))

    def set_text_stats(self, feats: torch.Tensor) -> None:
        """Per-dimension mean/std of the training captions' features (N, text_dim); saved with the weights."""
        self.text_mean.copy_(feats.mean(0))
        self.text_std.copy_(feats.std(0).clamp(min=1e-4))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.img_proj(self.vit(images)[0]).float(), dim=-1)

    def embed_text(self, feats: torch.Tensor) -> torch.Tensor:
        """pooled Thinker features (B, text_dim) -> unit-norm embeddings (B, embed_dim)."""
        return F.normalize(self.text_head((feats - self.text_mean) / self.text_std).float(), dim=-1)

    def forward(self, images: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """-> logits (B images, B captions), scaled by the learned inverse temperature (<= 100)."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return scale * self.embed_images(images) @ self.embed_text(feats).T


def info_nce(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: logits (B, B), caption_ids (B,). Rows sharing a caption are all positives
    (uniform soft target), so duplicate captions in a batch are not pushed apart."""
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


def clip_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """batch {images (B, 3, S, S), text (B, text_dim), caption_ids (B,)} -> (InfoNCE, logs)."""
    logits = model(batch["images"], batch["text"]).float()
    loss = info_nce(logits, batch["caption_ids"])
    acc = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean()
    return loss, {"batch_acc": acc.item()}


# ----------------------------------------------------------------------------- the frozen Thinker


def load_frozen_thinker(ckpt_dir: str | Path, device: torch.device, expect_sha256: str | None = None):
    """The Stage A Thinker, eval mode, no gradients -> (ThinkerLM, tokenizer, sha256 of its weights).

    A missing folder or weights that do not match its config is a CheckpointError; with
    ``expect_sha256`` (from a Stage C checkpoint) so are weights that changed since training.
    """
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MODEL_FILE).is_file():
        raise CheckpointError(f"clip.thinker: no Thinker checkpoint at {ckpt_dir} ({MODEL_FILE} missing); train "
                              "Stage A first (python train_text.py) or point clip.thinker at its folder")
    sha = file_sha256(ckpt_dir / MODEL_FILE)
    if expect_sha256 is not None and sha != expect_sha256:
        raise CheckpointError(f"{ckpt_dir}/{MODEL_FILE} changed since this vision checkpoint was trained "
                              f"(sha256 {sha[:12]} != {expect_sha256[:12]}); its text features no longer "
                              "match: retrain Stage C or restore that Thinker")
    thinker, tok, _ = load_thinker(ckpt_dir, device)
    thinker.requires_grad_(False)
    return thinker, tok, sha


def save_text_side(ckpt_dir: Path, thinker_dir: str, sha: str, tok) -> None:
    """The frozen Thinker the text side reads (a copy in ``thinker/``, so the folder is self-contained
    and movable), thinker.json (that folder, relative to this one, and the weights' SHA-256) and the
    Thinker's tokenizer beside the weights."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    copy_weights(thinker_dir, ckpt_dir / THINKER_SUBDIR)
    save_tokenizer(tok, ckpt_dir / THINKER_SUBDIR)
    write_text_atomic(ckpt_dir / THINKER_FILE,
                      json.dumps({"thinker": THINKER_SUBDIR, "sha256": sha}, indent=2) + "\n")
    save_tokenizer(tok, ckpt_dir)


# ----------------------------------------------------------------------------- loading checkpoints


def read_vision_config(ckpt_dir: str | Path) -> VisionStageConfig:
    return read_stage_config(ckpt_dir, VisionStageConfig)


def load_vision_encoder(ckpt_dir: str | Path, device: torch.device) -> tuple[ViTTiny, VisionStageConfig]:
    """Strictly load the ViT of a Stage C checkpoint -> (ViTTiny in eval mode, its stage config)."""
    cfg = read_vision_config(ckpt_dir)
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}: train Stage C first (python train_vision.py)")
    state = {k[len("vit."):]: v for k, v in load_file(str(path)).items() if k.startswith("vit.")}
    vit = ViTTiny(cfg.model)
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_dir}: the ViT weights in {MODEL_FILE} do not match its config: {e}") from e
    return vit.to(device).eval(), cfg


def load_clip(ckpt_dir: str | Path, device: torch.device):
    """The whole Stage C model -> (ClipModel, VisionStageConfig, frozen Thinker, tokenizer)."""
    cfg = read_vision_config(ckpt_dir)
    meta_path = Path(ckpt_dir) / THINKER_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"no {THINKER_FILE} in {ckpt_dir}: not a Stage C checkpoint folder")
    meta = json.loads(meta_path.read_text())
    thinker, tok, _ = load_frozen_thinker(Path(ckpt_dir) / meta["thinker"], device, meta["sha256"])
    model = ClipModel(cfg.model, cfg.clip, thinker.cfg.d_model)
    load_weights(model, ckpt_dir)
    return model.to(device).eval(), cfg, thinker, tok


# ----------------------------------------------------------------------------- retrieval evaluation


class RetrievalSet:
    """Held-out image-caption pairs, loaded once (eval preprocessing), for recall@k evaluation.

    Unusable images are skipped (logged, counted in ``skipped``); ``baseline`` holds the colour-
    histogram baseline's metrics once ``add_baseline`` ran, reported beside the model's.
    """

    def __init__(self, rows: list[Row], feats: torch.Tensor, img_size: int, candidates: int, seed: int = 0) -> None:
        images, keep, self.skipped = [], [], Counter()
        for i, row in enumerate(rows):
            try:
                images.append(load_image_tensor(row.image, img_size).half())  # half the memory; error ~1e-3
                keep.append(i)
            except BadImage as e:
                log.warning("validation: skipping %s", e)
                self.skipped[e.reason] += 1
        if not keep:
            raise DataError(f"no usable validation images among {len(rows)} rows ({dict(self.skipped)})")
        self.rows = [rows[i] for i in keep]
        self.images, self.feats = torch.stack(images), feats[keep].cpu()
        ids: dict[str, int] = {}
        self.caption_ids = torch.tensor([ids.setdefault(r.caption, len(ids)) for r in self.rows])
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(self.rows):
            groups.setdefault(r.source, []).append(i)
        self.cands = candidate_sets(groups, candidates, seed)
        self.baseline: dict[str, float] = {}

    @torch.no_grad()
    def scores(self, model: ClipModel, batch_size: int = 64) -> torch.Tensor:
        """-> cosine similarities (N images, N captions), on the CPU."""
        device = next(model.parameters()).device
        img = torch.cat([model.embed_images(self.images[lo:lo + batch_size].to(device).float())
                         for lo in range(0, len(self.images), batch_size)])
        txt = model.embed_text(self.feats.to(device))
        return (img @ txt.T).float().cpu()

    def evaluate(self, model: ClipModel, batch_size: int = 64) -> dict[str, float]:
        """R@1/R@5 both ways, per source and overall, with chance and the baseline beside them."""
        sim = self.scores(model, batch_size)
        return {**recall_at(sim, sim.T, self.caption_ids, self.cands), **chance(self.cands), **self.baseline}

    def add_baseline(self, train_rows: list[Row], hist_size: int = 64) -> dict[str, int]:
        """Measure the colour-histogram nearest-neighbour baseline through ``train_rows``; returns
        the training images it had to skip, by reason."""
        train_hist, captions, skipped = [], [], Counter()
        for row in train_rows:
            try:
                train_hist.append(colour_histogram(load_image_tensor(row.image, hist_size)[None]))
                captions.append(row.caption)
            except BadImage as e:
                skipped[e.reason] += 1
        if not captions:
            raise DataError(f"baseline: no usable training images among {len(train_rows)} rows")
        # the validation images loaded once already; same path and size as the training ones
        val_hist = torch.cat([colour_histogram(load_image_tensor(r.image, hist_size)[None]) for r in self.rows])
        i2t, t2i = histogram_baseline(torch.cat(train_hist), captions, val_hist, [r.caption for r in self.rows])
        self.baseline = recall_at(i2t, t2i, self.caption_ids, self.cands, prefix="hist_")
        return dict(skipped)


def build_stage(cfg: VisionStageConfig, rt: Runtime) -> Stage:
    thinker, tok, sha = load_frozen_thinker(cfg.clip.thinker, rt.device)
    train_rows, _ = read_manifest(cfg.data.train_manifest, cfg.data.allow_outside_paths)
    val_rows, _ = read_manifest(cfg.data.val_manifest, cfg.data.allow_outside_paths)
    # the Thinker is frozen: its pooled caption features are computed once, here, not every step
    feats = caption_features(thinker, tok, [r.caption for r in train_rows + val_rows], cfg.clip.max_caption_tokens)
    train_feats, val_feats = feats[:len(train_rows)].cpu(), feats[len(train_rows):].cpu()
    log.info("cached %d caption features (%d-d) from the frozen Thinker %s", len(feats), feats.shape[1],
             cfg.clip.thinker)
    text_dim = thinker.cfg.d_model
    del thinker
    train_set = VisionDataset(train_rows, train_feats, cfg.model.img_size, train=True, flip=cfg.data.flip,
                              max_zoom=cfg.data.max_zoom)
    val_set = RetrievalSet(val_rows, val_feats, cfg.model.img_size, cfg.data.candidates)  # seed 0, as eval_vision
    if rt.is_main:
        skipped = val_set.add_baseline(train_rows)
        log.info("colour-histogram baseline (%d-candidate pools): %s%s", cfg.data.candidates,
                 "  ".join(f"{k} {v:.3f}" for k, v in val_set.baseline.items()),
                 f" (skipped training images: {skipped})" if skipped else "")
    torch.manual_seed(cfg.train.seed)
    model = ClipModel(cfg.model, cfg.clip, text_dim)
    model.set_text_stats(train_feats)
    log.info("ViTTiny: %.3fM parameters (+ %.0fK projection and text head)",
             sum(p.numel() for p in model.vit.parameters()) / 1e6,
             sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vit.")) / 1e3)
    log.info("%s: %d train rows; %s: %d validation images", cfg.data.train_manifest, len(train_set),
             cfg.data.val_manifest, len(val_set.rows))

    def save_extra(d: Path) -> None:
        save_text_side(d, cfg.clip.thinker, sha, tok)

    return Stage(
        name="vision", model=model, train_set=train_set, loss_fn=clip_loss, config=to_dict(cfg),
        collate=collate_pairs, skip_report=train_set.report,
        evaluate=lambda m: val_set.evaluate(m, cfg.train.batch_size),
        count_items=lambda b: float(len(b["images"])), items_unit="img",
        best_metric="i2t_r1", best_max=True, save_extra=save_extra)


CONFIG = VisionStageConfig
DEFAULT_CONFIG = "configs/vision_tiny.json"
