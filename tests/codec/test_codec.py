import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio.features import SPEECH_OUT_MEL, LogMel, num_frames
from omni.codec.model import CODE_RATE_HZ, CodecConfig, MelCodec
from omni.codec.rvq import VectorQuantizer, usage_stats
from omni.codec.stage import CodecStageConfig, build_stage, codec_loss, collate_mels, load_codec
from omni.config import config_from_dict
from omni.engine.checkpoint import CheckpointError
from omni.engine.runtime import setup_runtime
from omni.engine.training import fit
from omni.speech.griffinlim import num_samples


def tiny_codec(fpc: int = 2, **kw) -> MelCodec:
    torch.manual_seed(0)
    cfg = CodecConfig(n_codebooks=2, codebook_size=16, codebook_dim=8, d_model=32, n_layers=1,
                      frames_per_code=fpc, **kw)
    return MelCodec(cfg)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A tone whose pitch and loudness wander, with noise bursts: (N,) float32."""
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    f0 = 120 + 80 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    x = np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x += 0.05 * rng.normal(size=n) * (np.sin(2 * np.pi * 1.3 * t) > 0.5)
    return (0.3 * x).astype(np.float32)


def mels(*seconds: float) -> list[torch.Tensor]:
    logmel = LogMel(SPEECH_OUT_MEL)
    return [logmel(torch.from_numpy(speechlike(s, k))[None])[0] for k, s in enumerate(seconds)]


def warmed(codec: MelCodec) -> MelCodec:
    """One training-mode forward: k-means initialises every codebook."""
    batch = collate_mels(mels(1.0, 0.7))
    codec.train()(batch["mel"], batch["lengths"])
    return codec.eval()


@pytest.mark.parametrize("fpc", [1, 2])
def test_encode_decode_shapes_and_ranges(fpc):
    codec = warmed(tiny_codec(fpc))
    mel = torch.stack([mels(0.6)[0][:37]] * 2)
    codes = codec.encode(mel)
    assert codes.shape == (2, math.ceil(37 / fpc), 2) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 16
    out = codec.decode(codes)
    assert out.shape == (2, codes.shape[1] * fpc, 128)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        codec.decode(torch.full((1, 3, 2), 16))
    with pytest.raises(ValueError, match="codebooks"):
        codec.decode(torch.zeros(1, 3, 3, dtype=torch.long))


def test_decoding_from_the_first_codebooks_only_drops_the_residuals():
    """decode(keep=k) decodes the sum of the first k codebooks' vectors: keep = all is the plain
    decode, keep=1 equals decoding with every residual code's vector replaced by zero."""
    codec = warmed(tiny_codec())
    codes = codec.encode(torch.stack([mels(0.6)[0][:30]]))
    assert torch.equal(codec.decode(codes, keep=2), codec.decode(codes))
    q = torch.nn.functional.embedding(codes[..., 0], codec.rvq.layers[0].codebook)
    base_only = codec.denormalise(codec.decoder(q.transpose(1, 2)).transpose(1, 2))
    assert torch.allclose(codec.decode(codes, keep=1), base_only, atol=1e-6)
    assert not torch.allclose(codec.decode(codes, keep=1), codec.decode(codes), atol=1e-3)
    # the codes of the first codebooks alone (what a Talker with fewer codebooks predicts) decode the same
    assert torch.equal(codec.decode(codes[..., :1]), codec.decode(codes, keep=1))
    with pytest.raises(ValueError, match="keep=2: the codes have 1 codebooks"):
        codec.decode(codes[..., :1], keep=2)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="codebooks"):
            codec.decode(codes, keep=bad)


@pytest.mark.parametrize("fpc", [1, 2])
def test_n_seconds_of_codes_decode_to_n_seconds(fpc):
    codec = warmed(tiny_codec(fpc))
    for seconds in (1.0, 2.0, 3.5):
        frames = num_frames(int(seconds * 16000), SPEECH_OUT_MEL)
        mel = torch.zeros(1, frames, 128)
        codes = codec.encode(mel)
        assert codes.shape[1] == math.ceil(frames / fpc)
        assert abs(codes.shape[1] / CODE_RATE_HZ[fpc] - seconds) <= 1 / CODE_RATE_HZ[fpc] + 1e-9
        decoded = codec.decode(codes)
        audio_s = num_samples(decoded.shape[1]) / 16000
        assert abs(audio_s - seconds) <= fpc * SPEECH_OUT_MEL.hop_length / 16000 + 1e-9


