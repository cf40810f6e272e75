"""Monotonic alignment search (Glow-TTS, Grad-TTS): the most likely monotonic path through a
symbol-by-frame log-likelihood matrix, in which every symbol gets at least one frame and the frames
are spoken in the symbols' order. Durations are the frame counts per symbol.

Batched in torch over rows of different lengths: the dynamic programme runs over frames with each
row's symbols as a vector, so one loop of T steps serves the whole batch.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def monotonic_alignment(logp: torch.Tensor, n_sym: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
    """logp (B, S, T) log-likelihood of frame t under symbol s; n_sym (B,), n_frames (B,) the real
    sizes (n_frames >= n_sym >= 1, else ValueError) -> the symbol of every frame (B, T) long, a
    non-decreasing path from 0 to n_sym - 1 that visits every symbol (frames past n_frames: -1).

    Q[s, t] = logp[s, t] + max(Q[s, t-1], Q[s-1, t-1]) with Q[0, 0] = logp[0, 0]; the path is
    traced back from (n_sym - 1, n_frames - 1)."""
    B, S, T = logp.shape
    if bool((n_sym < 1).any()) or bool((n_frames < n_sym).any()):
        raise ValueError(f"monotonic_alignment needs n_frames >= n_sym >= 1 per row, got symbols "
                         f"{n_sym.tolist()} and frames {n_frames.tolist()}")
    logp = logp.float()
    neg = torch.finfo(logp.dtype).min / 4
    s_idx = torch.arange(S, device=logp.device)
    q = torch.full((B, S), neg, device=logp.device)
    q[:, 0] = logp[:, 0, 0]
    moved = torch.zeros(B, S, T, dtype=torch.bool, device=logp.device)
    lead = torch.full((B, 1), neg, device=logp.device)
    for t in range(1, T):
        from_prev = torch.cat([lead, q[:, :-1]], dim=1)
        move = from_prev > q
        moved[:, :, t] = move
        q = torch.where(move, from_prev, q) + logp[:, :, t]
        q = q.masked_fill(s_idx[None, :] > t, neg)  # symbol s cannot be reached before frame s
    path = torch.full((B, T), -1, dtype=torch.long, device=logp.device)
    s = (n_sym - 1).clone()
    rows = torch.arange(B, device=logp.device)
    for t in range(T - 1, -1, -1):
        active = t < n_frames
        path[:, t] = torch.where(active, s, path[:, t])
        if t:
            step = moved[rows, s, t].long()
            s = torch.where(active, s - step, s)
    return path


def durations_of(path: torch.Tensor, n_sym_max: int) -> torch.Tensor:
    """path (B, T) from monotonic_alignment -> frames per symbol (B, n_sym_max) long."""
    d = torch.zeros(path.shape[0], n_sym_max + 1, dtype=torch.long, device=path.device)
    d.scatter_add_(1, path.clamp(min=-1) + 1, torch.ones_like(path))
    return d[:, 1:]


def path_of(durations: torch.Tensor) -> torch.Tensor:
    """durations (S,) non-negative ints -> the symbol of each frame (sum(durations),) (length
    regulation, as at synthesis: a symbol of 0 frames is skipped)."""
    return torch.repeat_interleave(torch.arange(len(durations), device=durations.device), durations)


def round_durations(frames: torch.Tensor, min_total: int = 1) -> torch.Tensor:
    """Real-valued frames per symbol (S,) -> integers whose running sum stays within half a frame of
    the real running sum (so a rate change scales the total length in proportion, with no drift
    from rounding each symbol alone); at least ``min_total`` frames in all."""
    ends = torch.round(torch.cumsum(frames.clamp(min=0).double(), 0)).long()
    d = torch.diff(ends, prepend=ends.new_zeros(1))
    if int(d.sum()) < min_total:
        d[-1] += min_total - int(d.sum())
    return d
