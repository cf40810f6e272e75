"""Byte-level BPE (HF ``tokenizers``) with μOmni's reserved special tokens; SentencePiece loading.

User text is always encoded with special-token strings treated as plain text, so a user typing
``<|eos|>`` cannot inject a control token; special tokens enter sequences only by id.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from omni.data import DataError

log = logging.getLogger(__name__)

# Order is part of the format: ids 0..len-1 in every tokenizer μOmni trains.
SPECIAL_TOKENS = (
    "<|pad|>", "<|unk|>", "<|bos|>", "<|eos|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<|image_start|>", "<|image_end|>", "<|audio_start|>", "<|audio_end|>",
)


class TokenizerError(DataError):
    """A tokenizer file is missing, unreadable or lacks μOmni's special tokens; the message names it."""


class BPETokenizer:
    """Byte-level BPE: any UTF-8 string round-trips exactly through encode/decode."""

    def __init__(self, tok: HFTokenizer) -> None:
        self._tok = tok
        self._tok.encode_special_tokens = True
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks μOmni special tokens {missing}; retrain it")
        self.special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def fingerprint(self) -> str:
        """A short hash of the vocabulary and merges; caches of token ids are keyed by it."""
        return hashlib.sha1(self._tok.to_str().encode()).hexdigest()[:16]


class SentencePieceTokenizer:
    """An existing SentencePiece ``.model``; μOmni's special tokens are appended after its vocab
    unless the model already defines them."""

    def __init__(self, path: str | Path) -> None:
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self._path = Path(path)
        n = self._sp.get_piece_size()
        builtin = {"<|unk|>": self._sp.unk_id(), "<|bos|>": self._sp.bos_id(),
                   "<|eos|>": self._sp.eos_id(), "<|pad|>": self._sp.pad_id()}
        self.special: dict[str, int] = {}
        self._extra: dict[int, str] = {}
        for t in SPECIAL_TOKENS:
            pid = builtin.get(t, -1)
            if pid < 0 and self._sp.piece_to_id(t) != self._sp.unk_id():
                pid = self._sp.piece_to_id(t)  # the model defines this piece itself
            if pid < 0:
                pid = n + len(self._extra)
                self._extra[pid] = t
            self.special[t] = pid
        self._n = n

    @property
    def vocab_size(self) -> int:
        return self._n + len(self._extra)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        out, run = [], []
        for i in ids:
            if i in self._extra:
                out.append(self._sp.decode(run))
                run = []
                if not skip_special:
                    out.append(self._extra[i])
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._path.read_bytes())

    def fingerprint(self) -> str:
        return hashlib.sha1(self._path.read_bytes()).hexdigest()[:16]


Tokenizer = BPETokenizer | SentencePieceTokenizer


def train_bpe(lines: Iterator[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train byte-level BPE from an iterator of documents (streamed: never all in memory)."""
    tok = HFTokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=True)
    tok.train_from_iterator(lines, trainer=trainer)
    log.info("trained byte-level BPE: %d tokens (target %d)", tok.get_vocab_size(), vocab_size)
    return BPETokenizer(tok)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """``tokenizer.json`` (HF, μOmni's format) or a SentencePiece ``.model``."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer not found: {path} (train Stage A first: python train_text.py)")
    if path.suffix == ".model":
        try:
            return SentencePieceTokenizer(path)
        except RuntimeError as e:
            raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises a plain Exception for a file it cannot parse
        raise TokenizerError(f"{path}: not a readable tokenizer.json ({e}); delete it and train Stage A "
                             "again, or point data.tokenizer at a good one") from None
    return BPETokenizer(tok)
