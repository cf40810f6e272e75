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

import csv
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
from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL, LogMel, load_audio, save_wav
from omni.export import runtime as R
from omni.export.dsp import BlockGriffinLim
from omni.images import load_image_tensor
from omni.multimodal.model import generate_reply
from omni.multimodal.template import AUDIO, IMAGE, Turn, build_sequence
from omni.speech.griffinlim import block_mel_to_wav

log = logging.getLogger(__name__)

CAPTION_PROMPT, ASR_PROMPT, TEXT_PROMPT = "Describe the image.", "Transcribe the audio.", "Continue the text: "
FALLBACK_TEXTS = ["The cat sat on the warm mat.", "Please open the window before you leave.",
                  "A red ball rolls under the old wooden table.", "We will meet at the station at noon.",
                  "Two birds sing in the tall green tree.", "Turn left after the bridge, then go straight on."]
# numpy vs torch Griffin-Lim on the same mel and the same initial phases: 32 momentum (0.99) iterations
# amplify the two FFT libraries' rounding, so samples drift apart by up to a few percent of the peak on a
# random (unspeech-like) mel while the sound does not: the criterion is the log-mel L1 of the two waveforms
GL_MEL_L1_MAX = 0.01
MEL_DISTANCE_MAX = 0.05      # mean |log-mel| difference (nats) between PyTorch's and the runtime's speech


