"""Stage A pieces shared by train_text.py and scripts/evaluate.py: tokenizer preparation, the
packed train/val streams, the LM loss and perplexity / bits-per-byte evaluation."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omni.config import TrainConfig, to_dict
from omni.data import DataError, LineFile, PackedTokens, is_val_line, tokenize_corpus
from omni.engine.checkpoint import MODEL_FILE, load_weights, read_stage_config
from omni.engine.runtime import Runtime
from omni.engine.stage import Phase, Stage
from omni.files import atomic_write
from omni.thinker.model import ThinkerConfig, ThinkerLM
from omni.thinker.tokenizer import Tokenizer, load_tokenizer, train_bpe

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def tokenizer_in(ckpt_dir: str | Path) -> Tokenizer:
    """The tokenizer saved in a checkpoint folder (tokenizer.json, or a SentencePiece model)."""
    for name in TOKENIZER_FILES:
        if (Path(ckpt_dir) / name).is_file():
            return load_tokenizer(Path(ckpt_dir) / name)
    raise DataError(f"no tokenizer.json or tokenizer.model in {ckpt_dir}: train Stage A first "
                    "(python train_text.py --config configs/thinker_tiny.json)")


def save_tokenizer(tok: Tokenizer, ckpt_dir: Path) -> None:
    name = "tokenizer.model" if tok.__class__.__name__ == "SentencePieceTokenizer" else "tokenizer.json"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ckpt_dir / name, tok.save)  # a torn tokenizer beside good weights would be worse than none


def has_checkpoint_tokenizer(save_dir: Path) -> bool:
    """Whether save_dir holds a tokenizer that belongs to a checkpoint. One without weights beside it
    was left by a run that failed before its first checkpoint (or by an older version that wrote it
    before checking the data): nothing vouches for it, so it is never reused."""
    return (save_dir / MODEL_FILE).is_file() and any((save_dir / n).is_file() for n in TOKENIZER_FILES)


def prepare_tokenizer(data: TextDataConfig, vocab_size: int, save_dir: Path) -> Tokenizer:
    """``data.tokenizer`` if set; else the one a checkpoint in save_dir was trained with; else a BPE
    trained on the corpus. A trained tokenizer is not written here: ``build_stage`` saves it once the
    data has proved usable, so a run that fails on its data leaves nothing behind."""
    if data.tokenizer:
        return load_tokenizer(data.tokenizer)
    if has_checkpoint_tokenizer(save_dir):
        return tokenizer_in(save_dir)
    for name in TOKENIZER_FILES:
        if (save_dir / name).is_file():
            log.warning("%s has no checkpoint beside it (left by a run that stopped before its first "
                        "checkpoint); training a new tokenizer", save_dir / name)
    lines = LineFile(data.train_file)
    documents = (text for _, text in lines.iter_text() if text is not None)
    first = next(documents, None)
    if first is None:  # checked before training: BPE on nothing would still make a (byte-only) tokenizer
        raise DataError(f"{data.train_file}: no usable text (empty file, or every line empty / not UTF-8)")
    log.info("training a %d-token byte-level BPE on %s (%d lines)", vocab_size, lines.path, len(lines))
    return train_bpe(itertools.chain([first], documents), vocab_size)


@dataclass
class TextStreams:
    train: np.ndarray  # (N,) uint32 packed tokens, EOS between documents
    val: np.ndarray


def load_streams(data: TextDataConfig, tok: Tokenizer, seed: int) -> TextStreams:
    """Tokenize (cached) and split: a separate val_file, or a deterministic held-out fraction."""
    eos = tok.special["<|eos|>"]
    corpus = tokenize_corpus(data.train_file, tok, eos)
    n_lines = len(corpus.line_starts) - 1
    if n_lines == 0 or len(corpus.tokens) == 0:
        raise DataError(f"{data.train_file}: no usable text (empty file, or every line empty / not UTF-8)")
    if data.val_file:
        train = np.asarray(corpus.tokens)
        val = np.asarray(tokenize_corpus(data.val_file, tok, eos).tokens)
    else:
        held = is_val_line(n_lines, data.val_fraction, seed)
        train, val = corpus.select(~held), corpus.select(held)
    log.info("%s: %d lines, %d train tokens, %d val tokens, %d lines skipped", data.train_file,
             n_lines, len(train), len(val), corpus.n_skipped)
    return TextStreams(train, val)


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy; batch x, y (B, T)."""
    x, y = batch
    return model(x, targets=y), {}


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows: PackedTokens, batch_size: int,
                max_batches: int | None) -> dict[str, float]:
    """Mean next-token loss and perplexity over the first ``max_batches`` batches (all if None)."""
    device = next(model.parameters()).device
    n = len(windows) if max_batches is None else min(len(windows), max_batches * batch_size)
    total, count = 0.0, 0
    for lo in range(0, n, batch_size):
        x, y = (torch.stack(t) for t in zip(*(windows[i] for i in range(lo, min(lo + batch_size, n)))))
        total += model(x.to(device), targets=y.to(device)).item() * y.numel()
        count += y.numel()
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": float(count)}


