"""AudioEncoderTiny (AuT-Tiny): log-mel frames at 100 Hz -> encoder states at 12.5 Hz.

Three stride-2 convolutions downsample time by 8; a non-causal transformer with RoPE positions
and a key padding mask follows. Padding never changes the states of real frames: every conv
input is zeroed past each example's length, and attention ignores padded keys.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from omni.audio.augment import WaveAugment
from omni.layers import Block, RMSNorm, RotaryEmbedding, init_weights


def downsampled_lengths(lengths: torch.Tensor, times: int = 3) -> torch.Tensor:
    """Frames after ``times`` convs of kernel 3, stride 2, padding 1: ceil(T / 2) each time."""
    for _ in range(times):
        lengths = (lengths + 1) // 2
    return lengths


def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """lengths (B,) -> (B, T) bool, True on real frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class ConvDownsample(nn.Module):
    """(B, T, n_mels) -> (B, ceil(T/8), d_model) with GELU between stride-2 convs."""

    def __init__(self, n_mels: int, d_model: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(n_mels, d_model, 3, stride=2, padding=1),
                                    nn.Conv1d(d_model, d_model, 3, stride=2, padding=1),
                                    nn.Conv1d(d_model, d_model, 3, stride=2, padding=1)])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)  # (B, C, T)
        for conv in self.convs:
            x = x * length_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
            x = F.gelu(conv(x))
            lengths = (lengths + 1) // 2
        return x.transpose(1, 2), lengths


class AudioEncoderTiny(nn.Module):
    def __init__(self, n_mels: int, d_model: int, n_layers: int, n_heads: int, d_ff: int,
                 dropout: float, max_frames: int) -> None:
        super().__init__()
        self.n_mels, self.d_model = n_mels, d_model
        # feature normalisation, set from training-data statistics and saved with the weights
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.down = ConvDownsample(n_mels, d_model)
        self.rope = RotaryEmbedding(d_model // n_heads, max_frames)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, n_heads, d_ff, dropout, causal=False, rope=self.rope)
                                    for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        init_weights(self, n_layers)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, T, n_mels), lengths (B,) in frames -> states (B, ceil(T/8), d_model), out lengths (B,).

        States past an example's out length are zero.
        """
        x = (mel - self.mel_mean) / self.mel_std
        x, lengths = self.down(x, lengths)
        mask = length_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        return self.norm(x) * mask[..., None].to(x.dtype), lengths


@dataclasses.dataclass
class AudioEncConfig:
    """AudioEncoderTiny + CTC head. Input: 128-bin log-mel at 100 Hz (omni/audio/features.py ENCODER_MEL)."""
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float
    max_frames: int = 1024           # encoder positions (12.5 Hz): 1024 = 82 s
    symbols_per_frame: int = 2       # CTC symbols per 12.5 Hz frame (see omni/audio/ctc.py)
    spec_augment: bool = True
    freq_mask: int = 15
    time_mask: int = 40
    n_masks: int = 2
    # waveform effects on the training audio, probability per row each (omni/audio/augment.py)
    augment: WaveAugment = dataclasses.field(default_factory=WaveAugment)
