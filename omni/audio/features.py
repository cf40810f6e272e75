"""The project's one audio definition: every waveform is 16 kHz mono float32 once loaded.

Loading mixes channels to mono and resamples (librosa, soxr high quality) at load time, so the
rest of the code never sees another rate or channel count. Files are written as 16-bit PCM WAV,
atomically (temp file + rename). Stage B adds the log-mel front ends here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from omni.files import atomic_write

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# what soundfile (libsndfile >= 1.1) decodes; anything else needs converting first
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class AudioError(ValueError):
    """A file is missing, unreadable, empty, non-finite or silent; the message names the file.

    `reason` is one short word for counting: missing, is_directory, empty, corrupt, nan, silent (or
    invalid).
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Decode path to float32 (frames, channels) and its native sample rate."""
    if path.is_dir():  # a distinct reason: "no such audio file" would send the user looking for a typo
        raise AudioError(f"{path}: is a directory, not an audio file", "is_directory")
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file", "missing")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes); delete it or re-create it", "empty")
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(
            f"{path}: cannot decode audio ({e}); it is corrupt or not a format libsndfile "
            f"reads ({', '.join(AUDIO_EXTENSIONS)}): convert it, e.g. "
            f"`ffmpeg -i IN -ar 16000 OUT.wav`",
            "corrupt",
        ) from e
    return audio, sr


def to_mono_16k(audio: np.ndarray, sr: int) -> np.ndarray:
    """audio (frames,) or (frames, channels) at sr -> (samples,) float32 mono at SAMPLE_RATE."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be (frames,) or (frames, channels), got shape {audio.shape}")
    if sr != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return np.ascontiguousarray(audio, dtype=np.float32)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Any file soundfile reads, any rate/channels -> (samples,) float32 mono at 16 kHz.

    Raises AudioError (naming the file) when it is missing, corrupt, empty (no samples),
    contains NaN/inf, or is digital silence (every sample exactly zero): none of these is
    usable as speech, and a caller that skips bad rows needs one exception type to count.
    """
    path = Path(path)
    audio, sr = _read(path)
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: no samples (a header without audio); delete or re-create it",
                         "empty")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: contains NaN or infinite samples; re-create or drop the file",
                         "nan")
    if not audio.any():
        raise AudioError(f"{path}: digital silence (every sample is 0); re-create or drop the file",
                         "silent")
    return to_mono_16k(audio, sr)


def save_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write (samples,) float audio as 16-bit PCM WAV, atomically; values are clipped to [-1, 1]."""
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"save_wav({path}): audio must be a non-empty 1-D array, got {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError(f"save_wav({path}): audio contains NaN or infinite samples")
    atomic_write(path, lambda p: sf.write(p, np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV"),
                 fsync=False)
    return path


def duration_seconds(path: str | os.PathLike) -> float:
    """Length of an audio file from its header (no decoding)."""
    info = sf.info(str(path))
    return info.frames / info.samplerate


# ---------------------------------------------------------------- log-mel features
@dataclass(frozen=True)
class MelSpec:
    """One STFT + mel filterbank definition. frames = n_samples // hop_length + 1."""
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int = 128
    sample_rate: int = SAMPLE_RATE
    f_min: float = 0.0
    f_max: float = SAMPLE_RATE / 2


ENCODER_MEL = MelSpec(n_fft=400, win_length=400, hop_length=160)        # 100 Hz, audio encoder input
SPEECH_OUT_MEL = MelSpec(n_fft=1024, win_length=1024, hop_length=256)   # 62.5 Hz, codec/vocoder
LOG_FLOOR = 1e-5  # the one log floor: log(max(mel, LOG_FLOOR))


def num_frames(n_samples: int, spec: MelSpec) -> int:
    return n_samples // spec.hop_length + 1


class LogMel(torch.nn.Module):
    """audio (B, N) float at 16 kHz -> log-mel (B, N // hop + 1, n_mels), on any device.

    Zero padding (centre=True, constant pad) means a zero-padded batch gives every example's real
    frames exactly as computed alone.
    """

    def __init__(self, spec: MelSpec) -> None:
        super().__init__()
        self.spec = spec
        fb = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                                 fmin=spec.f_min, fmax=spec.f_max)  # (n_mels, n_fft//2 + 1), slaney
        self.register_buffer("filterbank", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(spec.win_length), persistent=False)

    def power(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, N) -> mel power (B, frames, n_mels), before the log."""
        s = self.spec
        stft = torch.stft(audio.float(), s.n_fft, s.hop_length, s.win_length, self.window, center=True,
                          pad_mode="constant", return_complex=True)  # (B, F, frames)
        return torch.matmul(self.filterbank, stft.abs().pow(2)).transpose(1, 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.power(audio), min=LOG_FLOOR))
