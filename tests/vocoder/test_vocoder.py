"""HiFi-GAN vocoder: output length = frames x hop, discriminator outputs, each loss moves only its
side, bad rows, the script end to end with exact resume, and speaking through it."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train_vocoder
from omni.audio.features import SPEECH_OUT_MEL
from omni.engine.checkpoint import read_metrics
from omni.manifest import Manifest
from omni.vocoder.model import Discriminators, GanConfig, Generator, HifiGan, VocoderConfig
from omni.vocoder.stage import CropDataset, collate_crops, load_generator
from tests.conftest import ROOT

CLIPS = ROOT / "assets" / "audio" / "clips.csv"


def _cfg(**kw) -> VocoderConfig:
    args = dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=16,
                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], mpd_periods=[2, 3], msd_scales=2,
                disc_channels=4)
    args.update(kw)
    return VocoderConfig(**args)


@pytest.mark.parametrize("T", [1, 7, 33])
def test_generator_output_is_frames_times_hop(T):
    torch.manual_seed(0)
    wav = Generator(_cfg())(torch.randn(2, T, SPEECH_OUT_MEL.n_mels))
    assert wav.shape == (2, T * SPEECH_OUT_MEL.hop_length) and wav.abs().max() <= 1


def test_upsampling_must_reach_the_hop():
    with pytest.raises(ValueError, match="multiply to 128"):
        Generator(_cfg(upsample_rates=[8, 4, 4], upsample_kernel_sizes=[16, 8, 8]))


def test_discriminators_score_every_period_and_scale():
    out = Discriminators(_cfg(mpd_periods=[2, 3, 5], msd_scales=3))(torch.randn(2, 4096))
    assert len(out) == 6
    for scores, feats in out:
        assert scores.shape[0] == 2 and len(feats) >= 5 and all(f.shape[0] == 2 for f in feats)


def test_each_loss_moves_only_its_side():
    torch.manual_seed(0)
    model = HifiGan(_cfg(), GanConfig(lr_g=2e-4, lr_d=2e-4))
    wav = torch.randn(2, 2048) * 0.1
    for name, moves, still in (("d_loss", model.disc, model.generator), ("g_adv", model.generator, model.disc),
                               ("g_fm", model.generator, model.disc), ("mel_l1", model.generator, model.disc)):
        model.zero_grad(set_to_none=True)
        model.losses(wav)[name].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in moves.parameters()), name
        assert all(p.grad is None for p in still.parameters()), name


def test_crops_pad_short_clips_and_skip_bad_rows(tmp_path):
    import shutil
    shutil.copy(ROOT / "assets" / "audio" / "front_left.wav", tmp_path / "ok.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    (tmp_path / "a.csv").write_text("wav,text\nok.wav,front left\nbad.wav,x\nmissing.wav,y\n")
    data = CropDataset(Manifest(tmp_path / "a.csv"), 2048)
    items = [data[i] for i in range(3)]
    assert items[0].shape == (2048,) and items[1] is None and items[2] is None
    long = CropDataset(Manifest(tmp_path / "a.csv"), 10 * 16000)[0]
    assert long.shape == (160000,) and float(long[-1000:].abs().sum()) == 0  # zero-padded
    report = data.report()
    assert report["seen"] == 3 and report["skipped"] == 2
    assert collate_crops([None]) is None and collate_crops(items)["wav"].shape == (1, 2048)


def _stage(tmp_path, save_dir, steps=4) -> dict:
    return {"model": vars(_cfg()), "gan": {"lr_g": 2e-4, "lr_d": 4e-4},
            "data": {"train_csv": str(CLIPS), "val_csv": str(CLIPS), "max_audio_length": 2048, "val_items": 2,
                     "val_max_seconds": 1.0, "gl_iters": 2},
            "train": {"batch_size": 2, "gradient_accumulation_steps": 2, "lr": 2e-4, "weight_decay": 0.0,
                      "warmup_steps": 0, "max_steps": steps, "max_epochs": 1000, "max_grad_norm": 1000.0,
                      "val_freq": 2, "checkpoint_freq": 2, "precision": "fp32", "save_dir": str(save_dir), "seed": 0,
                      "log_freq": 1, "device": "cpu", "betas": [0.8, 0.99]}}


def test_train_vocoder_end_to_end_with_exact_resume(tmp_path):
    straight, sliced = tmp_path / "a", tmp_path / "b"
    for d in (straight, sliced):
        (tmp_path / f"{d.name}.json").write_text(json.dumps(_stage(tmp_path, d)))
    assert train_vocoder.main(["--config", str(tmp_path / "a.json")]) == 0
    assert train_vocoder.main(["--config", str(tmp_path / "b.json"), "--stop-at", "2"]) == 0
    assert train_vocoder.main(["--config", str(tmp_path / "b.json"), "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(sliced / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vals = [r for r in read_metrics(straight) if r["event"] == "val"]
    assert [r["step"] for r in vals] == [2, 4]
    assert all(np.isfinite(r["val_mel_l1"]) and r["val_gl_mel_l1"] > 0 for r in vals)
    train = [r for r in read_metrics(straight) if r["event"] == "train"]
    assert {"d_loss", "g_adv", "g_fm", "mel_l1"} <= set(train[0])
    gen = load_generator(straight / "best", torch.device("cpu"))
    assert not gen.training and gen(torch.zeros(1, 3, 128)).shape == (1, 768)


def test_missing_vocoder_is_a_clear_error(tmp_path):
    from omni.engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="train_vocoder.py"):
        load_generator(tmp_path, torch.device("cpu"))
