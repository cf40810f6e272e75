"""HiFi-GAN vocoder on the speech-out mel (omni/audio/features.py SPEECH_OUT_MEL: 128 bins, hop 256 at 16 kHz).

Generator: log-mel (B, T, 128) -> conv -> transposed-conv upsampling by prod(upsample_rates) =
256 (one mel frame -> 256 samples), each stage followed by a multi-receptive-field fusion block
(the mean of residual blocks with different kernels and dilations) -> tanh waveform (B, T * 256).
Discriminators: multi-period (the waveform folded into period-p columns, 2D convs) and multi-scale
(the waveform and its 2x, 4x average-pooled versions, 1D convs); each returns its score map and
feature maps. Losses (HiFi-GAN): least-squares adversarial, feature matching, mel L1.

The training step is one backward under one optimizer with a generator and a discriminator
parameter group (their own learning rates): the discriminator loss sees the generated audio
detached; the generator's adversarial and feature-matching losses go through the discriminators
with their parameters detached (torch.func.functional_call), so each loss moves only its side.
Both sides step from the same state (simultaneous updates rather than HiFi-GAN's D-then-G), which
keeps the stage on the shared engine: accumulation, AMP, clipping, checkpoints, resume and DDP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from omni.audio.features import SPEECH_OUT_MEL, LogMel

LRELU = 0.1


@dataclass
class VocoderConfig:
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    upsample_initial_channel: int
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    mpd_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    msd_scales: int = 3
    disc_channels: int = 16  # width of the first discriminator layer (doubling after)


@dataclass
class GanConfig:
    lr_g: float
    lr_d: float
    lambda_mel: float = 45.0
    lambda_fm: float = 2.0
    lambda_adv: float = 1.0


class ResBlock(nn.Module):
    """x + conv(lrelu(conv_dilated(lrelu(x)))) for each dilation; length preserved."""

    def __init__(self, ch: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.c1 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, dilation=d, padding=d * (kernel - 1) // 2))
                                for d in dilations)
        self.c2 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, padding=(kernel - 1) // 2)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.c1, self.c2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU)), LRELU))
        return x


class Generator(nn.Module):
    def __init__(self, cfg: VocoderConfig, n_mels: int = SPEECH_OUT_MEL.n_mels) -> None:
        super().__init__()
        hop = 1
        for r in cfg.upsample_rates:
            hop *= r
        if hop != SPEECH_OUT_MEL.hop_length:
            raise ValueError(f"upsample_rates {cfg.upsample_rates} multiply to {hop}, not the speech-out hop "
                             f"{SPEECH_OUT_MEL.hop_length}")
        if len(cfg.upsample_kernel_sizes) != len(cfg.upsample_rates):
            raise ValueError("upsample_kernel_sizes needs one kernel per upsample rate")
        if len(cfg.resblock_dilation_sizes) != len(cfg.resblock_kernel_sizes):
            raise ValueError("resblock_dilation_sizes needs one list per resblock kernel")
        self.hop = hop
        ch = cfg.upsample_initial_channel
        self.pre = weight_norm(nn.Conv1d(n_mels, ch, 7, padding=3))
        self.ups, self.mrfs = nn.ModuleList(), nn.ModuleList()
        for r, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            self.ups.append(weight_norm(nn.ConvTranspose1d(ch, ch // 2, k, stride=r, padding=(k - r) // 2)))
            ch //= 2
            self.mrfs.append(nn.ModuleList(ResBlock(ch, kk, d) for kk, d in
                                           zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)))
        self.post = weight_norm(nn.Conv1d(ch, 1, 7, padding=3))
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.normal_(m.parametrizations.weight.original1 if hasattr(m, "parametrizations") else m.weight,
                                0.0, 0.01)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, T, n_mels) -> waveform (B, T * hop) in [-1, 1]."""
        x = self.pre(mel.transpose(1, 2))
        for up, mrf in zip(self.ups, self.mrfs):
            x = up(F.leaky_relu(x, LRELU))
            x = sum(block(x) for block in mrf) / len(mrf)
        return torch.tanh(self.post(F.leaky_relu(x, LRELU))).squeeze(1)[:, :mel.shape[1] * self.hop]


