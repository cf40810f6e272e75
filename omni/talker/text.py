"""What the Talker reads: text normalised to a small character set, and its ids (TextVocab).

Characters, not BPE pieces: with 2k utterances a 2M model learns to align characters to sound
within minutes. Unknown characters are dropped and counted, never raised on. A vocabulary of kind
``phonemes`` reads the same normalised text through espeak-ng (omni/talker/phonemes.py) and gives the
ids of its IPA symbols instead.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

from omni.talker.phonemes import phonemize

PAD, START, UNK = 0, 1, 2
# what the Talker reads: lowercase letters, digits, space and the punctuation that shapes prosody
DEFAULT_CHARS = list(" abcdefghijklmnopqrstuvwxyz0123456789'.,?!-:;\"")
# the symbols espeak-ng's en-us voice gave for 30,000 sentences of the text corpus, and clause punctuation
DEFAULT_PHONEMES = list(" !,.:;?abdefhijklmnoprstuvwxzæðŋɐɑɔəɚɛɜɡɪɬɹɾʃʊʌʒʔˈˌː\u0329\u0303θᵻ")
KINDS = ("chars", "phonemes")
_REPLACE = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2013": "-",
            "(": ",", ")": ",", "&": " and ", "%": " percent "}


class TextVocab:
    """Characters -> ids. 0 pad, 1 start, 2 unknown (never emitted: unknown characters are dropped
    and counted), then the characters. Saved as JSON beside the Talker weights."""

    def __init__(self, chars: list[str], kind: str = "chars") -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError(f"a character vocabulary needs distinct single characters, got {chars}")
        if kind not in KINDS:
            raise ValueError(f"unknown Talker text input '{kind}'; choose from {', '.join(KINDS)}")
        self.chars, self.kind = chars, kind
        self.index = {c: i + 3 for i, c in enumerate(chars)}
        self._text_chars = set(DEFAULT_CHARS) if kind == "phonemes" else set(chars)
        if kind == "phonemes":
            phonemize("")  # a missing espeak-ng fails here, with the fix, not at the first row

    @classmethod
    def default(cls, kind: str = "chars") -> "TextVocab":
        """The character vocabulary, or (``kind="phonemes"``) espeak-ng's IPA symbols."""
        return cls(DEFAULT_PHONEMES if kind == "phonemes" else DEFAULT_CHARS, kind)

    def __len__(self) -> int:
        return len(self.chars) + 3

    def normalize(self, text: str) -> tuple[str, Counter]:
        """-> (text with only readable characters and single spaces, Counter of dropped chars).
        Readable: the vocabulary's characters, or for phonemes the default character set."""
        for a, b in _REPLACE.items():
            text = text.replace(a, b)
        text = unicodedata.normalize("NFKD", text).lower()
        dropped: Counter = Counter()
        kept = []
        for c in text:
            if c in self._text_chars:
                kept.append(c)
            elif c.isspace():
                kept.append(" ")
            elif not unicodedata.combining(c):  # accents of NFKD-split letters vanish silently
                dropped[c] += 1
                kept.append(" ")
        return " ".join("".join(kept).split()), dropped

    def ids(self, clean: str) -> tuple[list[int], Counter]:
        """Normalised text -> (ids, dropped symbols): its characters, or its phonemes' IPA symbols
        (a symbol outside the vocabulary is dropped and counted)."""
        symbols = phonemize(clean) if self.kind == "phonemes" else clean
        dropped = Counter(c for c in symbols if c not in self.index)
        return [self.index[c] for c in symbols if c in self.index], dropped

    def encode(self, text: str) -> tuple[list[int], Counter]:
        """Raw text -> (ids, dropped characters and symbols). Unknown characters never raise."""
        clean, dropped = self.normalize(text)
        ids, lost = self.ids(clean)
        return ids, dropped + lost

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"pad": PAD, "start": START, "unk": UNK, "kind": self.kind,
                                          "chars": self.chars}, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "TextVocab":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        # vocabularies written before phoneme input have no kind: they are characters
        return cls(data["chars"], data["kind"] if "kind" in data else "chars")
