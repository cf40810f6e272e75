"""The speech codec: speech-out log-mel (62.5 Hz) <-> discrete codes (RVQ), Stage D phase 1.

    log-mel (B, T, 128) -> normalise (per-bin mean/std buffers) -> conv encoder (time /fpc)
        -> z (B, T', codebook_dim) -> residual VQ (n_codebooks) -> codes (B, T', n_q)
    codes -> sum of code vectors -> conv decoder (time x fpc) -> denormalise -> log-mel (B, T'*fpc, 128)

fpc = ``frames_per_code`` (1 or 2): with 2 the code rate is 31.25 Hz, one code frame per 32 ms,
and T mel frames give ceil(T / 2) code frames. The decoder's log-mel is the SPEECH_OUT_MEL
definition in omni/audio/features.py, so omni.speech.griffinlim.mel_to_wav inverts it directly. The data/Stage
side (dataset, loss, evaluation, ``build_stage``, ``load_codec``) is in omni/codec/stage.py.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio.features import SPEECH_OUT_MEL
from omni.codec.rvq import ResidualVQ

log = logging.getLogger(__name__)

CODE_RATE_HZ = {1: 62.5, 2: 31.25}  # code frames per second for each frames_per_code


@dataclasses.dataclass
class CodecConfig:
    """RVQ mel codec. ``d_model``: conv channels; ``n_layers``: residual conv blocks per resolution
    on each side; ``dead_code_steps``: training batches without a hit before a code is re-seeded."""
    n_codebooks: int
    codebook_size: int
    codebook_dim: int
    d_model: int
    n_layers: int
    frames_per_code: int = 2
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_steps: int = 50
    kmeans_iters: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.frames_per_code not in CODE_RATE_HZ:
            raise ValueError(f"codec.frames_per_code must be 1 or 2, got {self.frames_per_code}")
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise ValueError(f"codec needs n_codebooks >= 1 and codebook_size >= 2, got "
                             f"{self.n_codebooks}, {self.codebook_size}")


class ResBlock(nn.Module):
    """x (B, C, T) -> x + conv1x1(gelu(conv_k,dilated(gelu(x)))): length-preserving."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.proj(F.gelu(self.conv(F.gelu(x)))))


def _blocks(channels: int, n: int, dropout: float) -> list[nn.Module]:
    return [ResBlock(channels, 3 ** (i % 3), dropout) for i in range(n)]


class MelCodec(nn.Module):
    """Conv encoder -> residual VQ -> conv decoder over normalised speech-out log-mel."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_codebooks, self.codebook_size, self.codebook_dim = cfg.n_codebooks, cfg.codebook_size, cfg.codebook_dim
        self.frames_per_code = cfg.frames_per_code
        M, C, L = SPEECH_OUT_MEL.n_mels, cfg.d_model, cfg.n_layers
        self.register_buffer("mel_mean", torch.zeros(M))
        self.register_buffer("mel_std", torch.ones(M))
        down: list[nn.Module] = []
        up: list[nn.Module] = []
        if cfg.frames_per_code == 2:
            down = [nn.Conv1d(C, C, 4, stride=2, padding=1), *_blocks(C, L, cfg.dropout)]
            up = [*_blocks(C, L, cfg.dropout), nn.ConvTranspose1d(C, C, 4, stride=2, padding=1)]
        self.encoder = nn.Sequential(nn.Conv1d(M, C, 5, padding=2), *_blocks(C, L, cfg.dropout), *down,
                                     nn.GELU(), nn.Conv1d(C, cfg.codebook_dim, 1))
        self.rvq = ResidualVQ(cfg.n_codebooks, cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay,
                              cfg.dead_code_steps, cfg.kmeans_iters)
        self.decoder = nn.Sequential(nn.Conv1d(cfg.codebook_dim, C, 3, padding=1), *up, *_blocks(C, L, cfg.dropout),
                                     nn.GELU(), nn.Conv1d(C, M, 5, padding=2))

    # ---------------------------------------------------------------- helpers
    def normalise(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel.float() - self.mel_mean) / self.mel_std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.mel_std + self.mel_mean

    def code_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """mel frame lengths (B,) -> code frame lengths (B,) = ceil(frames / frames_per_code)."""
        return (lengths + self.frames_per_code - 1) // self.frames_per_code

    def _prepare(self, log_mel: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> normalised mel (B, C=128, T padded to a multiple of fpc) with zeros past each length,
        and the code-frame mask (B, T'). Zero is what the convs pad with, so an utterance encodes
        the same alone or in a padded batch."""
        if log_mel.dim() != 3 or log_mel.shape[-1] != SPEECH_OUT_MEL.n_mels:
            raise ValueError(f"codec expects log-mel (B, T, {SPEECH_OUT_MEL.n_mels}), got {tuple(log_mel.shape)}")
        B, T, _ = log_mel.shape
        lengths = torch.full((B,), T, device=log_mel.device) if lengths is None else lengths.to(log_mel.device)
        x = self.normalise(log_mel)
        frame_mask = torch.arange(T, device=x.device)[None] < lengths[:, None]
        x = x * frame_mask[..., None]
        pad = (-T) % self.frames_per_code
        x = F.pad(x, (0, 0, 0, pad))
        t_code = (T + pad) // self.frames_per_code
        code_mask = torch.arange(t_code, device=x.device)[None] < self.code_lengths(lengths)[:, None]
        return x.transpose(1, 2), code_mask

    # ---------------------------------------------------------------- the model
    def forward(self, log_mel: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """log-mel (B, T, 128), lengths (B,) -> {"recon": normalised reconstruction (B, T, 128),
        "target": normalised input (B, T, 128), "codes": (B, T', n_q), "commit": scalar,
        "perplexity": (n_q,) of this batch}."""
        T = log_mel.shape[1]
        x, code_mask = self._prepare(log_mel, lengths)
        z = self.encoder(x).transpose(1, 2)                           # (B, T', D)
        q, codes, commit, perplexity = self.rvq(z, code_mask)
        recon = self.decoder(q.transpose(1, 2).to(z.dtype)).transpose(1, 2)[:, :T]
        return {"recon": recon, "target": x.transpose(1, 2)[:, :T], "codes": codes, "commit": commit,
                "perplexity": perplexity}

    @torch.no_grad()
    def encode(self, log_mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """log-mel (B, T, 128) -> codes (B, ceil(T / fpc), n_codebooks) long in [0, codebook_size).
        Codes past an item's ``code_lengths`` are 0 (padding)."""
        x, code_mask = self._prepare(log_mel, lengths)
        z = self.encoder(x).transpose(1, 2).float()
        codes = torch.zeros(*z.shape[:2], self.n_codebooks, dtype=torch.long, device=z.device)
        residual = z[code_mask]
        picked = []
        for vq in self.rvq.layers:
            c = vq.nearest(residual)
            residual = residual - F.embedding(c, vq.codebook)
            picked.append(c)
        codes[code_mask] = torch.stack(picked, -1)
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """codes (B, T', n) of the first n <= n_codebooks codebooks -> denormalised log-mel
        (B, T' * frames_per_code, 128); ``keep``: from the first ``keep`` codebooks only (a
        diagnosis: what the residuals add)."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, T', n <= n_codebooks), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, "
                             f"{int(codes.max())}]")
        return self._decode_latent(self.rvq.embed(codes, keep))

    def _decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        return self.denormalise(self.decoder(q.transpose(1, 2)).transpose(1, 2))
