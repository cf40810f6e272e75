import numpy as np
import pytest
import torch

from omni.audio.features import SPEECH_OUT_MEL, LogMel, load_audio, num_frames
from omni.speech.griffinlim import GriffinLim, mel_to_wav, num_samples, spectral_convergence, stft_magnitude
from tests.conftest import ROOT

ARCTIC = ROOT / "examples" / "audio" / "arctic_a0007.wav"


def _harmonic(seconds: float = 1.0) -> torch.Tensor:
    """A gliding harmonic tone with an amplitude envelope: (1, N)."""
    t = torch.arange(int(16000 * seconds)) / 16000
    f0 = 150 + 60 * t
    phase = 2 * np.pi * torch.cumsum(f0, 0) / 16000
    x = sum(torch.sin(k * phase) / k for k in range(1, 6)) * (0.3 + 0.2 * torch.sin(2 * np.pi * 3 * t))
    return (0.3 * x)[None].float()


def test_recovers_a_known_magnitude():
    mag = stft_magnitude(_harmonic())
    gl = GriffinLim()
    sc0 = spectral_convergence(gl.griffinlim(mag, n_iter=0), mag).item()
    sc32 = spectral_convergence(gl.griffinlim(mag, n_iter=32), mag).item()
    assert sc0 > 0.3  # random phases are far off
    assert sc32 < 0.15 and sc32 < sc0 / 3


def test_momentum_beats_plain_griffin_lim():
    mag = stft_magnitude(_harmonic())
    gl = GriffinLim()
    fast = spectral_convergence(gl.griffinlim(mag, 16, momentum=0.99), mag).item()
    plain = spectral_convergence(gl.griffinlim(mag, 16, momentum=0.0), mag).item()
    assert fast < plain


def test_frame_and_sample_counts_agree_with_logmel():
    logmel = LogMel(SPEECH_OUT_MEL)
    for n in (16000, 16000 + 255, 12345):
        mel = logmel(_harmonic(n / 16000)[:, :n])
        T = mel.shape[1]
        assert T == num_frames(n, SPEECH_OUT_MEL)
        wav = mel_to_wav(mel, n_iter=2)
        assert wav.shape == (1, num_samples(T)) == (1, (T - 1) * 256)
        assert logmel(wav).shape[1] == T  # and back to the same number of frames
    assert mel_to_wav(mel[0], n_iter=1).shape == (num_samples(T),)  # unbatched in, unbatched out


def test_batch_equals_per_item():
    torch.manual_seed(0)
    mels = LogMel(SPEECH_OUT_MEL)(torch.cat([_harmonic(0.5), 0.5 * _harmonic(0.5).flip(-1)]))
    both = mel_to_wav(mels, n_iter=8)
    for k in range(2):
        assert torch.allclose(both[k], mel_to_wav(mels[k:k + 1], n_iter=8)[0], atol=1e-4)


def test_mel_inversion_of_real_speech():
    """The whole path on a real recording: log-mel -> wav -> log-mel comes back close."""
    wav = torch.from_numpy(load_audio(ARCTIC))[None]
    logmel = LogMel(SPEECH_OUT_MEL)
    mel = logmel(wav)
    mag = GriffinLim().mel_to_magnitude(mel)
    true = stft_magnitude(wav)
    assert ((mag - true).norm() / true.norm()).item() < 0.25  # NNLS recovers most of the spectrum
    out = mel_to_wav(mel, n_iter=32)
    assert torch.isfinite(out).all()
    speech = mel > mel.max() - 6  # ignore near-silent bins, where log differences are meaningless
    err = (logmel(out) - mel).abs()[speech].mean().item()
    assert err < 0.35


def test_bad_input():
    with pytest.raises(ValueError, match="128"):
        mel_to_wav(torch.zeros(1, 10, 80))
    with pytest.raises(ValueError, match="2 frames"):
        mel_to_wav(torch.zeros(1, 1, 128))