def test_padded_batch_encodes_like_each_item_alone():
    codec = warmed(tiny_codec(2))
    a, b = mels(1.0, 0.61)
    batch = collate_mels([a, b])
    codes = codec.encode(batch["mel"], batch["lengths"])
    for k, m in enumerate((a, b)):
        alone = codec.encode(m[None])[0]
        assert torch.equal(codes[k, :alone.shape[0]], alone)
    assert codec.code_lengths(batch["lengths"]).tolist() == [math.ceil(len(a) / 2), math.ceil(len(b) / 2)]


def test_dead_code_is_reseeded_and_then_used():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=2, decay=0.9, dead_code_steps=3, kmeans_iters=5).train()
    data = torch.randn(256, 2)
    vq(data)  # k-means init
    vq.codebook[5] = torch.tensor([1e3, 1e3])  # nobody is near code 5 any more
    vq.ema_sum[5] = vq.codebook[5] * vq.ema_count[5]
    for _ in range(3):
        _, codes = vq(torch.randn(256, 2))
        assert vq.codebook[5].abs().max() > 100 or vq.resets > 0
    assert vq.resets >= 1 and vq.codebook[5].abs().max() < 10  # re-seeded from a batch vector
    _, codes = vq.eval()(torch.randn(4096, 2))
    assert (codes == 5).any()  # and it is chosen again


def test_ema_moves_codes_to_their_vectors_mean():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=2, dim=2, decay=0.8, dead_code_steps=1000, kmeans_iters=3).train()
    a, b = torch.tensor([[5.0, 0.0]]), torch.tensor([[-5.0, 0.0]])
    vq(torch.cat([a.expand(10, 2), b.expand(10, 2)]) + 0.1 * torch.randn(20, 2))
    for _ in range(40):
        vq(torch.cat([(a + 1).expand(10, 2), (b - 1).expand(10, 2)]))
    assert sorted(vq.codebook[:, 0].tolist()) == pytest.approx([-6.0, 6.0], abs=0.05)


def test_usage_statistics():
    codes = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]])
    usage, perp = usage_stats(codes, codebook_size=8)
    assert usage.tolist() == [0.5, 0.125]
    assert perp[0].item() == pytest.approx(4.0) and perp[1].item() == pytest.approx(1.0)


def test_loss_decreases_on_a_tiny_overfit():
    codec = tiny_codec(2).train()
    batch = collate_mels(mels(1.0, 0.8, 0.9))
    codec.mel_mean.copy_(batch["mel"].mean((0, 1)))
    codec.mel_std.copy_(batch["mel"].std((0, 1)).clamp(min=1e-3))
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, logs = codec_loss(codec, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert {"l1", "commit", "perplexity_q0", "resets_q1"} <= set(logs)


def _tts_csv(tmp_path, n: int = 6) -> str:
    rows = ["text,wav"]
    for k in range(n):
        sf.write(tmp_path / f"u{k}.wav", speechlike(0.8 + 0.1 * k, k), 16000)
        rows.append(f"sentence {k},u{k}.wav")
    rows.append("a missing file,missing.wav")
    (tmp_path / "tts.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "tts.csv")


def test_stage_trains_saves_and_loads_strictly(tmp_path):
    csv = _tts_csv(tmp_path)
    cfg = config_from_dict({
        "model": {"n_codebooks": 2, "codebook_size": 16, "codebook_dim": 8, "d_model": 32, "n_layers": 1},
        "data": {"train_csv": csv, "val_csv": csv, "crop_frames": 32, "val_items": 7},
        "train": {"batch_size": 4, "gradient_accumulation_steps": 1, "lr": 3e-3, "weight_decay": 0.0,
                  "warmup_steps": 1, "max_steps": 6, "max_epochs": 100, "max_grad_norm": 1.0, "val_freq": 3,
                  "checkpoint_freq": 3, "precision": "fp32", "save_dir": str(tmp_path / "codec"), "seed": 0,
                  "device": "cpu", "log_freq": 1}}, CodecStageConfig)
    stage = build_stage(cfg, setup_runtime("cpu", "fp32"))
    result = fit(stage, cfg.train)
    assert result["status"] == "done" and result["val_items"] == 6  # the missing file is skipped
    assert 0 < result["val_min_usage"] <= 1 and result["val_l1"] > 0
    codec, codec_cfg = load_codec(tmp_path / "codec", "cpu")
    assert codec_cfg == cfg.model and not codec.training
    mel = mels(1.0)[0][None]
    assert codec.decode(codec.encode(mel)).shape == (1, 64, 128)
    events = [json.loads(line) for line in (tmp_path / "codec" / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "data" and e.get("audio_missing", 0) >= 1 for e in events)
    raw = json.loads((tmp_path / "codec" / "config.json").read_text())
    raw["model"]["codebook_size"] = 32
    (tmp_path / "codec" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="does not match"):
        load_codec(tmp_path / "codec", "cpu")
