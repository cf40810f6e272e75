"""Retrieval metrics (recall@k with a fixed number of candidates) and the colour-histogram
nearest-neighbour baseline that Stage C must beat.

Protocol: each query (an image for i2t, a caption for t2i) is ranked against its true partner
plus ``candidates - 1`` distractors drawn, with a fixed seed, from the same source (all of it when
the source is smaller). A distractor whose caption is identical to the query's counts as correct.
"""
from __future__ import annotations

import re

import torch

from omni.images import MEAN, STD

HIST_BINS = 4  # per channel: a 64-bin joint RGB histogram


def candidate_sets(groups: dict[str, list[int]], candidates: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """source -> (n, C) row indices; column 0 is the query itself, the rest its distractors."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, idx in groups.items():
        n = len(idx)
        own = torch.arange(n)[:, None]
        if n <= candidates:  # the whole source is the pool: everything else, no sampling
            others = torch.arange(n).repeat(n, 1)
            rest = others[others != own].view(n, n - 1)
        else:
            keys = torch.rand(n, n, generator=gen)
            keys[torch.arange(n), torch.arange(n)] = 2.0  # never draw the query itself
            rest = keys.argsort(dim=1)[:, :candidates - 1]
        out[name] = torch.tensor(idx)[torch.cat([own, rest], dim=1)]
    return out


def _ranks(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """scores, correct (n, C) -> (n,) how many wrong candidates beat the best correct one."""
    best = scores.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores > best) & ~correct).sum(dim=1)


def recall_at(i2t: torch.Tensor, t2i: torch.Tensor, caption_ids: torch.Tensor, cands: dict[str, torch.Tensor],
              prefix: str = "") -> dict[str, float]:
    """i2t (N images, N captions) and t2i (N captions, N images) scores -> R@1/R@5 per source and overall.

    Keys: ``{prefix}i2t_r1`` ... for all queries, ``{prefix}{source}/i2t_r1`` ... per source,
    ``{prefix}chance_r1`` for the overall pool size.
    """
    out: dict[str, float] = {}
    all_ranks = {"i2t": [], "t2i": []}
    for name, c in cands.items():
        rows = c[:, :1]
        correct = caption_ids[c] == caption_ids[rows]
        for key, s in (("i2t", i2t), ("t2i", t2i)):
            r = _ranks(s[rows, c], correct)
            all_ranks[key].append(r)
            if len(cands) > 1:
                out[f"{prefix}{name}/{key}_r1"] = float((r < 1).float().mean())
                out[f"{prefix}{name}/{key}_r5"] = float((r < 5).float().mean())
    for key, parts in all_ranks.items():
        r = torch.cat(parts)
        out[f"{prefix}{key}_r1"] = float((r < 1).float().mean())
        out[f"{prefix}{key}_r5"] = float((r < 5).float().mean())
    return out


def chance(cands: dict[str, torch.Tensor]) -> dict[str, float]:
    """Expected R@1 / R@5 of a random ranking, averaged over the queries, and the number of queries
    (what an interval of an R@1 needs); per source too (``{source}/...``) when there are several."""
    n = torch.cat([torch.full((len(c),), c.shape[1], dtype=torch.float) for c in cands.values()])
    out = {"chance_r1": float((1.0 / n).mean()), "chance_r5": float((5.0 / n).clamp(max=1).mean()),
           "queries": float(len(n))}
    if len(cands) > 1:
        for name, c in cands.items():
            out.update({f"{name}/chance_r1": 1.0 / c.shape[1], f"{name}/chance_r5": min(1.0, 5.0 / c.shape[1]),
                        f"{name}/queries": float(len(c))})
    return out


# ----------------------------------------------------------------------------- baseline


def colour_histogram(images: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, 3, S, S) -> sqrt of the joint RGB histogram (B, HIST_BINS^3), so a dot
    product of two rows is the Bhattacharyya coefficient of the histograms."""
    rgb = (images * STD + MEAN).clamp(0, 1)
    q = (rgb * HIST_BINS).long().clamp(max=HIST_BINS - 1)  # (B, 3, S, S)
    code = (q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2]
    hist = torch.zeros(images.shape[0], HIST_BINS ** 3)
    hist.scatter_add_(1, code.flatten(1).cpu(), torch.ones(code.flatten(1).shape))
    return (hist / hist.sum(1, keepdim=True)).sqrt()


def bag_of_words(captions: list[str], vocab: dict[str, int]) -> torch.Tensor:
    """captions (N,) -> L2-normalised word-count vectors (N, len(vocab)); unknown words ignored."""
    out = torch.zeros(len(captions), len(vocab))
    for i, c in enumerate(captions):
        for w in re.findall(r"[a-z0-9]+", c.lower()):
            if w in vocab:
                out[i, vocab[w]] += 1
    return out / out.norm(dim=1, keepdim=True).clamp(min=1e-8)


def histogram_baseline(train_hist: torch.Tensor, train_captions: list[str], val_hist: torch.Tensor,
                       val_captions: list[str], k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-learned retrieval through the training set -> (i2t (N, N), t2i (N, N)) scores.

    i2t: an image's k colour-histogram nearest training images vote, weighted by similarity, for
    captions that share words with theirs. t2i: a caption's k nearest training captions (word
    overlap) vote for images whose colour histograms resemble theirs.
    """
    words = sorted({w for c in train_captions + val_captions for w in re.findall(r"[a-z0-9]+", c.lower())})
    vocab = {w: i for i, w in enumerate(words)}
    bow_train, bow_val = bag_of_words(train_captions, vocab), bag_of_words(val_captions, vocab)
    k = min(k, len(train_captions))
    w, idx = (val_hist @ train_hist.T).topk(k, dim=1)                 # (N, k) image neighbours
    i2t = (w[:, :, None] * bow_train[idx]).sum(1) @ bow_val.T         # (N images, N captions)
    w, idx = (bow_val @ bow_train.T).topk(k, dim=1)                   # (N, k) caption neighbours
    t2i = (w[:, :, None] * train_hist[idx]).sum(1) @ val_hist.T       # (N captions, N images)
    return i2t, t2i
