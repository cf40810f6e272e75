"""Griffin-Lim in torch: inverts exactly the speech-out log-mel (omni/audio/features.py SPEECH_OUT_MEL).

    log-mel (B, T, 128) --exp--> mel power --NNLS (filterbank)--> linear power (B, 513, T)
        --sqrt--> magnitude --fast Griffin-Lim (momentum)--> wav (B, (T - 1) * 256)

Framing: LogMel pads n_fft // 2 zeros on both sides (centre=True) and gives T = N // hop + 1
frames for N samples, so T frames come back as N = (T - 1) * hop samples, and LogMel of that
waveform has T frames again. The phase iteration is the "fast" (momentum) Griffin-Lim of Perraudin,
Balazs and Sondergaard (2013), as in librosa.griffinlim: batched, and on whatever device the input
is on. Phases start from a fixed-seed random draw, so the output is deterministic.
"""
from __future__ import annotations

import functools
import logging

import librosa
import torch
from torch import nn

from omni.audio.features import SPEECH_OUT_MEL, MelSpec

log = logging.getLogger(__name__)

EPS = 1e-8


class GriffinLim(nn.Module):
    """The inverse of ``LogMel(spec)``; buffers follow ``.to(device)``."""

    def __init__(self, spec: MelSpec = SPEECH_OUT_MEL, nnls_iters: int = 30, seed: int = 0) -> None:
        super().__init__()
        self.spec, self.nnls_iters, self.seed = spec, nnls_iters, seed
        fb = torch.from_numpy(librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                                                  fmin=spec.f_min, fmax=spec.f_max)).float()  # (M, F)
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer("fb_pinv", torch.linalg.pinv(fb), persistent=False)  # (F, M)
        self.register_buffer("window", torch.hann_window(spec.win_length), persistent=False)

    # ---------------------------------------------------------------- mel -> linear magnitude
    def mel_to_magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, T, M) -> linear STFT magnitude (B, F, T), F = n_fft // 2 + 1.

        Non-negative least squares for power P >= 0 with filterbank @ P = mel power: the
        pseudo-inverse clamped at a small floor, then multiplicative (Lee-Seung) updates, which
        keep P non-negative and lower ||filterbank @ P - mel||^2 at every step.
        """
        mel = log_mel.float().exp().transpose(1, 2)                  # (B, M, T) power
        fb = self.filterbank
        power = torch.matmul(self.fb_pinv, mel).clamp(min=1e-10)    # (B, F, T)
        fbt_mel = torch.matmul(fb.t(), mel)
        gram = fb.t() @ fb                                           # (F, F)
        for _ in range(self.nnls_iters):
            # the floor keeps bins the updates drive towards 0 out of subnormal floats, whose arithmetic
            # is many times slower on CPUs; 1e-30 is a magnitude of 1e-15, far below anything audible
            power = (power * fbt_mel / (torch.matmul(gram, power) + 1e-12)).clamp_(min=1e-30)
        return power.sqrt()

    # ---------------------------------------------------------------- phase reconstruction
    # The STFT pair is written out (frames as (B, T, n_fft), overlap-add as win // hop shifted
    # sums) rather than torch.stft/istft: istft recomputes its window envelope on every call, which
    # was 2/3 of an iteration's time on CPU. Same centre/zero padding and framing as LogMel.
    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, N) -> complex spectrum (B, N // hop + 1, F)."""
        s = self.spec
        padded = torch.nn.functional.pad(wav, (s.n_fft // 2, s.n_fft // 2))
        frames = padded.unfold(-1, s.n_fft, s.hop_length) * self.window
        return torch.fft.rfft(frames, dim=-1)

    def _envelope(self, n_frames: int) -> torch.Tensor:
        """Overlap-added squared window over n_frames frames, centre padding removed: (N,)."""
        s = self.spec
        sq = (self.window ** 2).expand(1, n_frames, s.n_fft)
        return self._overlap_add(sq)[0]

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, n_fft) at hop spacing -> signal (B, (T - 1) * hop), centre padding cut."""
        s = self.spec
        k = s.n_fft // s.hop_length
        B, T, _ = frames.shape
        chunks = frames.reshape(B, T, k, s.hop_length)
        out = frames.new_zeros(B, T + k - 1, s.hop_length)
        for j in range(k):
            out[:, j:j + T] += chunks[:, :, j]
        out = out.reshape(B, -1)
        start = s.n_fft // 2
        return out[:, start:start + (T - 1) * s.hop_length]

    def _istft(self, spec: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """complex spectrum (B, T, F) -> wav (B, (T - 1) * hop) (least-squares inverse STFT)."""
        frames = torch.fft.irfft(spec, n=self.spec.n_fft, dim=-1).mul_(self.window)
        return self._overlap_add(frames).div_(envelope)

    def griffinlim(self, magnitude: torch.Tensor, n_iter: int = 32, momentum: float = 0.99) -> torch.Tensor:
        """magnitude (B, F, T) -> wav (B, (T - 1) * hop) whose STFT magnitude approximates it.

        n_iter=0 returns the inverse STFT of the magnitude with the random initial phases.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        mag = magnitude.float().transpose(1, 2).contiguous()  # (B, T, F)
        if mag.shape[1] < 2:
            raise ValueError(f"Griffin-Lim needs at least 2 frames, got {mag.shape[1]}")
        envelope = self._envelope(mag.shape[1]).clamp(min=1e-8)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        # one phase draw shared by the batch, so an item's result does not depend on its batch
        phase = torch.rand(mag.shape[1:], generator=gen).to(mag.device) * (2 * torch.pi)
        spec = torch.polar(mag, phase.expand_as(mag))
        previous = torch.zeros_like(spec)
        ratio = momentum / (1.0 + momentum)
        for _ in range(n_iter):
            rebuilt = self._stft(self._istft(spec, envelope))
            angles = torch.add(rebuilt, previous, alpha=-ratio)
            power = (angles * angles.conj()).real  # |z|^2: several times faster than z.abs() on CPU
            spec = angles * (mag * torch.rsqrt(power + EPS ** 2))  # mag * unit phase
            previous = rebuilt
        return self._istft(spec, envelope)

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor, n_iter: int = 32, momentum: float = 0.99) -> torch.Tensor:
        """log-mel (B, T, M) -> wav (B, (T - 1) * hop) float32."""
        return self.griffinlim(self.mel_to_magnitude(log_mel), n_iter, momentum)


