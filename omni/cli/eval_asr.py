"""CER/WER of a Stage B (audio encoder, CTC) checkpoint on any ASR manifest, per source; and the
choice of the LM decoder's weights.

    python scripts/evaluate.py asr --ckpt checkpoints/audio_enc_tiny/best \
        --csv data/audio/production_asr_val.csv [--pocketsphinx] [--lm]
    python scripts/evaluate.py asr --ckpt RUN_B/best --against RUN_A/best --csv data/audio/real_speech.csv
    python scripts/evaluate.py asr-tune --ckpt checkpoints/audio_enc_tiny/best \
        --csv data/audio/production_asr_val.csv --n 100 --lm-weight 0.5 0.8 --length-bonus 1 1.5

Greedy CTC always; with ``--lm`` also prefix beam search fused with a character n-gram LM built in
the same run from the checkpoint's training transcripts (or the sentences of ``--lm-text``) and each
of their words said alone, less any utterance being scored, both columns side by side; with
``--pocketsphinx`` also pocketsphinx on the same clips; with ``--against`` also a second checkpoint,
greedy, with the paired interval of the difference (both scored on each bootstrap resample of the
same clips). ``--skip``/``--n`` select a slice of rows, so the LM weights can be chosen on one part
of a set (``asr-tune``: one model pass, then every pair of weights, greedy first) and scored on
another (``asr --lm --skip N``). ``add_parser`` registers both subcommands in scripts/evaluate.py.
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
from tqdm import tqdm

from omni.audio.ctc import CharVocab, cer_interval, error_rates, greedy_decode, normalize_text
from omni.audio.features import load_audio
from omni.audio.lm import CharNgramLM, beam_decode
from omni.audio.stage import (
    AsrDataset,
    AsrModel,
    AsrStageConfig,
    evaluate_asr,
    load_asr,
    per_source_report,
    resolve_manifest,
)
from omni.builders.speech import corpus_sentences, normalize_transcript
from omni.cli.common import add_device_arg, non_negative, positive
from omni.data import DataError
from omni.engine.runtime import pick_device
from omni.manifest import Manifest


def lm_sentences(args: argparse.Namespace, train_csv: str, references: list[str]) -> tuple[str, list[str]]:
    """(where from, normalised utterances) for the LM: the sentences of ``--lm-text`` (a one-document-
    per-line corpus, split as the audio builder splits it) or the checkpoint's training transcripts,
    and each of their words as an utterance of its own; either way without the references being
    scored, so the LM never knows a held-out utterance as one."""
    if args.lm_text:
        path = Path(args.lm_text)
        if not path.is_file():
            raise DataError(f"{path}: no such LM text file (--lm-text)")
        # in the manifests' spelling, the one the model was trained to emit ("'tis" -> "tis")
        source = str(path)
        sentences = [normalize_text(normalize_transcript(x)) for x in corpus_sentences(path)]
    else:
        try:
            manifest = Manifest(resolve_manifest(train_csv, "train"))
        except DataError as e:
            raise DataError(f"{e} (the LM is built from the checkpoint's training transcripts, data.train_csv; "
                            f"--lm-text FILE gives it other sentences)") from e
        source = f"{manifest.path} (the checkpoint's training transcripts)"
        sentences = [normalize_text(manifest[i]["text"]) for i in range(len(manifest))]
    # each word alone too: people say single words and short phrases, and an LM of whole sentences only
    # gives a one-word utterance's start and end so little probability that the beam turns it into a
    # sentence opening ("dog" -> "the dog"; docs/results.md, isolated words)
    utterances = sentences + [w for x in sentences for w in x.split()]
    # compared in the ASR manifests' spelling ("'tis" and "tis" are one sentence)
    held_out = {normalize_transcript(r) for r in references}
    kept = [x for x in utterances if x and normalize_transcript(x) not in held_out]
    if not kept:
        raise DataError(f"{source}: no sentences left for the LM once the evaluated references are left out")
    return (f"{source} and their words, {len(utterances) - len(kept)} of them dropped as evaluated references",
            kept)


def selected_rows(args: argparse.Namespace, manifest: Manifest) -> range:
    """The rows ``--skip`` and ``--n`` select; none is an error naming the manifest."""
    stop = len(manifest) if args.n is None else min(len(manifest), args.skip + args.n)
    rows = range(args.skip, stop)
    if not rows:
        raise DataError(f"{manifest.path}: no rows to decode from row {args.skip} ({len(manifest)} rows)")
    return rows


def greedy_pass(model: AsrModel, dataset: AsrDataset, vocab: CharVocab, batch_size: int, rows: range
                ) -> tuple[dict[str, float], list[tuple[str, str, int]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Greedy CTC over ``rows`` -> (metrics, (reference, hypothesis, row) per item, and each batch's
    log-probs (B, T, V) with lengths (B,)), so other decoders reuse one run of the model."""
    stored: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(lp: torch.Tensor, n: torch.Tensor) -> list[str]:
        stored.append((lp.cpu(), n.cpu()))
        return greedy_decode(lp, n, vocab)
    metrics, results = evaluate_asr(model, dataset, vocab, batch_size, rows=rows, decode=keep)
    return metrics, results, stored


