"""The parity report an export writes (parity.json + parity.md): the ONNX graphs and the torch-free
runtime measured against the PyTorch inference code on held-out inputs.

References are the code paths chat and TTS use, not the export wrappers: ``ThinkerLM.hidden`` with
a ``KVCache`` and ``lm_head``, ``OmniModel.embed`` / ``image_features`` / ``audio_features``,
``generate_reply``, ``Talker.hidden`` / ``split_logits`` / ``pick_groups``'s chain,
``MelCodec.decode``, the vocoders, ``Synthesizer``. Sections:

- ``weights``: the audit (exporter.audit_weights): every tensor accounted for, values bit-identical.
- ``parts``: per graph, max-abs and relative error (max-abs / max |reference|) of every output at
  two or more input lengths (batch sizes for the fixed-size image graph), through one graph.
- ``frontends``: the runtime's numpy log-mel, image preprocessing and Griffin-Lim against PyTorch's.
- ``thinker_greedy``: N prompts x M new tokens, greedy, no stop: identical token sequences.
- ``asr``: "Transcribe the audio." on held-out clips: identical transcripts, and each side's CER.
- ``talker``: greedy codes of held-out texts, identical or not; ``speech``: the synthesised audio's
  log-mel distance between PyTorch and the runtime, and (pocketsphinx installed) each side's CER.
- ``int8`` (optional): the same agreement numbers for the dynamically quantised graphs, with sizes.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni.audio.ctc import error_rates, normalize_text
from omni.audio.features import ENCODER_MEL, load_audio
from omni.export import runtime as R
from omni.export.parity_inputs import (
    ASR_PROMPT,
    HeldOut,
    check_case,
    err,
    prompt_sequence,
    runtime_inputs,
    torch_inputs,
)
from omni.export.parity_speech import GL_MEL_L1_MAX, MEL_DISTANCE_MAX, speech_agreement, speech_parts
from omni.images import load_image_tensor
from omni.multimodal.model import generate_reply

log = logging.getLogger(__name__)








# ---------------------------------------------------------------- per-part numerics
@torch.no_grad()
def thinker_parts(src, rt: R.OnnxOmni, prompts: list[dict], tol: float) -> dict[str, list]:
    omni, th = src.omni, src.omni.thinker
    pre, dec = [], []
    for p in prompts:
        seq, _, _ = prompt_sequence(src, rt, p)
        x, ids, kinds = torch_inputs(omni, seq.ids, seq.kinds, p["images"], p["audio"])
        T = ids.shape[1]
        cache = th.new_cache(1, T + 4)
        h = th.hidden(embeds=x, cache=cache)
        ref = th.lm_head(h[:, -1])
        mask = (kinds != 0).numpy()
        out = rt.run("thinker_prefill", ids=ids.numpy(), media=x.numpy(), media_mask=mask)
        pre.append(check_case(f"T={T}", {"logits": err(out[0], ref), "present_k": err(out[1], cache.k[:, :, :, :T]),
                                     "present_v": err(out[2], cache.v[:, :, :, :T])}, tol))
        k, v = out[1], out[2]
        for n in (1, 3):
            nxt = torch.randint(12, th.cfg.vocab_size, (1, n))
            P = cache.pos
            ref = th.lm_head(th.hidden(nxt, cache=cache)[:, -1])
            o = rt.run("thinker_decode", ids=nxt.numpy(), past_k=k, past_v=v)
            dec.append(check_case(f"P={P}, T={n}", {"logits": err(o[0], ref), "present_k": err(o[1], cache.k[:, :, :, :P + n]),
                                               "present_v": err(o[2], cache.v[:, :, :, :P + n])}, tol))
            k, v = o[1], o[2]
    return {"thinker_prefill": pre, "thinker_decode": dec}


@torch.no_grad()
def encoder_parts(src, rt: R.OnnxOmni, held: HeldOut, tol: float) -> tuple[dict[str, list], dict[str, list]]:
    omni = src.omni
    parts: dict[str, list] = {"audio_encoder": [], "vision_encoder": []}
    fronts: dict[str, list] = {"log_mel": [], "image_preprocess": [], "audio_end_to_end": []}
    clips = sorted({p for p, _ in held.clips}, key=lambda c: len(load_audio(c)))
    for clip in [clips[0], clips[-1]] if len(clips) > 1 else clips:
        wav = load_audio(clip)
        audio, lengths = torch.from_numpy(wav)[None], torch.tensor([len(wav)])
        ref = omni.audio_features(audio, lengths)
        mel = omni.audio_mel(audio)
        o = rt.run("audio_encoder", mel=mel.numpy())[0][0]
        parts["audio_encoder"].append(check_case(f"frames={mel.shape[1]}", {"slots": err(o, ref)}, tol))
        fronts["log_mel"].append(check_case(f"samples={len(wav)}", {"log_mel": err(rt.audio_mel(R.load_audio(clip))[None], mel)},
                                       tol * 10))
        fronts["audio_end_to_end"].append(check_case(f"samples={len(wav)}", {"slots": err(rt.audio_features(R.load_audio(clip)), ref)},
                                                tol * 10))
    paths = [p for p, _, _ in held.images[:2]]
    for n in (1, 2):
        imgs = torch.stack([load_image_tensor(paths[i % len(paths)], omni.comp.vision.img_size) for i in range(n)])
        ref = omni.image_features(imgs)
        o = rt.run("vision_encoder", images=imgs.numpy())[0]
        parts["vision_encoder"].append(check_case(f"batch={n}", {"slots": err(o, ref)}, tol))
    for p in paths:
        fronts["image_preprocess"].append(check_case(Path(p).name, {"pixels": err(rt.image_tensor(p),
                                                load_image_tensor(p, omni.comp.vision.img_size))}, tol))
    return parts, fronts




# ---------------------------------------------------------------- end-to-end agreement
@torch.no_grad()
def greedy_agreement(src, rt: R.OnnxOmni, prompts: list[dict], new_tokens: int, graphs: R.OnnxOmni | None = None
                     ) -> dict[str, Any]:
    """Greedy tokens, no stop, for each prompt: PyTorch (generate_reply) vs the runtime."""
    graphs = graphs or rt
    rows, same, agree, total, template_ok = [], 0, 0, 0, True
    for p in prompts:
        seq, rids, rkinds = prompt_sequence(src, rt, p)
        template_ok &= seq.ids == rids and seq.kinds == rkinds
        x, _, _ = torch_inputs(src.omni, seq.ids, seq.kinds, p["images"], p["audio"])
        n = min(new_tokens, src.omni.thinker.cfg.ctx_len - len(seq.ids))
        ref = generate_reply(src.omni, x, n, stop_ids=())
        got = graphs.generate(*runtime_inputs(graphs, rids, rkinds, p), n, (), R.Sampling(), np.random.default_rng(0))
        first = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        same += ref == got
        agree += first
        total += len(ref)
        rows.append({"prompt": p["text"][:60], "media": len(p["images"]) + len(p["audio"]), "prompt_len": len(seq.ids),
                     "tokens": len(ref), "identical": ref == got, "first_divergence": None if ref == got else first})
    return {"prompts": len(prompts), "new_tokens_requested": new_tokens, "tokens_compared": total,
            "identical_prompts": same, "agreement": same / max(len(prompts), 1),
            "token_agreement": agree / max(total, 1), "template_identical": bool(template_ok), "rows": rows,
            "ok": same == len(prompts) and template_ok}


@torch.no_grad()
def asr_agreement(src, rt: R.OnnxOmni, held: HeldOut, n: int, graphs: R.OnnxOmni | None = None) -> dict[str, Any]:
    graphs = graphs or rt
    rows, refs, hyp_t, hyp_o = [], [], [], []
    sp = src.tok.special
    stop = (sp["<|end|>"], sp["<|eos|>"])
    for clip, text in held.clips[:n]:
        p = {"text": ASR_PROMPT, "images": [], "audio": [clip]}
        seq, rids, rkinds = prompt_sequence(src, rt, p)
        x, _, _ = torch_inputs(src.omni, seq.ids, seq.kinds, [], [clip])
        t = src.tok.decode(generate_reply(src.omni, x, 64, stop)).strip()
        o = graphs.decode(graphs.generate(*runtime_inputs(graphs, rids, rkinds, p), 64, stop, R.Sampling(),
                                          np.random.default_rng(0))).strip()
        refs.append(normalize_text(text))
        hyp_t.append(normalize_text(t))
        hyp_o.append(normalize_text(o))
        rows.append({"clip": Path(clip).name, "reference": text, "pytorch": t, "onnx": o, "identical": t == o})
    same = sum(r["identical"] for r in rows)
    labelled = bool(held.clips) and all(held.clips[i][1] for i in range(len(rows)))
    return {"clips": len(rows), "identical": same, "agreement": same / max(len(rows), 1),
            "cer_pytorch": error_rates(refs, hyp_t)["cer"] if labelled else None,
            "cer_onnx": error_rates(refs, hyp_o)["cer"] if labelled else None, "rows": rows, "ok": same == len(rows)}


def answer_key(text: str) -> str:
    """omni.multimodal.stage.answer_key: lowercase words without punctuation."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


