"""The speech half of an export's parity report: the Talker's graphs, the codec decoder and the vocoder
part by part, Griffin-Lim against PyTorch's, and the Talker's codes and the speech end to end
(omni/export/parity.py)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from omni.audio.ctc import error_rates, normalize_text
from omni.audio.features import SPEECH_OUT_MEL, LogMel
from omni.export import runtime as R
from omni.export.dsp import BlockGriffinLim
from omni.export.parity_inputs import HeldOut, check_case, err
from omni.speech.griffinlim import block_mel_to_wav

# numpy vs torch Griffin-Lim on the same mel and the same initial phases: 32 momentum (0.99) iterations
# amplify the two FFT libraries' rounding, so samples drift apart by up to a few percent of the peak on a
# random (unspeech-like) mel while the sound does not: the criterion is the log-mel L1 of the two waveforms
GL_MEL_L1_MAX = 0.01
MEL_DISTANCE_MAX = 0.05      # mean |log-mel| difference (nats) between PyTorch's and the runtime's speech


def attention_parts(tk, rt: R.OnnxOmni, texts: list[list[int]], gen: torch.Generator, tol: float) -> dict[str, list]:
    """The attention Talker's prefill and decode graphs against Talker.hidden with its KV cache."""
    c = tk.cfg
    parts: dict[str, list] = {"talker_prefill": [], "talker_decode": []}
    names = ["hidden", "stop_logit"] + (["code_logits"] if tk.depth is None else [])
    for ids in texts:
        x = tk.embed_prefix(torch.tensor([[1] + ids]))
        L = x.shape[1]
        cache = tk.new_cache(1, L + 8)
        h = tk.hidden(x, cache=cache)[:, -1]
        refs = [h, tk.stop_logit(h)] + ([tk.split_logits(h)[0]] if tk.depth is None else [])
        o = rt.run("talker_prefill", text=np.asarray([[1] + ids], dtype=np.int64))
        parts["talker_prefill"].append(check_case(f"L={L}", {**{n: err(a, b) for n, a, b in zip(names, o, refs)},
                                                        "present_k": err(o[-2], cache.k[:, :, :, :L])}, tol))
        k, v = o[-2], o[-1]
        for g in (1, 2):
            groups = torch.randint(0, c.codebook_size, (1, g, c.frames_per_step, c.n_codebooks), generator=gen)
            P = cache.pos
            h = tk.hidden(tk.embed_groups(groups), cache=cache)[:, -1]
            refs = [h, tk.stop_logit(h)] + ([tk.split_logits(h)[0]] if tk.depth is None else [])
            o = rt.run("talker_decode", groups=groups.numpy(), past_k=k, past_v=v)
            parts["talker_decode"].append(check_case(f"P={P}, groups={g}", {**{n: err(a, b) for n, a, b in zip(names, o, refs)},
                                                                       "present_k": err(o[-2], cache.k[:, :, :, :P + g])}, tol))
            k, v = o[-2], o[-1]
    return parts


def duration_parts(tk, rt: R.OnnxOmni, texts: list[list[int]], gen: torch.Generator, tol: float) -> dict[str, list]:
    """The duration Talker's plan, condition, start and step graphs against DurationTalker's own methods."""
    from omni.talker.duration import frame_places
    c = tk.cfg
    parts: dict[str, list] = {"talker_plan": [], "talker_cond": [], "talker_start": [], "talker_step": []}
    names = ["hidden"] + (["code_logits"] if tk.depth is None else [])

    def refs(h):
        return [h] + ([tk.split_logits(h)[0]] if tk.depth is None else [])
    for ids in texts:
        text = torch.tensor([[1] + ids])
        enc = tk.encode(text, torch.tensor([text.shape[1]]))
        o = rt.run("talker_plan", text=text.numpy())
        parts["talker_plan"].append(check_case(f"L={text.shape[1]}", {"enc": err(o[0], enc),
                                               "log_frames": err(o[1], tk.log_frames(enc)[:, 1:])}, tol))
        _, path = tk.plan(ids)
        places = frame_places(path, len(ids), c.frames_per_step)
        cond = tk.condition_vectors(enc, *places)
        o = rt.run("talker_cond", enc=enc.numpy(), **{k: p.numpy() for k, p in zip(("sym", "since", "to_end"), places)})
        parts["talker_cond"].append(check_case(f"frames={path.shape[1]}", {"cond": err(o[0], cond)}, tol))
        cache = tk.new_cache(1, cond.shape[1] + 8)
        h = tk.hidden(tk.bos[None, None] + cond[:, :1], cache=cache)[:, -1]
        o = rt.run("talker_start", cond=cond[:, :1].numpy())
        parts["talker_start"].append(check_case("first group", {**{n: err(a, b) for n, a, b in zip(names, o, refs(h))},
                                                               "present_k": err(o[-2], cache.k[:, :, :, :1])}, tol))
        k, v = o[-2], o[-1]
        for g in (1, 2):
            groups = torch.randint(0, c.codebook_size, (1, g, c.frames_per_step, c.n_codebooks), generator=gen)
            P = cache.pos
            step_cond = cond[:, P:P + g]
            h = tk.hidden(tk.embed_groups(groups) + step_cond, cache=cache)[:, -1]
            o = rt.run("talker_step", groups=groups.numpy(), cond=step_cond.numpy(), past_k=k, past_v=v)
            parts["talker_step"].append(check_case(f"P={P}, groups={g}", {**{n: err(a, b) for n, a, b in zip(names, o, refs(h))},
                                                                        "present_k": err(o[-2], cache.k[:, :, :, :P + g])}, tol))
            k, v = o[-2], o[-1]
    return parts


@torch.no_grad()
def speech_parts(src, rt: R.OnnxOmni, held: HeldOut, tol: float) -> tuple[dict[str, list], dict[str, list]]:
    tk, codec = src.talker, src.codec
    c = tk.cfg
    parts: dict[str, list] = {"codec_decoder": []}
    gen = torch.Generator().manual_seed(0)
    texts = sorted(held.tts_texts[:4], key=len)[::3][:2] or held.tts_texts[:2]
    if c.alignment == "durations":
        parts.update(duration_parts(tk, rt, [src.vocab.encode(t)[0][:c.max_text_chars] for t in texts], gen, tol))
    else:
        parts.update(attention_parts(tk, rt, [src.vocab.encode(t)[0][:c.max_text_chars] for t in texts], gen, tol))
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
            parts["talker_depth"].append(check_case(f"batch={b}, slots={S}", worst, tol))
    for n in (5, 37):
        codes = torch.randint(0, c.codebook_size, (1, n, c.n_codebooks), generator=gen)
        parts["codec_decoder"].append(check_case(f"code_frames={n}", {"mel": err(rt.run("codec_decoder", codes=codes.numpy())[0],
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
        case = check_case(f"frames={mel.shape[1]}", {"wav": err(ours, ref)}, float("inf"))
        case.update(log_mel_l1=d, ok=d <= GL_MEL_L1_MAX)
        fronts["griffin_lim"].append(case)
    if src.vocoder is not None:
        from omni.vocoder.model import vocode
        parts["vocoder"] = []
        for n in (8, 50):
            mel = torch.randn(1, n, SPEECH_OUT_MEL.n_mels, generator=gen) - 4
            parts["vocoder"].append(check_case(f"frames={n}", {"wav": err(rt.run("vocoder", mel=mel.numpy())[0],
                                                                     vocode(src.vocoder, mel))}, tol))
    return parts, fronts


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
