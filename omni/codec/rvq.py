"""Residual vector quantisation with EMA codebooks, data (k-means) init and dead-code reset.

Quantiser q_1 codes the encoder output, q_2 codes what q_1 left over, and so on; the decoder sees
the sum. Codebooks are not trained by gradients: each is an exponential moving average of the
vectors assigned to its codes (VQ-VAE-2 / SoundStream), seeded by k-means on the first training
batch. A code that no vector chose for ``dead_code_steps`` training batches in a row is re-seeded
from a random vector of the current batch, so codebooks do not collapse onto a few codes. The
encoder is pulled towards its codes by the commitment loss; gradients reach it through the
straight-through estimator.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) -> centres (k, D), counts (k,). Starts from random points of x (with repeats if N < k)."""
    idx = torch.randint(0, x.shape[0], (k,), generator=generator) if x.shape[0] < k else \
        torch.randperm(x.shape[0], generator=generator)[:k]
    centres = x[idx.to(x.device)].clone()
    counts = torch.zeros(k, device=x.device)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(-1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None]
    return centres, counts


class VectorQuantizer(nn.Module):
    """One EMA codebook: z (N, D) -> (quantised (N, D), codes (N,))."""

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_steps: int, kmeans_iters: int) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.dead_code_steps, self.kmeans_iters = decay, dead_code_steps, kmeans_iters
        self.register_buffer("codebook", torch.zeros(codebook_size, dim))
        self.register_buffer("ema_count", torch.zeros(codebook_size))
        self.register_buffer("ema_sum", torch.zeros(codebook_size, dim))
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.resets = 0  # codes re-seeded since the last call to pop_resets()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> nearest code index (N,) (squared Euclidean distance)."""
        dist = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook.t()
                + self.codebook.pow(2).sum(-1)[None])
        return dist.argmin(-1)

    @torch.no_grad()
    def _init(self, z: torch.Tensor) -> None:
        centres, counts = kmeans(z, self.codebook_size, self.kmeans_iters)
        self.codebook.copy_(centres)
        self.ema_count.copy_(counts.clamp(min=1.0))
        self.ema_sum.copy_(centres * self.ema_count[:, None])
        self.initialised.fill_(True)
        log.info("codebook initialised by k-means on %d vectors (%d of %d codes hit)",
                 z.shape[0], int((counts > 0).sum()), self.codebook_size)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA step towards the mean of each code's vectors, then re-seed dead codes."""
        onehot = F.one_hot(codes, self.codebook_size).type_as(z)          # (N, K)
        counts = onehot.sum(0)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.dead_code_steps
        if dead.any():
            self._reseed(dead, z)

    def _reseed(self, dead: torch.Tensor, z: torch.Tensor) -> None:
        n_dead = int(dead.sum())
        pick = z[torch.randint(0, z.shape[0], (n_dead,), device=z.device)]
        self.codebook[dead] = pick
        self.ema_sum[dead] = pick
        self.ema_count[dead] = 1.0
        self.unused_steps[dead] = 0
        self.resets += n_dead

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.float()
        if self.training and not bool(self.initialised):
            self._init(z.detach())
        codes = self.nearest(z.detach())
        if self.training:
            self._update(z.detach(), codes)
        return F.embedding(codes, self.codebook), codes


class ResidualVQ(nn.Module):
    """n_q codebooks in sequence on residuals: z (B, T, D) -> quantised (B, T, D), codes (B, T, n_q),
    commitment loss (scalar), per-codebook batch perplexity (n_q,). ``mask`` (B, T) bool marks real
    frames: padding takes no part in k-means, EMA updates or the loss."""

    def __init__(self, n_codebooks: int, codebook_size: int, dim: int, decay: float = 0.99,
                 dead_code_steps: int = 50, kmeans_iters: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(codebook_size, dim, decay, dead_code_steps, kmeans_iters)
                                    for _ in range(n_codebooks))

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = z.shape
        mask = torch.ones(B, T, dtype=torch.bool, device=z.device) if mask is None else mask
        with torch.autocast(z.device.type, enabled=False):  # distances and EMA in float32
            flat = z.float()[mask]                           # (N, D) real frames only
            residual, total = flat.detach(), torch.zeros_like(flat)  # codebooks take no gradient
            codes, perplexity = [], []
            for vq in self.layers:
                q, c = vq(residual)
                total = total + q
                residual = residual - q
                codes.append(c)
                perplexity.append(_perplexity(c, vq.codebook_size))
            commit = F.mse_loss(flat, total.detach()) if flat.numel() else flat.sum()
            quantised = flat + (total - flat).detach()       # straight-through
        out = z.new_zeros(B, T, D, dtype=torch.float32)
        out[mask] = quantised
        code_grid = torch.zeros(B, T, len(self.layers), dtype=torch.long, device=z.device)
        code_grid[mask] = torch.stack(codes, -1)
        return out, code_grid, commit, torch.stack(perplexity)

    def embed(self, codes: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """codes (B, T, n) of the first n <= n_q codebooks -> sum of the chosen code vectors (B, T, D);
        ``keep``: of the first ``keep`` <= n codebooks only (what the base and the first residuals
        carry alone). A Talker that predicts only the first codebooks is decoded this way."""
        n = codes.shape[-1]
        if not 1 <= n <= len(self.layers):
            raise ValueError(f"codes have {n} codebooks, the codec has {len(self.layers)}")
        keep = n if keep is None else keep
        if not 1 <= keep <= n:
            raise ValueError(f"keep={keep}: the codes have {n} codebooks")
        return sum(F.embedding(codes[..., i], vq.codebook) for i, vq in enumerate(self.layers[:keep]))

    def pop_resets(self) -> list[int]:
        """Dead codes re-seeded per codebook since the last call."""
        out = [vq.resets for vq in self.layers]
        for vq in self.layers:
            vq.resets = 0
        return out


def _perplexity(codes: torch.Tensor, k: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: k for uniform use, 1 when one code takes everything."""
    if codes.numel() == 0:
        return torch.tensor(0.0, device=codes.device)
    p = torch.bincount(codes, minlength=k).float() / codes.numel()
    return torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())


def usage_stats(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """codes (N, n_q) -> per codebook: fraction of codes used at least once (n_q,), perplexity (n_q,)."""
    usage, perp = [], []
    for i in range(codes.shape[-1]):
        c = codes[:, i]
        usage.append((torch.bincount(c, minlength=codebook_size) > 0).float().mean())
        perp.append(_perplexity(c, codebook_size))
    return torch.stack(usage), torch.stack(perp)
