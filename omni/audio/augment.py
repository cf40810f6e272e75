"""Acoustic augmentation of Stage B's training audio: what separates a speech engine's clean clip from
a person recorded in a room, on a phone line, with a microphone of its own.

Engines speak full-band 16 kHz audio with no room and no noise; most real recordings have all three
(the real-speech set, omni/builders/real_speech.py, is mostly 8 kHz telephone prompts). Each effect is
applied to a row with its own probability, on the padded batch, in torch, from the global RNG (as
SpecAugment is), so a resumed run draws the same augmentations as an uninterrupted one:

- telephone band: an FFT band-pass keeping 300-3,400 Hz (the G.711 channel);
- room: convolution with a synthetic impulse response, a direct path plus exponentially decaying
  noise with an RT60 drawn from 0.15-0.7 s (Lehmann & Johansson style, no geometry);
- noise: coloured Gaussian noise (spectral slope from white to brown) at an SNR of 5-30 dB;
- speed: the clip resampled by a factor of 0.9-1.1 (tempo, pitch and formants together, as a
  shorter or longer vocal tract speaking faster or slower would), which changes its length;
- gain: -12 to +6 dB on every row whenever augmentation is on.

Padding past each row's length stays zero; the output keeps each row's RMS before the gain.
"""
from __future__ import annotations

import dataclasses

import torch

from omni.config import limits

SAMPLE_RATE = 16000
PHONE_BAND = (300.0, 3400.0)
RT60 = (0.15, 0.7)
SNR_DB = (5.0, 30.0)
GAIN_DB = (-12.0, 6.0)
SPEED = (0.9, 1.1)


@dataclasses.dataclass
class WaveAugment:
    """Probability per row of each effect (0 turns it off)."""
    telephone: float = limits(0.0, min=0, max=1)
    reverb: float = limits(0.0, min=0, max=1)
    noise: float = limits(0.0, min=0, max=1)
    speed: float = limits(0.0, min=0, max=1)

    @property
    def active(self) -> bool:
        return max(self.telephone, self.reverb, self.noise, self.speed) > 0


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n).to(device)


def _rms(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x * x * mask).sum(1) / mask.sum(1).clamp(min=1)).sqrt().clamp(min=1e-8)


def telephone_band(audio: torch.Tensor) -> torch.Tensor:
    """(B, N) -> the same with everything outside PHONE_BAND removed (FFT mask)."""
    n = audio.shape[1]
    size = fast_size(n)   # a batch's length is any number; FFTs of most lengths are many times slower
    spec = torch.fft.rfft(audio, size, dim=1)
    freqs = torch.fft.rfftfreq(size, 1.0 / SAMPLE_RATE).to(audio.device)
    keep = (freqs >= PHONE_BAND[0]) & (freqs <= PHONE_BAND[1])
    return torch.fft.irfft(spec * keep, n=size, dim=1)[:, :n]


def room_impulse(rt60: torch.Tensor) -> torch.Tensor:
    """rt60 (B,) seconds -> impulse responses (B, L): 1 at t=0, then noise decaying by 60 dB in rt60."""
    L = max(1, round(float(rt60.max()) * SAMPLE_RATE))
    t = torch.arange(L, device=rt60.device) / SAMPLE_RATE
    decay = torch.exp(-6.9078 * t[None] / rt60[:, None])   # amplitude 1e-3 (energy -60 dB) at rt60
    h = torch.randn(len(rt60), L).to(rt60.device) * decay * 0.3
    h[:, 0] = 1.0
    return h


