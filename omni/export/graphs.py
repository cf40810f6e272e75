"""Export-friendly forward passes over the trained modules, one ``nn.Module`` per ONNX graph.

Each wrapper holds the trained submodules under the **same attribute names** as the model that was
saved, so the ONNX initializers carry the checkpoint's tensor names (``thinker.blocks.0.attn.qkv.weight``,
``blocks.0.mlp.down.weight``, ...) and the weight audit can match them one to one. The arithmetic is
written out with plain ops that the TorchScript-based ONNX exporter traces shape-generically:
positions come from ``arange`` over tensor shapes (never Python ints), attention is explicit
matmul + softmax (grouped KV heads by broadcasting, no SDPA), and a KV cache is an input and an
output, not a mutable object. Every wrapper computes what the PyTorch inference path computes
(``ThinkerLM.hidden`` + ``lm_head``, ``OmniModel.image_features`` / ``audio_features``,
``Talker.generate``'s steps, ``MelCodec.decode``, ``Generator``); omni/export/parity.py measures it.

Graphs (batch and lengths dynamic unless said):
  thinker_prefill  ids (B,T) int64, media (B,T,D), media_mask (B,T) bool
                   -> logits (B,V) of the last position, present_k/v (L,B,Hkv,T,Dh)
  thinker_decode   ids (B,T), past_k/v (L,B,Hkv,P,Dh) -> logits (B,V), present_k/v (L,B,Hkv,P+T,Dh)
  audio_encoder    mel (B,F,128) log-mel at 100 Hz, unpadded -> slots (B,ceil(F/8),D) projected
  vision_encoder   images (B,3,S,S) normalised -> slots (B,1+g*g,D) projected
  talker_prefill   text (B,L) [<s>, chars] -> hidden (B,Dt), stop_logit (B,), [code_logits (B,r,n_q,K)],
                   present_k/v
  talker_decode    groups (B,G,r,n_q) int64, past_k/v -> the same outputs after the last group
  talker_plan      (duration Talker) text (B,L) -> enc (B,L,Dt), log_frames (B,L-1)
  talker_cond      enc, sym/since/to_end (B,G*r) int64 -> cond (B,G,Dt)
  talker_start     cond (B,1,Dt) -> hidden (B,Dt), [code_logits], present_k/v
  talker_step      groups (B,G,r,n_q) int64, cond (B,G,Dt), past_k/v -> the same after the last group
  talker_depth     hidden (B,Dt), prev (B,Dt), code (B,) int64, slot () int64 -> logits (B,K), prev_out (B,Dt)
                   (one code of the depth chain; the runtime loops over the r*n_q slots and samples)
  codec_decoder    codes (B,T',n) int64 -> log-mel (B,T'*fpc,128)
  vocoder          mel (B,T,128) -> wav (B,T*256)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omni.layers import Block, RotaryEmbedding


def adopt(wrapper: nn.Module, model: nn.Module) -> None:
    """Register ``model``'s children, parameters and buffers on ``wrapper`` under the same names,
    so the wrapper's state-dict names are the model's."""
    for name, child in model.named_children():
        wrapper.add_module(name, child)
    for name, p in model.named_parameters(recurse=False):
        wrapper.register_parameter(name, p)
    for name, b in model.named_buffers(recurse=False):
        wrapper.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)


# ---------------------------------------------------------------- shared pieces
def rope_tables(rope: RotaryEmbedding, start: torch.Tensor | int, length: torch.Tensor | int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, Dh/2) for absolute positions start..start+T-1 (a Gather: stays dynamic)."""
    pos = torch.arange(length) + start
    return rope.cos[pos], rope.sin[pos]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh), interleaved pairs, as omni.layers.RotaryEmbedding.forward."""
    pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def attention_block(block: Block, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                    past_k: torch.Tensor | None, past_v: torch.Tensor | None, bias: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm Block in eval mode. x (B, T, D); past (B, Hkv, P, Dh) or None; bias (T, P+T)
    additive mask or None -> x (B, T, D), k and v (B, Hkv, P+T, Dh)."""
    attn = block.attn
    H, Hkv, Dh = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = attn.qkv(block.attn_norm(x))
    q, k, v = qkv.split([H * Dh, Hkv * Dh, Hkv * Dh], dim=-1)
    q = q.unflatten(-1, (H, Dh)).transpose(1, 2)
    k = k.unflatten(-1, (Hkv, Dh)).transpose(1, 2)
    v = v.unflatten(-1, (Hkv, Dh)).transpose(1, 2)
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if past_k is not None:
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
    # grouped heads: query head h reads KV head h // (H / Hkv), as SDPA's enable_gqa
    qg = q.unflatten(1, (Hkv, H // Hkv))                                  # (B, Hkv, G, T, Dh)
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * (1.0 / math.sqrt(Dh))
    if bias is not None:
        scores = scores + bias
    y = torch.matmul(torch.softmax(scores, dim=-1), v.unsqueeze(2))      # (B, Hkv, G, T, Dh)
    y = y.flatten(1, 2).transpose(1, 2).flatten(2)                        # (B, T, H*Dh)
    x = x + attn.out(y)
    x = x + block.mlp(block.mlp_norm(x))
    return x, k, v


def causal_bias(past: torch.Tensor | int, length: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """(T, P+T) additive mask: query i (absolute P+i) sees keys 0..P+i."""
    q_pos = torch.arange(length) + past
    k_pos = torch.arange(length + past)
    allowed = k_pos[None, :] <= q_pos[:, None]
    zero = torch.zeros((), dtype=like.dtype)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=like.dtype))


def decoder_stack(blocks: nn.ModuleList, rope: RotaryEmbedding, x: torch.Tensor,
                  past_k: torch.Tensor | None, past_v: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal blocks over x (B, T, D) after a cache (L, B, Hkv, P, Dh) or none -> x, present k, v."""
    T = x.shape[1]
    P = past_k.shape[3] if past_k is not None else 0
    cos, sin = rope_tables(rope, P, T)
    bias = causal_bias(P, T, x)
    ks, vs = [], []
    for i, block in enumerate(blocks):
        pk = past_k[i] if past_k is not None else None
        pv = past_v[i] if past_v is not None else None
        x, k, v = attention_block(block, x, cos, sin, pk, pv, bias)
        ks.append(k)
        vs.append(v)
    return x, torch.stack(ks), torch.stack(vs)


# ---------------------------------------------------------------- Thinker
class ThinkerPrefill(nn.Module):
    """The prompt: token ids with projected media states laid over the media slots."""

    def __init__(self, thinker: nn.Module) -> None:
        super().__init__()
        self.thinker = thinker

    def forward(self, ids, media, media_mask):
        t = self.thinker
        x = torch.where(media_mask.unsqueeze(-1), media, t.tok_emb(ids))
        x, k, v = decoder_stack(t.blocks, t.rope, x, None, None)
        return t.lm_head(t.norm(x[:, -1])), k, v


class ThinkerDecode(nn.Module):
    """New tokens after an explicit KV cache (one token per step in generation; any T works)."""

    def __init__(self, thinker: nn.Module) -> None:
        super().__init__()
        self.thinker = thinker

    def forward(self, ids, past_k, past_v):
        t = self.thinker
        x, k, v = decoder_stack(t.blocks, t.rope, t.tok_emb(ids), past_k, past_v)
        return t.lm_head(t.norm(x[:, -1])), k, v


# ---------------------------------------------------------------- encoders + projectors
class AudioEncoderGraph(nn.Module):
    """OmniModel.audio_features for one unpadded clip per row: log-mel -> projected 12.5 Hz states."""

    def __init__(self, omni: nn.Module) -> None:
        super().__init__()
        self.audio_encoder, self.proj_audio = omni.audio_encoder, omni.proj_audio

    def forward(self, mel):
        enc = self.audio_encoder
        x = ((mel - enc.mel_mean) / enc.mel_std).transpose(1, 2)
        for conv in enc.down.convs:
            x = F.gelu(conv(x))
        x = x.transpose(1, 2)
        cos, sin = rope_tables(enc.rope, 0, x.shape[1])
        for block in enc.blocks:
            x = attention_block(block, x, cos, sin, None, None, None)[0]
        return self.proj_audio(enc.norm(x))


class VisionEncoderGraph(nn.Module):
    """OmniModel.image_features: ViT -> CLS + pooled patch grid -> projected."""

    def __init__(self, omni: nn.Module) -> None:
        super().__init__()
        self.vision, self.proj_image = omni.vision, omni.proj_image
        self.pool = omni.cfg.image_pool

    def forward(self, images):
        vit = self.vision
        x = vit.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([vit.cls.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos
        for block in vit.blocks:
            x = attention_block(block, x, None, None, None, None, None)[0]
        x = vit.norm(x)
        cls, patches = x[:, 0], x[:, 1:]
        g = vit.cfg.img_size // vit.cfg.patch
        grid = patches.transpose(1, 2).unflatten(-1, (g, g))
        pooled = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return self.proj_image(torch.cat([cls.unsqueeze(1), pooled], dim=1))


# ---------------------------------------------------------------- Talker
class _TalkerGraph(nn.Module):
    def __init__(self, talker: nn.Module) -> None:
        super().__init__()
        adopt(self, talker)
        self.cfg, self.depth = talker.cfg, talker.depth

    def outputs(self, x, past_k, past_v):
        x, k, v = decoder_stack(self.blocks, self.rope, x, past_k, past_v)
        h = self.norm(x[:, -1])
        stop = torch.matmul(h, self.head.weight[-1])
        if self.depth is None:
            c = self.cfg
            codes = self.head(h)[:, :-1].unflatten(-1, (c.frames_per_step, c.n_codebooks, c.codebook_size))
            return h, stop, codes, k, v
        return h, stop, k, v


class TalkerPrefill(_TalkerGraph):
    """``[<s>, chars]`` + BOS (Talker.embed_prefix) through the blocks."""

    def forward(self, text):
        x = self.text_emb(text)
        x = torch.cat([x, self.bos.expand(x.shape[0], 1, -1)], dim=1)
        return self.outputs(x, None, None)


class TalkerDecode(_TalkerGraph):
    """Groups of codes (Talker.embed_groups) after an explicit KV cache."""

    def forward(self, groups, past_k, past_v):
        x = self.code_emb(groups + self.offsets).sum(dim=(2, 3))
        return self.outputs(x, past_k, past_v)


class DurTalkerPlan(nn.Module):
    """DurationTalker.encode + log_frames: the bidirectional text encoder (no cache, no mask: one
    unpadded text) and the duration head's log expected frames."""

    def __init__(self, talker: nn.Module) -> None:
        super().__init__()
        adopt(self, talker)

    def forward(self, text):
        x = self.text_emb(text)
        cos, sin = rope_tables(self.rope, 0, x.shape[1])
        for block in self.encoder:
            x, _, _ = attention_block(block, x, cos, sin, None, None, None)
        enc = self.enc_norm(x)
        return enc, (self.duration(enc)[..., 0] + 0.5 * self.log_dur_var)[:, 1:]


class DurTalkerCond(nn.Module):
    """DurationTalker.condition_vectors: symbol states and the frames' places (frame_places, computed
    by the runtime) -> one condition per group."""

    def __init__(self, talker: nn.Module) -> None:
        super().__init__()
        adopt(self, talker)
        self.cfg = talker.cfg

    def forward(self, enc, sym, since, to_end):
        from omni.talker.duration import DurationTalker
        return DurationTalker.condition_vectors(self, enc, sym, since, to_end)


class DurTalkerStart(nn.Module):
    """The duration Talker's first step: BOS + the first group's condition through the blocks."""

    def __init__(self, talker: nn.Module) -> None:
        super().__init__()
        adopt(self, talker)
        self.depth = talker.depth
        self.cfg = talker.cfg

    def outputs(self, x, past_k, past_v):
        x, k, v = decoder_stack(self.blocks, self.rope, x, past_k, past_v)
        h = self.norm(x[:, -1])
        if self.depth is None:
            c = self.cfg
            S = c.frames_per_step * c.n_codebooks * c.codebook_size
            return h, self.head(h)[:, :S].unflatten(-1, (c.frames_per_step, c.n_codebooks, c.codebook_size)), k, v
        return h, k, v

    def forward(self, cond):
        return self.outputs(self.bos.expand(cond.shape[0], 1, -1) + cond, None, None)


class DurTalkerStep(DurTalkerStart):
    """Later steps: the last groups' code embeddings + the next groups' conditions, after a KV cache."""

    def forward(self, groups, cond, past_k, past_v):
        return self.outputs(self.code_emb(groups + self.offsets).sum(dim=(2, 3)) + cond, past_k, past_v)


class TalkerDepth(nn.Module):
    """One slot of the depth chain (Talker.pick_groups): first adds the embedding of the code picked
    at slot-1 to ``prev`` (nothing at slot 0), then gives slot ``slot``'s code logits. The runtime
    calls it r * n_q times per group and samples in between."""

    def __init__(self, talker: nn.Module) -> None:
        super().__init__()
        adopt(self, talker)
        self.cfg = talker.cfg

    def forward(self, hidden, prev, code, slot):
        K = self.cfg.codebook_size
        S = self.cfg.frames_per_step * self.cfg.n_codebooks
        emb = self.code_emb(code + (slot - 1).clamp(min=0) * K)
        prev_out = prev + torch.where(slot > 0, emb, torch.zeros_like(emb))
        u = hidden + self.depth.slot[slot] + prev_out
        for layer in self.depth.layers:
            u = u + layer(u)
        u = self.depth.norm(u)
        w = self.head.weight[:S * K].unflatten(0, (S, K))[slot]              # (K, D); no stop row
        return torch.matmul(u, w.transpose(0, 1)), prev_out


# ---------------------------------------------------------------- codec, vocoder
class CodecDecoder(nn.Module):
    """MelCodec.decode: codes of the first n codebooks -> denormalised log-mel."""

    def __init__(self, codec: nn.Module, n_codebooks: int) -> None:
        super().__init__()
        adopt(self, codec)
        self.n_codebooks = n_codebooks

    def forward(self, codes):
        q = sum(F.embedding(codes[..., i], vq.codebook) for i, vq in enumerate(self.rvq.layers[:self.n_codebooks]))
        return self.denormalise(self.decoder(q.transpose(1, 2)).transpose(1, 2))

    def denormalise(self, x):
        return x * self.mel_std + self.mel_mean


class VocoderGraph(nn.Module):
    """The HiFi-GAN generator (weight norm computed in the graph from its two saved factors)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, mel):
        return self.generator(mel)
