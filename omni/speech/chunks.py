"""Text cut into pieces the Talker speaks one at a time (pure Python: the torch-free ONNX runtime
uses it too)."""
from __future__ import annotations

import re

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+")


def split_text(text: str, max_chars: int) -> list[str]:
    """Normalised text -> pieces of at most max_chars, cut after sentence ends, then after commas,
    then at spaces (a single word longer than max_chars is cut hard). No character is lost."""
    pieces: list[str] = []
    for sentence in _SENTENCE.split(text):
        pieces.extend(p for p in _fit(sentence.strip(), max_chars, [_CLAUSE, _SPACE]) if p)
    return pieces


_CLAUSE, _SPACE = re.compile(r"(?<=,)\s+"), re.compile(r"\s+")


def _fit(text: str, max_chars: int, cuts: list[re.Pattern]) -> list[str]:
    """Greedily join the parts of ``text`` split by cuts[0] into pieces <= max_chars (recursing
    into cuts[1:] for a part that is itself too long)."""
    if len(text) <= max_chars:
        return [text]
    if not cuts:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    out, cur = [], ""
    for part in cuts[0].split(text):
        joined = f"{cur} {part}" if cur else part
        if len(joined) <= max_chars:
            cur = joined
            continue
        if cur:
            out.append(cur)
        if len(part) > max_chars:
            out.extend(_fit(part, max_chars, cuts[1:]))
            cur = ""
        else:
            cur = part
    return out + ([cur] if cur else [])
