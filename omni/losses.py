"""Cross-entropy through the output projection without materialising the full logits.

For a 32k vocabulary the logits of one 8 x 512 batch are 4096 x 32000 floats (0.5 GB in fp32, and
as much again for their gradient), and the softmax over them is memory-bound. Here rows are taken
``chunk`` at a time: logits, log-sum-exp, loss and both gradients (d hidden, d weight) are computed
in the forward pass while the chunk is in cache, and backward only scales the stored gradients.
Matmuls run in the autocast dtype when autocast is on; the softmax is always fp32.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _mm_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype


def _chunk_stats(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h (C, D), w (V, D), y (C,) -> (loss sum over valid rows, probs - onehot (C, V) fp32).

    In place over one fp32 buffer (max, subtract, exp, normalise): the pass count decides the
    speed here, not the arithmetic.
    """
    logits = (h @ w.T).float()
    valid = y != IGNORE_INDEX
    safe_y = torch.where(valid, y, 0)
    rows = torch.arange(len(y), device=y.device)
    target_logit = logits[rows, safe_y]
    peak = logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(peak).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    lse = (peak + denom.log())[:, 0]
    loss = ((lse - target_logit) * valid).sum()
    probs.div_(denom)
    probs[rows, safe_y] -= 1.0
    probs.mul_(valid[:, None])
    return loss, probs


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = _mm_dtype(h)
        n_valid = (y != IGNORE_INDEX).sum().clamp(min=1)
        with torch.autocast(h.device.type, enabled=False):
            wc = w.to(dtype)
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], chunk):
                hc = h[s:s + chunk].to(dtype)
                loss, g = _chunk_stats(hc, wc, y[s:s + chunk])
                total += loss
                g = g.to(dtype)
                grad_h[s:s + chunk] = (g @ wc).to(h.dtype)
                grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w.to(w.dtype), n_valid)
        return total / n_valid

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = g / n_valid
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, chunk: int = 256,
                         reduction: str = "mean") -> torch.Tensor:
    """Mean (or sum) cross-entropy of softmax(h @ w.T) against y, ignoring y == -100.

    h (N, D) hidden states, w (V, D) output projection, y (N,) targets.
    """
    if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
        if reduction != "mean":
            raise ValueError("training uses the mean; reduction='sum' is for evaluation")
        return _LinearCrossEntropy.apply(h, w, y, chunk)
    dtype = _mm_dtype(h)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    with torch.no_grad():
        for s in range(0, h.shape[0], chunk):
            logits = (h[s:s + chunk].to(dtype) @ w.to(dtype).T).float()
            yc = y[s:s + chunk]
            valid = yc != IGNORE_INDEX
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, torch.where(valid, yc, 0)[:, None])[:, 0]) * valid).sum()
    if reduction == "sum":
        return total
    return total / (y != IGNORE_INDEX).sum().clamp(min=1)
