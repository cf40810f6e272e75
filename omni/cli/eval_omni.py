"""Quality of a Stage E model on held-out examples of every modality, through the chat code path.

    python scripts/evaluate.py omni --ckpt checkpoints/omni_sft_tiny [--n 100] [--speech-n 10]

Reports VQA accuracy and caption keyword accuracy on held-out images, transcription CER through
chat next to the Stage B model alone on the same clips, text perplexity after SFT next to the
Stage A Thinker on the same text (the "omni tax"), and the intelligibility of spoken replies
(Talker -> codec -> vocoder, transcribed by pocketsphinx). Numbers, not exit codes. ``add_parser``
registers the subcommand in scripts/evaluate.py, the entry point, which also turns a missing
checkpoint or data file into one error line.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from omni.audio.stage import AsrDataset, evaluate_asr, load_asr
from omni.cli.common import add_device_arg, add_vocoder_args, vocoder_kwargs
from omni.engine.runtime import pick_device
from omni.manifest import Manifest, resolve_manifest
from omni.multimodal.data import Sources
from omni.multimodal.stage import (
    answer_examples,
    answer_key,
    held_out,
    load_omni,
    task_metrics,
    text_windows,
    vqa_prior,
)
from omni.thinker.stage import evaluate_lm, load_thinker


def show(task: str, exs, hyps, k: int) -> None:
    for ex, hyp in list(zip(exs, hyps))[:k]:
        print(f"    [{task}] {ex.prompt!r} -> {hyp!r} (reference {ex.answer!r})")


TASKS = ("vqa", "caption", "asr")


def answer_task(model, tok, cfg, val: Sources, task: str, n: int) -> tuple[list, list[str], list[str] | None]:
    """The first n held-out examples of ``task`` answered through chat: (examples, replies, and for
    VQA the blind prior's answers to the same questions, else None)."""
    exs = held_out(val, task, n, cfg.data, cfg.train.seed)
    hyps = answer_examples(model, tok, exs)
    blind = None
    if task == "vqa":
        prior = vqa_prior(Sources(cfg.data.image_manifest, cfg.data.asr_csv, cfg.data.text_file, "train"))
        blind = [prior.get(e.prompt, "") for e in exs]
    return exs, hyps, blind


def media_tasks(model, tok, cfg, val: Sources, args) -> tuple[dict[str, float], list[str]]:
    out: dict[str, float] = {}
    replies: list[str] = []
    for task in TASKS:
        t0 = time.perf_counter()
        exs, hyps, blind = answer_task(model, tok, cfg, val, task, args.n)
        m = task_metrics(task, [e.answer for e in exs], hyps)
        if blind is not None:
            m["vqa_blind_prior"] = float(np.mean([b == answer_key(e.answer) for e, b in zip(exs, blind)]))
        out.update(m)
        replies += hyps
        print(f"  {task:<8} n={len(exs):<4} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items())
              + f"   ({time.perf_counter() - t0:.1f} s)")
        show(task, exs, hyps, args.examples)
    return out, replies


def stage_b_alone(cfg, device, n: int) -> tuple[dict[str, float], list[tuple[str, str, int]]]:
    """The Stage B recogniser on the same first n clips of the same validation manifest: its metrics
    and (reference, hypothesis, row) per clip."""
    asr, vocab, acfg = load_asr(cfg.model.audio_ckpt, device)
    ds = AsrDataset(Manifest(resolve_manifest(cfg.data.asr_val_csv, "val")), vocab, acfg.data.max_seconds,
                    acfg.model.symbols_per_frame)
    return evaluate_asr(asr, ds, vocab, 16, n)


def omni_tax(model, tok, cfg, device, batches: int) -> tuple[float, float]:
    windows = text_windows(cfg.data.text_val_file, tok, model.thinker.cfg.ctx_len)
    after = evaluate_lm(model.thinker, windows, 8, batches)["val_ppl"]
    thinker, _, _ = load_thinker(cfg.model.thinker_ckpt, device)
    before = evaluate_lm(thinker, windows, 8, batches)["val_ppl"]
    return before, after


def spoken(replies: list[str], args, device) -> dict[str, float]:
    """The first ``args.speech_n`` non-empty replies spoken as chat speaks them (Talker -> codec ->
    vocoder) and transcribed by pocketsphinx: CER/WER against the reply text, synthesis RTF, n, and
    with two replies or more the CER's bootstrap interval (``cer_lo``, ``cer_hi``)."""
    from omni.audio.ctc import cer_interval
    from omni.speech.intelligibility import cer_wer, transcribe
    from omni.speech.synthesis import Synthesizer
    talker, n = args.talker, args.speech_n
    voice = Synthesizer.load(talker, device, **vocoder_kwargs(args.vocoder))
    refs, hyps, secs, spent = [], [], 0.0, 0.0
    for text in [r for r in replies if r.strip()][:n]:
        t0 = time.perf_counter()
        wav = voice.synthesize(text, seed=0)
        spent += time.perf_counter() - t0
        secs += len(wav) / 16000
        refs.append(text)
        hyps.append(transcribe(wav) if len(wav) else "")
    out = cer_wer(refs, hyps)
    out["rtf"] = spent / max(secs, 1e-9)
    out["n"] = float(len(refs))
    if len(refs) > 1:
        out["cer_lo"], out["cer_hi"] = cer_interval(refs, hyps)
    return out


def eval_omni(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, tok, cfg = load_omni(args.ckpt, device)
    val = Sources(cfg.data.image_val_manifest, cfg.data.asr_val_csv, cfg.data.text_val_file, "val")
    print(f"checkpoint {args.ckpt}; held-out: {cfg.data.image_val_manifest}, {cfg.data.asr_val_csv}, "
          f"{cfg.data.text_val_file}")
    m, replies = media_tasks(model, tok, cfg, val, args)
    b, _ = stage_b_alone(cfg, device, args.n)
    print(f"  Stage B alone on the same clips: CER {b['val_cer']:.4f}  WER {b['val_wer']:.4f} "
          f"(chat - Stage B: {m['asr_cer'] - b['val_cer']:+.4f})")
    before, after = omni_tax(model, tok, cfg, device, args.text_batches)
    print(f"  text perplexity: Stage A {before:.2f} -> after SFT {after:.2f} "
          f"(omni tax {100 * (after / before - 1):+.1f}%)")
    if args.speech_n > 0:
        s = spoken(replies, args, device)
        print(f"  spoken replies: n={int(s['n'])} pocketsphinx CER {s['cer']:.4f} WER {s['wer']:.4f} "
              f"vs the reply text; synthesis RTF {s['rtf']:.2f}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``omni`` subcommand in scripts/evaluate.py."""
    o = subparsers.add_parser("omni", help="every modality of a Stage E model through chat, beside Stage A "
                              "and B alone, and its spoken replies")
    o.add_argument("--ckpt", default="checkpoints/omni_sft_tiny/best", help="Stage E checkpoint folder (sft_omni.py)")
    o.add_argument("--n", type=int, default=100, help="held-out examples per task")
    o.add_argument("--text-batches", type=int, default=50, help="validation text batches for perplexity")
    o.add_argument("--talker", default="checkpoints/talker_tiny", help="Stage D checkpoint folder for spoken replies")
    o.add_argument("--speech-n", type=int, default=10, help="replies to speak and transcribe (0: skip)")
    add_vocoder_args(o)
    add_device_arg(o)
    o.add_argument("--examples", type=int, default=3, help="example answers to print per task")
    o.set_defaults(run=eval_omni)
    return o