@torch.no_grad()
def vqa_agreement(src, rt: R.OnnxOmni, held: HeldOut, n: int, graphs: R.OnnxOmni | None = None) -> dict[str, Any]:
    """Held-out image questions: identical replies, and each side's accuracy (answer keys equal)."""
    graphs = graphs or rt
    sp = src.tok.special
    stop = (sp["<|end|>"], sp["<|eos|>"])
    rows = []
    for path, _, qa in held.images:
        for q, a in qa:
            if len(rows) >= n:
                break
            p = {"text": q, "images": [path], "audio": []}
            seq, rids, rkinds = prompt_sequence(src, rt, p)
            x, _, _ = torch_inputs(src.omni, seq.ids, seq.kinds, [path], [])
            t = src.tok.decode(generate_reply(src.omni, x, 32, stop)).strip()
            o = graphs.decode(graphs.generate(*runtime_inputs(graphs, rids, rkinds, p), 32, stop, R.Sampling(),
                                              np.random.default_rng(0))).strip()
            rows.append({"image": Path(path).name, "question": q, "answer": a, "pytorch": t, "onnx": o,
                         "identical": t == o})
    n_rows = max(len(rows), 1)
    return {"questions": len(rows), "identical": sum(r["identical"] for r in rows),
            "agreement": sum(r["identical"] for r in rows) / n_rows,
            "acc_pytorch": sum(answer_key(r["pytorch"]) == answer_key(r["answer"]) for r in rows) / n_rows,
            "acc_onnx": sum(answer_key(r["onnx"]) == answer_key(r["answer"]) for r in rows) / n_rows,
            "rows": rows, "ok": all(r["identical"] for r in rows)}




