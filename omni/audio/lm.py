"""CTC prefix beam search with a character n-gram language model (Stage B decoding).

Greedy CTC takes each frame's best symbol on its own, so a frame where the acoustics are unsure
between "the" and "tha" is decided by acoustics alone. Prefix beam search (Hannun et al., 2014)
keeps the ``beam`` best transcripts while walking the frames, summing over every CTC path that
collapses to the same transcript, and scores each one as

    log P_ctc(prefix) + lm_weight * log P_lm(prefix) + length_bonus * len(prefix)

(shallow fusion; the bonus offsets the LM's preference for short outputs). At the end each
transcript also pays the LM's end-of-sentence probability.

A space that separates nothing (before the first word, or after another space) does not extend a
prefix: it counts like a blank. The model says such spaces over silence, and the LM, which never saw
a transcript open with a space, would otherwise turn them into a made-up word ("a dog" for "dog").
Likewise the end of sentence is scored after the last word, not after a trailing space.

The language model is a character n-gram with Witten-Bell interpolation, small enough to build in
seconds from the Stage B training transcripts, which the audio builder keeps apart from the held-out
sentences (omni/cli/eval_asr.py also drops any evaluated reference from the LM's text).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch

from omni.audio.ctc import BLANK, CharVocab

EOS = "\n"     # the LM's end-of-sentence symbol (never in a transcript)
START = "\x02"  # left padding of the first contexts

_NEG_INF = float("-inf")


class CharNgramLM:
    """P(next char | previous order-1 chars) over ``alphabet`` + end of sentence, Witten-Bell smoothed."""

    def __init__(self, order: int, alphabet: list[str]) -> None:
        if order < 1:
            raise ValueError(f"an n-gram order is at least 1, got {order}")
        self.order = order
        self.symbols = list(alphabet) + [EOS]
        self.index = {c: i for i, c in enumerate(self.symbols)}
        self.ngrams: dict[str, int] = defaultdict(int)     # "ctx" + next symbol, every length 1..order
        self.contexts: dict[str, tuple[int, int]] = {}     # ctx -> (count, distinct next symbols)
        self.sentences = 0
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def train(cls, sentences: Iterable[str], order: int, alphabet: list[str]) -> "CharNgramLM":
        """Count every n-gram (and every shorter one) of the sentences; unknown characters are an error."""
        lm = cls(order, alphabet)
        pad = START * (order - 1)
        for line_no, s in enumerate(sentences, 1):
            bad = sorted({c for c in s if c not in lm.index or c == EOS})
            if bad:
                raise ValueError(f"sentence {line_no} has characters {bad} outside the LM alphabet: {s!r}")
            text = pad + s + EOS
            for i in range(order - 1, len(text)):
                for k in range(order):
                    lm.ngrams[text[i - k:i + 1]] += 1
            lm.sentences += 1
        if lm.sentences == 0:
            raise ValueError("no sentences to train a language model on")
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for gram, n in lm.ngrams.items():
            t = totals[gram[:-1]]
            t[0] += n
            t[1] += 1
        lm.contexts = {ctx: (t[0], t[1]) for ctx, t in totals.items()}
        return lm

    def context(self, prefix: str) -> str:
        """The order-1 symbols an LM query conditions on after ``prefix``."""
        if self.order == 1:
            return ""
        return (START * (self.order - 1) + prefix)[-(self.order - 1):]

    def log_probs(self, context: str) -> np.ndarray:
        """context (order-1 chars) -> (len(symbols),) log-probabilities of the next symbol."""
        hit = self._cache.get(context)
        if hit is not None:
            return hit
        p = np.full(len(self.symbols), 1.0 / len(self.symbols))
        for k in range(self.order):
            ctx = context[len(context) - k:] if k else ""
            seen = self.contexts.get(ctx)
            if seen is None:   # a longer context than this was never seen either
                break
            total, types = seen
            counts = np.array([self.ngrams.get(ctx + c, 0) for c in self.symbols], dtype=np.float64)
            p = (counts + types * p) / (total + types)
        out = np.log(p)
        self._cache[context] = out
        return out

    def sentence_log_prob(self, s: str) -> float:
        """log P(s, end of sentence) in nats."""
        return float(sum(self.log_probs(self.context(s[:i]))[self.index[c]] for i, c in enumerate(s + EOS)))


def _lse(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def prefix_beam_search(log_probs: np.ndarray, vocab: CharVocab, lm: CharNgramLM | None = None, beam: int = 16,
                       lm_weight: float = 0.5, length_bonus: float = 1.0, prune: float = -12.0) -> str:
    """log_probs (T, V) of one utterance -> the best transcript. Symbols below ``prune`` (log-prob)
    in a frame are not tried there; with ``lm=None`` it is plain CTC beam search (no bonus)."""
    chars = vocab.chars
    lm_score: dict[str, float] = {"": 0.0}

    def fused(prefix: str, pb: float, pnb: float) -> float:
        if lm is None:
            return _lse(pb, pnb)
        return _lse(pb, pnb) + lm_weight * lm_score[prefix] + length_bonus * len(prefix)

    def extend(prefix: str, c: str) -> str:
        new = prefix + c
        if lm is not None and new not in lm_score:
            lm_score[new] = lm_score[prefix] + float(lm.log_probs(lm.context(prefix))[lm.index[c]])
        return new

    beams: dict[str, tuple[float, float]] = {"": (0.0, _NEG_INF)}   # prefix -> (log p ends in blank, not)
    for frame in log_probs:
        tried = [int(i) for i in np.nonzero(frame > prune)[0] if i != BLANK]
        nxt: dict[str, list[float]] = defaultdict(lambda: [_NEG_INF, _NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            same = nxt[prefix]
            same[0] = _lse(same[0], total + float(frame[BLANK]))
            last = prefix[-1] if prefix else None
            for i in tried:
                c, lp = chars[i - 1], float(frame[i])
                if c == " " and last in (None, " "):   # separates nothing: like a blank (module docstring)
                    same[0] = _lse(same[0], total + lp)
                elif c == last:   # a repeat collapses unless a blank came between
                    same[1] = _lse(same[1], pnb + lp)
                    ext = nxt[extend(prefix, c)]
                    ext[1] = _lse(ext[1], pb + lp)
                else:
                    ext = nxt[extend(prefix, c)]
                    ext[1] = _lse(ext[1], total + lp)
        ranked = sorted(nxt.items(), key=lambda kv: fused(kv[0], *kv[1]), reverse=True)
        beams = {p: (v[0], v[1]) for p, v in ranked[:beam]}

    def final(kv: tuple[str, tuple[float, float]]) -> float:
        prefix, (pb, pnb) = kv
        end = 0.0 if lm is None else lm_weight * float(lm.log_probs(lm.context(prefix.rstrip(" ")))[lm.index[EOS]])
        return fused(prefix, pb, pnb) + end
    return max(beams.items(), key=final)[0].rstrip(" ")


def beam_decode(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: CharVocab, lm: CharNgramLM | None,
                beam: int = 16, lm_weight: float = 0.5, length_bonus: float = 1.0) -> list[str]:
    """log_probs (B, T, V), lengths (B,) -> one transcript per row (prefix beam search + LM)."""
    lp = log_probs.float().cpu().numpy()
    return [prefix_beam_search(lp[b, :n], vocab, lm, beam, lm_weight, length_bonus)
            for b, n in enumerate(lengths.cpu().tolist())]