def convolve(audio: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Row-wise linear convolution (B, N) * (B, L) -> (B, N) (the tail past N is cut)."""
    size = fast_size(audio.shape[1] + h.shape[1] - 1)
    out = torch.fft.irfft(torch.fft.rfft(audio, size, dim=1) * torch.fft.rfft(h, size, dim=1), size, dim=1)
    return out[:, :audio.shape[1]]


def coloured_noise(white: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """White Gaussian noise (B, N) -> noise whose power falls as f^-slope (0 white, 1 pink, 2 brown),
    unit RMS per row."""
    n = white.shape[1]
    size = fast_size(n)
    spec = torch.fft.rfft(white, size, dim=1)
    f = torch.arange(spec.shape[1], device=slope.device).clamp(min=1).float()
    noise = torch.fft.irfft(spec * f[None] ** (-slope[:, None] / 2), n=size, dim=1)[:, :n]
    return noise / noise.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-8)


def resample(x: torch.Tensor, n: int) -> torch.Tensor:
    """A 1-D signal -> n samples of the same band-limited signal (FFT truncation or zero-padding:
    no aliasing when it shrinks), at the same amplitude."""
    spec = torch.fft.rfft(x)
    keep = min(spec.shape[0], n // 2 + 1)
    return torch.fft.irfft(spec[:keep], n=n) * (n / x.shape[0])


def fast_size(n: int) -> int:
    """The smallest 7-smooth number >= n (an FFT length pocketfft handles fast)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _speed_row(x: torch.Tensor, factor: float) -> torch.Tensor:
    """One clip played ``factor`` times faster: zero-padded to an FFT-friendly length P, resampled
    to an FFT-friendly M near P / factor, and cut to its own new length (the factor moves by < 1%:
    it is a random draw anyway)."""
    P = fast_size(len(x))
    M = fast_size(max(1, round(P / factor)))
    y = resample(torch.nn.functional.pad(x, (0, P - len(x))), M)
    return y[:max(1, round(len(x) * M / P))]


def change_speed(audio: torch.Tensor, lengths: torch.Tensor, factor: torch.Tensor,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picked row played about ``factor`` times faster (resampled to length / factor); -> the
    batch, padded with zeros to its new longest row, and the new lengths."""
    lengths = lengths.clone()
    new = {int(r): _speed_row(audio[r, :int(lengths[r])], float(factor[r]))
           for r in rows.tolist() if int(lengths[r]) > 0}
    for r, y in new.items():
        lengths[r] = y.shape[0]
    out = audio.new_zeros(audio.shape[0], int(lengths.max()))
    keep = min(audio.shape[1], out.shape[1])
    out[:, :keep] = audio[:, :keep]
    for r, y in new.items():
        out[r] = 0
        out[r, :y.shape[0]] = y
    return out, lengths


def augment_waveform(audio: torch.Tensor, lengths: torch.Tensor,
                     cfg: WaveAugment) -> tuple[torch.Tensor, torch.Tensor]:
    """audio (B, N) at 16 kHz with real lengths (B,) -> the augmented batch and its lengths, which
    only the speed effect changes (module docstring)."""
    if not cfg.active or audio.shape[1] == 0:
        return audio, lengths
    if cfg.speed > 0:   # drawn only when on, so configs without it keep their random stream
        factor = _uniform(audio.shape[0], *SPEED, audio.device)
        rows = (torch.rand(audio.shape[0]).to(audio.device) < cfg.speed).nonzero().squeeze(1)
        if len(rows):
            audio, lengths = change_speed(audio, lengths, factor, rows)
    B, N = audio.shape
    device = audio.device
    mask = (torch.arange(N, device=device)[None] < lengths[:, None]).to(audio.dtype)
    rms = _rms(audio, mask)
    out = audio
    picks = {name: torch.rand(B).to(device) < getattr(cfg, name) for name in ("telephone", "reverb", "noise")}
    # every row's random numbers are drawn (the stream does not depend on which rows are picked), but
    # only the picked rows pay for the FFTs (docs/results.md, the augmentation A/B)
    if bool(picks["reverb"].any()):
        h = room_impulse(_uniform(B, *RT60, device))
        rows = picks["reverb"].nonzero().squeeze(1)
        out = out.index_copy(0, rows, convolve(out[rows], h[rows]))
    if bool(picks["telephone"].any()):
        rows = picks["telephone"].nonzero().squeeze(1)
        out = out.index_copy(0, rows, telephone_band(out[rows]))
    out = out * mask
    out = out * (rms / _rms(out, mask))[:, None]   # each row back to its own level before noise and gain
    if bool(picks["noise"].any()):
        snr = _uniform(B, *SNR_DB, device)
        slope = _uniform(B, 0.0, 2.0, device)
        white = torch.randn(B, N).to(device)
        rows = picks["noise"].nonzero().squeeze(1)
        noise = coloured_noise(white[rows], slope[rows]) * (rms[rows] / 10 ** (snr[rows] / 20))[:, None]
        out = out.index_add(0, rows, noise * mask[rows])
    gain = 10 ** (_uniform(B, *GAIN_DB, device) / 20)
    return out * gain[:, None], lengths