# ---------------------------------------------------------------- the report
def measure(src, folder: Path, options) -> dict[str, Any]:
    t0 = time.perf_counter()
    rt = R.OnnxOmni(folder)
    tol = options.tolerance
    timings: dict[str, float] = {}

    def timed(name: str, fn, *a, **kw):
        log.info("parity: %s", name)
        start = time.perf_counter()
        result = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - start, 2)
        return result

    with tempfile.TemporaryDirectory() as tmp:
        held = HeldOut(options.data, Path(tmp), options.seed)
        torch.manual_seed(options.seed)
        prompts = held.prompts(options.prompts)
        two = sorted(prompts, key=lambda p: len(p["images"]) + len(p["audio"]))
        parts = timed("thinker parts", thinker_parts, src, rt, [two[0], two[-1]] if len(two) > 1 else two, tol)
        enc, fronts = timed("encoder parts", encoder_parts, src, rt, held, tol)
        parts.update(enc)
        report: dict[str, Any] = {"tolerance": tol, "synthetic_inputs": held.synthetic, "timings_s": timings}
        if src.talker is not None:
            sp, sf = timed("speech parts", speech_parts, src, rt, held, tol)
            parts.update(sp)
            fronts.update(sf)
        report["parts"] = {k: {"cases": v, "worst_rel": max(c["worst_rel"] for c in v), "ok": all(c["ok"] for c in v)}
                           for k, v in parts.items() if v}
        report["frontends"] = {k: {"cases": v, "worst_rel": max(c["worst_rel"] for c in v), "ok": all(c["ok"] for c in v)}
                               for k, v in fronts.items() if v}
        report["thinker_greedy"] = timed(f"greedy agreement ({len(prompts)} prompts x {options.new_tokens} tokens)",
                                         greedy_agreement, src, rt, prompts, options.new_tokens)
        if held.clips and "audio" not in held.synthetic:
            report["asr"] = timed("transcripts", asr_agreement, src, rt, held, options.asr_clips)
        if any(qa for _, _, qa in held.images):
            report["vqa"] = timed("vqa", vqa_agreement, src, rt, held, options.vqa_questions)
        if src.talker is not None:
            report["talker"], report["speech"] = timed("talker codes and speech", speech_agreement, src, rt, held,
                                                       options.tts_texts, options.sphinx)
        if options.quantize:
            from omni.export.quantize import measure_int8
            report["int8"] = timed("int8", measure_int8, src, rt, folder, held, prompts, options)
    checks = [v["ok"] for v in report["parts"].values()] + [v["ok"] for v in report["frontends"].values()]
    checks += [report[k]["ok"] for k in ("thinker_greedy", "asr", "vqa", "talker", "speech") if k in report]
    report["passed"] = all(checks)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _f(x: float | None, spec: str = ".2e") -> str:
    return "—" if x is None else format(x, spec)


