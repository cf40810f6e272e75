import numpy as np
import torch

from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL, LogMel, num_frames


def test_frame_counts_and_shapes():
    mel = LogMel(ENCODER_MEL)
    for n in (1, 159, 160, 16000, 16001):
        out = mel(torch.zeros(2, n))
        assert out.shape == (2, num_frames(n, ENCODER_MEL), 128) == (2, n // 160 + 1, 128)
    assert LogMel(SPEECH_OUT_MEL)(torch.zeros(1, 16000)).shape == (1, 16000 // 256 + 1, 128)


def test_padding_does_not_change_real_frames():
    torch.manual_seed(0)
    a = torch.randn(12345) * 0.1
    mel = LogMel(ENCODER_MEL)
    alone = mel(a[None])
    batch = torch.zeros(2, 20000)
    batch[0, :12345] = a
    both = mel(batch)
    assert torch.allclose(both[0, :alone.shape[1]], alone[0], atol=1e-4)


def test_tone_lands_in_the_right_bin():
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * np.pi * 1000 * t)
    mel = LogMel(ENCODER_MEL)
    peak = mel(tone[None])[0, 10:-10].mean(0).argmax().item()
    centres = mel.filterbank.argmax(-1)  # FFT bin at the peak of each mel filter
    assert abs(centres[peak].item() * 16000 / 400 - 1000) < 100
