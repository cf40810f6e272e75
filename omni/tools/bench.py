"""Every stage's real model, loss and collate around a random batch of the worst-case shape its
config admits, stepped by the engine: what ``lab/bench_stages.py`` times on any device and
``scripts/update_configs_from_data.py --measure`` checks the memory estimate against.

Worst case: every sequence at ``ctx_len``, every clip at the longest the data section keeps, every
SFT sample with an image and the longest clip. Real batches are never larger. Weights are random:
speed and memory do not depend on them. Stages that read other stages' checkpoints (the vision
text side, SFT) get the default configs' architectures instead.
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from omni.audio.stage import AsrStageConfig
from omni.config import ConfigError, TrainConfig, config_from_dict, load_config, to_dict
from omni.engine.stage import Stage
from omni.engine.training import Trainer
from omni.thinker.stage import TextStageConfig
from omni.tools.autotune import GIB, estimate_bytes
from omni.tools.machine import sync_device
from omni.tools.survey import model_info

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/
QUICK_BATCH = 2


@dataclass
class Shape:
    """Which batch to build: the config's worst case, or a smoke-test one (``quick``); ``batch``
    and ``accum`` replace the config's per-device batch and gradient accumulation."""
    quick: bool = False
    batch: int | None = None
    accum: int | None = None


@dataclass
class Built:
    """One stage ready to step: the Stage (model, loss, collate), its train config, a batch."""
    stage: Stage
    train: TrainConfig
    batch: Any
    shape: str                      # the worst case, in words
    # the autotuner's bytes for this batch under AMP (True) or fp32 (False), when it has a model
    estimate: Callable[[bool], int | None] = lambda amp: None


def _rows(n: int, make: Callable[[int], Any]) -> list:
    return [make(i) for i in range(n)]


def _batch(cfg, shape: Shape) -> int:
    return shape.batch or (QUICK_BATCH if shape.quick else cfg.train.batch_size)


def _estimate(model, data, batch: int, fills: dict[str, int] | None = None) -> Callable[[bool], int | None]:
    def estimate(amp: bool) -> int | None:
        info = model_info(to_dict(model), to_dict(data), amp, fills=fills)
        return None if info is None or info.memory is None else estimate_bytes(info.memory, batch)
    return estimate