def train_lm(args: argparse.Namespace, train_csv: str, vocab: CharVocab, references: list[str]
             ) -> tuple[str, list[str], CharNgramLM]:
    """(where from, its sentences, the LM) for ``--lm``; a sentence the vocabulary cannot spell is a DataError."""
    source, sentences = lm_sentences(args, train_csv, references)
    try:
        return source, sentences, CharNgramLM.train(sentences, args.lm_order, vocab.chars)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from e


def pocketsphinx_results(manifest: Manifest, results: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """pocketsphinx's transcripts of exactly the clips our model decoded: (reference, hyp, row)."""
    from omni.speech.intelligibility import transcribe
    out = []
    for ref, _, row in tqdm(results, desc="pocketsphinx", unit="clip"):
        out.append((ref, normalize_text(transcribe(load_audio(manifest[row]["wav"]))), row))
    return out


def load_rows(args: argparse.Namespace) -> tuple[AsrModel, CharVocab, AsrStageConfig, Manifest, AsrDataset, range]:
    """The checkpoint, the manifest, its dataset and the rows ``--skip``/``--n`` select."""
    model, vocab, cfg = load_asr(args.ckpt, pick_device(args.device))
    manifest = Manifest(resolve_manifest(args.csv, "val"))
    dataset = AsrDataset(manifest, vocab, cfg.data.max_seconds, cfg.model.symbols_per_frame)
    return model, vocab, cfg, manifest, dataset, selected_rows(args, manifest)


def eval_asr(args: argparse.Namespace) -> int:
    """CER/WER of a Stage B checkpoint on a manifest, overall and per source, with examples."""
    model, vocab, cfg, manifest, dataset, rows = load_rows(args)
    t0 = time.perf_counter()
    metrics, results, stored = greedy_pass(model, dataset, vocab, args.batch_size, rows)
    print(f"checkpoint   {args.ckpt}")
    print(f"manifest     {manifest.path}: {int(metrics['val_items'])} of {len(manifest)} rows decoded "
          f"(rows {rows.start}-{rows.stop - 1}, {time.perf_counter() - t0:.1f} s, greedy CTC)")
    refs = [ref for ref, _, _ in results]
    print(f"overall      CER {metrics['val_cer']:.4f}  WER {metrics['val_wer']:.4f}  "
          f"{interval(refs, [h for _, h, _ in results])}")
    columns: dict[str, list[tuple[str, str, int]]] = {}
    if args.lm:
        t0 = time.perf_counter()
        source, sentences, lm = train_lm(args, cfg.data.train_csv, vocab, [r for r, _, _ in results])
        print(f"char LM      order {args.lm_order}, {len(sentences)} utterances from {source}; {len(lm.ngrams)} "
              f"n-grams ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        hyps = [h for lp, n in stored for h in beam_decode(lp, n, vocab, lm, args.beam, args.lm_weight,
                                                          args.length_bonus)]
        columns["beam+LM"] = [(ref, h, row) for (ref, _, row), h in zip(results, hyps)]
        r = error_rates(refs, hyps)
        print(f"beam+LM      CER {r['cer']:.4f}  WER {r['wer']:.4f}  {interval(refs, hyps)}  (beam {args.beam}, "
              f"lm weight {args.lm_weight}, length bonus {args.length_bonus}; {time.perf_counter() - t0:.1f} s)")
    if args.against:
        columns["against"] = against_results(args, results)
        other = [h for _, h, _ in columns["against"]]
        r = error_rates(refs, other)
        lo, hi = cer_interval(refs, [h for _, h, _ in results], other)
        print(f"against      CER {r['cer']:.4f}  WER {r['wer']:.4f}  {interval(refs, other)}  ({args.against}, greedy)")
        print(f"difference   CER {metrics['val_cer'] - r['cer']:+.4f} (this checkpoint minus the other), "
              f"paired 95% {lo:+.4f} to {hi:+.4f}")
    if args.pocketsphinx:
        columns["pocketsphinx"] = pocketsphinx_results(manifest, results)
        r = error_rates([x[0] for x in columns["pocketsphinx"]], [x[1] for x in columns["pocketsphinx"]])
        print(f"pocketsphinx CER {r['cer']:.4f}  WER {r['wer']:.4f}  "
              f"{interval([x[0] for x in columns['pocketsphinx']], [x[1] for x in columns['pocketsphinx']])}  "
              f"(same {len(results)} clips, its en-us model)")
    for key in [k for k in ("engine", "voice", "speaker", "source") if k in manifest.header]:
        other = {name: per_source_report(manifest, res, key) for name, res in columns.items()}
        for group, r in per_source_report(manifest, results, key).items():
            extra = "".join(f"   {name} CER {o[group]['cer']:.4f}  WER {o[group]['wer']:.4f}"
                            for name, o in other.items())
            print(f"  {key:<8} {group:<28} n={int(r['n']):<5} CER {r['cer']:.4f}  WER {r['wer']:.4f}{extra}")
    hyps = {name: {row: h for _, h, row in res} for name, res in columns.items()}
    for ref, hyp, row in results[:args.examples]:
        print(f"  ref: {ref}\n  hyp: {hyp}")
        for name, h in hyps.items():
            print(f"  {name}: {h[row]}")
    return 0


