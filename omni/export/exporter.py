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
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL
from omni.engine.checkpoint import MODEL_FILE, best_or_self
from omni.export import graphs as G
from omni.export.assets import FORMAT_VERSION, write_assets
from omni.export.audit import ExportError, audit_weights, derived_buffers, exclusions, read_checkpoint
from omni.export.specs import GraphSpec, _kv, talker_specs

log = logging.getLogger(__name__)

OPSET = 17
EXPORTER = "torch.onnx.export(dynamo=False): TorchScript-based exporter"
ALIGN = 4096              # external tensors start on page boundaries (mmap-friendly)
INLINE_BYTES = 1024       # smaller tensors stay inside the .onnx file


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
        c = src.talker.cfg
        specs += talker_specs(src.talker, B, P, kv_in, kv_out)
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
