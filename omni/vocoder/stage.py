"""The vocoder stage: random waveform crops, the HiFi-GAN stage for the shared engine, its
validation against Griffin-Lim on the same mels, and loading a trained generator."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omni.audio.features import SAMPLE_RATE, SPEECH_OUT_MEL, AudioError, LogMel, load_audio
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError, load_weights, read_stage_config
from omni.engine.runtime import Runtime
from omni.engine.stage import Stage
from omni.manifest import AudioRows, Manifest, resolve_manifest
from omni.speech.griffinlim import block_mel_to_wav
from omni.vocoder.model import GanConfig, Generator, HifiGan, VocoderConfig, vocode

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VocoderDataConfig:
    train_csv: str              # any audio CSV with wav,text columns (ASR or TTS)
    val_csv: str
    max_audio_length: int = 8192  # training crop in samples (a multiple of the 256-sample hop)
    val_items: int = 20
    val_max_seconds: float = 8.0
    gl_iters: int = 32          # Griffin-Lim iterations of the baseline measured in validation
    allow_outside_paths: bool = False  # read wav paths outside the CSV's folder (../, absolute, symlinks out)


@dataclasses.dataclass
class VocoderStageConfig:
    model: VocoderConfig
    gan: GanConfig
    data: VocoderDataConfig
    train: TrainConfig


class CropDataset(AudioRows):
    """item i -> a random crop (max_audio_length,) of row i's audio (zero-padded if shorter), or
    None when the file is unusable. Crops draw from the global torch RNG, which the engine saves, so
    a resumed run sees the same crops."""

    def __init__(self, manifest: Manifest, length: int) -> None:
        super().__init__(manifest)
        self.length = length

    def __getitem__(self, i: int) -> torch.Tensor | None:
        got = self._audio_row(i)
        if got is None:
            return None
        x = torch.from_numpy(got[1])
        if len(x) <= self.length:
            return F.pad(x, (0, self.length - len(x)))
        start = int(torch.randint(0, len(x) - self.length + 1, ()))
        return x[start:start + self.length]



def collate_crops(items: list) -> dict[str, torch.Tensor] | None:
    items = [x for x in items if x is not None]
    return {"wav": torch.stack(items)} if items else None


def val_mels(csv: Path, n: int, max_seconds: float, allow_outside: bool = False) -> list[torch.Tensor]:
    """Speech-out log-mels (1, T, 128) of the first n readable rows, each cut to max_seconds."""
    m, logmel, out = Manifest(csv, allow_outside=allow_outside), LogMel(SPEECH_OUT_MEL), []
    for i in range(len(m)):
        if len(out) >= n:
            break
        try:
            audio = load_audio(m[i]["wav"])[: int(max_seconds * SAMPLE_RATE)]
        except (AudioError, DataError) as e:
            log.warning("validation row %s:%d skipped: %s", csv, i + 2, e)
            continue
        out.append(logmel(torch.from_numpy(audio)[None]))
    if not out:
        raise DataError(f"{csv}: no readable audio for vocoder validation")
    return out


def mel_distance(wav: torch.Tensor, mel: torch.Tensor) -> float:
    """Mean |log-mel(wav) - mel| over mel's frames (wav (1, N), mel (1, T, 128))."""
    got = LogMel(SPEECH_OUT_MEL).to(wav.device)(wav.float())
    T = min(got.shape[1], mel.shape[1])
    return float((got[:, :T] - mel[:, :T]).abs().mean())


class VocoderValidation:
    """val_mel_l1 of the generator and, measured once on the same mels, of Griffin-Lim (the block-wise
    one the Synthesizer speaks with)."""

    def __init__(self, mels: list[torch.Tensor], gl_iters: int) -> None:
        self.mels, self.gl_iters, self.gl = mels, gl_iters, None

    def __call__(self, model: HifiGan) -> dict[str, float]:
        device = next(model.parameters()).device
        mels = [m.to(device) for m in self.mels]
        if self.gl is None:
            self.gl = float(np.mean([mel_distance(block_mel_to_wav(m.float(), n_iter=self.gl_iters)[None], m)
                                     for m in mels]))
        ours = float(np.mean([mel_distance(vocode(model.generator, m.float()), m) for m in mels]))
        return {"val_mel_l1": ours, "val_gl_mel_l1": self.gl, "val_items": float(len(mels))}


def build_stage(cfg: VocoderStageConfig, rt: Runtime) -> Stage:
    if cfg.data.max_audio_length % SPEECH_OUT_MEL.hop_length:
        raise ConfigError(f"data.max_audio_length={cfg.data.max_audio_length} must be a multiple of the hop "
                          f"({SPEECH_OUT_MEL.hop_length})")
    outside = cfg.data.allow_outside_paths
    train_set = CropDataset(Manifest(resolve_manifest(cfg.data.train_csv, "train"), allow_outside=outside),
                            cfg.data.max_audio_length)
    val = VocoderValidation(val_mels(resolve_manifest(cfg.data.val_csv, "val"), cfg.data.val_items,
                                     cfg.data.val_max_seconds, outside), cfg.data.gl_iters)
    torch.manual_seed(cfg.train.seed)
    model = HifiGan(cfg.model, cfg.gan)
    n_g = sum(p.numel() for p in model.generator.parameters())
    n_d = sum(p.numel() for p in model.disc.parameters())
    log.info("HiFi-GAN: generator %.2fM, discriminators %.2fM parameters; %d training clips", n_g / 1e6, n_d / 1e6,
             len(train_set))
    scales = {"generator.": cfg.gan.lr_g / cfg.train.lr, "disc.": cfg.gan.lr_d / cfg.train.lr}
    return Stage(
        name="vocoder", model=model, train_set=train_set, config=to_dict(cfg), collate=collate_crops,
        loss_fn=lambda m, b: m(b["wav"]), evaluate=val, best_metric="val_mel_l1", skip_report=train_set.report,
        count_items=lambda b: float(b["wav"].numel()) / SAMPLE_RATE, items_unit="audio_s",
        lr_scales=lambda m: scales)


def load_generator(ckpt_dir: str | Path, device: torch.device) -> Generator:
    """The trained generator of a vocoder checkpoint (train_vocoder.py), strict, in eval mode."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "model.safetensors").is_file():
        raise CheckpointError(f"no trained vocoder in {ckpt_dir}; train one with "
                              "`python train_vocoder.py --config configs/vocoder_tiny.json` or use Griffin-Lim")
    cfg = read_stage_config(ckpt_dir, VocoderStageConfig)
    model = HifiGan(cfg.model, cfg.gan)
    load_weights(model, ckpt_dir)
    return model.generator.to(device).eval()


CONFIG = VocoderStageConfig
DEFAULT_CONFIG = "configs/vocoder_tiny.json"