@torch.no_grad()
def window_losses(model: nn.Module, windows: PackedTokens, n: int) -> np.ndarray:
    """The mean next-token loss of each of the first ``n`` windows, one forward pass each: the rows a
    bootstrap interval of the held-out loss resamples (all windows have the same length, so their mean
    is evaluate_lm's loss over the same windows)."""
    device = next(model.parameters()).device
    out = []
    for i in range(min(n, len(windows))):
        x, y = windows[i]
        out.append(model(x[None].to(device), targets=y[None].to(device)).item())
    return np.asarray(out)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of val under the add-one-smoothed unigram of train: the
    baseline a language model must beat by using context."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val].mean())


def load_thinker(ckpt_dir: str | Path, device: torch.device) -> tuple[nn.Module, Tokenizer, TextStageConfig]:
    """Rebuild the Thinker from a Stage A checkpoint folder (config.json + weights + tokenizer)."""
    cfg = read_stage_config(ckpt_dir, TextStageConfig)
    model = ThinkerLM(cfg.model)
    load_weights(model, ckpt_dir)
    return model.to(device).eval(), tokenizer_in(ckpt_dir), cfg


def corpus_bytes(path: str | Path) -> int:
    """UTF-8 bytes of the usable lines, each with its newline (what EOS stands for)."""
    return sum(len(t.encode("utf-8")) + 1 for _, t in LineFile(path).iter_text() if t is not None)


@dataclasses.dataclass
class TextDataConfig:
    """One document per line. ``val_file`` empty: hold out ``val_fraction`` of the train lines."""
    train_file: str
    val_file: str = ""
    val_fraction: float = 0.01
    tokenizer: str = ""  # tokenizer.json / SentencePiece .model; empty: train BPE into save_dir


@dataclasses.dataclass
class TextStageConfig:
    model: ThinkerConfig
    data: TextDataConfig
    train: TrainConfig


def before(cfg: TextStageConfig, rt: Runtime, args: argparse.Namespace) -> list[Phase]:
    """--overwrite starts over, the tokenizer trained into save_dir included. No earlier phases."""
    tok_file = Path(cfg.train.save_dir) / "tokenizer.json"
    if args.overwrite and rt.is_main and not cfg.data.tokenizer and tok_file.exists():
        tok_file.unlink()
    return []


def build_stage(cfg: TextStageConfig, rt: Runtime) -> Stage:
    """The tokenizer (trained into save_dir when the config names none), the packed token streams and
    the Thinker. ``cfg.model.vocab_size`` becomes the tokenizer's real size."""
    save_dir = Path(cfg.train.save_dir)
    # rank 0 trains the tokenizer, checks the data and builds the token caches; the others then read them
    if rt.is_main:
        tok = prepare_tokenizer(cfg.data, cfg.model.vocab_size, save_dir)
    else:
        rt.barrier()
        tok = load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else tokenizer_in(save_dir)
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    train_set = PackedTokens(streams.train, cfg.model.ctx_len, f"{cfg.data.train_file} (train split)")
    val_set = PackedTokens(streams.val, cfg.model.ctx_len, f"{cfg.data.val_file or cfg.data.train_file} (val split)")
    if rt.is_main:
        if not cfg.data.tokenizer and not has_checkpoint_tokenizer(save_dir):
            save_tokenizer(tok, save_dir)  # the data is usable: now the tokenizer may be written (and read)
        rt.barrier()
    if tok.vocab_size != cfg.model.vocab_size:
        log.info("model.vocab_size %d -> %d (the tokenizer's real size)", cfg.model.vocab_size, tok.vocab_size)
        cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(cfg.train.seed)
    model = ThinkerLM(cfg.model)
    log.info("ThinkerLM: %.2fM parameters", model.num_params() / 1e6)
    stage = Stage(
        name="thinker", model=model, train_set=train_set, loss_fn=lm_loss, config=to_dict(cfg),
        # val_batches counts global batches, so the metric is the same on 1 or N processes
        evaluate=lambda m: evaluate_lm(m, val_set, cfg.train.batch_size, cfg.train.val_batches * rt.world_size),
        count_items=lambda batch: batch[0].numel(), items_unit="tok", best_metric="val_loss",
        save_extra=lambda d: save_tokenizer(tok, d))
    return stage


CONFIG = TextStageConfig
DEFAULT_CONFIG = "configs/thinker_tiny.json"
