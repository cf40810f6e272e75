"""The report card of a pipeline run: ``REPORT.md``, ``report.json`` and ``curves.png`` in its folder.

Per stage: its held-out metrics, each beside a baseline measured in the same run on the same rows
and the target it is held to, with a 95% interval where the rows allow one (a Wilson interval for
accuracies, a bootstrap over rows for error rates); then steps, wall time, throughput, peak memory
and precision from the stage's own ``metrics.jsonl``; and the machine, torch and commit. The same
code serves the demo and the default profile, and ``train_all.py report`` rebuilds the card from
the checkpoints alone. A baseline whose tool is missing (pocketsphinx) is a marked blank.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni.engine.checkpoint import read_metrics
from omni.engine.runtime import pick_device, pick_precision
from omni.files import write_json_atomic, write_text_atomic
from omni.pipeline.profiles import Profile, StageRun
from omni.pipeline.runner import ROOT, load_record, read_raw, run_command, save_dirs

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


def _last(records: list[dict], event: str) -> dict[str, Any]:
    found = [r for r in records if r.get("event") == event]
    return found[-1] if found else {}


def run_facts(folder: Path) -> dict[str, Any]:
    """Steps, throughput, peak memory and precision from a stage folder's metrics.jsonl."""
    records = read_metrics(folder)
    train = [r for r in records if r.get("event") == "train"]
    start = _last(records, "start")
    speed_key = next((k for k in (train[-1] if train else {}) if k.endswith("_per_s")), None)
    mem = [r.get("cuda_peak_gib", r.get("rss_peak_gib")) for r in train]
    mem = [m for m in mem if m is not None]
    return {"steps": train[-1]["step"] if train else 0,
            "throughput": statistics.median(r[speed_key] for r in train) if speed_key else None,
            "throughput_unit": speed_key[:-len("_per_s")] + "/s" if speed_key else "",
            "peak_memory_gib": max(mem) if mem else None,
            "memory_kind": "CUDA peak allocated" if any("cuda_peak_gib" in r for r in train) else "process RSS peak",
            "precision": start.get("precision", "?"), "precision_reason": start.get("precision_reason", ""),
            "device": start.get("device", "?")}


# ---------------------------------------------------------------- per-stage metrics
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


# ---------------------------------------------------------------- the card
def machine() -> dict[str, str]:
    from omni.tools.machine import cpu_model
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"cpu": cpu_model(), "cpu_precision": pick_precision(torch.device("cpu"))[1], "gpu": gpu or "none",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit()}


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return (head or "unknown") + (" with uncommitted changes" if dirty else "")


def _talker_for(profile: Profile, cards: list[dict]) -> tuple[Path, float | None] | None:
    """The profile's trained Talker folder (what ``--talker`` takes) and its D-row speech CER."""
    stage = next((s for s in profile.stages if s.key == "talker"), None)
    if stage is None:
        return None
    folder = ROOT / Path(read_raw(stage)["train"]["save_dir"]).parent
    if not (folder / "talker" / "model.safetensors").is_file() and not any(folder.glob("*/model.safetensors")):
        return None
    card = next((c for c in cards if c["key"] == "talker"), {})
    cer = next((m["value"] for m in card.get("metrics", []) if m["name"].startswith("pocketsphinx CER")), None)
    return folder, cer


def stage_card(stage: StageRun, profile: Profile, record: dict, n: int, device: torch.device,
               earlier: list[dict] | None = None) -> dict[str, Any]:
    raw = read_raw(stage)
    folder = ROOT / save_dirs(raw)[-1]
    entry = record["stages"].get(stage.key, {})
    card: dict[str, Any] = {"key": stage.key, "title": stage.title, "folder": os.path.relpath(folder, ROOT),
                            "config": stage.config, "status": entry.get("status", "not run by the pipeline"),
                            "wall_s": entry.get("wall_s"), "metrics": []}
    if entry.get("status") == "running" and entry.get("started"):   # the segment under way counts too
        card["wall_s"] = (entry.get("wall_s") or 0.0) + max(0.0, time.time() - entry["started"])
    if not (folder / "metrics.jsonl").is_file():
        # a multi-phase stage (the codec, then the Talker) may be partway through an earlier phase
        started = [(d, run_facts(ROOT / d)["steps"]) for d in save_dirs(raw)[:-1]
                   if (ROOT / d / "metrics.jsonl").is_file()]
        card["status"] = (f"{card['status']}: " + ", ".join(f"{d} at step {n:,}" for d, n in started)
                          if started else "not trained")
        return card
    card.update(run_facts(folder))
    val = _last(read_metrics(folder), "val")
    targets = profile.targets.get(stage.key, {})
    try:
        if stage.key == "thinker":
            ms = thinker_metrics(stage, raw, val, device)
        elif stage.key == "audio_enc":
            ms = asr_metrics(stage, raw, n, device)
        elif stage.key == "vision":
            ms = vision_metrics(val, targets.get("r1"))
        elif stage.key == "talker":
            ms = talker_metrics(raw, val, n, targets.get("cer"))
        elif stage.key == "sft":
            ms = sft_metrics(raw, n, device, targets, _talker_for(profile, earlier or []))
        else:
            ms = [Metric(k, v) for k, v in val.items() if k.startswith("val_") and isinstance(v, float)]
    except Exception as e:  # noqa: BLE001 - one stage's evaluation failing must not lose the others' rows
        card["error"] = f"{type(e).__name__}: {e}"
        ms = []
    card["metrics"] = [asdict(m) for m in ms]
    return card


