"""What an export folder holds beside its graphs: the runtime's config.json (model shapes, special
tokens, the Synthesizer's settings), the tokenizer, the Talker's vocabulary, the configs and frontend.npz
(filterbanks and windows), written by omni/export/exporter.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL, LogMel
from omni.export.audit import ExportError
from omni.images import MAX_SIDE, MEAN, STD
from omni.multimodal.template import SYSTEM_PROMPT
from omni.speech.griffinlim import BlockGriffinLim, GriffinLim, inverter

if TYPE_CHECKING:
    from omni.export.exporter import Sources

FORMAT_VERSION = 1


def runtime_config(src: Sources) -> dict[str, Any]:
    from omni.speech.synthesis import Synthesizer
    from omni.talker.duration import PLACES
    from omni.talker.text import START

    omni = src.omni
    th = omni.comp.thinker
    cfg: dict[str, Any] = {
        "format": "uomni-onnx", "version": FORMAT_VERSION,
        "thinker": {"d_model": th.d_model, "n_layers": th.n_layers, "n_heads": th.n_heads,
                    "n_kv_heads": th.n_kv_heads, "head_dim": th.d_model // th.n_heads, "ctx_len": th.ctx_len,
                    "vocab_size": th.vocab_size},
        "special": dict(src.tok.special), "system_prompt": SYSTEM_PROMPT,
        "vision": {"img_size": omni.comp.vision.img_size, "slots": omni.image_slots(),
                   "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist(), "max_side": MAX_SIDE},
        "audio": {"n_fft": ENCODER_MEL.n_fft, "hop": ENCODER_MEL.hop_length, "n_mels": ENCODER_MEL.n_mels,
                  "sample_rate": ENCODER_MEL.sample_rate},
        "speech": None,
    }
    if src.talker is not None:
        c = src.talker.cfg
        # the Synthesizer's own settings, so that the runtime speaks as chat does
        synth = Synthesizer(src.talker, src.vocab, src.codec, torch.device("cpu"), src.vocoder)
        blocks = BlockGriffinLim(inverter(torch.device("cpu")), n_iter=synth.gl_iters)
        cfg["speech"] = {
            "talker": {"d_model": c.d_model, "n_layers": c.n_layers, "n_kv_heads": c.n_kv_heads,
                       "head_dim": c.d_model // c.n_heads, "ctx_len": c.ctx_len, "frames_per_step": c.frames_per_step,
                       "n_codebooks": c.n_codebooks, "codebook_size": c.codebook_size,
                       "max_text_chars": c.max_text_chars, "max_frames_per_char": c.max_frames_per_char,
                       "depth": src.talker.depth is not None, "start_id": START, "text_input": c.text_input,
                       "alignment": c.alignment, "places": PLACES},
            "text_vocab": "text_vocab.json", "chunk_chars": synth.chunk_chars, "pause_s": synth.pause_s,
            "frames_per_code": src.codec.frames_per_code, "codec_radius": synth.radius("codec"),
            "mel": {"n_fft": SPEECH_OUT_MEL.n_fft, "hop": SPEECH_OUT_MEL.hop_length, "n_mels": SPEECH_OUT_MEL.n_mels},
            "vocoder": src.vocoder_choice if src.vocoder is not None else "griffinlim",
            "has_vocoder": src.vocoder is not None,
            "vocoder_radius": synth.radius("hifigan") if src.vocoder is not None else None,
            "gl_iters": synth.gl_iters, "gl_block": {"block": blocks.block, "left": blocks.left, "ahead": blocks.ahead},
            "temperature": synth.temperature, "top_k": synth.top_k}
    return cfg


def write_assets(src: Sources, folder: Path) -> None:
    from omni.thinker.tokenizer import BPETokenizer

    if not isinstance(src.tok, BPETokenizer):
        raise ExportError("the torch-free runtime reads tokenizer.json (byte-level BPE); this checkpoint uses a "
                          "SentencePiece model, which it cannot load")
    src.tok.save(folder / "tokenizer.json")
    (folder / "config.json").write_text(json.dumps(runtime_config(src), indent=2) + "\n", encoding="utf-8")
    enc = LogMel(ENCODER_MEL)
    gl = GriffinLim()
    np.savez(folder / "frontend.npz", encoder_fb=enc.filterbank.numpy(), encoder_window=enc.window.numpy(),
             speech_fb=gl.filterbank.numpy(), speech_fb_pinv=gl.fb_pinv.numpy(), speech_window=gl.window.numpy())
    cfg_dir = folder / "configs"
    cfg_dir.mkdir()
    for name, path in (("omni_sft.json", src.ckpt_dir / "config.json"), ("components.json", src.ckpt_dir / "components.json"),
                       ("talker.json", src.talker_dir / "config.json" if src.talker_dir else None),
                       ("codec.json", src.codec_dir / "config.json" if src.codec_dir else None),
                       ("vocoder.json", src.vocoder_dir / "config.json" if src.vocoder_dir else None)):
        if path is not None and path.is_file():
            shutil.copy(path, cfg_dir / name)
    if src.vocab is not None:
        src.vocab.save(folder / "text_vocab.json")