def against_results(args: argparse.Namespace, results: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Greedy transcripts of the same clips by the ``--against`` checkpoint: (reference, hyp, row).
    Both checkpoints read the clips with their own data config, so a clip one of them skips (too long,
    unreadable) is an error here, not a silently smaller comparison."""
    model, vocab, cfg = load_asr(args.against, pick_device(args.device))
    manifest = Manifest(resolve_manifest(args.csv, "val"))
    dataset = AsrDataset(manifest, vocab, cfg.data.max_seconds, cfg.model.symbols_per_frame)
    rows = [row for _, _, row in results]
    _, other = evaluate_asr(model, dataset, vocab, args.batch_size, rows=rows)
    if [row for _, _, row in other] != rows:
        raise DataError(f"{manifest.path}: {args.against} decoded {len(other)} of the {len(rows)} clips "
                        f"{args.ckpt} decoded (its data.max_seconds or vocabulary differs)")
    return [(ref, hyp, row) for (ref, _, row), (_, hyp, _) in zip(results, other)]


def interval(refs: list[str], hyps: list[str]) -> str:
    """'CER 95% a-b': the bootstrap interval of the CER over these rows (omni.audio.ctc.cer_interval)."""
    lo, hi = cer_interval(refs, hyps)
    return f"CER 95% {lo:.3f}-{hi:.3f}"


def tune_asr_lm(args: argparse.Namespace) -> int:
    """CER/WER of beam+LM decoding for every (LM weight, length bonus) pair on the selected rows."""
    model, vocab, cfg, manifest, dataset, rows = load_rows(args)
    metrics, results, stored = greedy_pass(model, dataset, vocab, args.batch_size, rows)
    refs = [r for r, _, _ in results]
    source, _, lm = train_lm(args, cfg.data.train_csv, vocab, refs)
    print(f"{len(refs)} rows ({rows.start}-{rows.stop - 1}) of {manifest.path}; LM order {args.lm_order} from {source}")
    print(f"greedy                           CER {metrics['val_cer']:.4f}  WER {metrics['val_wer']:.4f}")
    best = None
    for w, b in itertools.product(args.lm_weight, args.length_bonus):
        t0 = time.perf_counter()
        r = error_rates(refs, [h for lp, n in stored for h in beam_decode(lp, n, vocab, lm, args.beam, w, b)])
        print(f"lm weight {w:<5} length bonus {b:<5} CER {r['cer']:.4f}  WER {r['wer']:.4f}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if best is None or r["cer"] < best[0]:
            best = (r["cer"], w, b)
    print(f"best: --lm-weight {best[1]} --length-bonus {best[2]} (CER {best[0]:.4f} on these rows)")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    """The arguments ``asr`` and ``asr-tune`` share: checkpoint, rows, and the LM."""
    p.add_argument("--ckpt", default="checkpoints/audio_enc_tiny/best", help="Stage B checkpoint folder "
                   "(train_audio_enc.py)")
    p.add_argument("--csv", required=True, help="wav,text[,engine,voice] CSV, or a registered dataset name")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    p.add_argument("--skip", type=non_negative, default=0, help="start at this row")
    p.add_argument("--n", type=positive, default=None, help="decode at most this many rows (default: all)")
    p.add_argument("--lm-text", default="", help="a one-document-per-line corpus whose sentences train the LM "
                   "(default: the checkpoint's training transcripts); evaluated references are always left out")
    p.add_argument("--lm-order", type=int, default=6, help="the character LM's n-gram order, in characters")
    p.add_argument("--beam", type=int, default=16, help="prefix beam search width (LM decoding)")
    add_device_arg(p)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``asr`` and ``asr-tune`` subcommands in scripts/evaluate.py."""
    a = subparsers.add_parser("asr", help="CER/WER of the audio encoder (Stage B), per source")
    _add_common(a)
    a.add_argument("--examples", type=int, default=5, help="reference/hypothesis pairs to print")
    a.add_argument("--pocketsphinx", action="store_true", help="also transcribe the same clips with pocketsphinx")
    a.add_argument("--against", default="", metavar="CKPT", help="a second Stage B checkpoint: its greedy CER on "
                   "the same clips and the paired 95%% interval of the difference (an A/B on one set)")
    a.add_argument("--lm", action="store_true", help="also decode with prefix beam search + a character n-gram LM")
    a.add_argument("--lm-weight", type=float, default=0.8, help="weight of the LM's log-probability in the beam")
    a.add_argument("--length-bonus", type=float, default=1.0, help="score added per emitted character (offsets "
                   "the LM's preference for short outputs)")
    a.set_defaults(run=eval_asr)
    t = subparsers.add_parser("asr-tune", help="choose the Stage B LM decoder's weight and length bonus on some rows")
    _add_common(t)
    t.add_argument("--lm-weight", type=float, nargs="+", default=[0.3, 0.5, 0.8, 1.0], help="LM weights to try")
    t.add_argument("--length-bonus", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0],
                   help="length bonuses to try, each with every LM weight")
    t.set_defaults(run=tune_asr_lm)
    return a