def build_thinker(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.thinker.model import ThinkerLM
    from omni.thinker.stage import lm_loss
    b = _batch(cfg, shape)
    T = 64 if shape.quick else cfg.model.ctx_len
    ids = torch.randint(0, cfg.model.vocab_size, (b, T + 1), generator=g)
    stage = Stage("thinker", ThinkerLM(cfg.model), [], lm_loss, {}, count_items=lambda x: x[0].numel(),
                  items_unit="tok")
    return Built(stage, cfg.train, (ids[:, :-1], ids[:, 1:]), f"{b} x {T} tokens, vocab {cfg.model.vocab_size}",
                 _estimate(cfg.model, cfg.data, b))


def build_audio_enc(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.audio.ctc import CharVocab
    from omni.audio.features import ENCODER_MEL, num_frames
    from omni.audio.stage import AsrModel, collate_asr, ctc_loss
    b = _batch(cfg, shape)
    vocab = CharVocab.default()
    seconds = 2.0 if shape.quick else cfg.data.max_seconds
    n = int(seconds * 16000)
    # the most characters AsrDataset keeps for a clip this long (more are 'too_fast_for_ctc')
    n_labels = -(-num_frames(n, ENCODER_MEL) // 8) * cfg.model.symbols_per_frame
    # no two equal neighbours, so CTC needs no blanks between them
    labels = lambda i: [1 + (k + i) % (len(vocab) - 1) for k in range(n_labels)]  # noqa: E731
    items = _rows(b, lambda i: ((0.1 * torch.randn(n, generator=g)).numpy(), labels(i)))
    stage = Stage("audio_enc", AsrModel(cfg.model, len(vocab)), [], ctc_loss, {}, collate=collate_asr,
                  count_items=lambda x: float(x["audio_lengths"].sum()) / 16000, items_unit="audio_s")
    return Built(stage, cfg.train, collate_asr(items), f"{b} clips x {seconds:g} s, {n_labels} characters each",
                 _estimate(cfg.model, cfg.data, b))


def build_vision(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.vision.data import collate_pairs
    from omni.vision.stage import ClipModel, clip_loss
    b = _batch(cfg, shape)
    # the width of the frozen Thinker's cached caption features: the default Thinker's stands in
    text_dim = default_config("thinker").model.d_model
    S = cfg.model.img_size
    items = _rows(b, lambda i: (torch.randn(3, S, S, generator=g), torch.randn(text_dim, generator=g),
                                torch.tensor(i)))
    stage = Stage("vision", ClipModel(cfg.model, cfg.clip, text_dim), [], clip_loss, {}, collate=collate_pairs,
                  count_items=lambda x: float(len(x["images"])), items_unit="img")
    return Built(stage, cfg.train, collate_pairs(items), f"{b} images {S} x {S}",
                 _estimate(cfg.model, cfg.data, b))


def build_codec(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.audio.features import SPEECH_OUT_MEL
    from omni.codec.model import MelCodec
    from omni.codec.stage import codec_loss, collate_mels
    b = _batch(cfg, shape)
    T = 32 if shape.quick else cfg.data.crop_frames
    items = _rows(b, lambda i: torch.randn(T, SPEECH_OUT_MEL.n_mels, generator=g))
    stage = Stage("codec", MelCodec(cfg.model), [], codec_loss, {}, collate=collate_mels,
                  count_items=lambda x: float(x["lengths"].sum()) * SPEECH_OUT_MEL.hop_length / 16000,
                  items_unit="audio_s")
    return Built(stage, cfg.train, collate_mels(items), f"{b} crops x {T} mel frames")


def build_talker(cfg, shape: Shape, g: torch.Generator) -> Built:
    import math

    from omni.codec.model import CODE_RATE_HZ
    from omni.talker.data import collate_talker
    from omni.talker.duration_loss import duration_loss
    from omni.talker.loss import talker_loss
    from omni.talker.model import build_talker as make_talker
    from omni.talker.text import TextVocab
    b = _batch(cfg, shape)
    c, t = cfg.codec.model, cfg.talker
    durations = t.alignment == "durations"
    if durations:
        t.latent_dim = t.latent_dim or c.codebook_dim
    vocab = TextVocab.default(t.text_input)
    t.n_codebooks = t.n_codebooks or c.n_codebooks
    t.codebook_size = t.codebook_size or c.codebook_size
    t.text_vocab_size = t.text_vocab_size or len(vocab)
    seconds = 2.0 if shape.quick else cfg.data.max_seconds
    T = math.ceil(seconds * CODE_RATE_HZ[c.frames_per_code])
    L = 20 if shape.quick else t.max_text_chars
    items = _rows(b, lambda i: (torch.randint(1, t.text_vocab_size, (L,), generator=g),
                                torch.randint(0, t.codebook_size, (T, t.n_codebooks), generator=g)))
    r = t.frames_per_step
    model = make_talker(t)
    if durations:
        model.set_latent(torch.randn(t.n_codebooks, t.codebook_size, t.latent_dim, generator=g),
                         torch.randint(0, t.codebook_size, (1000, t.n_codebooks), generator=g))
        loss = lambda m, x: duration_loss(m, x, cfg.loss)  # noqa: E731
    else:
        loss = lambda m, x: talker_loss(m, x, cfg.loss, r)  # noqa: E731
    stage = Stage("talker", model, [], loss, {}, collate=collate_talker,
                  count_items=lambda x: float(x["code_lens"].sum()), items_unit="frames")
    fills = {"n_codebooks": t.n_codebooks, "codebook_size": t.codebook_size, "text_vocab_size": t.text_vocab_size}
    est = _estimate(t, cfg.data, b, fills)
    return Built(stage, cfg.train, collate_talker(items),
                 f"{b} x ({L} characters + {seconds:g} s = {T} frames x {t.n_codebooks} codebooks)", est)


def build_sft(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.multimodal.data import collate_sft
    from omni.multimodal.model import Components, OmniModel
    from omni.multimodal.stage import sft_loss
    from omni.multimodal.template import AUDIO, IMAGE, TEXT
    b = _batch(cfg, shape)
    # the default Stage A-C configs stand in for their checkpoints: same architectures, random weights
    comp = Components(*(default_config(k).model for k in ("thinker", "audio_enc", "vision")))
    if shape.quick:
        comp = dataclasses.replace(comp, thinker=dataclasses.replace(comp.thinker, ctx_len=128))
    model = OmniModel(comp, cfg.model)
    seconds = 1.0 if shape.quick else cfg.data.max_audio_seconds
    n = int(seconds * 16000)
    T, n_img, n_aud = comp.thinker.ctx_len, model.image_slots(), model.audio_slots(n)
    kinds = [TEXT] * 4 + [IMAGE] * n_img + [TEXT] * 2 + [AUDIO] * n_aud
    kinds += [TEXT] * (T - len(kinds))
    V = comp.thinker.vocab_size

    def item(i: int) -> dict:
        ids = torch.randint(4, V, (T,), generator=g).tolist()
        targets = [-100] * (T // 2) + ids[T // 2 + 1:] + [-100]  # the second half is the answer
        return {"ids": ids, "kinds": kinds, "targets": targets, "image": torch.randn(3, comp.vision.img_size,
                comp.vision.img_size, generator=g), "audio": (0.1 * torch.randn(n, generator=g)).numpy(),
                "task": "vqa"}
    stage = Stage("sft", model, [], sft_loss, {}, collate=lambda x: collate_sft(x, 0),
                  count_items=lambda x: float((x["targets"] != -100).sum()), items_unit="tok",
                  find_unused_parameters=True)
    return Built(stage, cfg.train, collate_sft(_rows(b, item), 0),
                 f"{b} x {T} tokens, each with an image ({n_img} slots) and a {seconds:g} s clip ({n_aud} slots)")


def build_vocoder(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.vocoder.model import HifiGan
    from omni.vocoder.stage import collate_crops
    b = _batch(cfg, shape)
    n = 2048 if shape.quick else cfg.data.max_audio_length
    items = _rows(b, lambda i: 0.1 * torch.randn(n, generator=g))
    scales = {"generator.": cfg.gan.lr_g / cfg.train.lr, "disc.": cfg.gan.lr_d / cfg.train.lr}
    stage = Stage("vocoder", HifiGan(cfg.model, cfg.gan), [], lambda m, x: m(x["wav"]), {}, collate=collate_crops,
                  count_items=lambda x: float(x["wav"].numel()) / 16000, items_unit="audio_s",
                  lr_scales=lambda m: scales)
    return Built(stage, cfg.train, collate_crops(items), f"{b} crops x {n} samples")


def build_ocr(cfg, shape: Shape, g: torch.Generator) -> Built:
    from omni.ocr.model import OcrModel, OcrVocab
    from omni.ocr.stage import collate_ocr, ocr_loss
    b = _batch(cfg, shape)
    vocab = OcrVocab.ascii()
    m = cfg.model
    W = 128 if shape.quick else m.max_width
    L = 20 if shape.quick else m.max_text_len
    items = _rows(b, lambda i: (torch.rand(1, m.img_size, W, generator=g), W,
                                torch.randint(1, len(vocab) - 3, (L,), generator=g).tolist()))
    stage = Stage("ocr", OcrModel(m, len(vocab)), [], ocr_loss, {}, collate=collate_ocr,
                  count_items=lambda x: float(x["widths"].shape[0]), items_unit="lines")
    return Built(stage, cfg.train, collate_ocr(items), f"{b} lines {m.img_size} x {W} px, {L} characters",
                 _estimate(cfg.model, cfg.data, b))


@dataclass(frozen=True)
class Kind:
    config_cls: Callable[[], type]  # imported on use: the stage modules import much
    default_file: str
    build: Callable[[Any, Shape, torch.Generator], Built]


def _cls(module: str, name: str) -> Callable[[], type]:
    def get() -> type:
        import importlib
        return getattr(importlib.import_module(module), name)
    return get


KINDS: dict[str, Kind] = {
    "thinker": Kind(lambda: TextStageConfig, "thinker_tiny.json", build_thinker),
    "audio_enc": Kind(lambda: AsrStageConfig, "audio_enc_tiny.json", build_audio_enc),
    "vision": Kind(_cls("omni.vision.stage", "VisionStageConfig"), "vision_tiny.json", build_vision),
    "codec": Kind(_cls("omni.codec.stage", "CodecStageConfig"), "codec_tiny.json", build_codec),
    "talker": Kind(_cls("omni.talker.stage", "TalkerStageConfig"), "talker_tiny.json", build_talker),
    "sft": Kind(_cls("omni.multimodal.stage", "SftStageConfig"), "omni_sft_tiny.json", build_sft),
    "vocoder": Kind(_cls("omni.vocoder.stage", "VocoderStageConfig"), "vocoder_tiny.json", build_vocoder),
    "ocr": Kind(_cls("omni.ocr.stage", "OcrStageConfig"), "ocr_tiny.json", build_ocr),
}
STAGES = tuple(KINDS)


def default_config(name: str):
    """The stage config object of ``configs/<the stage's default file>``."""
    return load_config(ROOT / "configs" / KINDS[name].default_file, KINDS[name].config_cls())


def kind_of(section: dict) -> tuple[str, Any] | None:
    """(stage name, config object) of the one stage whose config class takes ``section`` strictly."""
    for name, kind in KINDS.items():
        try:
            return name, config_from_dict(section, kind.config_cls())
        except ConfigError:
            continue
    return None


def build(name: str, shape: Shape, cfg=None, seed: int = 0) -> Built:
    """Stage ``name`` from ``cfg`` (default: its default config file) around a worst-case batch."""
    torch.manual_seed(seed)
    return KINDS[name].build(default_config(name) if cfg is None else cfg, shape, torch.Generator().manual_seed(seed))


def _attention_flops(q: tuple, k: tuple, *args, **kwargs) -> int:
    """QK^T and PV over every query head, the causal half not discounted (the usual convention)."""
    b, h, tq, dh = q
    return 4 * b * h * tq * k[-2] * dh


@functools.cache
def _count_cpu_attention() -> None:
    """torch's FLOP counter knows the GPU attention kernels, not the CPU flash one: give it the same
    formula (backward: 5 products against the forward's 2)."""
    aten = torch.ops.aten
    register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda q, k, v, *a, **kw: _attention_flops(q, k))
    register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda g, q, k, v, *a, **kw: _attention_flops(q, k) * 5 // 2)


def count_micro_flops(built: Built, device: str) -> int:
    """Matrix FLOPs of one micro-batch, forward and backward: torch's FLOP
    counter over one eager fp32 step of the engine. The same arithmetic runs in any precision and
    compiled, so one count serves every variant of the stage."""
    _count_cpu_attention()
    with tempfile.TemporaryDirectory() as tmp:
        train = dataclasses.replace(built.train, device=device, precision="fp32", compile=False, save_dir=tmp,
                                    max_steps=10 ** 6, gradient_accumulation_steps=1)
        trainer = Trainer(built.stage, train, resume=False, overwrite=True)
        it = iter(lambda: built.batch, None)
        with FlopCounterMode(display=False) as counter:
            trainer._step(it)
        return counter.get_total_flops()


def step_stats(built: Built, device: str, precision: str | None, compiled: bool, warmup: int, steps: int,
               shape: Shape, save_dir: Path | None = None) -> dict[str, Any]:
    """Time ``steps`` optimizer steps of the engine after ``warmup``, on ``built``'s batch every time;
    the CUDA peak (allocated, reserved) over all of them. ``precision`` None: the config's."""
    with tempfile.TemporaryDirectory() as tmp:
        train = dataclasses.replace(
            built.train, device=device, precision=precision or built.train.precision, compile=compiled,
            save_dir=str(save_dir or tmp),
            max_steps=10 ** 6, gradient_accumulation_steps=shape.accum or (
                1 if shape.quick else built.train.gradient_accumulation_steps))
        trainer = Trainer(built.stage, train, resume=False, overwrite=True)
        dev = trainer.rt.device

        def batches():
            while True:
                yield built.batch

        it = batches()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer._step(it)
        sync_device(dev)
        warm_s = time.perf_counter() - t0
        times, losses, items = [], [], 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, _, n = trainer._step(it)
            sync_device(dev)
            times.append(time.perf_counter() - t0)
            losses.append(loss)
            items += n
        params = list(trainer.raw.parameters())
        step_s = statistics.median(times)
        out = {"precision": trainer.rt.precision, "precision_reason": trainer.rt.precision_reason,
               "compile": compiled, "device": str(dev), "shape": built.shape,
               "accumulation": train.gradient_accumulation_steps,
               "params_m": sum(p.numel() for p in params) / 1e6,
               "trainable_m": sum(p.numel() for p in params if p.requires_grad) / 1e6,
               "warmup_s": warm_s, "step_s": step_s, "step_s_all": times, "items_per_s": items / sum(times),
               "items_unit": built.stage.items_unit, "losses": losses, "max_steps": built.train.max_steps,
               "default_run_h": step_s * built.train.max_steps / 3600, "estimate_gib": None}
        estimate = None if shape.quick else built.estimate(trainer.rt.amp_dtype is not None)  # what really ran
        if estimate is not None:
            out["estimate_gib"] = estimate / GIB
        if dev.type == "cuda":
            out["peak_alloc_gib"] = torch.cuda.max_memory_allocated(dev) / GIB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / GIB
        del trainer
    return out
