"""ViTTiny: the vision encoder (docs/architecture.md: 224x224, patch 16, d_model 128, 4 layers, 2 heads,
d_ff 512 -> 0.91M parameters). Returns the CLS token and the patch tokens.

The blocks are omni/layers.py's pre-norm Blocks without causality or RoPE; positions are a learned
table over [CLS] + patches. The SwiGLU hidden width is 2/3 * d_ff (LLaMA's convention), so the MLP
has the parameter count of the d_ff-wide GELU MLP the spec's size assumes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omni.layers import Block, RMSNorm, init_weights


@dataclass
class VisionConfig:
    img_size: int
    patch: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float


def swiglu_hidden(d_ff: int) -> int:
    """2/3 * d_ff rounded up to a multiple of 8: 512 -> 344."""
    return -(-2 * d_ff // 3 // 8) * 8


class ViTTiny(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch {cfg.patch}")
        self.cfg = cfg
        self.n_patches = (cfg.img_size // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.d_model, cfg.patch, stride=cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.zeros(1, 1 + self.n_patches, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.n_heads, swiglu_hidden(cfg.d_ff), cfg.dropout, causal=False, rope=None)
            for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        init_weights(self, cfg.n_layers)  # also N(0, 0.02) for the patch conv, CLS and positions

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S), normalised -> cls (B, d_model), patches (B, (S/patch)^2, d_model)."""
        if images.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(f"expected images of {self.cfg.img_size}x{self.cfg.img_size}, got "
                             f"{tuple(images.shape)}; preprocess with omni.images.preprocess")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]
