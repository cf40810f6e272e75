"""OmniModel: the Thinker with an audio encoder and a vision encoder joined through projectors.

Media enter the Thinker as embeddings: every media slot of a sequence (see omni/multimodal/template.py)
takes one projected encoder state, in order. Images give the ViT's CLS token plus its patch grid
average-pooled by ``image_pool``; audio gives the encoder's 12.5 Hz frames.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio.encoder import AudioEncConfig, AudioEncoderTiny, downsampled_lengths, length_mask
from omni.audio.features import ENCODER_MEL, LogMel, num_frames
from omni.audio.stage import load_asr
from omni.config import config_from_dict
from omni.engine.checkpoint import CheckpointError
from omni.multimodal.template import AUDIO, IMAGE
from omni.thinker.model import ThinkerConfig, ThinkerLM, sample_next
from omni.thinker.stage import load_thinker
from omni.thinker.tokenizer import Tokenizer
from omni.vision.encoder import VisionConfig, ViTTiny
from omni.vision.stage import load_vision_encoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class OmniConfig:
    """Which stage checkpoints to join, and what trains. Paths are checkpoint folders."""
    thinker_ckpt: str
    audio_ckpt: str
    vision_ckpt: str
    image_pool: int = 2              # average-pool the ViT patch grid by this factor (14x14 -> 7x7)
    projector_hidden: int = 512
    freeze_audio: bool = True
    freeze_vision: bool = True
    freeze_thinker: bool = False


@dataclasses.dataclass
class Components:
    """Architectures of the three joined models: enough to rebuild OmniModel without the stage
    checkpoints (saved as components.json beside the SFT weights)."""
    thinker: ThinkerConfig
    audio: AudioEncConfig
    vision: VisionConfig


def projector(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class OmniModel(nn.Module):
    def __init__(self, comp: Components, cfg: OmniConfig) -> None:
        super().__init__()
        self.cfg, self.comp = cfg, comp
        a = comp.audio
        self.thinker = ThinkerLM(comp.thinker)
        self.audio_mel = LogMel(ENCODER_MEL)
        self.audio_encoder = AudioEncoderTiny(ENCODER_MEL.n_mels, a.d_model, a.n_layers, a.n_heads, a.d_ff,
                                              a.dropout, a.max_frames)
        self.vision = ViTTiny(comp.vision)
        d = comp.thinker.d_model
        self.proj_audio = projector(a.d_model, cfg.projector_hidden, d)
        self.proj_image = projector(comp.vision.d_model, cfg.projector_hidden, d)
        for module, frozen in ((self.audio_encoder, cfg.freeze_audio), (self.vision, cfg.freeze_vision),
                               (self.thinker, cfg.freeze_thinker)):
            module.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> "OmniModel":
        super().train(mode)
        # frozen encoders stay in eval mode: no dropout, the states they were trained to give
        if self.cfg.freeze_audio:
            self.audio_encoder.eval()
        if self.cfg.freeze_vision:
            self.vision.eval()
        return self

    def image_slots(self) -> int:
        grid = self.comp.vision.img_size // self.comp.vision.patch // self.cfg.image_pool
        return 1 + grid * grid

    @staticmethod
    def audio_slots(n_samples: int) -> int:
        return int(downsampled_lengths(torch.tensor(num_frames(n_samples, ENCODER_MEL))))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) -> (N, image_slots, d_model of the Thinker)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_vision):
            cls, patches = self.vision(images)
        n, p, d = patches.shape
        g = int(round(p ** 0.5))
        grid = patches.transpose(1, 2).reshape(n, d, g, g)
        pooled = F.avg_pool2d(grid, self.cfg.image_pool).flatten(2).transpose(1, 2)
        return self.proj_image(torch.cat([cls[:, None], pooled], dim=1))

    def audio_features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """audio (N, samples) at 16 kHz, lengths (N,) -> the real frames of every clip, in order,
        projected: (sum of audio_slots, d_model of the Thinker)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_audio):
            mel = self.audio_mel(audio)
            states, out_len = self.audio_encoder(mel, lengths // ENCODER_MEL.hop_length + 1)
        return self.proj_audio(states[length_mask(out_len, states.shape[1])])

    def embed(self, ids: torch.Tensor, kinds: torch.Tensor, images: torch.Tensor | None = None,
              audio: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids, kinds (B, T) -> input embeddings (B, T, D), media slots filled in order."""
        x = self.thinker.tok_emb(ids)
        for kind, feats in ((IMAGE, lambda: self.image_features(images).flatten(0, 1)),
                            (AUDIO, lambda: self.audio_features(audio, audio_lengths))):
            mask = kinds == kind
            n_slots = int(mask.sum())
            if n_slots == 0:
                continue
            f = feats()
            if f.shape[0] != n_slots:
                raise ValueError(f"{n_slots} {'image' if kind == IMAGE else 'audio'} slots but "
                                 f"{f.shape[0]} encoder states: sequence and media disagree")
            x = x.masked_scatter(mask[..., None], f.to(x.dtype))
        return x

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The SFT loss: mean next-token CE over assistant tokens (targets -100 elsewhere)."""
        x = self.embed(batch["ids"], batch["kinds"], batch.get("images"), batch.get("audio"),
                       batch.get("audio_lengths"))
        return self.thinker(embeds=x, targets=batch["targets"])


def from_stages(cfg: OmniConfig, device: torch.device) -> tuple[OmniModel, Tokenizer, Components]:
    """Join the Stage A, B and C checkpoints named in ``cfg`` (strict loads; CheckpointError names
    the folder that is missing or does not match)."""
    thinker, tok, tcfg = load_thinker(cfg.thinker_ckpt, device)
    asr, _, acfg = load_asr(cfg.audio_ckpt, device)
    vit, vcfg = load_vision_encoder(cfg.vision_ckpt, device)
    comp = Components(tcfg.model, acfg.model, vcfg.model)
    if tok.vocab_size != comp.thinker.vocab_size:
        comp = dataclasses.replace(comp, thinker=dataclasses.replace(comp.thinker, vocab_size=tok.vocab_size))
    model = OmniModel(comp, cfg)
    model.thinker.load_state_dict(thinker.state_dict(), strict=True)
    model.audio_encoder.load_state_dict(asr.encoder.state_dict(), strict=True)
    model.vision.load_state_dict(vit.state_dict(), strict=True)
    log.info("joined %s (Thinker %.2fM), %s (audio %.2fM), %s (vision %.2fM); projectors %.2fM",
             cfg.thinker_ckpt, thinker.num_params() / 1e6, cfg.audio_ckpt, _params(model.audio_encoder),
             cfg.vision_ckpt, _params(model.vision), _params(model.proj_audio) + _params(model.proj_image))
    return model.to(device), tok, comp


def _params(m: nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def components_from_dict(raw: dict[str, Any], where: Path) -> Components:
    try:
        return Components(config_from_dict(raw["thinker"], ThinkerConfig),
                          config_from_dict(raw["audio"], AudioEncConfig),
                          config_from_dict(raw["vision"], VisionConfig))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: unreadable components ({e}); re-run sft_omni.py") from e


@torch.no_grad()
def generate_reply(model: OmniModel, embeds: torch.Tensor, max_new_tokens: int, stop_ids: tuple[int, ...],
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   generator: torch.Generator | None = None,
                   on_token: Callable[[int], None] | None = None) -> list[int]:
    """embeds (1, T, D) of a prompt ending in <|assistant|> -> reply ids (stop id excluded).

    Prefills the KV cache with the prompt, then decodes one token at a time; ``on_token`` sees each
    token as soon as it is chosen (streaming)."""
    thinker = model.thinker
    max_new_tokens = min(max_new_tokens, thinker.cfg.ctx_len - embeds.shape[1])
    if max_new_tokens <= 0:
        raise ValueError(f"prompt of {embeds.shape[1]} positions fills the context ({thinker.cfg.ctx_len})")
    cache = thinker.new_cache(1, embeds.shape[1] + max_new_tokens)
    head = thinker._decode_head()
    h = thinker.hidden(embeds=embeds, cache=cache)[:, -1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = sample_next(head(h).float(), temperature, top_k, top_p, generator)
        token = int(nxt[0])
        if token in stop_ids:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        h = thinker.hidden(nxt[:, None], cache=cache)[:, -1]
    return out
