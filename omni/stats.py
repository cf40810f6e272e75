"""Confidence intervals shared by the evaluators and the report card."""
from __future__ import annotations

import numpy as np


def ratio_interval(num: np.ndarray, den: np.ndarray, paired_num: np.ndarray | None = None, n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(num) / sum(den) over rows (a CER: edits / characters; a
    mean loss: nats / tokens). The rows are resampled with replacement ``n_boot`` times, so the interval
    says how far the score of this many rows moves with other rows of the same kind. ``den`` holds
    counts (a resample's total is floored at 1). With ``paired_num`` (a second system's numerators on
    the same rows): the interval of the difference of the two ratios, both taken on each resample."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(num) == 0 or len(num) != len(den):
        raise ValueError(f"ratio_interval needs rows: got {len(num)} numerators and {len(den)} denominators")
    idx = np.random.default_rng(seed).integers(0, len(num), (n_boot, len(num)))
    total = np.maximum(den[idx].sum(1), 1)
    stat = num[idx].sum(1) / total
    if paired_num is not None:
        stat = stat - np.asarray(paired_num, dtype=np.float64)[idx].sum(1) / total
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
