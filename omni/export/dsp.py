"""numpy signal processing for the torch-free runtime: log-mel, Griffin-Lim, resampling.

Ports of omni/audio/features.py ``LogMel`` (centre-padded STFT with zeros, power, slaney mel
filterbank, log with the 1e-5 floor) and omni/speech/griffinlim.py's NNLS mel -> magnitude and
``BlockGriffinLim`` (fast Griffin-Lim with momentum, a block at a time, as PyTorch speaks). The
filterbanks, their pseudo-inverse and the windows are written by the export (``frontend.npz``) from
the very tensors PyTorch uses, so no librosa is needed here. Griffin-Lim's initial phases are drawn
exactly as ``torch.rand`` draws them from a seeded CPU generator (both are MT19937 with the same
seeding; torch keeps 24 bits of each 32-bit draw), so the runtime's waveform follows PyTorch's to
FFT rounding. The iteration runs in float64: numpy's float32 FFT is slower than its float64 one.
Imports numpy only.
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


def torch_rand(draws: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
    """The next ``torch.rand(shape, generator=g)`` of a CPU generator ``g`` seeded as ``draws`` was
    (``torch.Generator().manual_seed(s)`` and ``np.random.RandomState(s)``): float32 in [0, 1)."""
    raw = draws.randint(0, 2 ** 32, size=int(np.prod(shape)), dtype=np.uint32)
    return ((raw & 0xFFFFFF).astype(np.float64) * 2.0 ** -24).astype(np.float32).reshape(shape)


class GriffinLim:
    """What the speech-out log-mel's inverse needs besides the phase iteration (BlockGriffinLim): the
    filterbank, its pseudo-inverse, the window, and the log-mel -> linear magnitude step."""

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
            np.maximum(power, 1e-30, out=power)  # out of subnormal floats, as PyTorch's (slow arithmetic)
        return np.sqrt(power).T.astype(np.float32)


class BlockGriffinLim:
    """omni/speech/griffinlim.py ``BlockGriffinLim`` in numpy: log-mel frames are pushed as they arrive,
    each block of ``block`` frames is phase-iterated over ``left`` frames before it and ``ahead`` after
    it with the samples already handed out held fixed, and the samples that became final come back.
    Starting phases are torch's draws of 256 frames at a time from the seeded generator, so the audio
    follows PyTorch's streamed (and offline) speech to FFT rounding."""

    def __init__(self, gl: GriffinLim, block: int, left: int, ahead: int, n_iter: int = 32,
                 momentum: float = 0.99) -> None:
        if min(left, ahead) * gl.hop < gl.n_fft // 2 or block < 1:
            raise ValueError(f"BlockGriffinLim needs block >= 1 and left, ahead >= {gl.n_fft // 2 // gl.hop} "
                             f"frames (half a window), got block={block}, left={left}, ahead={ahead}")
        self.gl, self.block, self.left, self.ahead, self.n_iter = gl, block, left, ahead, n_iter
        self.ratio = momentum / (1.0 + momentum)
        self.hop, self.n_fft = gl.hop, gl.n_fft
        self.window = gl.window.astype(np.float64)
        self.draws = np.random.RandomState(gl.seed)   # torch's CPU generator: MT19937, seeded alike
        F = gl.n_fft // 2 + 1
        self.mag = np.zeros((0, F))                    # (T, F) all frames so far
        self.phase = np.zeros((0, F))                  # current estimate per frame
        self._table = np.zeros((0, F), dtype=np.float32)   # starting phases, by frame
        self.out = np.zeros(0)                         # samples handed out
        self.done = 0

    def push(self, log_mel: np.ndarray) -> np.ndarray:
        """log-mel frames (T, M) -> the samples that became final (possibly none), float32."""
        if log_mel.shape[0]:
            self.mag = np.concatenate([self.mag, self.gl.magnitude(log_mel).astype(np.float64)])
            self.phase = np.concatenate([self.phase, self._first_phases(self.phase.shape[0], self.mag.shape[0])])
        got = []
        while self.mag.shape[0] >= self.done + self.block + self.ahead:
            got.append(self._step(self.done + self.block, final=False))
        return np.concatenate(got).astype(np.float32) if got else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The remaining samples: all frames are in. (T - 1) * hop samples in all."""
        T = self.mag.shape[0]
        if T < 2:
            raise ValueError(f"Griffin-Lim needs at least 2 frames, got {T}")
        return self._step(T - 1, final=True).astype(np.float32) if self.done < T - 1 else np.zeros(0, np.float32)

    def _first_phases(self, lo: int, hi: int) -> np.ndarray:
        F = self.mag.shape[1]
        while self._table.shape[0] < hi:
            self._table = np.concatenate([self._table, torch_rand(self.draws, (256, F)) * np.float32(2 * np.pi)])
        return self._table[lo:hi].astype(np.float64)

    def _overlap_add(self, fr: np.ndarray) -> np.ndarray:
        """(W, n_fft) frames at hop spacing -> (W - 1) * hop + n_fft samples."""
        W, k = fr.shape[0], self.n_fft // self.hop
        parts = fr.reshape(W, k, self.hop)
        out = np.zeros((W + k - 1, self.hop), dtype=fr.dtype)
        for j in range(k):
            out[j:j + W] += parts[:, j]
        return out.reshape(-1)

    def _step(self, b: int, final: bool) -> np.ndarray:
        """Hand out samples [done*hop, b*hop), iterating frames [w0, w1)."""
        a, h, n, window = self.done, self.hop, self.n_fft, self.window
        T = self.mag.shape[0]
        w0, w1 = max(0, a - self.left), (T if final else b + self.ahead)
        s0 = w0 * h - n // 2
        mag = self.mag[w0:w1]
        envelope = np.maximum(self._overlap_add(np.broadcast_to(window ** 2, (w1 - w0, n)).copy()), 1e-8)
        length = envelope.shape[0]
        fixed = np.zeros(a * h - s0)
        start = max(s0, 0)
        fixed[start - s0:] = self.out[start:a * h]
        tail = (T - 1) * h - s0 if final else length

        def istft(spec: np.ndarray) -> np.ndarray:
            x = self._overlap_add(np.fft.irfft(spec, n=n, axis=-1) * window) / envelope
            x[:fixed.shape[0]] = fixed
            x[tail:] = 0
            return x

        spec = mag * np.exp(1j * self.phase[w0:w1])
        previous = np.zeros_like(spec)
        x = istft(spec)
        for _ in range(self.n_iter):
            rebuilt = np.fft.rfft(frames(x, n, h) * window, axis=-1)
            angles = rebuilt - self.ratio * previous
            spec = angles * (mag / np.sqrt(angles.real ** 2 + angles.imag ** 2 + EPS ** 2))
            previous = rebuilt
            x = istft(spec)
        self.phase[w0:w1] = np.angle(spec)
        new = x[a * h - s0:b * h - s0]
        self.out = np.concatenate([self.out, new])
        self.done = b
        return new


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
