"""What the Talker reads: text normalised to a small character set, and its ids (TextVocab).

Characters, not BPE pieces: with 2k utterances a 2M model learns to align characters to sound
within minutes. Unknown characters are dropped and counted, never raised on.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

PAD, START, UNK = 0, 1, 2
# what the Talker reads: lowercase letters, digits, space and the punctuation that shapes prosody
DEFAULT_CHARS = list(" abcdefghijklmnopqrstuvwxyz0123456789'.,?!-:;\"")
_REPLACE = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-",
            "(": ",", ")": ",", "&": " and ", "%": " percent "}


class TextVocab:
    """Characters -> ids. 0 pad, 1 start, 2 unknown (never emitted: unknown characters are dropped
    and counted), then the characters. Saved as JSON beside the Talker weights."""

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError(f"a character vocabulary needs distinct single characters, got {chars}")
        self.chars = chars
        self.index = {c: i + 3 for i, c in enumerate(chars)}

    @classmethod
    def default(cls) -> "TextVocab":
        return cls(DEFAULT_CHARS)

    def __len__(self) -> int:
        return len(self.chars) + 3

    def normalize(self, text: str) -> tuple[str, Counter]:
        """-> (text with only vocabulary characters and single spaces, Counter of dropped chars)."""
        for a, b in _REPLACE.items():
            text = text.replace(a, b)
        text = unicodedata.normalize("NFKD", text).lower()
        dropped: Counter = Counter()
        kept = []
        for c in text:
            if c in self.index:
                kept.append(c)
            elif c.isspace():
                kept.append(" ")
            elif not unicodedata.combining(c):  # accents of NFKD-split letters vanish silently
                dropped[c] += 1
                kept.append(" ")
        return " ".join("".join(kept).split()), dropped

    def encode(self, text: str) -> tuple[list[int], Counter]:
        """Raw text -> (ids, dropped characters). Unknown characters never raise."""
        clean, dropped = self.normalize(text)
        return [self.index[c] for c in clean], dropped

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"pad": PAD, "start": START, "unk": UNK, "chars": self.chars}) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "TextVocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])
