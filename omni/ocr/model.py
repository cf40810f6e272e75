"""OCR model: a ViT over a text-line image feeding every patch token to an autoregressive character
decoder with cross-attention; greedy and beam decoding.

A line image is (1, H, W): H = ``img_size`` pixels, any width up to ``max_width`` (padded to a
multiple of ``patch``). Patches are ``patch`` x ``patch``; the encoder orders them column by
column (left to right, top to bottom inside a column), with learned row and column positions, and
a padding mask so the padded columns of a batch never change the real ones.

With ``ctc_weight`` > 0 an auxiliary CTC head reads each patch column (its ``rows`` states side by
side) and spells the line left to right, blank = the pad id: the hybrid CTC/attention recipe of
speech recognition. It makes the encoder lay the characters out in reading order early, which an
attention decoder trained from scratch otherwise takes thousands of steps to discover.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omni.layers import Block, CrossBlock, RMSNorm, RotaryEmbedding, init_weights
from omni.vision.encoder import swiglu_hidden

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass
class OcrModelConfig:
    img_size: int          # line height in pixels
    max_width: int         # widest line in pixels; wider lines are scaled down whole (never cropped)
    patch: int
    vision_d_model: int
    vision_n_layers: int
    vision_n_heads: int
    vision_d_ff: int
    decoder_d_model: int
    decoder_n_layers: int
    decoder_n_heads: int
    decoder_d_ff: int
    max_text_len: int      # characters per line (longer rows are skipped and counted)
    dropout: float
    ctc_weight: float = 0.0  # hybrid CTC/attention: weight of a CTC loss on the encoder's columns (0: no CTC head)
    ctc_symbols: int = 2     # CTC symbols per patch column (a column is `patch` px; a character can be narrower)
    decoder: str = "attention"  # which head reads at validation (val_cer, best/), evaluation and chat: attention | ctc


class OcrVocab:
    """Characters <-> ids; ids 0-2 are pad, bos, eos. Saved as vocab.json beside the weights."""

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("an OCR vocabulary is a list of distinct single characters")
        self.chars = list(chars)
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(chars)}

    @classmethod
    def ascii(cls) -> "OcrVocab":
        """Printable ASCII, space included (what the OCR builders render)."""
        return cls([chr(c) for c in range(0x20, 0x7F)])

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def unknown(self, text: str) -> str:
        return "".join(sorted({c for c in text if c not in self.index}))

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.chars[i - len(SPECIALS)])
        return "".join(out)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"chars": self.chars}, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "OcrVocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])


class LineEncoder(nn.Module):
    """images (B, 1, H, W), widths (B,) real pixels -> patch states (B, N, D), mask (B, N)."""

    def __init__(self, cfg: OcrModelConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch or cfg.max_width % cfg.patch:
            raise ValueError(f"img_size {cfg.img_size} and max_width {cfg.max_width} must be multiples of "
                             f"patch {cfg.patch}")
        d = cfg.vision_d_model
        self.patch, self.rows, self.max_cols = cfg.patch, cfg.img_size // cfg.patch, cfg.max_width // cfg.patch
        self.patch_embed = nn.Conv2d(1, d, cfg.patch, stride=cfg.patch)
        self.row_pos = nn.Parameter(torch.zeros(self.rows, d))
        self.col_pos = nn.Parameter(torch.zeros(self.max_cols, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(d, cfg.vision_n_heads, cfg.vision_n_heads, swiglu_hidden(cfg.vision_d_ff), cfg.dropout,
                  causal=False, rope=None) for _ in range(cfg.vision_n_layers))
        self.norm = RMSNorm(d)

    def forward(self, images: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = images.shape
        if H != self.rows * self.patch or W % self.patch or W > self.max_cols * self.patch:
            raise ValueError(f"expected line images (B, 1, {self.rows * self.patch}, W) with W a multiple of "
                             f"{self.patch} and <= {self.max_cols * self.patch}, got {tuple(images.shape)}")
        x = self.patch_embed(images)                                    # (B, D, rows, cols)
        cols = x.shape[-1]
        x = x + self.row_pos.T[None, :, :, None] + self.col_pos[:cols].T[None, :, None, :]
        x = x.permute(0, 3, 2, 1).reshape(B, cols * self.rows, -1)      # column by column
        real_cols = (widths + self.patch - 1) // self.patch             # (B,)
        mask = (torch.arange(cols, device=images.device)[None] < real_cols[:, None])
        mask = mask.repeat_interleave(self.rows, dim=1)                 # (B, cols * rows)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        return self.norm(x), mask


class OcrModel(nn.Module):
    """LineEncoder + character decoder (causal self-attention with RoPE, cross-attention)."""

    def __init__(self, cfg: OcrModelConfig, vocab_size: int = len(SPECIALS) + 95) -> None:
        """``vocab_size``: of the character vocabulary (default: ``OcrVocab.ascii()``)."""
        super().__init__()
        if cfg.decoder not in ("attention", "ctc") or (cfg.decoder == "ctc" and cfg.ctc_weight <= 0):
            raise ValueError(f"model.decoder must be 'attention' or 'ctc' (the latter needs model.ctc_weight > 0), "
                             f"got {cfg.decoder!r} with ctc_weight {cfg.ctc_weight}")
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.decoder_d_model
        self.encoder = LineEncoder(cfg)
        self.embed = nn.Embedding(vocab_size, d)
        rope = RotaryEmbedding(d // cfg.decoder_n_heads, cfg.max_text_len + 2)
        self.blocks = nn.ModuleList(
            CrossBlock(d, cfg.decoder_n_heads, swiglu_hidden(cfg.decoder_d_ff), cfg.dropout, rope, cfg.vision_d_model)
            for _ in range(cfg.decoder_n_layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.ctc_head = (nn.Linear(self.encoder.rows * cfg.vision_d_model, vocab_size * cfg.ctc_symbols)
                         if cfg.ctc_weight > 0 else None)
        init_weights(self, max(cfg.vision_n_layers, cfg.decoder_n_layers))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def decode_step(self, ids: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, T), memory (B, N, Dv), mask (B, N) -> logits (B, T, V)."""
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, memory, mask)
        return self.head(self.norm(x))

    def ctc(self, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states -> CTC log-probs (B, cols * ctc_symbols, V) and their lengths (B,)."""
        if self.ctc_head is None:
            raise ValueError("this OCR model has no CTC head (model.ctc_weight is 0)")
        B, N, D = memory.shape
        rows = self.encoder.rows
        logits = self.ctc_head(memory.reshape(B, N // rows, rows * D)).view(B, -1, self.vocab_size)
        lengths = mask.view(B, N // rows, rows)[:, :, 0].sum(1) * self.cfg.ctc_symbols
        return logits.float().log_softmax(-1), lengths

    def forward(self, images: torch.Tensor, widths: torch.Tensor, ids: torch.Tensor, with_ctc: bool = False):
        """Teacher forcing: ids (B, T) = bos + text -> logits (B, T, V) predicting text + eos;
        with_ctc: also the CTC head's (log-probs, lengths)."""
        memory, mask = self.encoder(images, widths)
        logits = self.decode_step(ids, memory, mask)
        return (logits, self.ctc(memory, mask)) if with_ctc else logits


@torch.no_grad()
def greedy_decode(model: OcrModel, images: torch.Tensor, widths: torch.Tensor, max_len: int | None = None
                  ) -> list[list[int]]:
    """Batched argmax decoding -> one id list per image (without bos, up to and excluding eos)."""
    max_len = max_len or model.cfg.max_text_len + 1
    memory, mask = model.encoder(images, widths)
    ids = torch.full((images.shape[0], 1), BOS, dtype=torch.long, device=images.device)
    done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    for _ in range(max_len):
        nxt = model.decode_step(ids, memory, mask)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [_strip(row) for row in ids[:, 1:].tolist()]


@torch.no_grad()
def beam_decode(model: OcrModel, image: torch.Tensor, width: torch.Tensor, beam: int = 4,
                max_len: int | None = None, length_penalty: float = 1.0) -> list[int]:
    """Beam search for one image (1, 1, H, W): the hypothesis with the best log-probability divided
    by length ** length_penalty among those that ended (or the best unfinished one at max_len)."""
    max_len = max_len or model.cfg.max_text_len + 1
    memory, mask = model.encoder(image, width)
    seqs = torch.full((1, 1), BOS, dtype=torch.long, device=image.device)
    scores = torch.zeros(1, device=image.device)
    finished: list[tuple[float, list[int]]] = []
    for step in range(1, max_len + 1):
        k = seqs.shape[0]
        logp = F.log_softmax(model.decode_step(seqs, memory.expand(k, -1, -1), mask.expand(k, -1))[:, -1].float(), -1)
        cand = (scores[:, None] + logp).flatten()
        top = cand.topk(min(beam, cand.numel()))
        rows, toks = top.indices // logp.shape[1], top.indices % logp.shape[1]
        keep = []
        for s, r, t in zip(top.values.tolist(), rows.tolist(), toks.tolist()):
            if t == EOS:
                finished.append((s / step ** length_penalty, seqs[r, 1:].tolist()))
            else:
                keep.append((s, r, t))
        if not keep or (len(finished) >= beam and max(f[0] for f in finished) >= max(s for s, _, _ in keep) / step ** length_penalty):
            break
        seqs = torch.cat([seqs[[r for _, r, _ in keep]], torch.tensor([[t] for _, _, t in keep], device=image.device)], 1)
        scores = torch.tensor([s for s, _, _ in keep], device=image.device)
    if not finished:
        finished.append((float(scores[0]) / max_len ** length_penalty, seqs[0, 1:].tolist()))
    return _strip(max(finished, key=lambda f: f[0])[1])


@torch.no_grad()
def ctc_decode(model: OcrModel, images: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC head's log-probs and lengths for a batch (decode them with ``omni.audio.ctc.greedy_decode``)."""
    return model.ctc(*model.encoder(images, widths))


def _strip(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS)] if EOS in ids else ids
