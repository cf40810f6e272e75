"""Shared transformer blocks: RMSNorm, RoPE, attention (SDPA, GQA, KV cache), SwiGLU, and the
cross-attention decoder block (OCR).

Every μOmni model (Thinker, Talker, encoders) builds from these; nothing here is model-specific.
Shapes: B batch, T time, H query heads, Hkv key/value heads, Dh head dim, D model dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D); the statistic is computed in fp32 even under autocast."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..max_len-1 (not saved: rebuilt from the config)."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, Dh/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, H, T, Dh) at absolute positions start..start+T-1 -> rotated x, same shape."""
        T = x.shape[-2]
        if start + T > self.cos.shape[0]:
            raise ValueError(f"position {start + T} exceeds the RoPE table ({self.cos.shape[0]}); "
                             "raise ctx_len or shorten the input")
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # interleaved pairs
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return out.type_as(x)


class KVCache:
    """Preallocated keys/values for every layer: (n_layers, B, Hkv, max_len, Dh) each."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already cached (same for every layer once a forward finishes)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, Hkv, T, Dh) for ``layer``; return all cached (B, Hkv, pos+T, Dh)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} positions")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, RoPE and an optional KV cache.

    causal=True: token t attends to tokens <= t (also across the cache). ``key_padding_mask``
    (B, Tk) True where a key is real, for non-causal encoders with padded batches.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, dropout: float,
                 causal: bool, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"need d_model % n_heads == 0 and n_heads % n_kv_heads == 0, got "
                             f"d_model={d_model} n_heads={n_heads} n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        # q, k and v in one matmul: rows [0, H*Dh) are q, then Hkv*Dh rows of k, then of v
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.dropout, self.causal, self.rope = dropout, causal, rope

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        B, T, _ = x.shape
        q, k, v = self.split_heads(self.qkv(x))
        start = cache.pos if cache is not None else 0
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        mask, is_causal = self._mask(T, k.shape[2], key_padding_mask, x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qkv (B, T, (H + 2 Hkv) Dh) -> q (B, H, T, Dh), k and v (B, Hkv, T, Dh)."""
        B, T, _ = qkv.shape
        q, k, v = qkv.split([self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                             self.n_kv_heads * self.head_dim], dim=-1)
        return (q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2),
                k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2),
                v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2))

    def _mask(self, Tq: int, Tk: int, key_padding_mask: torch.Tensor | None,
              device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """SDPA's is_causal aligns top-left, so queries after a cache need an explicit mask."""
        mask = None
        if self.causal and Tq > 1:
            if Tq == Tk and key_padding_mask is None:
                return None, True
            q_pos = torch.arange(Tk - Tq, Tk, device=device)[:, None]
            mask = torch.arange(Tk, device=device)[None, :] <= q_pos  # (Tq, Tk)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
            mask = pad if mask is None else mask & pad
        return mask, False


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up as one matmul (rows [0, d_ff) are gate)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))).

    ``dropout`` applies to the residual branches. Attention probabilities get ``attn_dropout``
    (default 0): any dropout there forces SDPA off its fused flash kernels (CPU and GPU), which
    measured slower, so μOmni regularises through the residual dropout alone.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, dropout: float,
                 causal: bool, rope: RotaryEmbedding | None, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, n_kv_heads, attn_dropout, causal, rope)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cache, layer, key_padding_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class CrossAttention(nn.Module):
    """Queries from x attend to a memory (encoder states, width ``d_memory``); no RoPE, no causality.
    ``memory_mask`` (B, Tm) True where a memory position is real."""

    def __init__(self, d_model: int, n_heads: int, d_memory: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"need d_model % n_heads == 0, got d_model={d_model} n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_memory, 2 * d_model, bias=False)  # k and v in one matmul
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), memory (B, Tm, d_memory) -> (B, T, D)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(B, memory.shape[1], 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = memory_mask[:, None, None, :] if memory_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class CrossBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention (RoPE), cross-attention to a memory, SwiGLU;
    each a residual branch with dropout."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, rope: RotaryEmbedding,
                 d_memory: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, n_heads, 0.0, causal=True, rope=rope)
        self.cross_norm = RMSNorm(d_model)
        self.cross = CrossAttention(d_model, n_heads, d_memory)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), memory (B, Tm, d_memory) -> (B, T, D)."""
        x = x + self.drop(self.attn(self.attn_norm(x)))
        x = x + self.drop(self.cross(self.cross_norm(x), memory, memory_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


def init_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers)."""
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue
        std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out.weight", "down.weight")) else 0.02
        nn.init.normal_(p, mean=0.0, std=std)
