"""Export a Stage E checkpoint (and a Talker, and optionally a HiFi-GAN) to ONNX, audit every weight,
measure parity, and write the folder omni/export/runtime.py runs.

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter, at opset 17. It
is the one that works with torch 2.13 on a CPU install without extra packages (the dynamo exporter
needs ``onnxscript``). It is called with ``do_constant_folding=False`` and
``keep_initializers_as_inputs=True``: the first keeps every initializer under its checkpoint name
(folding renames transposed matmul weights ``onnx::MatMul_N``), the second turns off the
exporter's de-duplication of equal-valued tensors (two untouched RMSNorm weights would otherwise
become one). The initializers are then taken out of the graph inputs, so ONNX Runtime treats them
as constants and folds the transposes itself when it loads the graph.

Folder layout (``manifest.json`` lists each file with its sha256, and each graph's inputs, outputs
and opset):

  thinker_prefill.onnx  thinker_decode.onnx  thinker.weights   (weights shared by the two graphs)
  audio_encoder.onnx  vision_encoder.onnx                       (encoder + projector per modality)
  talker_prefill.onnx  talker_decode.onnx  [talker_depth.onnx]  talker.weights
  codec_decoder.onnx  [vocoder.onnx]
  tokenizer.json  text_vocab.json  frontend.npz  config.json  configs/*  parity.json  parity.md
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import io
import json
import logging
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import load_file
from torch import nn

from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL, LogMel
from omni.engine.checkpoint import MODEL_FILE, best_or_self
from omni.export import graphs as G
from omni.images import MAX_SIDE, MEAN, STD
from omni.multimodal.template import SYSTEM_PROMPT
from omni.speech.griffinlim import GriffinLim

log = logging.getLogger(__name__)

OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False): TorchScript-based exporter"
FORMAT_VERSION = 1
ALIGN = 4096              # external tensors start on page boundaries (mmap-friendly)
INLINE_BYTES = 1024       # smaller tensors stay inside the .onnx file


class ExportError(RuntimeError):
    """The export cannot be trusted (a weight missing, unexpected or changed; an unsupported input)."""


# ---------------------------------------------------------------- sources
@dataclass
class Sources:
    """The PyTorch models an export reads, with the weight files they came from."""
    omni: nn.Module
    tok: Any
    ckpt_dir: Path
    talker: nn.Module | None = None
    vocab: Any = None
    codec: nn.Module | None = None
    talker_dir: Path | None = None
    codec_dir: Path | None = None
    vocoder: nn.Module | None = None
    vocoder_dir: Path | None = None
    vocoder_choice: str = "griffinlim"
    weight_files: dict[str, Path] = field(default_factory=dict)


def load_sources(ckpt: str | Path, talker: str | Path | None = None, vocoder: str | Path | None = None) -> Sources:
    """Strict loads, as chat does: the Stage E folder ``ckpt`` (load_omni), the Talker folder
    (Synthesizer.load: ``<talker>/talker`` or its best/, with its codec copy) and a vocoder folder."""
    from omni.multimodal.stage import load_omni
    from omni.speech.synthesis import Synthesizer, resolve_vocoder, talker_dir
    from omni.vocoder.stage import load_generator

    cpu = torch.device("cpu")
    ckpt = Path(ckpt)
    model, tok, _ = load_omni(ckpt, cpu)
    src = Sources(model.eval(), tok, ckpt, weight_files={"omni": ckpt / MODEL_FILE})
    if talker is not None:
        synth = Synthesizer.load(talker, cpu)
        tdir = talker_dir(Path(talker))
        link = json.loads((tdir / "codec.json").read_text(encoding="utf-8"))
        src.talker, src.vocab, src.codec = synth.talker.eval(), synth.vocab, synth.codec.eval()
        src.talker_dir, src.codec_dir = tdir, tdir / link["codec_dir"]
        src.weight_files.update(talker=tdir / MODEL_FILE, codec=src.codec_dir / MODEL_FILE)
    if vocoder is not None:
        vdir = best_or_self(vocoder)
        src.vocoder, src.vocoder_dir = load_generator(vdir, cpu), vdir
        src.vocoder_choice = resolve_vocoder("auto", vocoder)
        src.weight_files["vocoder"] = vdir / MODEL_FILE
    return src


# ---------------------------------------------------------------- graph specs
@dataclass
class GraphSpec:
    name: str
    source: str                          # which checkpoint its weights come from
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    group: str | None = None             # shared external weights file


def _kv(n_layers: int, batch: int, heads: int, length: int, head_dim: int) -> torch.Tensor:
    return torch.randn(n_layers, batch, heads, length, head_dim) * 0.1


def graph_specs(src: Sources) -> list[GraphSpec]:
    omni = src.omni
    th = omni.comp.thinker
    dh = th.d_model // th.n_heads
    B, T, P = 2, 5, 3
    kv_in = {"past_k": {1: "batch", 3: "past"}, "past_v": {1: "batch", 3: "past"}}
    kv_out = {"present_k": {1: "batch", 3: "total"}, "present_v": {1: "batch", 3: "total"}}
    ids = torch.randint(0, th.vocab_size, (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 1:3] = True
    specs = [
        GraphSpec("thinker_prefill", "omni", G.ThinkerPrefill(omni.thinker),
                  (ids, torch.randn(B, T, th.d_model), mask), ["ids", "media", "media_mask"],
                  ["logits", "present_k", "present_v"],
                  {"ids": {0: "batch", 1: "seq"}, "media": {0: "batch", 1: "seq"},
                   "media_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"},
                   "present_k": {1: "batch", 3: "seq"}, "present_v": {1: "batch", 3: "seq"}}, "thinker.weights"),
        GraphSpec("thinker_decode", "omni", G.ThinkerDecode(omni.thinker),
                  (ids[:, :2], _kv(th.n_layers, B, th.n_kv_heads, P, dh), _kv(th.n_layers, B, th.n_kv_heads, P, dh)),
                  ["ids", "past_k", "past_v"], ["logits", "present_k", "present_v"],
                  {"ids": {0: "batch", 1: "seq"}, **kv_in, "logits": {0: "batch"}, **kv_out}, "thinker.weights"),
        GraphSpec("audio_encoder", "omni", G.AudioEncoderGraph(omni),
                  (torch.randn(B, 37, ENCODER_MEL.n_mels),), ["mel"], ["slots"],
                  {"mel": {0: "batch", 1: "frames"}, "slots": {0: "batch", 1: "slots"}}),
        GraphSpec("vision_encoder", "omni", G.VisionEncoderGraph(omni),
                  (torch.randn(B, 3, omni.comp.vision.img_size, omni.comp.vision.img_size),), ["images"], ["slots"],
                  {"images": {0: "batch"}, "slots": {0: "batch"}}),
    ]
    if src.talker is not None:
        tk = src.talker
        c = tk.cfg
        tdh = c.d_model // c.n_heads
        heads = ["hidden", "stop_logit"] + (["code_logits"] if tk.depth is None else [])
        out_axes = {"hidden": {0: "batch"}, "stop_logit": {0: "batch"}, "code_logits": {0: "batch"}}
        groups = torch.randint(0, c.codebook_size, (B, 2, c.frames_per_step, c.n_codebooks))
        specs += [
            GraphSpec("talker_prefill", "talker", G.TalkerPrefill(tk), (torch.randint(3, c.text_vocab_size, (B, 7)),),
                      ["text"], heads + ["present_k", "present_v"],
                      {"text": {0: "batch", 1: "chars"}, **out_axes, "present_k": {1: "batch", 3: "seq"},
                       "present_v": {1: "batch", 3: "seq"}}, "talker.weights"),
            GraphSpec("talker_decode", "talker", G.TalkerDecode(tk),
                      (groups, _kv(c.n_layers, B, c.n_kv_heads, P, tdh), _kv(c.n_layers, B, c.n_kv_heads, P, tdh)),
                      ["groups", "past_k", "past_v"], heads + ["present_k", "present_v"],
                      {"groups": {0: "batch", 1: "steps"}, **kv_in, **out_axes, **kv_out}, "talker.weights"),
        ]
        if tk.depth is not None:
            specs.append(GraphSpec(
                "talker_depth", "talker", G.TalkerDepth(tk),
                (torch.randn(B, c.d_model), torch.randn(B, c.d_model), torch.randint(0, c.codebook_size, (B,)),
                 torch.tensor(1)), ["hidden", "prev", "code", "slot"], ["logits", "prev_out"],
                {"hidden": {0: "batch"}, "prev": {0: "batch"}, "code": {0: "batch"}, "logits": {0: "batch"},
                 "prev_out": {0: "batch"}}, "talker.weights"))
        specs.append(GraphSpec(
            "codec_decoder", "codec", G.CodecDecoder(src.codec, c.n_codebooks),
            (torch.randint(0, c.codebook_size, (B, 6, c.n_codebooks)),), ["codes"], ["mel"],
            {"codes": {0: "batch", 1: "code_frames"}, "mel": {0: "batch", 1: "frames"}}))
    if src.vocoder is not None:
        specs.append(GraphSpec("vocoder", "vocoder", G.VocoderGraph(src.vocoder),
                               (torch.randn(B, 6, SPEECH_OUT_MEL.n_mels),), ["mel"], ["wav"],
                               {"mel": {0: "batch", 1: "frames"}, "wav": {0: "batch", 1: "samples"}}))
    return specs


# torch >= 2.9 defaults to the dynamo exporter; older ones have the TorchScript one only (some lack the flag)
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def to_onnx(spec: GraphSpec) -> onnx.ModelProto:
    """Trace one wrapper into an in-memory ONNX model, initializers named as in the checkpoint."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # TracerWarnings on shape arithmetic; the deprecation notice
        torch.onnx.export(spec.module.eval(), spec.example, buf, **_TORCHSCRIPT, opset_version=OPSET,
                          input_names=spec.inputs, output_names=spec.outputs, dynamic_axes=spec.dynamic,
                          do_constant_folding=False, keep_initializers_as_inputs=True)
    model = onnx.load_from_string(buf.getvalue())
    _fix_output_shapes(model, spec)
    inits = {t.name for t in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.producer_name = "uomni"
    for k, v in (("graph", spec.name), ("source", spec.source)):
        model.metadata_props.add(key=k, value=v)
    return model


def _fix_output_shapes(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Name the declared dynamic axes of each output and give the others their static size (the
    exporter leaves names such as ``Concatpresent_k_dim_2`` on dims it could not infer)."""
    with torch.no_grad():
        ref = spec.module(*spec.example)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for value, tensor in zip(model.graph.output, ref):
        dyn = spec.dynamic.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        if len(dims) != tensor.dim():
            continue
        for i, d in enumerate(dims):
            if i in dyn:
                d.dim_param = dyn[i]
            else:
                d.dim_value = int(tensor.shape[i])


# ---------------------------------------------------------------- the weight audit
def exclusions(src: Sources) -> dict[str, list[tuple[str, str]]]:
    """Checkpoint tensors that inference does not read, by design: (regex, reason) per source."""
    out: dict[str, list[tuple[str, str]]] = {"omni": [], "talker": [], "codec": [], "vocoder": []}
    if src.talker is not None:
        out["talker"].append((r"^text_aux\.", "training-only auxiliary head (talker.text_aux_layer)"))
        out["codec"] += [
            (r"^encoder\.", "codec encoder (mel -> codes): builds the Talker's training targets, not used to speak"),
            (r"^rvq\.layers\.\d+\.(ema_count|ema_sum|unused_steps|initialised)$", "EMA codebook training state")]
        n_used = src.talker.cfg.n_codebooks
        n_all = len(src.codec.rvq.layers)
        if n_used < n_all:
            idx = "|".join(str(i) for i in range(n_used, n_all))
            out["codec"].append((rf"^rvq\.layers\.({idx})\.codebook$", "codebooks past the Talker's n_codebooks"))
    out["vocoder"].append((r"^disc\.", "discriminators (training only)"))
    return out


def _constants(model: onnx.ModelProto) -> list[np.ndarray]:
    """Float tensors of >= 16 elements held in Constant nodes (derived tables such as RoPE's)."""
    out = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    arr = numpy_helper.to_array(a.t)
                    if arr.dtype.kind == "f" and arr.size >= 16:
                        out.append(arr)
    return out


def audit_weights(models: dict[str, onnx.ModelProto], sources: dict[str, str],
                  checkpoints: dict[str, dict[str, np.ndarray]], excluded: dict[str, list[tuple[str, str]]],
                  derived: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every checkpoint tensor is in a graph (bit-identical, under its own name) or excluded by a
    named rule; every graph initializer is a checkpoint tensor; every large float constant equals a
    derived (rebuilt-from-config) buffer of the PyTorch module. Raises ExportError naming each problem."""
    report: dict[str, Any] = {}
    problems: list[str] = []
    for source, ckpt in checkpoints.items():
        graphs = [g for g, s in sources.items() if s == source]
        found: dict[str, np.ndarray] = {}
        per_graph = {}
        unexpected, mismatched = set(), set()
        for g in graphs:          # each graph against the checkpoint, not only against each other
            inits = {t.name: numpy_helper.to_array(t) for t in models[g].graph.initializer}
            per_graph[g] = len(inits)
            for name, arr in inits.items():
                table = derived.get(source, {}).get(name)
                if name not in ckpt and table is not None and np.array_equal(table, arr):
                    continue      # a derived buffer the exporter kept as an initializer
                found.setdefault(name, arr)
                if name not in ckpt:
                    unexpected.add(name)
                elif not (arr.dtype == ckpt[name].dtype and arr.shape == ckpt[name].shape
                          and np.array_equal(arr, ckpt[name])):
                    mismatched.add(name)
                    found[name] = arr
        unexpected, mismatched = sorted(unexpected), sorted(mismatched)
        ex_groups: dict[str, list[str]] = {}
        missing = []
        for name in ckpt:
            if name in found:
                continue
            reason = next((why for pat, why in excluded.get(source, []) if re.search(pat, name)), None)
            if reason is None:
                missing.append(name)
            else:
                ex_groups.setdefault(reason, []).append(name)
        consts_unmatched = []
        tables = list(derived.get(source, {}).items())
        for g in graphs:
            for arr in _constants(models[g]):
                if not any(t.shape == arr.shape and np.array_equal(t, arr) for _, t in tables):
                    consts_unmatched.append(f"{g}: constant {arr.dtype}{list(arr.shape)}")
        exported = [n for n in ckpt if n in found]
        stats = {k: _stats([v[n] for n in exported]) for k, v in (("checkpoint", ckpt), ("onnx", found))}
        report[source] = {
            "checkpoint_tensors": len(ckpt), "checkpoint_params": int(sum(a.size for a in ckpt.values())),
            "exported_tensors": len(exported), "exported_params": int(sum(ckpt[n].size for n in exported)),
            "excluded": [{"reason": why, "tensors": len(names), "params": int(sum(ckpt[n].size for n in names)),
                          "names": names[:6] + (["..."] if len(names) > 6 else [])}
                         for why, names in ex_groups.items()],
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
            "unexplained_constants": consts_unmatched, "initializers_per_graph": per_graph,
            "derived_constants": sorted(derived.get(source, {})), "stats": stats,
            "ok": not (missing or unexpected or mismatched or consts_unmatched)}
        for kind, names in (("missing from the ONNX graphs", missing), ("unexpected (not in the checkpoint)", unexpected),
                            ("changed (values differ from the checkpoint)", mismatched),
                            ("unexplained constant", consts_unmatched)):
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                problems.append(f"{source}: {len(names)} tensor(s) {kind}: {shown}")
    if problems:
        raise ExportError("weight audit failed; the export would not be the trained model:\n  " + "\n  ".join(problems))
    return report


def _stats(arrays: list[np.ndarray]) -> dict[str, float]:
    if not arrays:
        return {"params": 0}
    flat = [a.astype(np.float64).ravel() for a in arrays if a.dtype.kind == "f"]
    n = sum(a.size for a in flat)
    s = sum(float(a.sum()) for a in flat)
    sq = sum(float((a * a).sum()) for a in flat)
    return {"params": n, "sum": s, "sum_sq": sq, "max_abs": max(float(np.abs(a).max()) for a in flat if a.size)}


def derived_buffers(specs: list[GraphSpec]) -> dict[str, dict[str, np.ndarray]]:
    """Non-persistent buffers (rebuilt from the config, not saved) of each source's wrappers."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in specs:
        saved = set(s.module.state_dict())
        for name, b in s.module.named_buffers():
            if name not in saved:
                out.setdefault(s.source, {})[name] = b.detach().cpu().numpy()
    return out


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(str(path)).items()}


# ---------------------------------------------------------------- writing
def externalize(models: dict[str, onnx.ModelProto], data_name: str, folder: Path) -> int:
    """Move the large initializers of ``models`` into one file, each tensor stored once (prefill
    and decode share it). -> bytes written."""
    placed: dict[str, tuple[int, int, bytes]] = {}
    with open(folder / data_name, "wb") as f:
        for model in models.values():
            for t in model.graph.initializer:
                arr = numpy_helper.to_array(t)
                raw = np.ascontiguousarray(arr).tobytes()
                if len(raw) < INLINE_BYTES:
                    continue
                digest = hashlib.sha256(raw).digest()
                if t.name in placed:
                    offset, length, d = placed[t.name]
                    if d != digest:
                        raise ExportError(f"{t.name} differs between the graphs sharing {data_name}")
                else:
                    offset = -(-f.tell() // ALIGN) * ALIGN
                    f.write(b"\0" * (offset - f.tell()))
                    f.write(raw)
                    length = len(raw)
                    placed[t.name] = (offset, length, digest)
                for fld in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                    t.ClearField(fld)
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    t.external_data.add(key=k, value=v)
        return f.tell()


def _io(values) -> list[dict[str, Any]]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims})
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def runtime_config(src: Sources) -> dict[str, Any]:
    from omni.speech.griffinlim import BlockGriffinLim, inverter
    from omni.speech.synthesis import Synthesizer
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
                       "depth": src.talker.depth is not None, "start_id": START, "text_input": c.text_input},
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


# ---------------------------------------------------------------- the whole export
@dataclass
class ExportOptions:
    prompts: int = 20                 # Thinker greedy agreement: held-out prompts ...
    new_tokens: int = 256             # ... x new tokens each (capped by the context)
    asr_clips: int = 15
    vqa_questions: int = 20
    tts_texts: int = 8
    sphinx: bool = True               # pocketsphinx CER of both syntheses (when installed)
    tolerance: float = 1e-4           # per-part max-abs error relative to the output's max-abs
    data: dict[str, str | None] = field(default_factory=dict)   # asr_csv, image_manifest, tts_csv, text_file
    quantize: bool = False            # also an INT8 (dynamic) copy, measured the same way
    seed: int = 0


def export(src: Sources, out: str | Path, options: ExportOptions | None = None, overwrite: bool = False,
           parity: bool = True) -> dict[str, Any]:
    """Export, audit, measure; write ``out`` atomically (built beside it, renamed at the end).
    Returns the parity report. Raises ExportError on a failed weight audit (nothing written)."""
    options = options or ExportOptions()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace an earlier export")
        if not (out / "manifest.json").is_file():
            raise ExportError(f"{out} has no manifest.json: not an earlier export, refusing to replace it")
    torch.manual_seed(options.seed)
    specs = graph_specs(src)
    models = {}
    for s in specs:
        log.info("exporting %s", s.name)
        models[s.name] = to_onnx(s)
    checkpoints = {k: read_checkpoint(p) for k, p in src.weight_files.items()}
    audit = audit_weights(models, {s.name: s.source for s in specs}, checkpoints, exclusions(src),
                          derived_buffers(specs))
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        groups: dict[str, dict[str, onnx.ModelProto]] = {}
        for s in specs:
            if s.group:
                groups.setdefault(s.group, {})[s.name] = models[s.name]
        for data_name, members in groups.items():
            externalize(members, data_name, tmp)
        graphs_meta = {}
        for s in specs:
            path = tmp / f"{s.name}.onnx"
            onnx.save_model(models[s.name], str(path))
            onnx.checker.check_model(str(path))
            m = models[s.name]
            graphs_meta[s.name] = {"file": path.name, "source": s.source, "external_data": s.group,
                                   "opset": OPSET, "ir_version": m.ir_version,
                                   "inputs": _io(m.graph.input), "outputs": _io(m.graph.output),
                                   "initializers": len(m.graph.initializer)}
        write_assets(src, tmp)
        report: dict[str, Any] = {"weights": audit}
        if parity:
            from omni.export.parity import measure, write_report
            report.update(measure(src, tmp, options))
            write_report(report, tmp)
        manifest = {
            "format": "uomni-onnx", "version": FORMAT_VERSION, "exporter": EXPORTER, "opset": OPSET,
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": _ort_version()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sources": {k: {"path": str(p), "sha256": sha256(p)} for k, p in src.weight_files.items()},
            "graphs": graphs_meta,
            "parity": {"measured": parity, "passed": report.get("passed")},
            "files": {str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                      for p in sorted(tmp.rglob("*")) if p.is_file()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__
