"""The Talker: a decoder-only prefix LM that reads characters and writes codec frames.

Sequence (one row): ``[<s>] [text chars] [BOS] [group_1] ... [group_G]``, right-padded in a
batch (causal attention: a real position never sees a pad, so a padded row computes exactly what it
computes alone, and no mask is needed). A *group* is ``frames_per_step`` consecutive codec frames
(Tacotron's reduction factor: fewer autoregressive steps, and an alignment learnt sooner); its
input embedding is the sum of one embedding per (frame slot, codebook). The hidden state at the
BOS / group_j position predicts every codebook of every frame of group_{j+1} and a stop flag (1 at
the position of the last group).

Text is read as characters (TextVocab): with 2k utterances a 2M model learns to align characters
to sound within minutes, far sooner than 32k BPE pieces it would see a handful of times each.
``depth_layers`` > 0 (the default) predicts a group's r * n_q codes as a chain instead of all at once from one
hidden state: code s is predicted from the hidden state plus the embeddings of codes 0..s-1 of the
same group (frame-major: frame 0's codebooks, then frame 1's), through a small MLP shared by the
slots (RQ-Transformer's depth step, as an MLP). With independent heads a residual codebook is
chosen without knowing which base code it refines, and a group's second frame without its first; the chain
makes the group's distribution a proper product of conditionals, sampled code by code.
The training objective (CE, stop flag, guided attention, self-feeding) is in omni/talker/loss.py.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import ConfigError
from omni.layers import Block, KVCache, RMSNorm, RotaryEmbedding, init_weights
from omni.talker.text import KINDS, START

log = logging.getLogger(__name__)

IGNORE = -100
ALIGNMENTS = ("attention", "durations")


@dataclass
class TalkerConfig:
    """The Talker. ``codebook_size`` must match the codec, ``n_codebooks`` is the codec's or fewer
    (the first ones); ``text_vocab_size`` is filled from the character vocabulary."""
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    ctx_len: int
    dropout: float
    frames_per_step: int = 2
    rope_theta: float = 10000.0
    n_codebooks: int = 0        # 0: all of the codec's; k: its first k (synthesis decodes from those)
    codebook_size: int = 0      # 0: take from the codec
    text_vocab_size: int = 0    # 0: take from the character vocabulary
    max_text_chars: int = 200   # longer text is split at sentence / clause / word boundaries
    max_frames_per_char: float = 12.0  # generation stops at this many codec frames per character
    depth_layers: int = 1       # 0: a group's codes all from one hidden state; n: a chain over them (DepthChain)
    depth_ff: int = 0           # the chain's MLP width (0: d_ff)
    text_input: str = "chars"   # what the text is read as: "chars", or "phonemes" (espeak-ng IPA; omni/talker/phonemes.py)
    text_aux_layer: int = -1    # training only: a head on this layer's attention output (its read of the text)
                                # predicts the next group's base codes (loss.text_aux_weight); -1: none
    alignment: str = "attention"  # how frames find their text: "attention" (a prefix LM, this module) or
                                  # "durations" (an aligned symbol per frame, omni/talker/duration.py)
    encoder_layers: int = 2     # durations: bidirectional text-encoder blocks
    latent_dim: int = 0         # durations: the codec's code-vector width (the aligner's space; 0: from the codec)

    def __post_init__(self) -> None:
        if self.text_input not in KINDS:
            raise ConfigError(f"talker.text_input must be one of {', '.join(KINDS)}, got '{self.text_input}'")
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"talker.alignment must be one of {', '.join(ALIGNMENTS)}, got '{self.alignment}'")
        if self.alignment == "durations" and self.text_aux_layer != -1:
            raise ConfigError("talker.text_aux_layer reads the text through attention; a Talker with "
                              "talker.alignment=durations has none (set it to -1)")
        if not -1 <= self.text_aux_layer < self.n_layers:
            raise ConfigError(f"talker.text_aux_layer must be -1 (none) or a layer 0..{self.n_layers - 1}, "
                              f"got {self.text_aux_layer}")


def make_targets(codes: torch.Tensor, lengths: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
    """Teacher-forcing tensors with exactly one shift.

    codes (B, T, n_q) long, lengths (B,) -> groups (B, G, r, n_q) (the inputs; frames past a
    row's length repeat its last frame), targets (B, G+1, r, n_q) (targets[:, j] = groups[:, j]:
    the position holding group j predicts group j+1; IGNORE past the length), stop (B, G+1) float
    (1 at position G_b, 0 before, -1 after).
    """
    B, T, n_q = codes.shape
    G = -(-T // r)
    t = torch.arange(G * r, device=codes.device)
    real = t[None, :] < lengths[:, None]                                  # (B, G r)
    src = torch.minimum(t[None, :], (lengths[:, None] - 1).clamp(min=0))  # repeat the last frame
    groups = codes.gather(1, src[..., None].expand(B, G * r, n_q))
    tgt = groups.masked_fill(~real[..., None], IGNORE).view(B, G, r, n_q)
    targets = torch.cat([tgt, torch.full_like(tgt[:, :1], IGNORE)], dim=1)
    n_groups = -(-lengths // r)                                            # (B,)
    j = torch.arange(G + 1, device=codes.device)[None, :]
    stop = (j == n_groups[:, None]).float() - (j > n_groups[:, None]).float()
    return {"groups": groups.view(B, G, r, n_q), "targets": targets, "stop": stop, "n_groups": n_groups}


class DepthChain(nn.Module):
    """Slot s's state = MLP(h + slot_s + sum of the embeddings of slots < s) (residual MLP blocks)."""

    def __init__(self, d_model: int, d_ff: int, n_layers: int, n_slots: int) -> None:
        super().__init__()
        self.slot = nn.Parameter(torch.zeros(n_slots, d_model))
        self.layers = nn.ModuleList(
            nn.Sequential(RMSNorm(d_model), nn.Linear(d_model, d_ff, bias=False), nn.SiLU(),
                          nn.Linear(d_ff, d_model, bias=False)) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)

    def forward(self, h: torch.Tensor, prev: torch.Tensor, slots: slice = slice(None)) -> torch.Tensor:
        """h (..., D), prev (..., S', D) the summed embeddings of the earlier slots -> (..., S', D)."""
        u = h.unsqueeze(-2) + self.slot[slots] + prev
        for layer in self.layers:
            u = u + layer(u)
        return self.norm(u)