def _fmt(v: float | None, interval: tuple[float, float] | None = None) -> str:
    if v is None:
        return "–"
    s = f"{v:.3f}"
    return s + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    header = (f"Built {report['built']} on {m['cpu']} ({m['cpu_precision']}; GPU: {m['gpu']}), torch {m['torch']}, "
              f"Python {m['python']}, commit {m['commit']}. Held-out rows: the first {report['n']} of each "
              "validation set. Intervals are 95% (Wilson for accuracies, bootstrap over rows for error rates).")
    lines = [f"# μOmni report card: profile `{report['profile']}`", "", header, "",
             "| stage | metric | value (95% interval) | baseline, same rows | target | met |",
             "|---|---|---|---|---|---|"]
    for s in report["stages"]:
        if not s["metrics"]:
            why = s.get("error") or s["status"]
            lines.append(f"| {s['title']} | – | – | – | – | {why} |")
        for x in s["metrics"]:
            base = (f"{x['baseline']}: {_fmt(x['baseline_value'], x['baseline_interval'])}" if x["baseline"] and
                    x["baseline_value"] is not None else (f"{x['baseline']}: not measured" if x["baseline"] else "–"))
            met = {True: "yes", False: "**no**", None: "–"}[x["met"]]
            note = f" — {x['note']}" if x["note"] else ""
            lines.append(f"| {s['title']} | {x['name']}{note} | {_fmt(x['value'], x['interval'])} | {base} | "
                         f"{x['target'] or '–'} | {met} |")
    lines += ["", "| stage | status | steps | wall time | throughput | peak memory | precision |",
              "|---|---|---|---|---|---|---|"]
    for s in report["stages"]:
        wall = f"{s['wall_s'] / 60:.1f} min" if s.get("wall_s") is not None else "–"
        thr = f"{s['throughput']:,.0f} {s['throughput_unit']}" if s.get("throughput") else "–"
        mem = f"{s['peak_memory_gib']:.2f} GiB ({s['memory_kind']})" if s.get("peak_memory_gib") else "–"
        prec = f"{s.get('precision', '–')} ({s.get('precision_reason', '')})" if s.get("precision") else "–"
        lines.append(f"| {s['title']} | {s['status']} | {s.get('steps', 0):,} | {wall} | {thr} | {mem} | {prec} |")
    total = sum(s["wall_s"] or 0 for s in report["stages"])
    lines += ["", (f"Total wall time of the stages: {total / 3600:.2f} h. Curves: `curves.png`; the numbers: "
                   "`report.json`; each stage's log: `metrics.jsonl` in its folder.")]
    return "\n".join(lines) + "\n"


def build_report(profile: Profile, stages: list[StageRun], run_dir: Path, n: int, device: str = "auto") -> dict:
    """Evaluate every stage's checkpoint and write REPORT.md, report.json and curves.png to run_dir."""
    import time
    dev = pick_device(device)
    record = load_record(run_dir)
    cards: list[dict] = []
    for s in stages:
        cards.append(stage_card(s, profile, record, n, dev, cards))
    report = {"profile": profile.name, "built": time.strftime("%Y-%m-%d %H:%M:%S"), "n": n, "machine": machine(),
              "stages": cards}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "report.json", report)
    write_text_atomic(run_dir / "REPORT.md", markdown(report))
    trained = [ROOT / s["folder"] for s in report["stages"] if (ROOT / s["folder"] / "metrics.jsonl").is_file()]
    if trained:
        run_command(["scripts/plot_metrics.py", *[a for d in trained for a in ("--ckpt", str(d))],
                     "--out", str(run_dir / "curves.png")])
    return report


def load_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
