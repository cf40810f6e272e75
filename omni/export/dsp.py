"""numpy signal processing for the torch-free runtime: log-mel, Griffin-Lim, resampling.

Ports of omni/audio/features.py ``LogMel`` (centre-padded STFT with zeros, power, slaney mel
filterbank, log with the 1e-5 floor) and omni/speech/griffinlim.py ``GriffinLim`` (NNLS mel ->
magnitude, fast Griffin-Lim with momentum). The filterbanks, their pseudo-inverse and the windows
are written by the export (``frontend.npz``) from the very tensors PyTorch uses, so no librosa is
needed here. Griffin-Lim's initial phases are drawn exactly as ``torch.rand`` draws them from a
seeded CPU generator (both are MT19937 with the same seeding; torch keeps 24 bits of each 32-bit
draw), so the runtime's waveform follows PyTorch's to FFT rounding. Imports numpy only.
"""
from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-5
EPS = 1e-8


def frames(padded: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(..., N) -> (..., (N - n_fft) // hop + 1, n_fft) strided view."""
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::hop, :]


def stft(wav: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """wav (..., N) -> complex128 spectrum (..., N // hop + 1, n_fft // 2 + 1); centre=True with zeros.
    In float64: numpy's float32 FFT is several times slower than its float64 one."""
    pad = [(0, 0)] * (wav.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    padded = np.pad(wav.astype(np.float64), pad)
    return np.fft.rfft(frames(padded, n_fft, hop) * window.astype(np.float64), axis=-1)


def log_mel(wav: np.ndarray, filterbank: np.ndarray, window: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(N,) or (B, N) audio at 16 kHz -> log-mel (..., N // hop + 1, n_mels) float32 (LogMel)."""
    spec = stft(wav, n_fft, hop, window)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)          # (..., T, F)
    mel = np.matmul(power, filterbank.T.astype(np.float32))
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def torch_rand(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """What ``torch.rand(shape, generator=torch.Generator().manual_seed(seed))`` returns on the CPU."""
    n = int(np.prod(shape))
    raw = np.random.RandomState(seed).randint(0, 2 ** 32, size=n, dtype=np.uint32)
    return ((raw & 0xFFFFFF).astype(np.float64) * 2.0 ** -24).astype(np.float32).reshape(shape)


class GriffinLim:
    """The inverse of the speech-out log-mel: ``GriffinLim(fb, fb_pinv, window, n_fft, hop)(log_mel)``."""

    def __init__(self, filterbank: np.ndarray, fb_pinv: np.ndarray, window: np.ndarray, n_fft: int, hop: int,
                 nnls_iters: int = 30, seed: int = 0) -> None:
        self.fb, self.fb_pinv = filterbank.astype(np.float32), fb_pinv.astype(np.float32)
        self.window, self.n_fft, self.hop = window.astype(np.float32), n_fft, hop
        self.nnls_iters, self.seed = nnls_iters, seed
        self.gram = self.fb.T @ self.fb

    def magnitude(self, log_mel: np.ndarray) -> np.ndarray:
        """log-mel (T, M) -> linear magnitude (T, F) by multiplicative NNLS (GriffinLim.mel_to_magnitude)."""
        mel = np.exp(log_mel.astype(np.float32)).T                       # (M, T)
        power = np.maximum(self.fb_pinv @ mel, 1e-10)
        fbt_mel = self.fb.T @ mel
        for _ in range(self.nnls_iters):
            power = power * fbt_mel / (self.gram @ power + 1e-12)
        return np.sqrt(power).T.astype(np.float32)

    def _overlap_add(self, fr: np.ndarray) -> np.ndarray:
        T = fr.shape[0]
        k = self.n_fft // self.hop
        chunks = fr.reshape(T, k, self.hop)
        out = np.zeros((T + k - 1, self.hop), dtype=fr.dtype)
        for j in range(k):
            out[j:j + T] += chunks[:, j]
        start = self.n_fft // 2
        return out.reshape(-1)[start:start + (T - 1) * self.hop]

    def __call__(self, log_mel: np.ndarray, n_iter: int = 32, momentum: float = 0.99,
                 phase: np.ndarray | None = None) -> np.ndarray:
        """log-mel (T, M) -> wav ((T - 1) * hop,) float32. ``phase`` (T, F) in [0, 1): the initial draw
        (default: torch's seeded draw, as PyTorch's GriffinLim). The iteration runs in float64: numpy's
        float32 FFT is several times slower than its float64 one."""
        mag = self.magnitude(log_mel).astype(np.float64)
        T = mag.shape[0]
        if T < 2:
            raise ValueError(f"Griffin-Lim needs at least 2 frames, got {T}")
        n_fft, hop = self.n_fft, self.hop
        window = self.window.astype(np.float64)
        envelope = np.maximum(self._overlap_add(np.broadcast_to(window ** 2, (T, n_fft)).copy()), 1e-8)
        u = torch_rand(mag.shape, self.seed) if phase is None else phase.astype(np.float32)
        spec = mag * np.exp(1j * (u * np.float32(2 * np.pi)).astype(np.float64))
        previous = np.zeros_like(spec)
        ratio = momentum / (1.0 + momentum)
        padded = np.zeros((T - 1) * hop + n_fft)
        view = frames(padded, n_fft, hop)                                     # (T, n_fft), a view of padded

        def istft(z: np.ndarray) -> np.ndarray:
            return self._overlap_add(np.fft.irfft(z, n=n_fft, axis=-1) * window) / envelope

        scale = np.empty_like(mag)
        for _ in range(n_iter):
            padded[n_fft // 2:n_fft // 2 + (T - 1) * hop] = istft(spec)
            rebuilt = np.fft.rfft(view * window, axis=-1)
            previous *= -ratio
            previous += rebuilt                       # angles = rebuilt - ratio * previous
            np.abs(previous, out=scale)
            np.square(scale, out=scale)
            scale += EPS ** 2
            np.sqrt(scale, out=scale)                 # sqrt(|angles|^2 + EPS^2), as torch's rsqrt
            np.divide(mag, scale, out=scale)
            previous *= scale
            spec, previous = previous, rebuilt
        return istft(spec).astype(np.float32)


def resample(wav: np.ndarray, sr: int, target: int = 16000) -> np.ndarray:
    """Band-limited (FFT) resampling of a mono signal. PyTorch's loader uses soxr; the two agree
    closely but not bit for bit, so parity is measured on 16 kHz files."""
    if sr == target:
        return wav.astype(np.float32, copy=False)
    n_out = round(len(wav) * target / sr)
    spec = np.fft.rfft(wav.astype(np.float64))
    keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    return (np.fft.irfft(out_spec, n=n_out) * (n_out / len(wav))).astype(np.float32)