class Talker(nn.Module):
    stop_rows = 1  # the head's last row is the end-of-speech flag

    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        if type(self) is Talker and cfg.alignment != "attention":
            raise ValueError(f"talker.alignment={cfg.alignment}: build it with build_talker (omni/talker/duration.py)")
        if min(cfg.n_codebooks, cfg.codebook_size, cfg.text_vocab_size) <= 0:
            raise ValueError("TalkerConfig needs n_codebooks, codebook_size and text_vocab_size > 0 "
                             "(filled from the codec and the vocabulary when building the stage)")
        self.cfg = cfg
        r, n_q, K = cfg.frames_per_step, cfg.n_codebooks, cfg.codebook_size
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.ctx_len, cfg.rope_theta)
        self.text_emb = nn.Embedding(cfg.text_vocab_size, cfg.d_model)
        self.code_emb = nn.Embedding(r * n_q * K, cfg.d_model)  # one table per (slot, codebook)
        self.bos = nn.Parameter(torch.zeros(cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.dropout, causal=True, rope=self.rope)
            for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, r * n_q * K + self.stop_rows, bias=False)  # codes of the next group + stop
        self.register_buffer("offsets", (torch.arange(r * n_q) * K).view(r, n_q), persistent=False)
        self.depth = (DepthChain(cfg.d_model, cfg.depth_ff or cfg.d_ff, cfg.depth_layers, r * n_q)
                      if cfg.depth_layers > 0 else None)
        # what layer text_aux_layer's attention reads predicts the base codes of the next group, alone
        self.text_aux = nn.Linear(cfg.d_model, r * K, bias=False) if cfg.text_aux_layer >= 0 else None
        init_weights(self, cfg.n_layers)
        nn.init.normal_(self.bos, std=0.02)
        if self.depth is not None:
            nn.init.normal_(self.depth.slot, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_groups(self, groups: torch.Tensor) -> torch.Tensor:
        """groups (B, G, r, n_q) code ids -> (B, G, D): the sum of the slot/codebook embeddings."""
        return self.code_emb(groups + self.offsets).sum(dim=(2, 3))

    def embed_prefix(self, text: torch.Tensor) -> torch.Tensor:
        """text (1, L) ids ``[<s>, chars]`` -> (1, L + 1, D) with BOS appended (generation)."""
        x = self.text_emb(text)
        return torch.cat([x, self.bos.expand(x.shape[0], 1, -1).to(x.dtype)], dim=1)

    def hidden(self, x: torch.Tensor, cache: KVCache | None = None, probe=None) -> torch.Tensor:
        """x (B, S, D) embeddings -> final-norm hidden states (B, S, D). ``probe(i, block, h)`` sees
        each block's input (guided attention)."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if probe is not None:
                probe(i, block, x)
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += x.shape[1]
        return self.norm(x)

    def split_logits(self, h: torch.Tensor, next_groups: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (..., D) -> code logits (..., r, n_q, K) and stop logits (...). With the depth chain the
        codes of the group each position predicts, ``next_groups`` (..., r, n_q), are the chain's
        teacher-forced inputs (slot s's logits see slots < s of that group only)."""
        cfg = self.cfg
        shape = (cfg.frames_per_step, cfg.n_codebooks, cfg.codebook_size)
        if self.depth is None:
            out = self.head(h)
            return out[..., :math.prod(shape)].unflatten(-1, shape), out[..., -1] if self.stop_rows else None
        if next_groups is None:
            raise ValueError("a Talker with depth_layers > 0 needs the next groups' codes (teacher forcing)")
        emb = self.code_emb(next_groups.clamp(min=0) + self.offsets).flatten(-3, -2)  # (..., S, D)
        prev = emb.cumsum(-2) - emb                                                # slots before s
        logits = self.slot_logits(self.depth(h, prev), slice(None))
        return logits.unflatten(-2, shape[:2]), self.stop_logit(h) if self.stop_rows else None

    def slot_logits(self, u: torch.Tensor, slots: slice) -> torch.Tensor:
        """Chain states u (..., S', D) of ``slots`` -> their code logits (..., S', K)."""
        S, K = self.cfg.frames_per_step * self.cfg.n_codebooks, self.cfg.codebook_size
        w = self.head.weight[:S * K].view(S, K, -1)[slots]
        return torch.einsum("...sd,skd->...sk", u, w)

    def stop_logit(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.head.weight[-1]

    def pick_groups(self, h: torch.Tensor, pick) -> torch.Tensor:
        """h (..., D) -> a group's codes (..., r, n_q), each picked by ``pick(logits (..., K))``:
        all at once with independent heads, code by code through the depth chain."""
        cfg = self.cfg
        r, n_q, K = cfg.frames_per_step, cfg.n_codebooks, cfg.codebook_size
        if self.depth is None:
            return pick(self.split_logits(h)[0])
        prev, ids = torch.zeros_like(h), []
        for s in range(r * n_q):
            slots = slice(s, s + 1)
            c = pick(self.slot_logits(self.depth(h, prev.unsqueeze(-2), slots), slots)[..., 0, :])
            ids.append(c)
            prev = prev + self.code_emb(c + s * K)
        return torch.stack(ids, -1).unflatten(-1, (r, n_q))

    def forward(self, text: torch.Tensor, text_lens: torch.Tensor, groups: torch.Tensor, probe=None,
                next_groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, L) ``[<s>, chars, pads]``, text_lens (B,) (with <s>), groups (B, G, r, n_q) ->
        code logits (B, G+1, r, n_q, K) and stop logits (B, G+1), one per position from BOS on.
        ``next_groups`` (B, G+1, r, n_q): the codes each position predicts (make_targets' targets;
        IGNORE allowed), needed by the depth chain only."""
        return self.split_logits(self.speech_hidden(text, text_lens, groups, probe), next_groups)

    def speech_hidden(self, text: torch.Tensor, text_lens: torch.Tensor, groups: torch.Tensor, probe=None
                      ) -> torch.Tensor:
        """The hidden states (B, G+1, D) at BOS and each input group (the positions that predict)."""
        B, G = text.shape[0], groups.shape[1]
        code_x = self.embed_groups(groups)
        speech = torch.cat([self.bos.expand(B, 1, -1), code_x], dim=1)  # (B, G+1, D)
        # row b's speech starts right after its own text: positions text_lens[b] .. text_lens[b] + G
        index = (text_lens[:, None] + torch.arange(G + 1, device=text.device))[..., None].expand_as(speech)
        text_x = self.text_emb(text)
        x = torch.cat([text_x, speech.new_zeros(speech.shape)], dim=1).scatter(1, index, speech)
        return self.hidden(x, probe=probe).gather(1, index)

    @torch.no_grad()
    def teacher_forced(self, text_ids: list[int], codes: torch.Tensor) -> torch.Tensor:
        """One text's ids and its real codes (T, n_q) -> the argmax code of every frame (T, n_q),
        each predicted from the text and the *real* codes before it (one shift, as in training).
        Against free-running ``generate`` this separates "cannot predict a frame" from "drifts
        when fed its own output" (a diagnosis path of scripts/evaluate.py tts)."""
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        text = torch.tensor([[START] + list(text_ids)], device=device)
        T = codes.shape[0]
        t = make_targets(codes[None].to(device), torch.tensor([T], device=device), self.cfg.frames_per_step)
        pred = self.predict_groups(text, torch.tensor([text.shape[1]], device=device), t["groups"])
        self.train(was_training)
        return pred[0].flatten(0, 1)[:T]

    @torch.no_grad()
    def predict_groups(self, text: torch.Tensor, text_lens: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The argmax of every input group (B, G, r, n_q), each predicted from the text and the
        groups before it: the position holding group j-1 (BOS for j = 0) predicts group j
        (through the depth chain: greedily code by code, from the predicted codes before it)."""
        h = self.speech_hidden(text, text_lens, groups)[:, :-1]
        return self.pick_groups(h, lambda logits: logits.argmax(-1))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.head.weight
        return KVCache(self.cfg.n_layers, batch, self.cfg.n_kv_heads, max_len,
                       self.cfg.d_model // self.cfg.n_heads, p.device, p.dtype)

    def max_groups(self, n_chars: int) -> int:
        """Generation limit for a text of n_chars characters, in groups."""
        frames = math.ceil(self.cfg.max_frames_per_char * max(n_chars, 1)) + 8
        return -(-frames // self.cfg.frames_per_step)

    @torch.no_grad()
    def generate(self, text_ids: list[int], temperature: float = 0.0, top_k: int = 0,
                 max_groups: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, rate: float = 1.0) -> torch.Tensor:
        """One text's ids -> codes (T, n_q) long, T a multiple of frames_per_step: ``generate_iter``'s
        groups joined."""
        groups = list(self.generate_iter(text_ids, temperature, top_k, max_groups, use_cache, generator, rate))
        return torch.cat(groups, dim=0)

    @torch.no_grad()
    def generate_iter(self, text_ids: list[int], temperature: float = 0.0, top_k: int = 0,
                      max_groups: int | None = None, use_cache: bool = True,
                      generator: torch.Generator | None = None, rate: float = 1.0) -> Iterator[torch.Tensor]:
        """One text's ids -> its groups of codes (frames_per_step, n_q), each yielded as soon as it is
        picked (streaming speech decodes them while the next ones are generated).

        Stops when the stop flag's probability passes 0.5 or after ``max_groups`` (default from the
        text length). temperature 0 is greedy per codebook; otherwise sampled, top_k 0 = all codes.
        Without the cache each step re-runs the whole sequence (the reference path).
        """
        if not text_ids:
            raise ValueError("generate: empty text (nothing to say)")
        if rate != 1.0:
            raise ValueError("this Talker finds its own pace through attention and has no rate control; "
                             "a Talker with talker.alignment=durations has")
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        text = torch.tensor([[START] + list(text_ids)], device=device)
        limit = max_groups if max_groups is not None else self.max_groups(len(text_ids))
        total = text.shape[1] + 1 + limit
        if total > self.cfg.ctx_len:
            limit = self.cfg.ctx_len - text.shape[1] - 1
            if limit < 1:
                raise ValueError(f"text of {len(text_ids)} characters leaves no room in ctx_len {self.cfg.ctx_len}")
            log.warning("generation limited to %d groups by ctx_len %d", limit, self.cfg.ctx_len)
        cache = self.new_cache(1, text.shape[1] + 1 + limit) if use_cache else None
        x = self.embed_prefix(text)
        step_in = x
        try:
            for k in range(limit):
                h = self.hidden(step_in if use_cache else x, cache=cache)[:, -1]
                if k and torch.sigmoid(self.stop_logit(h.float())).item() > 0.5:
                    break
                group = self.pick_groups(h[0].float(),
                                         lambda logits: sample_codes(logits, temperature, top_k, generator))
                yield group
                emb = self.embed_groups(group[None, None])
                step_in = emb
                x = torch.cat([x, emb], dim=1)
        finally:
            self.train(was_training)


def build_talker(cfg: TalkerConfig) -> Talker:
    """The Talker ``cfg.alignment`` names (a duration Talker's latent buffers are set by its stage,
    or loaded with its weights)."""
    if cfg.alignment == "durations":
        from omni.talker.duration import DurationTalker  # it subclasses Talker
        return DurationTalker(cfg)
    return Talker(cfg)


def sample_codes(logits: torch.Tensor, temperature: float, top_k: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (..., K) -> ids (...): argmax for temperature 0, else (top-k) sampling per codebook."""
    if temperature <= 0:
        return logits.argmax(-1)
    flat = logits.reshape(-1, logits.shape[-1]) / temperature
    if top_k > 0:
        kth = torch.topk(flat, min(top_k, flat.shape[-1])).values[:, -1:]
        flat = flat.masked_fill(flat < kth, float("-inf"))
    ids = torch.multinomial(F.softmax(flat, -1), 1, generator=generator)[:, 0]
    return ids.view(logits.shape[:-1])
