#!/usr/bin/env python
"""Peak memory and speed of every stage's training step at its default config: prints numbers,
asserts nothing.

Each stage's real model (built from its configs/*_tiny.json), its real loss and its real collate
run under the engine's own step (``omni.training.Trainer``: autocast, GradScaler, gradient
accumulation, clipping, fused AdamW on CUDA, ``torch.compile`` when asked), on random data of the
worst-case shape the config admits: every sequence at ``ctx_len``, every clip at the longest the
data section keeps, every SFT sample with an image and the longest clip. Real batches are never
larger, so the peak printed here bounds a real run's (the CUDA context, ~0.5 GiB, comes on top).
Weights are random: speed and memory do not depend on them (the Talker's frozen codec is not run:
the codes come from its cache). Where the autotuner has a memory model for the kind, its estimate
(``omni/autotune.py``) is printed beside the measurement.

  python scripts/bench_stages.py                      # every stage, as configured, on cuda if present
  python scripts/bench_stages.py --stages thinker sft --precision both --compile both
  python scripts/bench_stages.py --quick --device cpu # smoke run: batch 2, short shapes, 2 steps
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omni.autotune import GIB, estimate_bytes  # noqa: E402
from omni.config import TrainConfig, load_config  # noqa: E402
from omni.stage_survey import model_fills, model_info  # noqa: E402
from omni.training import Stage, Trainer  # noqa: E402

STAGES = ("thinker", "audio_enc", "vision", "codec", "talker", "sft", "vocoder", "ocr")
QUICK_BATCH = 2


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


def _estimate(model: dict, data: dict, batch: int, fills: dict[str, int] | None = None
              ) -> Callable[[bool], int | None]:
    def estimate(amp: bool) -> int | None:
        info = model_info(model, data, amp, fills=fills)
        return None if info is None or info.memory is None else estimate_bytes(info.memory, batch)
    return estimate


@dataclass
class Shape:
    """Which batch to build: the config's worst case, or a smoke-test one (``quick``); ``batch``
    and ``accum`` replace the config's per-device batch and gradient accumulation."""
    quick: bool = False
    batch: int | None = None
    accum: int | None = None


def _load(name: str, cls: type, shape: Shape) -> tuple[Any, dict, int]:
    path = ROOT / "configs" / name
    cfg = load_config(path, cls)
    raw = json.loads(path.read_text())
    return cfg, raw, shape.batch or (QUICK_BATCH if shape.quick else cfg.train.batch_size)


def build_thinker(shape: Shape, g: torch.Generator) -> Built:
    from omni.config import TextStageConfig
    from omni.text import lm_loss
    from omni.thinker import ThinkerLM
    cfg, raw, b = _load("thinker_tiny.json", TextStageConfig, shape)
    T = 64 if shape.quick else cfg.model.ctx_len
    ids = torch.randint(0, cfg.model.vocab_size, (b, T + 1), generator=g)
    stage = Stage("thinker", ThinkerLM(cfg.model), [], lm_loss, {}, count_items=lambda x: x[0].numel(),
                  items_unit="tok")
    return Built(stage, cfg.train, (ids[:, :-1], ids[:, 1:]), f"{b} x {T} tokens, vocab {cfg.model.vocab_size}",
                 _estimate(raw["model"], raw["data"], b))


def build_audio_enc(shape: Shape, g: torch.Generator) -> Built:
    from omni.asr import AsrModel, collate_asr, ctc_loss
    from omni.config import AsrStageConfig
    from omni.ctc import CharVocab
    cfg, raw, b = _load("audio_enc_tiny.json", AsrStageConfig, shape)
    vocab = CharVocab.default()
    seconds = 2.0 if shape.quick else cfg.data.max_seconds
    n = int(seconds * 16000)
    n_labels = int(seconds * 16)  # ~16 characters a second: fast speech
    # no two equal neighbours, so CTC needs no blanks between them
    labels = lambda i: [1 + (k + i) % (len(vocab) - 1) for k in range(n_labels)]  # noqa: E731
    items = _rows(b, lambda i: ((0.1 * torch.randn(n, generator=g)).numpy(), labels(i)))
    stage = Stage("audio_enc", AsrModel(cfg.model, len(vocab)), [], ctc_loss, {}, collate=collate_asr,
                  count_items=lambda x: float(x["audio_lengths"].sum()) / 16000, items_unit="audio_s")
    return Built(stage, cfg.train, collate_asr(items), f"{b} clips x {seconds:g} s, {n_labels} characters each",
                 _estimate(raw["model"], raw["data"], b))