# ---------------------------------------------------------------- held-out inputs
class HeldOut:
    """Prompts, clips, images and texts from held-out manifests, or synthetic stand-ins."""

    def __init__(self, data: dict[str, str | None], tmp: Path, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.synthetic: list[str] = []
        self.clips = self._csv(data.get("asr_csv"), "wav", "text")
        if not self.clips:
            self.synthetic.append("audio")
            for i, secs in enumerate((1.3, 2.1)):
                t = np.arange(int(secs * 16000)) / 16000
                wav = (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t))).astype(np.float32)
                save_wav(tmp / f"clip{i}.wav", wav + rng.standard_normal(wav.size).astype(np.float32) * 0.01)
                self.clips.append((str(tmp / f"clip{i}.wav"), ""))
        self.images = self._images(data.get("image_manifest"))
        if not self.images:
            from PIL import Image
            self.synthetic.append("images")
            for i in range(2):
                arr = rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp / f"image{i}.png")
                self.images.append((str(tmp / f"image{i}.png"), [CAPTION_PROMPT], []))
        tts = [t for _, t in self._csv(data.get("tts_csv"), "wav", "text")]
        self.tts_texts = tts or list(FALLBACK_TEXTS)
        if not tts:
            self.synthetic.append("tts texts")
        lines = []
        if data.get("text_file") and Path(data["text_file"]).is_file():
            lines = [ln.strip() for ln in Path(data["text_file"]).read_text(encoding="utf-8").splitlines() if ln.strip()]
        self.texts = [TEXT_PROMPT + " ".join(ln.split()[:12]) for ln in lines] or \
                     [TEXT_PROMPT + t for t in self.tts_texts]

    @staticmethod
    def _csv(path: str | None, wav_key: str, text_key: str) -> list[tuple[str, str]]:
        if not path or not Path(path).is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        base = Path(path).parent
        return [(str(base / r[wav_key]), r[text_key]) for r in rows if (base / r[wav_key]).is_file()]

    @staticmethod
    def _images(path: str | None) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
        if not path or not Path(path).is_file():
            return []
        text = Path(path).read_text(encoding="utf-8").strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        base = Path(path).parent
        out = []
        for r in rows:
            qa = [tuple(x) for x in r.get("qa", [])] + ([(r["question"], r.get("answer", ""))] if r.get("question") else [])
            if (base / r["image"]).is_file():
                out.append((str(base / r["image"]), [CAPTION_PROMPT] + [q for q, _ in qa], qa))
        return out

    def prompts(self, n: int) -> list[dict[str, Any]]:
        """n chat prompts cycling text / image / audio ones: {"text", "images": [paths], "audio": [paths]}."""
        kinds = [[{"text": t, "images": [], "audio": []} for t in self.texts],
                 [{"text": qs[k % len(qs)], "images": [p], "audio": []} for k, (p, qs, _) in enumerate(self.images)],
                 [{"text": ASR_PROMPT, "images": [], "audio": [p]} for p, _ in self.clips]]
        kinds = [k for k in kinds if k]
        out = []
        i = 0
        while len(out) < n and any(kinds):
            pool = kinds[i % len(kinds)]
            if pool:
                out.append(pool[(i // len(kinds)) % len(pool)])
            i += 1
        return out


# ---------------------------------------------------------------- helpers
def err(onnx_out: np.ndarray, ref: torch.Tensor | np.ndarray) -> dict[str, float]:
    r = ref.detach().float().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float32)
    o = np.asarray(onnx_out, dtype=np.float32)
    if o.shape != r.shape:
        return {"max_abs": float("inf"), "max_ref": float(np.abs(r).max()) if r.size else 0.0, "rel": float("inf"),
                "shape_mismatch": f"{list(o.shape)} vs {list(r.shape)}"}
    max_abs = float(np.abs(o - r).max()) if r.size else 0.0
    max_ref = float(np.abs(r).max()) if r.size else 0.0
    return {"max_abs": max_abs, "max_ref": max_ref, "rel": max_abs / max(max_ref, 1e-12)}


def _case(label: str, outputs: dict[str, dict[str, float]], tol: float) -> dict[str, Any]:
    worst = max(v["rel"] for v in outputs.values())
    return {"case": label, "outputs": outputs, "worst_rel": worst, "ok": worst <= tol}


def torch_inputs(omni, seq_ids, seq_kinds, images: list[str], clips: list[str]):
    img = torch.stack([load_image_tensor(p, omni.comp.vision.img_size) for p in images]) if images else None
    audio = lengths = None
    if clips:
        wavs = [load_audio(p) for p in clips]
        lengths = torch.tensor([len(a) for a in wavs])
        audio = torch.zeros(len(wavs), int(lengths.max()))
        for k, a in enumerate(wavs):
            audio[k, :len(a)] = torch.from_numpy(a)
    ids, kinds = torch.tensor([seq_ids]), torch.tensor([seq_kinds])
    return omni.embed(ids, kinds, img, audio, lengths), ids, kinds


def prompt_sequence(src, rt: R.OnnxOmni, p: dict[str, Any]):
    """The same chat prompt through both template implementations -> (torch Sequence, runtime ids, kinds)."""
    omni = src.omni
    media = [(IMAGE, omni.image_slots()) for _ in p["images"]]
    media += [(AUDIO, omni.audio_slots(len(load_audio(c)))) for c in p["audio"]]
    seq = build_sequence(src.tok, [Turn("user", p["text"], media)], generation_prompt=True)
    rids, rkinds = R.build_sequence(rt.encode, rt.special, [R.Turn("user", p["text"], media)], rt.cfg["system_prompt"])
    return seq, rids, rkinds


def runtime_inputs(rt: R.OnnxOmni, ids, kinds, p):
    feats_i = [rt.image_features(rt.image_tensor(x)[None])[0] for x in p["images"]]
    feats_a = [rt.audio_features(R.load_audio(x)) for x in p["audio"]]
    return rt.inputs(ids, kinds, feats_i, feats_a)


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
        pre.append(_case(f"T={T}", {"logits": err(out[0], ref), "present_k": err(out[1], cache.k[:, :, :, :T]),
                                     "present_v": err(out[2], cache.v[:, :, :, :T])}, tol))
        k, v = out[1], out[2]
        for n in (1, 3):
            nxt = torch.randint(12, th.cfg.vocab_size, (1, n))
            P = cache.pos
            ref = th.lm_head(th.hidden(nxt, cache=cache)[:, -1])
            o = rt.run("thinker_decode", ids=nxt.numpy(), past_k=k, past_v=v)
            dec.append(_case(f"P={P}, T={n}", {"logits": err(o[0], ref), "present_k": err(o[1], cache.k[:, :, :, :P + n]),
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
        parts["audio_encoder"].append(_case(f"frames={mel.shape[1]}", {"slots": err(o, ref)}, tol))
        fronts["log_mel"].append(_case(f"samples={len(wav)}", {"log_mel": err(rt.audio_mel(R.load_audio(clip))[None], mel)},
                                       tol * 10))
        fronts["audio_end_to_end"].append(_case(f"samples={len(wav)}", {"slots": err(rt.audio_features(R.load_audio(clip)), ref)},
                                                tol * 10))
    paths = [p for p, _, _ in held.images[:2]]
    for n in (1, 2):
        imgs = torch.stack([load_image_tensor(paths[i % len(paths)], omni.comp.vision.img_size) for i in range(n)])
        ref = omni.image_features(imgs)
        o = rt.run("vision_encoder", images=imgs.numpy())[0]
        parts["vision_encoder"].append(_case(f"batch={n}", {"slots": err(o, ref)}, tol))
    for p in paths:
        fronts["image_preprocess"].append(_case(Path(p).name, {"pixels": err(rt.image_tensor(p),
                                                load_image_tensor(p, omni.comp.vision.img_size))}, tol))
    return parts, fronts


@torch.no_grad()
def speech_parts(src, rt: R.OnnxOmni, held: HeldOut, tol: float) -> tuple[dict[str, list], dict[str, list]]:
    tk, codec = src.talker, src.codec
    c = tk.cfg
    parts: dict[str, list] = {"talker_prefill": [], "talker_decode": [], "codec_decoder": []}
    gen = torch.Generator().manual_seed(0)
    names = ["hidden", "stop_logit"] + (["code_logits"] if tk.depth is None else [])
    for text in sorted(held.tts_texts[:4], key=len)[::3][:2] or held.tts_texts[:2]:
        ids = src.vocab.encode(text)[0][:c.max_text_chars]
        x = tk.embed_prefix(torch.tensor([[1] + ids]))
        L = x.shape[1]
        cache = tk.new_cache(1, L + 8)
        h = tk.hidden(x, cache=cache)[:, -1]
        refs = [h, tk.stop_logit(h)] + ([tk.split_logits(h)[0]] if tk.depth is None else [])
        o = rt.run("talker_prefill", text=np.asarray([[1] + ids], dtype=np.int64))
        parts["talker_prefill"].append(_case(f"L={L}", {**{n: err(a, b) for n, a, b in zip(names, o, refs)},
                                                        "present_k": err(o[-2], cache.k[:, :, :, :L])}, tol))
        k, v = o[-2], o[-1]
        for g in (1, 2):
            groups = torch.randint(0, c.codebook_size, (1, g, c.frames_per_step, c.n_codebooks), generator=gen)
            P = cache.pos
            h = tk.hidden(tk.embed_groups(groups), cache=cache)[:, -1]
            refs = [h, tk.stop_logit(h)] + ([tk.split_logits(h)[0]] if tk.depth is None else [])
            o = rt.run("talker_decode", groups=groups.numpy(), past_k=k, past_v=v)
            parts["talker_decode"].append(_case(f"P={P}, groups={g}", {**{n: err(a, b) for n, a, b in zip(names, o, refs)},
                                                                       "present_k": err(o[-2], cache.k[:, :, :, :P + g])}, tol))
            k, v = o[-2], o[-1]
    if tk.depth is not None:
        parts["talker_depth"] = []
        S, K = c.frames_per_step * c.n_codebooks, c.codebook_size
        for b in (1, 2):
            h = torch.randn(b, c.d_model, generator=gen)
            codes = torch.randint(0, K, (b, S), generator=gen)
            prev, prev_o = torch.zeros_like(h), np.zeros((b, c.d_model), np.float32)
            code_o = np.zeros((b,), np.int64)
            worst: dict[str, dict[str, float]] = {}
            for s in range(S):
                sl = slice(s, s + 1)
                ref = tk.slot_logits(tk.depth(h, prev.unsqueeze(-2), sl), sl)[..., 0, :]
                lo, prev_o = rt.run("talker_depth", hidden=h.numpy(), prev=prev_o, code=code_o,
                                    slot=np.asarray(s, dtype=np.int64))
                worst[f"slot{s}"] = err(lo, ref)
                prev = prev + tk.code_emb(codes[:, s] + s * K)
                code_o = codes[:, s].numpy().astype(np.int64)
            parts["talker_depth"].append(_case(f"batch={b}, slots={S}", worst, tol))
    for n in (5, 37):
        codes = torch.randint(0, c.codebook_size, (1, n, c.n_codebooks), generator=gen)
        parts["codec_decoder"].append(_case(f"code_frames={n}", {"mel": err(rt.run("codec_decoder", codes=codes.numpy())[0],
                                                                            codec.decode(codes))}, tol))
    fronts: dict[str, list] = {"griffin_lim": []}
    logmel = LogMel(SPEECH_OUT_MEL)
    for n in (6, 40):
        codes = torch.randint(0, c.codebook_size, (1, n, c.n_codebooks), generator=gen)
        mel = codec.decode(codes)
        sp = rt.cfg["speech"]
        blocks = BlockGriffinLim(rt.voice.griffin_lim, n_iter=sp["gl_iters"], **sp["gl_block"])
        ours = np.concatenate([blocks.push(mel[0].numpy()), blocks.finish()])
        ref = block_mel_to_wav(mel, sp["gl_iters"])
        d = float((logmel(torch.from_numpy(ours)[None]) - logmel(ref[None])).abs().mean())
        case = _case(f"frames={mel.shape[1]}", {"wav": err(ours, ref)}, float("inf"))
        case.update(log_mel_l1=d, ok=d <= GL_MEL_L1_MAX)
        fronts["griffin_lim"].append(case)
    if src.vocoder is not None:
        from omni.vocoder.model import vocode
        parts["vocoder"] = []
        for n in (8, 50):
            mel = torch.randn(1, n, SPEECH_OUT_MEL.n_mels, generator=gen) - 4
            parts["vocoder"].append(_case(f"frames={n}", {"wav": err(rt.run("vocoder", mel=mel.numpy())[0],
                                                                     vocode(src.vocoder, mel))}, tol))
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


@torch.no_grad()
def speech_agreement(src, rt: R.OnnxOmni, held: HeldOut, n: int, sphinx: bool,
                     graphs: R.OnnxOmni | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    from omni.speech.synthesis import Synthesizer

    graphs = graphs or rt
    synth = Synthesizer(src.talker, src.vocab, src.codec, torch.device("cpu"),
                        vocoder=src.vocoder if rt.cfg["speech"]["vocoder"] == "hifigan" else None)
    texts = held.tts_texts[:n]
    code_rows, same_chunks, chunks, frames_same, frames = [], 0, 0, 0, 0
    for text in texts:
        ref = [c.numpy() for c in synth.codes(text)]
        got = [graphs.voice.talker_codes(ids, 0.0, 0, np.random.default_rng(0)) for ids in graphs.voice.speech_chunks(text)]
        ident = len(ref) == len(got) and all(np.array_equal(a, b) for a, b in zip(ref, got))
        for a, b in zip(ref, got):
            m = min(len(a), len(b))
            frames_same += int((a[:m] == b[:m]).all(-1).sum())
            frames += max(len(a), len(b))
        chunks += len(ref)
        same_chunks += sum(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ref, got))
        code_rows.append({"text": text[:60], "chunks": len(ref), "frames": int(sum(len(a) for a in ref)), "identical": ident})
    talker = {"texts": len(texts), "chunks": chunks, "identical_chunks": same_chunks,
              "agreement": same_chunks / max(chunks, 1), "frame_agreement": frames_same / max(frames, 1),
              "rows": code_rows, "ok": same_chunks == chunks}
    logmel = LogMel(SPEECH_OUT_MEL)
    dists, wav_err, rows, refs, hyp_t, hyp_o = [], [], [], [], [], []
    transcribe = None
    if sphinx:
        try:
            from omni.speech.intelligibility import transcribe
        except ImportError:
            transcribe = None
    for text in texts:
        a = synth.synthesize(text)
        b = graphs.voice.synthesize(text)
        m = min(len(a), len(b))
        if m < SPEECH_OUT_MEL.n_fft:
            continue
        ma, mb = logmel(torch.from_numpy(a[:m])[None]), logmel(torch.from_numpy(b[:m].copy())[None])
        d = float((ma - mb).abs().mean())
        dists.append(d)
        wav_err.append(float(np.abs(a[:m] - b[:m]).max()))
        row = {"text": text[:60], "samples_pytorch": len(a), "samples_onnx": len(b), "mel_l1": d}
        if transcribe is not None:
            refs.append(normalize_text(text))
            hyp_t.append(normalize_text(transcribe(a)))
            hyp_o.append(normalize_text(transcribe(b)))
            row.update(pytorch_heard=hyp_t[-1], onnx_heard=hyp_o[-1])
        rows.append(row)
    speech = {"texts": len(rows), "vocoder": rt.cfg["speech"]["vocoder"],
              "mel_l1_mean": float(np.mean(dists)) if dists else None, "mel_l1_max": float(np.max(dists)) if dists else None,
              "wav_max_abs": float(np.max(wav_err)) if wav_err else None,
              "same_length": all(r["samples_pytorch"] == r["samples_onnx"] for r in rows),
              "cer_pytorch": error_rates(refs, hyp_t)["cer"] if refs else None,
              "cer_onnx": error_rates(refs, hyp_o)["cer"] if refs else None, "rows": rows,
              # the runtime speaks through the same blocks as PyTorch: the lengths are equal, not near
              "ok": bool(dists) and max(dists) <= MEL_DISTANCE_MAX
              and all(r["samples_pytorch"] == r["samples_onnx"] for r in rows)}
    if refs:
        speech["cer_delta"] = speech["cer_onnx"] - speech["cer_pytorch"]
    return talker, speech


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