def conv_stack(x: torch.Tensor, convs: nn.ModuleList, post: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A discriminator body: leaky-ReLU convs then the score conv -> scores (B, *) and every
    layer's output (the feature maps that feature matching compares)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDisc(nn.Module):
    def __init__(self, period: int, ch: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, ch, ch * 2, ch * 4, ch * 8]
        self.convs = nn.ModuleList(weight_norm(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0)))
                                   for a, b in zip(widths, widths[1:]))
        self.convs.append(weight_norm(nn.Conv2d(widths[-1], widths[-1], (5, 1), padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """wav (B, N) -> scores (B, *) and feature maps."""
        B, N = wav.shape
        x = F.pad(wav, (0, (-N) % self.period), mode="reflect").view(B, 1, -1, self.period)
        return conv_stack(x, self.convs, self.post)


class ScaleDisc(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        layers = [(1, ch, 15, 1, 1), (ch, ch * 2, 41, 4, 4), (ch * 2, ch * 4, 41, 4, 16), (ch * 4, ch * 8, 41, 4, 16),
                  (ch * 8, ch * 8, 5, 1, 1)]
        # grouped convs as HiFi-GAN's MSD, with the groups cut to what narrow widths allow
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(a, b, k, s, groups=math.gcd(g, a, b), padding=k // 2))
                                   for a, b, k, s, g in layers)
        self.post = weight_norm(nn.Conv1d(ch * 8, 1, 3, padding=1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return conv_stack(wav[:, None], self.convs, self.post)


class Discriminators(nn.Module):
    """Multi-period + multi-scale: wav (B, N) -> [(scores, feature maps)] one per discriminator."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.periods = nn.ModuleList(PeriodDisc(p, cfg.disc_channels) for p in cfg.mpd_periods)
        self.scales = nn.ModuleList(ScaleDisc(cfg.disc_channels) for _ in range(cfg.msd_scales))

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        out = [d(wav) for d in self.periods]
        x = wav
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool1d(x[:, None], 4, 2, padding=2).squeeze(1)
            out.append(d(x))
        return out


class HifiGan(nn.Module):
    """Generator + discriminators + the speech-out mel front end; ``forward`` is the training loss."""

    def __init__(self, cfg: VocoderConfig, gan: GanConfig | None = None) -> None:
        """``gan`` (loss weights) is needed to train; building for inference or counting may omit it."""
        super().__init__()
        self.generator, self.disc, self.gan = Generator(cfg), Discriminators(cfg), gan
        self.logmel = LogMel(SPEECH_OUT_MEL)

    def losses(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """wav (B, N) real crops, N a multiple of the hop -> d_loss (moves only the discriminators),
        g_adv, g_fm, mel_l1 (move only the generator)."""
        mel = self.logmel(wav)                               # (B, N / hop + 1, n_mels)
        fake = self.generator(mel)[:, :wav.shape[1]].float()
        # discriminators: real vs generated (detached), least squares
        real_out = self.disc(wav)
        d_loss = sum(((s_r - 1) ** 2).mean() + (s_f ** 2).mean()
                     for (s_r, _), (s_f, _) in zip(real_out, self.disc(fake.detach())))
        # generator: through the discriminators with their parameters detached
        frozen = {n: p.detach() for n, p in self.disc.named_parameters()}
        fake_out = torch.func.functional_call(self.disc, frozen, (fake,))
        adv = sum(((s - 1) ** 2).mean() for s, _ in fake_out)
        fm = sum(F.l1_loss(a.detach(), b) for (_, fr), (_, ff) in zip(real_out, fake_out) for a, b in zip(fr, ff))
        return {"d_loss": d_loss, "g_adv": adv, "g_fm": fm, "mel_l1": F.l1_loss(self.logmel(fake), mel)}

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """-> the weighted total (lambda_adv, lambda_fm, lambda_mel) and each part as a float."""
        if self.gan is None:
            raise ValueError("HifiGan was built without a GanConfig: pass one to train it")
        parts, g = self.losses(wav), self.gan
        total = parts["d_loss"] + g.lambda_adv * parts["g_adv"] + g.lambda_fm * parts["g_fm"] + g.lambda_mel * parts["mel_l1"]
        return total, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def vocode(generator: Generator, mel: torch.Tensor) -> torch.Tensor:
    """log-mel (B, T, n_mels) -> waveform (B, T * 256), in the generator's eval mode."""
    was = generator.training
    generator.eval()
    wav = generator(mel)
    generator.train(was)
    return wav