def build_vision(shape: Shape, g: torch.Generator) -> Built:
    from omni.config import ThinkerConfig, config_from_dict
    from omni.vision import ClipModel, VisionStageConfig, clip_loss
    from omni.vision_data import collate_pairs
    cfg, raw, b = _load("vision_tiny.json", VisionStageConfig, shape)
    text_dim = config_from_dict(json.loads((ROOT / "configs/thinker_tiny.json").read_text())["model"],
                                ThinkerConfig).d_model  # the frozen Thinker's width (features are cached)
    S = cfg.model.img_size
    items = _rows(b, lambda i: (torch.randn(3, S, S, generator=g), torch.randn(text_dim, generator=g),
                                torch.tensor(i)))
    stage = Stage("vision", ClipModel(cfg.model, cfg.clip, text_dim), [], clip_loss, {}, collate=collate_pairs,
                  count_items=lambda x: float(len(x["images"])), items_unit="img")
    return Built(stage, cfg.train, collate_pairs(items), f"{b} images {S} x {S}",
                 _estimate(raw["model"], raw["data"], b))


def build_codec(shape: Shape, g: torch.Generator) -> Built:
    from omni.audio import SPEECH_OUT_MEL
    from omni.codec import MelCodec
    from omni.codec_stage import CodecStageConfig, codec_loss, collate_mels
    cfg, raw, b = _load("codec_tiny.json", CodecStageConfig, shape)
    T = 32 if shape.quick else cfg.data.crop_frames
    items = _rows(b, lambda i: torch.randn(T, SPEECH_OUT_MEL.n_mels, generator=g))
    stage = Stage("codec", MelCodec(cfg.model), [], codec_loss, {}, collate=collate_mels,
                  count_items=lambda x: float(x["lengths"].sum()) * SPEECH_OUT_MEL.hop_length / 16000,
                  items_unit="audio_s")
    return Built(stage, cfg.train, collate_mels(items), f"{b} crops x {T} mel frames")


def build_talker(shape: Shape, g: torch.Generator) -> Built:
    import math

    from omni.codec import CODE_RATE_HZ
    from omni.talker import Talker
    from omni.talker_data import TalkerStageConfig, collate_talker
    from omni.talker_loss import talker_loss
    from omni.talker_text import TextVocab
    cfg, raw, b = _load("talker_tiny.json", TalkerStageConfig, shape)
    c, t = cfg.codec.model, cfg.talker
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
    stage = Stage("talker", Talker(t), [], lambda m, x: talker_loss(m, x, cfg.loss, r), {}, collate=collate_talker,
                  count_items=lambda x: float(x["code_lens"].sum()), items_unit="frames")
    fills = {"n_codebooks": t.n_codebooks, "codebook_size": t.codebook_size, "text_vocab_size": t.text_vocab_size}
    est = _estimate(raw["talker"], raw["data"], b, fills)
    return Built(stage, cfg.train, collate_talker(items),
                 f"{b} x ({L} characters + {seconds:g} s = {T} frames x {t.n_codebooks} codebooks)", est)


def build_sft(shape: Shape, g: torch.Generator) -> Built:
    from omni.chat_template import AUDIO, IMAGE, TEXT
    from omni.config import AsrStageConfig, TextStageConfig
    from omni.omni_model import Components, OmniModel
    from omni.sft import SftStageConfig, sft_loss
    from omni.sft_data import collate_sft
    from omni.vision import VisionStageConfig
    cfg, raw, b = _load("omni_sft_tiny.json", SftStageConfig, shape)
    # the default Stage A-C configs stand in for their checkpoints: same architectures, random weights
    comp = Components(load_config(ROOT / "configs/thinker_tiny.json", TextStageConfig).model,
                      load_config(ROOT / "configs/audio_enc_tiny.json", AsrStageConfig).model,
                      load_config(ROOT / "configs/vision_tiny.json", VisionStageConfig).model)
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


