"""Intelligibility of every speech-out path, scored by pocketsphinx against the text (CER/WER).

    python scripts/evaluate.py tts --talker checkpoints/talker_tiny \
        [--csv data/audio/production_tts_val.csv] [--n 50] [--skip 0] [--paths original,griffinlim,codec,talker] \
        [--asr-ckpt checkpoints/audio_enc_tiny/best] [--json out.json]

Paths, all on the same held-out rows: original (the CSV's recordings), griffinlim (their log-mel
-> Griffin-Lim: this vocoder's ceiling), codec (log-mel -> codec -> Griffin-Lim), talker (text ->
Talker -> codec -> Griffin-Lim), teacher (a diagnosis: the Talker predicts every frame from the text
and the *real* codes before it, argmax -> codec -> Griffin-Lim; far better than ``talker`` means
free-running drift, as bad means the Talker cannot yet predict a frame), chat (the text spoken as a
chat reply: streamed word by word into ``live_turn``, which cuts it into pieces as they arrive and
speaks each at once; compare it with talker). The codec is the one the
Talker was trained on, or ``--codec``.
Also prints per-codebook usage and perplexity on the same rows, and with ``--asr-ckpt`` the CER of
our own Stage B model on every path's audio (the round trip). ``add_parser`` registers the
subcommand in scripts/evaluate.py, the entry point. Each path's CER comes with a 95% bootstrap interval
over the rows; ``evaluate.py tts-compare A.json B.json`` compares two ``--json`` reports of the same rows
path by path, with the paired bootstrap interval of the difference (is one Talker really better?).
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from omni.audio.ctc import cer_interval
from omni.audio.features import SPEECH_OUT_MEL, LogMel
from omni.audio.stage import load_asr, transcriber
from omni.cli.common import add_talker_args, non_negative, positive
from omni.codec.rvq import usage_stats
from omni.codec.stage import load_codec
from omni.speech.griffinlim import block_mel_to_wav
from omni.speech.intelligibility import cer_wer, codec_path, griffinlim_path, original_path, read_rows, report_paths
from omni.speech.synthesis import Synthesizer

PATHS = ("original", "griffinlim", "codec", "talker", "teacher", "chat")


class ScriptedReply:
    """A stand-in for ChatSession whose reply is the row's text, streamed word by word as the
    Thinker streams tokens, so that ``live_turn`` speaks it exactly as chat speaks a reply (pieces
    cut by TextPieces as the text arrives)."""

    def ask(self, text: str, on_text=None):
        for word in re.findall(r"\S+\s*", text):
            on_text(word)
        return text, None


def chat_path(synth: Synthesizer, seed: int):
    """text -> the Talker's speech as a spoken chat reply (omni/multimodal/live.py)."""
    from omni.multimodal.live import live_turn
    return lambda text, audio: live_turn(ScriptedReply(), text, voice=synth, seed=seed).audio


def codec_usage(codec, rows) -> str:
    """Per-codebook usage fraction and perplexity of the codes of ``rows``' log-mels."""
    logmel = LogMel(SPEECH_OUT_MEL)
    with torch.no_grad():
        codes = torch.cat([codec.encode(logmel(torch.from_numpy(a)[None]))[0] for _, a in rows])
    usage, perp = usage_stats(codes, codec.codebook_size)
    return "  ".join(f"q{i}: usage {u:.2f} perplexity {p:.1f}" for i, (u, p) in enumerate(zip(usage, perp)))


def teacher_forced_path(synth: Synthesizer, n_iter: int):
    """text + real log-mel -> real codes -> Talker argmax per frame given the real history -> codec
    -> Griffin-Lim."""
    logmel = LogMel(SPEECH_OUT_MEL)

    @torch.no_grad()
    def run(text: str, audio):
        codes = synth.codec.encode(logmel(torch.from_numpy(audio)[None]))[0, :, :synth.talker.cfg.n_codebooks]
        ids, _ = synth.vocab.encode(text)
        mel = synth.decode(synth.talker.teacher_forced(ids, codes))
        return block_mel_to_wav(mel, n_iter=n_iter).numpy()
    return run


