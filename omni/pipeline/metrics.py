"""The report card's rows (omni/pipeline/report.py): each stage's held-out metrics from its checkpoint,
each beside a baseline measured in the same run on the same rows and the target it is held to, with a
95% interval where the rows allow one (a Wilson interval for accuracies, a bootstrap over rows for
error rates). A baseline whose tool is missing (pocketsphinx) is a marked blank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omni.pipeline.profiles import StageRun
from omni.pipeline.runner import ROOT

Z95 = 1.959964


@dataclass
class Metric:
    name: str
    value: float | None
    interval: tuple[float, float] | None = None
    baseline: str = ""                # what the baseline is
    baseline_value: float | None = None
    baseline_interval: tuple[float, float] | None = None
    target: str = ""
    met: bool | None = None           # None: no target, or not measurable here
    note: str = ""


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy of k out of n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def thinker_metrics(stage: StageRun, raw: dict, val: dict, device: torch.device) -> list[Metric]:
    from omni.config import load_config
    from omni.data import PackedTokens
    from omni.stats import ratio_interval
    from omni.thinker.stage import (
        TextStageConfig,
        load_streams,
        load_thinker,
        tokenizer_in,
        unigram_loss,
        window_losses,
    )
    cfg = load_config(ROOT / stage.config, TextStageConfig)
    folder = ROOT / cfg.train.save_dir
    tok = tokenizer_in(folder)
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    unigram = unigram_loss(np.asarray(streams.train), np.asarray(streams.val), tok.vocab_size)
    loss = val.get("val_loss")
    # the interval resamples the windows validation scored (the first val_batches batches), with the
    # weights in the folder: those the last validation record measured
    model, _, _ = load_thinker(folder, device)
    windows = PackedTokens(streams.val, cfg.model.ctx_len, "held-out text")
    per_window = window_losses(model, windows, cfg.train.val_batches * cfg.train.batch_size)
    interval = ratio_interval(per_window, np.ones(len(per_window))) if len(per_window) > 1 else None
    note = f"{int(val['val_tokens']):,} held-out tokens" if val.get("val_tokens") else ""
    return [Metric("held-out loss (nats/token)", loss, interval, "unigram model of the training tokens", unigram,
                   target="below the unigram", met=None if loss is None else loss < unigram,
                   note=f"{note}; interval: bootstrap over its {len(per_window)} windows" if interval else note)]


def asr_metrics(stage: StageRun, raw: dict, n: int, device: torch.device, real_csv: Path | None = None,
                unseen_csv: Path | None = None) -> list[Metric]:
    """The held-out CER (what `scripts/evaluate.py asr --ckpt CKPT --csv VAL --n N` decodes, the same
    way) and, for each that has been built, the CER on real people (``real_csv``, default
    data/audio/real_speech.csv) and on an engine no stage trains on (``unseen_csv``, default
    data/audio/festival_asr_val.csv), ``n`` rows spread evenly over each; every row beside pocketsphinx
    on the same clips."""
    from omni.builders.real_speech import REAL_CSV
    from omni.builders.speech import FESTIVAL_CSV
    folder = ROOT / raw["train"]["save_dir"]
    ckpt = folder / "best" if (folder / "best").is_dir() else folder
    out = [_asr_row(ckpt, raw["data"]["val_csv"], n, device, "held-out CER, greedy", spread=False)]
    for csv, default, what in ((real_csv, REAL_CSV, "real people's CER, greedy"),
                               (unseen_csv, FESTIVAL_CSV, "unseen engine's (Festival) CER, greedy")):
        csv = ROOT / default if csv is None else csv
        if csv.is_file():
            out.append(_asr_row(ckpt, str(csv), n, device, what, spread=True))
    return out


def _asr_row(ckpt: Path, csv: str, n: int, device: torch.device, what: str, spread: bool) -> Metric:
    import argparse

    from omni.audio.ctc import cer_interval, error_rates
    from omni.cli.eval_asr import greedy_pass, load_rows
    model, vocab, _, manifest, ds, rows = load_rows(argparse.Namespace(
        ckpt=str(ckpt), device=str(device), csv=csv, skip=0, n=None if spread else n))
    if spread and n < len(rows):  # grouped by source or voice: take every k-th row, not the first n
        rows = [rows[round(i * (len(rows) - 1) / max(n - 1, 1))] for i in range(n)]
    m, results, _ = greedy_pass(model, ds, vocab, 16, rows)
    refs, hyps = [r for r, _, _ in results], [h for _, h, _ in results]
    out = Metric(f"{what} ({len(refs)} clips)", m["val_cer"], cer_interval(refs, hyps),
                 "pocketsphinx (en-us) on the same clips", target="below pocketsphinx")
    try:
        from omni.cli.eval_asr import pocketsphinx_results
        ps = pocketsphinx_results(manifest, results)
    except ImportError as e:
        out.note = f"pocketsphinx baseline not measured: {e}"
        return out
    prefs, phyps = [x[0] for x in ps], [x[1] for x in ps]
    out.baseline_value = error_rates(prefs, phyps)["cer"]
    out.baseline_interval = cer_interval(prefs, phyps)
    out.met = out.value < out.baseline_value
    return out


def vision_metrics(val: dict, target: float | None) -> list[Metric]:
    """Image->text R@1 overall and, when the held-out set has several sources, per source (generated
    scenes, Tux Paint stamps, emoji), each beside the colour histogram and chance on the same queries.
    ``target`` applies to the generated scenes (overall when there is one source)."""
    sources = sorted(k[:-len("/queries")] for k in val if k.endswith("/queries"))
    out = []
    for pre in [""] + [f"{s}/" for s in sources]:
        r1, chance, n = val.get(f"{pre}i2t_r1"), val.get(f"{pre}chance_r1"), val.get(f"{pre}queries")
        if n is None and chance:  # records written before query counts were kept: one pool of 1/chance
            n = round(1 / chance)
        n = int(n or 0)
        hist = val.get(f"hist_{pre}i2t_r1")
        aim = target if target is not None and pre in (("scenes/",) if sources else ("",)) else None
        met = None if r1 is None else (r1 >= aim if aim is not None else hist is None or r1 > hist)
        what = f"{pre[:-1]}: " if pre else ("all sources: " if sources else "")
        out.append(Metric(f"{what}image->text R@1, {n} held-out images", r1,
                          wilson(round(r1 * n), n) if r1 is not None and n else None,
                          f"colour histogram (chance {chance:.3f})" if chance else "colour histogram", hist,
                          wilson(round(hist * n), n) if hist is not None and n else None,
                          f">= {aim:.2f}" if aim is not None else "above the colour histogram", met))
    return out


def talker_metrics(raw: dict, val: dict, n: int, target: float | None) -> list[Metric]:
    ce, uni = val.get("val_loss"), val.get("val_unigram_ce")
    out = [Metric("held-out code cross-entropy (teacher-forced)", ce, None, "unigram of the codes", uni,
                  target="below the unigram", met=None if ce is None or uni is None else ce < uni)]
    # intelligibility: what `scripts/evaluate.py tts --talker DIR --csv VAL --n N --paths original,griffinlim,
    # talker` measures, the Talker's speech and Griffin-Lim on the recordings' own mels on the same rows
    speech = Metric(f"pocketsphinx CER of the Talker's speech (greedy, {n} held-out sentences)", None, None,
                    "Griffin-Lim on the recordings' mels", target=f"<= {target:.2f}" if target else "")
    out.append(speech)
    try:
        from omni.speech.intelligibility import griffinlim_path, read_rows, report_paths
        from omni.speech.synthesis import Synthesizer
        rows, _ = read_rows(raw["data"]["val_csv"], n)
        synth = Synthesizer.load(str(Path(raw["train"]["save_dir"]).parent), "cpu")
        got = report_paths(rows, {"talker": lambda text, audio: synth.synthesize(text, seed=0),
                                  "griffinlim": griffinlim_path()}, keep_examples=0)
    except ImportError as e:
        speech.note = f"not measured: {e}"
        return out
    speech.name = f"pocketsphinx CER of the Talker's speech (greedy, {len(rows)} held-out sentences)"
    speech.value, speech.interval = got["talker"]["cer"], got["talker"].get("cer_interval")
    speech.baseline_value, speech.baseline_interval = got["griffinlim"]["cer"], got["griffinlim"].get("cer_interval")
    speech.met = speech.value <= target if target else None
    return out


def spoken_replies(replies: list[str], talker: Path, k: int, talker_cer: float | None) -> Metric:
    """The chat's spoken replies scored as ``evaluate.py omni --speech-n K`` scores them, beside the
    Talker on its own held-out sentences (the D row)."""
    import argparse

    from omni.cli.eval_omni import spoken
    m = Metric(f"spoken replies: pocketsphinx CER against the reply text (up to {k} replies)", None, None,
               "the Talker on its held-out sentences (D row)", talker_cer, target="within 0.05 of the D row")
    try:
        got = spoken(replies, argparse.Namespace(talker=str(talker), speech_n=k, vocoder="auto"), "cpu")
    except ImportError as e:
        m.note = f"not measured: {e}"
        return m
    m.name = f"spoken replies: pocketsphinx CER against the reply text ({int(got['n'])} replies)"
    m.value = got["cer"]
    m.interval = (got["cer_lo"], got["cer_hi"]) if "cer_lo" in got else None
    m.met = None if talker_cer is None else abs(m.value - talker_cer) <= 0.05
    return m


def sft_metrics(raw: dict, n: int, device: torch.device, targets: dict[str, float],
                talker: tuple[Path, float | None] | None = None) -> list[Metric]:
    """VQA, captions, transcription through chat, the omni tax; with ``talker`` (its folder and the
    D row's CER) the spoken replies too."""
    from omni.audio.ctc import cer_interval
    from omni.cli.eval_omni import answer_task, omni_tax, stage_b_alone
    from omni.multimodal.data import Sources
    from omni.multimodal.stage import answer_key, load_omni, task_metrics
    folder = ROOT / raw["train"]["save_dir"]
    model, tok, cfg = load_omni(folder / "best" if (folder / "best").is_dir() else folder, device)
    val = Sources(cfg.data.image_val_manifest, cfg.data.asr_val_csv, cfg.data.text_val_file, "val")
    out = []
    exs, hyps, prior = answer_task(model, tok, cfg, val, "vqa", n)
    replies = list(hyps)
    right = sum(answer_key(e.answer) == answer_key(h) for e, h in zip(exs, hyps))
    blind = sum(b == answer_key(e.answer) for e, b in zip(exs, prior))
    t = targets.get("vqa")
    out.append(Metric(f"VQA accuracy ({len(exs)} held-out questions)", right / max(len(exs), 1),
                      wilson(right, len(exs)), "blind prior (most common training answer)",
                      blind / max(len(exs), 1), wilson(blind, len(exs)),
                      f">= {t:.2f}" if t else "above the blind prior",
                      right / max(len(exs), 1) >= t if t else right > blind))
    exs, captions, _ = answer_task(model, tok, cfg, val, "caption", n)
    replies += captions
    cap = task_metrics("caption", [e.answer for e in exs], captions)
    out.append(Metric(f"caption keyword recall ({len(exs)} held-out images)", cap["caption_kw"]))
    exs, hyps, _ = answer_task(model, tok, cfg, val, "asr", n)
    refs = [e.answer for e in exs]
    b_metrics, b_res = stage_b_alone(cfg, device, len(exs))
    chat_cer = task_metrics("asr", refs, hyps)["asr_cer"]  # as evaluate.py omni scores it
    b_refs, b_hyps = [r for r, _, _ in b_res], [h for _, h, _ in b_res]
    b_cer = b_metrics["val_cer"]
    out.append(Metric(f"transcription CER through chat ({len(exs)} held-out clips)", chat_cer,
                      cer_interval(refs, hyps), "Stage B alone on the same clips", b_cer, cer_interval(b_refs, b_hyps),
                      "<= Stage B + 0.03", chat_cer <= b_cer + 0.03))
    before, after = omni_tax(model, tok, cfg, device, 50)
    tax = after / before - 1
    out.append(Metric("text perplexity after SFT (omni tax vs Stage A)", after, None, "Stage A on the same text",
                      before, target="tax <= 10%", met=tax <= 0.10, note=f"omni tax {100 * tax:+.1f}%"))
    if talker is not None:
        out.append(spoken_replies(replies, talker[0], min(n, 10), talker[1]))
    return out