def write_report(report: dict[str, Any], folder: Path) -> None:
    (folder / "parity.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    lines = [f"# Parity report: {'PASSED' if report.get('passed') else 'FAILED'}", ""]
    lines += ["## Weights", "", "| source | checkpoint tensors | exported | excluded (why) | missing | unexpected | changed |",
              "|---|---|---|---|---|---|---|"]
    for src, w in report["weights"].items():
        ex = "; ".join(f"{e['tensors']} ({e['reason']})" for e in w["excluded"]) or "0"
        lines.append(f"| {src} | {w['checkpoint_tensors']} ({w['checkpoint_params']:,} values) | {w['exported_tensors']} "
                     f"({w['exported_params']:,}) | {ex} | {len(w['missing'])} | {len(w['unexpected'])} | "
                     f"{len(w['mismatched'])} |")
    if "parts" in report:
        title = (f"## Graphs against PyTorch (relative error = max-abs / max |reference|; tolerance "
                 f"{report['tolerance']:g})")
        lines += ["", title, "", "| graph | case | worst max-abs | worst relative | ok |", "|---|---|---|---|---|"]
        for sect in ("parts", "frontends"):
            for name, part in report[sect].items():
                for c in part["cases"]:
                    mabs = max(o["max_abs"] for o in c["outputs"].values())
                    rel = f"{c['worst_rel']:.2e}" if "log_mel_l1" not in c else \
                        f"log-mel L1 {c['log_mel_l1']:.2e} (limit {GL_MEL_L1_MAX})"
                    lines.append(f"| {name}{' (runtime port)' if sect == 'frontends' else ''} | {c['case']} | "
                                 f"{mabs:.2e} | {rel} | {'yes' if c['ok'] else 'NO'} |")
    if "thinker_greedy" in report:
        g = report["thinker_greedy"]
        lines += ["", "## End to end", "",
                  (f"- Thinker greedy tokens: {g['identical_prompts']}/{g['prompts']} prompts identical over "
                   f"{g['tokens_compared']} tokens (requested {g['new_tokens_requested']} per prompt, capped by the "
                   f"context); token agreement {g['token_agreement']:.4f}; chat template identical: "
                   f"{g['template_identical']}")]
    if "asr" in report:
        a = report["asr"]
        lines.append(f"- Transcription (\"{ASR_PROMPT}\"): {a['identical']}/{a['clips']} transcripts identical; "
                     f"CER PyTorch {_f(a['cer_pytorch'], '.3f')}, ONNX {_f(a['cer_onnx'], '.3f')}")
    if "vqa" in report:
        v = report["vqa"]
        lines.append(f"- VQA: {v['identical']}/{v['questions']} replies identical; accuracy PyTorch "
                     f"{v['acc_pytorch']:.3f}, ONNX {v['acc_onnx']:.3f}")
    if "talker" in report:
        t, s = report["talker"], report["speech"]
        lines.append(f"- Talker greedy codes: {t['identical_chunks']}/{t['chunks']} chunks identical "
                     f"(frame agreement {t['frame_agreement']:.4f})")
        lines.append(f"- Speech ({s['vocoder']}): log-mel L1 PyTorch vs runtime mean {_f(s['mel_l1_mean'])}, max "
                     f"{_f(s['mel_l1_max'])} (limit {MEL_DISTANCE_MAX}); wav max-abs {_f(s['wav_max_abs'])}; "
                     f"same length: {s['same_length']}; pocketsphinx CER PyTorch {_f(s['cer_pytorch'], '.3f')}, "
                     f"runtime {_f(s['cer_onnx'], '.3f')}")
    if "int8" in report:
        q = report["int8"]
        lines += ["", "## INT8 (dynamic quantisation of the matmul weights; a part keeps it only if it loses <= 0.02)", "",
                  f"- size {q['bytes_fp32']:,} -> {q['bytes_int8']:,} bytes ({q['bytes_int8'] / q['bytes_fp32']:.2f}x)",
                  (f"- Thinker greedy vs fp32 PyTorch: {q['thinker_greedy']['identical_prompts']}/"
                   f"{q['thinker_greedy']['prompts']} prompts identical, token agreement "
                   f"{q['thinker_greedy']['token_agreement']:.4f}")]
        if q.get("asr"):
            lines.append(f"- Transcription: {q['asr']['identical']}/{q['asr']['clips']} identical to PyTorch; CER "
                         f"{_f(q['asr']['cer_onnx'], '.3f')} (fp32 ONNX {_f(report['asr']['cer_onnx'], '.3f')})")
        if q.get("vqa"):
            lines.append(f"- VQA: {q['vqa']['identical']}/{q['vqa']['questions']} replies identical to PyTorch; accuracy "
                         f"{q['vqa']['acc_onnx']:.3f} (PyTorch {q['vqa']['acc_pytorch']:.3f})")
        if q.get("speech"):
            lines.append(f"- Speech: log-mel L1 vs PyTorch mean {_f(q['speech']['mel_l1_mean'])}; pocketsphinx CER "
                         f"{_f(q['speech']['cer_onnx'], '.3f')}")
        lines.append(f"- verdict: {q['verdict']}")
    if report.get("synthetic_inputs"):
        lines += ["", f"Synthetic stand-ins were used for: {', '.join(report['synthetic_inputs'])} (no held-out data given)."]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in report.get("timings_s", {}).items())
    lines += ["", f"Measured in {report.get('seconds', 0)} s ({timing}). Details: parity.json.", ""]
    (folder / "parity.md").write_text("\n".join(lines), encoding="utf-8")


__all__ = ["ENCODER_MEL", "HeldOut", "measure", "write_report"]