def keeps(spec: str, n_codebooks: int) -> list[int]:
    """``--codec-keep 1,2`` -> [1, 2], each in 1..n_codebooks - 1 (all of them is the codec path)."""
    try:
        out = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--codec-keep {spec!r}: give comma-separated codebook counts, e.g. 1,2") from None
    bad = [k for k in out if not 1 <= k < n_codebooks]
    if bad:
        raise SystemExit(f"--codec-keep {bad}: the codec has {n_codebooks} codebooks; give counts from 1 to "
                         f"{n_codebooks - 1}")
    return out


def eval_tts(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.paths.split(",") if s.strip()]
    if set(names) - set(PATHS):
        raise SystemExit(f"unknown --paths {sorted(set(names) - set(PATHS))}; choose from {','.join(PATHS)}")
    needs_codec = bool({"codec", "talker", "teacher", "chat"} & set(names))
    if needs_codec and not (args.talker or args.codec):
        raise SystemExit("the codec and talker paths need --talker CKPT (or --codec CKPT for the codec path)")
    if {"talker", "teacher", "chat"} & set(names) and not args.talker:
        raise SystemExit("the talker, teacher and chat paths need --talker CKPT (as written by train_talker.py)")
    rows, skipped = read_rows(args.csv, args.n, skip=args.skip)
    paths = {"original": original_path(), "griffinlim": griffinlim_path(args.gl_iters)}
    synth = codec = None
    if args.talker:
        synth = Synthesizer.load(args.talker, "cpu", temperature=args.temperature, top_k=args.top_k,
                                 gl_iters=args.gl_iters, chunk_chars=args.chunk_chars, rate=args.rate)
        codec = synth.codec
    if args.codec:
        codec, _ = load_codec(args.codec, "cpu")
    if codec is not None:
        paths["codec_griffinlim"] = codec_path(codec, args.gl_iters)
        for k in keeps(args.codec_keep, codec.n_codebooks):
            paths[f"codec_first{k}_griffinlim"] = codec_path(codec, args.gl_iters, keep=k)
    if synth is not None:
        paths["talker_codec_griffinlim"] = lambda text, audio: synth.synthesize(text, seed=args.seed)
        paths["teacher_forced_talker"] = teacher_forced_path(synth, args.gl_iters)
        paths["chat_reply_talker"] = chat_path(synth, args.seed)
    chosen = {k: v for k, v in paths.items() if k.split("_")[0] in names}
    also = {}
    if args.asr_ckpt:
        model, vocab, _ = load_asr(args.asr_ckpt, torch.device("cpu"))
        also["stage_b"] = transcriber(model, vocab)
    t0 = time.perf_counter()
    report = report_paths(rows, chosen, also=also)
    sampling = (f"; Talker sampling temperature {args.temperature}, top-k {args.top_k}, seed {args.seed}"
                if {"talker", "teacher"} & set(names) else "")
    print(f"{args.csv}: {len(rows)} rows from row {args.skip} (skipped {skipped or 'none'}), Griffin-Lim {args.gl_iters} iterations"
          f"{sampling}; {time.perf_counter() - t0:.0f} s")
    extra = f" {'Stage B CER':>12}" if also else ""
    print(f"{'path':<26} {'CER':>6} {'WER':>6} {'other text':>10} {'synth RTF':>10}{extra}   (pocketsphinx; "
          "'other text': its CER against the next row's text, what speech unrelated to the text scores)")
    for name, r in report.items():
        b = f" {r['stage_b_cer']:12.3f}" if also else ""
        other = f"{r['cer_other']:10.3f}" if "cer_other" in r else f"{'-':>10}"
        print(f"{name:<26} {r['cer']:6.3f} {r['wer']:6.3f} {other} {r['synth_s'] / max(r['audio_s'], 1e-9):10.3f}{b}")
        if "cer_interval" in r:
            print(f"    CER 95% bootstrap interval over these rows: {r['cer_interval'][0]:.3f}-{r['cer_interval'][1]:.3f}")
        print("    CER by text length: " + ", ".join(
            f"{x['lo']}{'+' if x['hi'] is None else '-' + str(x['hi'] - 1)} chars {x['cer']:.3f} (n {x['n']})"
            for x in r["by_length"]))
        for ref, hyp in r["examples"][:args.examples]:
            print(f"    ref: {ref}\n    hyp: {hyp}")
    if codec is not None:
        print("codec usage on these rows: " + codec_usage(codec, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def load_report(path: str) -> dict:
    """An ``evaluate.py tts --json`` report; an error naming the file when it is not one."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read an evaluate.py tts --json report ({e})") from None
    if not isinstance(report, dict) or not all(isinstance(v, dict) and "cer" in v for v in report.values()):
        raise SystemExit(f"{path}: not an evaluate.py tts --json report")
    return report


def compare_tts(args: argparse.Namespace) -> int:
    """CER of each path two reports share, and the paired bootstrap interval of the difference."""
    a, b = load_report(args.a), load_report(args.b)
    common = [k for k in a if k in b]
    if not common:
        raise SystemExit(f"{args.a} and {args.b} share no path (they have {sorted(a)} and {sorted(b)})")
    print(f"A = {args.a}\nB = {args.b}")
    print(f"{'path':<26} {'rows':>5} {'CER A':>6} {'CER B':>6} {'A - B':>7}   95% paired bootstrap interval of A - B")
    for name in common:
        if "rows" not in a[name] or "rows" not in b[name]:
            raise SystemExit(f"{name}: a report has no per-row transcripts; rerun evaluate.py tts --json with "
                             "this version")
        refs = [r for r, _ in a[name]["rows"]]
        if refs != [r for r, _ in b[name]["rows"]]:
            raise SystemExit(f"{name}: the two reports scored different rows; compare runs on the same --csv, "
                             "--skip and --n")
        hyp_a, hyp_b = [h for _, h in a[name]["rows"]], [h for _, h in b[name]["rows"]]
        cer_a, cer_b = cer_wer(refs, hyp_a)["cer"], cer_wer(refs, hyp_b)["cer"]
        lo, hi = cer_interval(refs, hyp_a, hyp_b)
        verdict = "A lower" if hi < 0 else "B lower" if lo > 0 else "no clear difference"
        print(f"{name:<26} {len(refs):5d} {cer_a:6.3f} {cer_b:6.3f} {cer_a - cer_b:+7.3f}   {lo:+.3f} to {hi:+.3f} "
              f"({verdict})")
    return 0


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tts-compare``: two ``tts --json`` reports of the same rows, path by path."""
    t = subparsers.add_parser("tts-compare", help="compare two `tts --json` reports of the same rows: the CER "
                              "difference per path with its paired bootstrap interval")
    t.add_argument("a", help="report A (evaluate.py tts --json)")
    t.add_argument("b", help="report B, of the same rows")
    t.set_defaults(run=compare_tts)
    return t


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``tts`` subcommand in scripts/evaluate.py."""
    t = subparsers.add_parser("tts", help="pocketsphinx CER of every speech-out path, codebook usage (Stage D)")
    t.add_argument("--talker", default="", help="Stage D checkpoint folder (train_talker.py's train.save_dir parent)")
    t.add_argument("--codec", default="", help="codec checkpoint folder (default: the Talker's codec)")
    t.add_argument("--csv", default="data/audio/production_tts_val.csv", help="text,wav CSV (held out)")
    t.add_argument("--n", type=positive, default=50, help="rows to evaluate")
    t.add_argument("--skip", type=non_negative, default=0, help="start at this row (0: the first)")
    t.add_argument("--paths", default=",".join(PATHS), help=f"comma list from {','.join(PATHS)}")
    t.add_argument("--codec-keep", default="", help="with the codec path, also decode from the first K "
                   "codebooks only, for each K in this comma list (how much the residuals carry)")
    t.add_argument("--asr-ckpt", default="", help="also transcribe every path with this Stage B checkpoint")
    t.add_argument("--gl-iters", type=int, default=32, help="Griffin-Lim iterations")
    add_talker_args(t)  # --temperature, --top-k, --chunk-chars (talker path)
    t.add_argument("--seed", type=int, default=0, help="the Talker's sampling seed (talker path)")
    t.add_argument("--examples", type=int, default=2, help="example transcripts per path")
    t.add_argument("--json", default="", help="also write the report here")
    t.set_defaults(run=eval_tts)
    return t