@functools.lru_cache(maxsize=8)
def inverter(device: torch.device) -> GriffinLim:
    return GriffinLim().to(device)


def mel_to_wav(log_mel: torch.Tensor, n_iter: int = 32, momentum: float = 0.99) -> torch.Tensor:
    """Speech-out log-mel (B, T, 128) or (T, 128) -> 16 kHz wav (B, (T - 1) * 256) or ((T - 1) * 256,).

    Runs on log_mel's device. T must be >= 2 (one frame has no samples between frame centres).
    """
    single = log_mel.dim() == 2
    x = log_mel[None] if single else log_mel
    if x.dim() != 3 or x.shape[-1] != SPEECH_OUT_MEL.n_mels:
        raise ValueError(f"mel_to_wav expects log-mel (B, T, {SPEECH_OUT_MEL.n_mels}) or (T, "
                         f"{SPEECH_OUT_MEL.n_mels}), got {tuple(log_mel.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"mel_to_wav needs at least 2 frames, got {x.shape[1]}")
    wav = inverter(x.device)(x, n_iter, momentum)
    return wav[0] if single else wav


def num_samples(n_frames: int, spec: MelSpec = SPEECH_OUT_MEL) -> int:
    """Samples mel_to_wav returns for n_frames frames (the inverse of omni.audio.features.num_frames)."""
    return (n_frames - 1) * spec.hop_length


def spectral_convergence(wav: torch.Tensor, magnitude: torch.Tensor, spec: MelSpec = SPEECH_OUT_MEL) -> torch.Tensor:
    """||S - |STFT(wav)|||_F / ||S||_F per item: wav (B, N), target magnitude S (B, F, T) -> (B,).

    The STFT is the LogMel one (centre, zero padding); wav is cut or zero-padded to the
    (T - 1) * hop samples that T frames imply. 0 is a perfect match.
    """
    n = (magnitude.shape[-1] - 1) * spec.hop_length
    wav = wav[..., :n]
    if wav.shape[-1] < n:
        wav = torch.nn.functional.pad(wav, (0, n - wav.shape[-1]))
    window = torch.hann_window(spec.win_length, device=wav.device)
    est = torch.stft(wav.float(), spec.n_fft, spec.hop_length, spec.win_length, window, center=True,
                     pad_mode="constant", return_complex=True).abs()
    diff = torch.linalg.vector_norm(magnitude - est, dim=(-2, -1))
    return diff / torch.linalg.vector_norm(magnitude, dim=(-2, -1)).clamp(min=EPS)


def stft_magnitude(wav: torch.Tensor, spec: MelSpec = SPEECH_OUT_MEL) -> torch.Tensor:
    """wav (B, N) -> |STFT| (B, F, N // hop + 1), the STFT LogMel takes its power from."""
    window = torch.hann_window(spec.win_length, device=wav.device)
    return torch.stft(wav.float(), spec.n_fft, spec.hop_length, spec.win_length, window, center=True,
                      pad_mode="constant", return_complex=True).abs()


class BlockGriffinLim:
    """Griffin-Lim a block at a time, for speech that must start playing before it is all known.

    Log-mel frames are pushed as they arrive; each block of ``block`` new frames is phase-iterated
    over a window holding ``left`` frames before it and ``ahead`` frames after it, with every sample
    already handed out held fixed (a projection applied after each inverse STFT, as in RTISI-LA).
    The samples handed out are therefore final, and the phases grow out of them, so the joins have
    no clicks. The look-ahead frames' phases carry over to the next block as its starting point.
    Offline synthesis runs the same blocks (omni/speech/streaming.py), so streamed audio is the
    offline audio.
    """

    def __init__(self, gl: GriffinLim, block: int = 16, left: int = 4, ahead: int = 4, n_iter: int = 32,
                 momentum: float = 0.99) -> None:
        s = gl.spec
        if min(left, ahead) * s.hop_length < s.n_fft // 2 or block < 1:
            raise ValueError(f"BlockGriffinLim needs block >= 1 and left, ahead >= {s.n_fft // 2 // s.hop_length} "
                             f"frames (half a window), got block={block}, left={left}, ahead={ahead}")
        self.gl, self.block, self.left, self.ahead, self.n_iter = gl, block, left, ahead, n_iter
        self.ratio = momentum / (1.0 + momentum)
        self.hop, self.n_fft = s.hop_length, s.n_fft
        self.gen = torch.Generator(device="cpu").manual_seed(gl.seed)
        device = gl.window.device
        self.mag = torch.zeros(0, s.n_fft // 2 + 1, device=device)     # (T, F) all frames so far
        self.phase = torch.zeros_like(self.mag)                          # current estimate per frame
        self._table = torch.zeros_like(self.mag)                         # starting phases, by frame
        self.out = torch.zeros(0, device=device)                         # samples handed out
        self.done = 0                                                    # frames whose samples < done*hop are out

    def push(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log-mel frames (T, M) -> the samples that became final (possibly none)."""
        if log_mel.shape[0]:
            mag = self.gl.mel_to_magnitude(log_mel[None].to(self.mag.device))[0].t()   # (T, F)
            self.mag = torch.cat([self.mag, mag])
            self.phase = torch.cat([self.phase, self._first_phases(self.phase.shape[0], self.mag.shape[0])])
        got = []
        while self.mag.shape[0] >= self.done + self.block + self.ahead:
            got.append(self._step(self.done + self.block, final=False))
        return torch.cat(got) if got else self.out.new_zeros(0)

    def _first_phases(self, lo: int, hi: int) -> torch.Tensor:
        """Starting phases of frames [lo, hi): drawn 256 frames at a time from the seeded generator, so
        frame t gets the same phase however the frames were pushed (streamed or all at once)."""
        F = self.mag.shape[1]
        while self._table.shape[0] < hi:
            draw = torch.rand((256, F), generator=self.gen).to(self.mag.device) * (2 * torch.pi)
            self._table = torch.cat([self._table, draw])
        return self._table[lo:hi]

    def finish(self) -> torch.Tensor:
        """The remaining samples: all frames are in. (T - 1) * hop samples in all, as GriffinLim."""
        T = self.mag.shape[0]
        if T < 2:
            raise ValueError(f"Griffin-Lim needs at least 2 frames, got {T}")
        return self._step(T - 1, final=True) if self.done < T - 1 else self.out.new_zeros(0)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(W, n_fft) frames at hop spacing -> (W - 1) * hop + n_fft samples."""
        W, k = frames.shape[0], self.n_fft // self.hop
        parts = frames.reshape(W, k, self.hop)
        out = frames.new_zeros(W + k - 1, self.hop)
        for j in range(k):
            out[j:j + W] += parts[:, j]
        return out.reshape(-1)

    def _step(self, b: int, final: bool) -> torch.Tensor:
        """Hand out samples [done*hop, b*hop), iterating frames [w0, w1)."""
        a, h, n = self.done, self.hop, self.n_fft
        T = self.mag.shape[0]
        w0, w1 = max(0, a - self.left), (T if final else b + self.ahead)
        s0 = w0 * h - n // 2                                   # global index of the segment's first sample
        window = self.gl.window
        mag = self.mag[w0:w1]
        envelope = self._overlap_add((window ** 2).expand(w1 - w0, n).contiguous()).clamp(min=1e-8)
        length = envelope.shape[0]
        fixed = torch.zeros(a * h - s0, device=mag.device)    # zeros before sample 0 (centre padding)
        start = max(s0, 0)
        fixed[start - s0:] = self.out[start:a * h]
        tail = (T - 1) * h - s0 if final else length          # past the end: zeros, as GriffinLim cuts there

        def istft(spec: torch.Tensor) -> torch.Tensor:
            x = self._overlap_add(torch.fft.irfft(spec, n=n, dim=-1) * window) / envelope
            x[:fixed.shape[0]] = fixed
            x[tail:] = 0
            return x

        spec = torch.polar(mag, self.phase[w0:w1])
        previous = torch.zeros_like(spec)
        x = istft(spec)
        for _ in range(self.n_iter):
            rebuilt = torch.fft.rfft(x.unfold(0, n, h) * window, dim=-1)
            angles = torch.add(rebuilt, previous, alpha=-self.ratio)
            power = (angles * angles.conj()).real
            spec = angles * (mag * torch.rsqrt(power + EPS ** 2))
            previous = rebuilt
            x = istft(spec)
        self.phase[w0:w1] = torch.angle(spec)
        new = x[a * h - s0:b * h - s0]
        self.out = torch.cat([self.out, new])
        self.done = b
        return new


def block_mel_to_wav(log_mel: torch.Tensor, n_iter: int = 32) -> torch.Tensor:
    """Speech-out log-mel (T, 128) or (1, T, 128) -> ((T - 1) * 256,) through BlockGriffinLim, the
    Griffin-Lim the Synthesizer speaks with (so baselines on true mels hear the same vocoder)."""
    mel = log_mel[0] if log_mel.dim() == 3 else log_mel
    blocks = BlockGriffinLim(inverter(mel.device), n_iter=n_iter)
    return torch.cat([blocks.push(mel), blocks.finish()])
