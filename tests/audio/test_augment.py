"""Stage B's waveform augmentation (omni/audio/augment.py): each effect does what it says, padding
stays silent, off means untouched, and the draws come from the seeded global RNG."""
import numpy as np
import pytest
import torch

from omni.audio.augment import (
    PHONE_BAND,
    SAMPLE_RATE,
    WaveAugment,
    augment_waveform,
    change_speed,
    coloured_noise,
    convolve,
    room_impulse,
    telephone_band,
)
from omni.audio.encoder import AudioEncConfig
from omni.audio.features import ENCODER_MEL
from omni.audio.stage import AsrModel
from omni.config import ConfigError, config_from_dict


def _tone_batch() -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = torch.stack([0.1 * torch.sin(2 * torch.pi * f * t) for f in (150.0, 1000.0, 6000.0)])
    audio[2, SAMPLE_RATE // 2:] = 0  # the last row is half as long
    return audio, torch.tensor([SAMPLE_RATE, SAMPLE_RATE, SAMPLE_RATE // 2])


def test_off_returns_the_batch_untouched():
    audio, lengths = _tone_batch()
    out, out_lengths = augment_waveform(audio, lengths, WaveAugment())
    assert out is audio and out_lengths is lengths


def test_telephone_band_keeps_the_voice_band_and_removes_the_rest():
    audio, _ = _tone_batch()
    out = telephone_band(audio)
    kept = out.pow(2).mean(1) / audio.pow(2).mean(1)
    assert PHONE_BAND[0] < 1000.0 < PHONE_BAND[1]
    assert kept[1] > 0.99          # 1 kHz passes
    assert kept[0] < 1e-3 and kept[2] < 1e-3   # 150 Hz and 6 kHz do not


def test_effects_at_a_prime_length_match_their_definitions():
    """A batch is as long as its longest clip, any number of samples: the FFTs run at a longer,
    7-smooth size (fast), and what comes back is still the effect at the batch's own length."""
    n = 16001   # prime
    t = torch.arange(n) / SAMPLE_RATE
    tones = torch.stack([0.1 * torch.sin(2 * torch.pi * f * t) for f in (150.0, 1000.0)])
    out = telephone_band(tones)
    mid = slice(2000, n - 2000)   # away from the ends, where the cut tone's edges leak
    kept = out[:, mid].pow(2).mean(1) / tones[:, mid].pow(2).mean(1)
    assert out.shape == tones.shape and kept[1] > 0.98 and kept[0] < 1e-2
    torch.manual_seed(0)
    x, h = torch.randn(2, n, dtype=torch.float64), torch.randn(2, 301, dtype=torch.float64)
    direct = torch.stack([torch.tensor(np.convolve(x[i].numpy(), h[i].numpy())[:n]) for i in range(2)])
    assert torch.allclose(convolve(x, h), direct, atol=1e-9)
    noise = coloured_noise(torch.randn(2, n), torch.tensor([0.0, 2.0]))
    assert noise.shape == (2, n) and torch.allclose(noise.pow(2).mean(1), torch.ones(2), atol=1e-4)
    power = torch.fft.rfft(noise, dim=1).abs().pow(2)
    low, high = power[:, 1:200].mean(1), power[:, -2000:].mean(1)   # below 200 Hz, above 7 kHz
    assert 0.5 < low[0] / high[0] < 2 and low[1] / high[1] > 1e4   # white is flat; brown falls 20 dB/decade


def test_room_impulse_decays_by_60_db_at_its_rt60():
    torch.manual_seed(0)
    rt60 = torch.tensor([0.3, 0.6])
    h = room_impulse(rt60)
    assert h.shape[1] == int(0.6 * SAMPLE_RATE)
    assert torch.all(h[:, 0] == 1)
    early = h[0, 1:400].pow(2).mean()
    late = h[0, int(0.29 * SAMPLE_RATE):int(0.3 * SAMPLE_RATE)].pow(2).mean()
    assert 50 < 10 * torch.log10(early / late) < 70


def test_every_effect_leaves_padding_silent_and_noise_lands_at_its_snr():
    audio, lengths = _tone_batch()
    torch.manual_seed(0)
    out, out_lengths = augment_waveform(audio, lengths, WaveAugment(telephone=1.0, reverb=1.0, noise=1.0))
    assert out.shape == audio.shape and torch.equal(out_lengths, lengths)
    assert torch.all(out[2, SAMPLE_RATE // 2:] == 0)
    assert not torch.allclose(out, audio)
    torch.manual_seed(0)
    noisy = augment_waveform(audio, lengths, WaveAugment(noise=1.0))[0][:2]
    x = audio[:2]
    gain = (noisy * x).sum(1, keepdim=True) / (x * x).sum(1, keepdim=True)   # the noise is uncorrelated with x
    snr = 10 * torch.log10(x.pow(2).sum(1) / (noisy / gain - x).pow(2).sum(1))
    assert torch.all(snr > 4.5) and torch.all(snr < 30.5), snr
    assert torch.all(20 * torch.log10(gain) > -12.5) and torch.all(20 * torch.log10(gain) < 6.5)


def test_draws_follow_the_seed():
    audio, lengths = _tone_batch()
    cfg = WaveAugment(telephone=0.5, reverb=0.5, noise=0.5, speed=0.5)
    torch.manual_seed(3)
    a, la = augment_waveform(audio, lengths, cfg)
    torch.manual_seed(3)
    b, lb = augment_waveform(audio, lengths, cfg)
    torch.manual_seed(4)
    c, _ = augment_waveform(audio, lengths, cfg)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)


def test_speed_resamples_each_picked_row_to_its_new_length_and_pitch():
    audio, lengths = _tone_batch()
    factor = torch.tensor([1.1, 0.9, 0.9])
    out, new = change_speed(audio, lengths, factor, torch.tensor([0, 2]))
    want = [SAMPLE_RATE / 1.1, SAMPLE_RATE, SAMPLE_RATE / 2 / 0.9]
    assert new.tolist() == pytest.approx(want, rel=0.01) and new[1] == SAMPLE_RATE
    assert out.shape == (3, SAMPLE_RATE)                 # the longest row sets the padded length
    assert torch.all(out[0, :100] != 0) and torch.all(out[2, :100] != 0)
    assert torch.equal(out[1], audio[1])                 # an unpicked row is untouched
    assert torch.all(out[0, new[0]:] == 0) and torch.all(out[2, new[2]:] == 0)

    def peak_hz(x: torch.Tensor) -> float:
        return float(torch.fft.rfft(x).abs().argmax()) * SAMPLE_RATE / len(x)
    for r, f0 in ((0, 150.0), (2, 6000.0)):   # a tone moves by the factor its length moved by
        assert peak_hz(out[r, :new[r]]) == pytest.approx(f0 * float(lengths[r] / new[r]), rel=0.01)
    assert float(out[0, :new[0]].pow(2).mean()) == pytest.approx(float(audio[0].pow(2).mean()), rel=0.02)
    slow, slow_lengths = change_speed(audio[:1], lengths[:1], torch.tensor([0.9]), torch.tensor([0]))
    assert slow.shape[1] == int(slow_lengths[0]) == pytest.approx(SAMPLE_RATE / 0.9, rel=0.01)  # a longer batch


def test_speed_feeds_the_encoder_its_new_frame_counts():
    cfg = config_from_dict({"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0,
                            "spec_augment": False, "augment": {"speed": 1.0}}, AudioEncConfig)
    model = AsrModel(cfg, 30).train()
    audio, lengths = _tone_batch()
    torch.manual_seed(0)
    mel, frames = model.features(audio, lengths)
    assert not torch.equal(frames, lengths // ENCODER_MEL.hop_length + 1)
    assert mel.shape[1] >= int(frames.max())


def test_only_training_is_augmented():
    cfg = config_from_dict({"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0,
                                     "spec_augment": False, "augment": {"noise": 1.0}}, AudioEncConfig)
    model = AsrModel(cfg, 30).eval()
    audio, lengths = _tone_batch()
    with torch.no_grad():
        a, _ = model.features(audio, lengths)
        b, _ = model.features(audio, lengths)
        model.train()
        c, _ = model.features(audio, lengths)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_a_probability_outside_0_1_names_the_key():
    with pytest.raises(ConfigError, match=r"augment\.reverb: must be <= 1"):
        config_from_dict({"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0,
                                   "augment": {"reverb": 1.5}}, AudioEncConfig)