def build_vocoder(shape: Shape, g: torch.Generator) -> Built:
    from omni.vocoder import HifiGan
    from omni.vocoder_stage import VocoderStageConfig, collate_crops
    cfg, raw, b = _load("vocoder_tiny.json", VocoderStageConfig, shape)
    n = 2048 if shape.quick else cfg.data.max_audio_length
    items = _rows(b, lambda i: 0.1 * torch.randn(n, generator=g))
    scales = {"generator.": cfg.gan.lr_g / cfg.train.lr, "disc.": cfg.gan.lr_d / cfg.train.lr}
    stage = Stage("vocoder", HifiGan(cfg.model, cfg.gan), [], lambda m, x: m(x["wav"]), {}, collate=collate_crops,
                  count_items=lambda x: float(x["wav"].numel()) / 16000, items_unit="audio_s",
                  lr_scales=lambda m: scales)
    return Built(stage, cfg.train, collate_crops(items), f"{b} crops x {n} samples")


def build_ocr(shape: Shape, g: torch.Generator) -> Built:
    from omni.ocr import OcrStageConfig, collate_ocr, ocr_loss
    from omni.ocr_model import OcrModel, OcrVocab
    cfg, raw, b = _load("ocr_tiny.json", OcrStageConfig, shape)
    vocab = OcrVocab.ascii()
    m = cfg.model
    W = 128 if shape.quick else m.max_width
    L = 20 if shape.quick else m.max_text_len
    items = _rows(b, lambda i: (torch.rand(1, m.img_size, W, generator=g), W,
                                torch.randint(1, len(vocab) - 3, (L,), generator=g).tolist()))
    stage = Stage("ocr", OcrModel(m, len(vocab)), [], ocr_loss, {}, collate=collate_ocr,
                  count_items=lambda x: float(x["widths"].shape[0]), items_unit="lines")
    return Built(stage, cfg.train, collate_ocr(items), f"{b} lines {m.img_size} x {W} px, {L} characters",
                 _estimate(raw["model"], raw["data"], b))


