"""An INT8 copy of an export (``int8/``): dynamic quantisation of the matmul weights, measured like fp32.

Each transformer graph first goes through ONNX Runtime's ``quant_pre_process`` (graph optimisation,
which folds the weight transposes the exporter left in, then ONNX and symbolic shape inference:
quantising without shape information is what fails in other export efforts), then
``quantize_dynamic`` with int8 weights on MatMul/Gemm (activations quantised per call). The codec
decoder and the vocoder are convolutional and stay fp32. The folder is a complete runtime folder
(``python -m omni.export.runtime DIR/int8``). Its report: sizes, and the same agreement numbers
as fp32 (Thinker greedy tokens, transcripts, VQA, Talker codes, speech) against PyTorch fp32. Each
part keeps its INT8 graphs only where they lose at most ``MAX_LOSS``: the Thinker side (Thinker,
encoders) judged by ASR CER and VQA accuracy, the Talker by the pocketsphinx CER of its speech; a
part that loses more goes back to its fp32 graphs in ``int8/``, and when both do the folder is
deleted. The report says which.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from omni.export import runtime as R

log = logging.getLogger(__name__)

# the Talker's graphs: an attention Talker's prefill/decode, or a duration Talker's plan (text
# encoder and durations), cond, start and step; the depth chain in both
TALKER_GRAPHS = ("talker_prefill", "talker_decode", "talker_plan", "talker_cond", "talker_start", "talker_step",
                 "talker_depth")
QUANTISED = ("thinker_prefill", "thinker_decode", "audio_encoder", "vision_encoder", *TALKER_GRAPHS)
ASSETS = ("config.json", "tokenizer.json", "frontend.npz", "text_vocab.json")
MAX_LOSS = 0.02
# kept or restored to fp32 together: (graphs, the quality losses that judge them, their shared weights file)
GROUPS = {"thinker": (("thinker_prefill", "thinker_decode", "audio_encoder", "vision_encoder"), ("asr_cer", "vqa_acc"),
                      "thinker.weights"),
          "talker": (TALKER_GRAPHS, ("speech_cer",), "talker.weights")}


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".weights"))


def quantize_folder(folder: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dest.mkdir()
    for name in ASSETS:
        if (folder / name).is_file():
            shutil.copy(folder / name, dest / name)
    with tempfile.TemporaryDirectory() as tmp:
        for graph in sorted(folder.glob("*.onnx")):
            if graph.stem not in QUANTISED:
                shutil.copy(graph, dest / graph.name)          # convolutional: inline weights, fp32
                continue
            pre = Path(tmp) / graph.name
            model = onnx.load(str(graph))       # shared external weights read in: one self-contained model
            try:
                quant_pre_process(model, str(pre))
            except Exception as e:  # noqa: BLE001 -- symbolic inference gives up on some dynamic shapes: ONNX inference only
                log.info("%s: symbolic shape inference failed (%s); ONNX shape inference only", graph.name, e)
                quant_pre_process(model, str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(dest / graph.name), op_types_to_quantize=["MatMul", "Gemm"],
                             weight_type=QuantType.QInt8)


def measure_int8(src, rt: R.OnnxOmni, folder: Path, held, prompts: list[dict], options) -> dict[str, Any]:
    from omni.export.parity import asr_agreement, greedy_agreement, vqa_agreement
    from omni.export.parity_speech import speech_agreement

    dest = folder / "int8"
    if dest.exists():
        shutil.rmtree(dest)
    quantize_folder(folder, dest)
    q = R.OnnxOmni(dest)
    out: dict[str, Any] = {"bytes_fp32": model_bytes(folder), "bytes_int8": model_bytes(dest),
                           "quantised_graphs": [g for g in QUANTISED if (dest / f"{g}.onnx").is_file()],
                           "method": "onnxruntime quant_pre_process + quantize_dynamic(QInt8 weights, MatMul/Gemm)"}
    out["thinker_greedy"] = greedy_agreement(src, rt, prompts, options.new_tokens, graphs=q)
    losses: dict[str, float] = {}
    if held.clips and "audio" not in held.synthetic:
        out["asr"] = asr_agreement(src, rt, held, options.asr_clips, graphs=q)
        if out["asr"]["cer_onnx"] is not None:
            losses["asr_cer"] = out["asr"]["cer_onnx"] - out["asr"]["cer_pytorch"]
    if any(qa for _, _, qa in held.images):
        out["vqa"] = vqa_agreement(src, rt, held, options.vqa_questions, graphs=q)
        losses["vqa_acc"] = out["vqa"]["acc_pytorch"] - out["vqa"]["acc_onnx"]
    if src.talker is not None:
        out["talker"], out["speech"] = speech_agreement(src, rt, held, options.tts_texts, options.sphinx, graphs=q)
        if out["speech"].get("cer_delta") is not None:
            losses["speech_cer"] = out["speech"]["cer_delta"]
    out["losses"] = losses
    decisions = {}
    for group, (graphs, metrics, weights) in GROUPS.items():
        bad = {m: losses[m] for m in metrics if losses.get(m, 0.0) > MAX_LOSS}
        present = [g for g in graphs if (dest / f"{g}.onnx").is_file()]
        if not present:
            continue
        if bad:       # this part stays fp32 in the INT8 folder
            for g in present:
                shutil.copy(folder / f"{g}.onnx", dest / f"{g}.onnx")
            shutil.copy(folder / weights, dest / weights)
            decisions[group] = "fp32 (int8 lost " + ", ".join(f"{k} {v:+.3f}" for k, v in bad.items()) + ")"
        else:
            measured = [m for m in metrics if m in losses]
            decisions[group] = "int8" + (f" (loses <= {MAX_LOSS} in {', '.join(measured)})" if measured
                                         else " (no quality measure available)")
    out["decisions"] = decisions
    if all(d.startswith("fp32") for d in decisions.values()):
        out["verdict"] = f"dropped: every part loses more than {MAX_LOSS} ({'; '.join(decisions.values())})"
        shutil.rmtree(dest)
    else:
        out["bytes_int8"] = model_bytes(dest)
        out["verdict"] = "kept in int8/: " + "; ".join(f"{g} {d}" for g, d in decisions.items())
    return out
