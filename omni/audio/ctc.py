"""Character CTC for Stage B: vocabulary, text normalisation, greedy decoding, CER/WER.

At 12.5 Hz an encoder frame lasts 80 ms, shorter speech runs ~15 characters per second, so one
symbol per frame cannot spell it (CTC needs at least one frame per character, two across a
repeated letter). The CTC head therefore emits ``symbols_per_frame`` symbols per encoder frame
(a 25 Hz output for the default 2); the encoder itself stays at 12.5 Hz for later stages.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import torch

from omni.stats import ratio_interval

BLANK = 0
_KEEP = re.compile(r"[^a-z0-9' ]+")


def normalize_text(text: str) -> str:
    """Lowercase ASCII letters, digits, apostrophes and single spaces: what the ASR head spells."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = _KEEP.sub(" ", text.replace("-", " "))
    return " ".join(text.split())


class CharVocab:
    """Index 0 is the CTC blank; then the characters, in a fixed order."""

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError(f"a character vocabulary needs distinct single characters, got {chars}")
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def default(cls) -> "CharVocab":
        return cls(list(" 'abcdefghijklmnopqrstuvwxyz0123456789"))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Normalised text -> ids; characters outside the vocabulary are an error (normalise first)."""
        missing = sorted({c for c in text if c not in self.index})
        if missing:
            raise ValueError(f"characters {missing} are not in the vocabulary; normalize_text() first")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != BLANK)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"blank": BLANK, "chars": self.chars}) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharVocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: CharVocab) -> list[str]:
    """log_probs (B, T, V), lengths (B,) -> best-path strings (argmax, merge repeats, drop blanks), with
    single spaces between words: a space before the first word, after the last or doubled separates
    nothing (the model says it over silence) and is not part of the transcript."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        ids = row[:n].tolist()
        merged = [c for i, c in enumerate(ids) if c != BLANK and (i == 0 or c != ids[i - 1])]
        out.append(" ".join(vocab.decode(merged).split()))
    return out


def edit_distance(a: list | str, b: list | str) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus CER and WER: total edits / total reference characters (words)."""
    char_edits = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    word_edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    n_chars = max(1, sum(len(r) for r in refs))
    n_words = max(1, sum(len(r.split()) for r in refs))
    return {"cer": char_edits / n_chars, "wer": word_edits / n_words}


def _row_counts(refs: list[str], hyps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: character edits and reference characters, after normalize_text on both sides."""
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps, strict=True)]
    return (np.array([edit_distance(r, h) for r, h in pairs], dtype=np.float64),
            np.array([len(r) for r, _ in pairs], dtype=np.float64))


def cer_interval(refs: list[str], hyps: list[str], *others: list[str], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus CER over rows (omni.stats.ratio_interval of edits
    over characters). With ``others`` (a second path's transcripts of the same rows): the interval of
    CER(hyps) - CER(others[0]), both scored on each same resample (paired)."""
    if not refs:
        raise ValueError("cer_interval needs at least one row")
    edits, chars = _row_counts(refs, hyps)
    paired = _row_counts(refs, others[0])[0] if others else None
    return ratio_interval(edits, chars, paired, n_boot, seed, level)
