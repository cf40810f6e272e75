"""The reference design μOmni's Thinker step is measured against: a decoder-only LM built the way
the public micro-Omni ThinkerLM is (our own code, written from a description of that structure),
at the same shape as ours, for ``lab/bench_stages.py --stages thinker_ref``.

What makes it the reference, each a difference from ``omni/thinker/model.py``:
- RoPE cos/sin recomputed in every layer's forward (half-split rotation), no cached table;
- full multi-head attention (no grouped KV heads), one fused q/k/v projection;
- a (T, T) causal mask rebuilt every forward and passed to SDPA as a boolean mask (so no
  is_causal fast path), with dropout on the attention probabilities;
- separate gate, up and down projections in the SwiGLU MLP;
- RMSNorm in the input dtype;
- a non-finite check (a host sync) after the embedding, every block, the final norm and the logits;
- the loss is ``F.cross_entropy`` over the full (B*T, vocab) logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RefRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, H, T, Dh): the rotation computed from scratch, as the reference does per call."""
    T, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device).float() / d)
    freqs = torch.outer(torch.arange(T, device=x.device).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, theta: float) -> None:
        super().__init__()
        self.heads, self.theta, self.dropout = heads, theta, dropout
        self.norm1, self.norm2 = RefRMSNorm(d), RefRMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d_ff, bias=False)
        self.up = nn.Linear(d, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        q, k = rope(q, self.theta), rope(k, self.theta)
        mask = torch.tril(torch.ones(T, T, device=x.device))[None, None].bool()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        h = self.norm2(x)
        return x + self.drop(self.down(F.silu(self.gate(h)) * self.up(h)))


def _check(x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite values after {where}")


class RefThinker(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_ff: int, dropout: float,
                 theta: float = 10000.0) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RefBlock(d, heads, d_ff, dropout, theta) for _ in range(layers))
        self.norm = RefRMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids)
        _check(x, "the embedding")
        for i, block in enumerate(self.blocks):
            x = block(x)
            _check(x, f"block {i}")
        x = self.norm(x)
        _check(x, "the final norm")
        logits = self.lm_head(x)
        _check(logits, "the output projection")
        return logits


def ref_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), {}