BUILDERS: dict[str, Callable[[Shape, torch.Generator], Built]] = {
    "thinker": build_thinker, "audio_enc": build_audio_enc, "vision": build_vision, "codec": build_codec,
    "talker": build_talker, "sft": build_sft, "vocoder": build_vocoder, "ocr": build_ocr}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, amp: bool | None, compiled: bool, device: str, shape: Shape, warmup: int, steps: int,
            tmp: Path) -> dict[str, Any]:
    """Build the stage afresh, then time ``steps`` optimizer steps after ``warmup``; peak memory over all."""
    torch.manual_seed(0)
    built = BUILDERS[name](shape, torch.Generator().manual_seed(0))
    use_amp = built.train.use_amp if amp is None else amp
    train = dataclasses.replace(built.train, device=device, use_amp=use_amp, compile=compiled,
                                save_dir=str(tmp / f"{name}-{use_amp}-{compiled}"), max_steps=10 ** 6,
                                gradient_accumulation_steps=shape.accum or (1 if shape.quick else built.train.gradient_accumulation_steps))
    trainer = Trainer(built.stage, train, resume=False, overwrite=True)
    dev = trainer.rt.device
    batch, accum = built.batch, train.gradient_accumulation_steps

    def batches():
        while True:
            yield batch

    it = batches()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    n_params = sum(p.numel() for p in trainer.raw.parameters())
    n_train = sum(p.numel() for p in trainer.raw.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer._step(it)
    sync(dev)
    warm_s = time.perf_counter() - t0
    times, losses, items = [], [], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss, _, n = trainer._step(it)
        sync(dev)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        items += n
    step_s = statistics.median(times)
    out = {"stage": name, "precision": trainer.rt.amp_dtype and str(trainer.rt.amp_dtype).replace("torch.", "") or
           "fp32", "compile": compiled, "device": str(dev), "shape": built.shape, "accumulation": accum,
           "params_m": n_params / 1e6, "trainable_m": n_train / 1e6, "warmup_s": warm_s, "step_s": step_s,
           "step_s_all": times, "items_per_s": items / sum(times), "items_unit": built.stage.items_unit,
           "losses": losses, "max_steps": built.train.max_steps,
           "default_run_h": step_s * built.train.max_steps / 3600,
           "estimate_gib": None}
    estimate = None if shape.quick else built.estimate(trainer.rt.amp_dtype is not None)  # what really runs
    if estimate is not None:
        out["estimate_gib"] = estimate / GIB
    if dev.type == "cuda":
        out["peak_alloc_gib"] = torch.cuda.max_memory_allocated(dev) / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / GIB
    del trainer, built
    return out


def write_json(path: Path, where: str, quick: bool, results: list[dict]) -> None:
    path.write_text(json.dumps({"torch": torch.__version__, "device": where, "quick": quick, "results": results},
                               indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    p.add_argument("--precision", choices=("config", "fp32", "amp", "both"), default="config",
                   help="config: each config's train.use_amp; both: fp32 and amp (bf16, fp16 on pre-Ampere GPUs)")
    p.add_argument("--compile", choices=("off", "on", "both"), default="off", help="train.compile")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--quick", action="store_true", help="batch 2, short shapes: a smoke run")
    p.add_argument("--batch", type=int, default=0, help="per-device batch instead of the config's")
    p.add_argument("--accum", type=int, default=0, help="gradient accumulation instead of the config's")
    p.add_argument("--json", default="", help="also write every number to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    amps = {"config": [None], "fp32": [False], "amp": [True], "both": [False, True]}[args.precision]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    where = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, {device} ({where}), {torch.get_num_threads()} threads"
          + (" [quick: not the default shapes]" if args.quick else ""), flush=True)
    shape = Shape(args.quick, args.batch or None, args.accum or None)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stages:
            for amp in amps:
                for compiled in compiles:
                    try:
                        r = measure(name, amp, compiled, device, shape, args.warmup, args.steps, Path(tmp))
                    except Exception as e:  # one stage failing must not hide the others' numbers
                        print(f"{name} amp={amp} compile={compiled}: FAILED {type(e).__name__}: {e}", flush=True)
                        results.append({"stage": name, "amp": amp, "compile": compiled, "error": f"{type(e).__name__}: {e}"})
                        continue
                    results.append(r)
                    if args.json:  # after every stage: a run cut short keeps what it measured
                        write_json(Path(args.json), where, args.quick, results)
                    print(f"{name:9s} {r['precision']:8s} compile={compiled!s:5s} step {r['step_s'] * 1000:8.1f} ms  "
                          f"{r['items_per_s']:12,.0f} {r['items_unit']}/s  peak "
                          + (f"{r['peak_alloc_gib']:.3f} GiB (reserved {r['peak_reserved_gib']:.3f})"
                             if "peak_alloc_gib" in r else "n/a (cpu)")
                          + f"  loss {r['losses'][0]:.3f}->{r['losses'][-1]:.3f}  [{r['shape']}]", flush=True)
    print("\n| stage | precision | compile | params (M, trainable) | step | throughput | peak allocated "
          "| peak reserved | autotune estimate | max_steps at this speed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['stage']} | amp={r['amp']} | {r['compile']} | FAILED: {r['error'][:80]} |||||||")
            continue
        peak = f"{r['peak_alloc_gib']:.2f} GiB" if "peak_alloc_gib" in r else "n/a"
        res = f"{r['peak_reserved_gib']:.2f} GiB" if "peak_reserved_gib" in r else "n/a"
        est = f"{r['estimate_gib']:.2f} GiB" if r["estimate_gib"] is not None else "-"
        print(f"| {r['stage']} | {r['precision']} | {'on' if r['compile'] else 'off'} | {r['params_m']:.2f} "
              f"({r['trainable_m']:.2f}) | {r['step_s'] * 1000:.1f} ms | {r['items_per_s']:,.0f} {r['items_unit']}/s "
              f"| {peak} | {res} | {est} | {r['max_steps']:,}: {r['default_run_h'] * 60:.1f} min |")
    if args.json:
        write_json(Path(args.json), where, args.quick, results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
