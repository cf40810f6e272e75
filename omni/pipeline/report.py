"""The report card of a pipeline run: ``REPORT.md``, ``report.json`` and ``curves.png`` in its folder.

Per stage: its held-out metrics, each beside a baseline and a target (the rows:
omni/pipeline/metrics.py); then steps, wall time, throughput, peak memory
and precision from the stage's own ``metrics.jsonl``; and the machine, torch and commit. The same
code serves the demo and the default profile, and ``train_all.py report`` rebuilds the card from
the checkpoints alone. A baseline whose tool is missing (pocketsphinx) is a marked blank.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from omni.engine.checkpoint import read_metrics
from omni.engine.runtime import pick_device, pick_precision
from omni.files import write_json_atomic, write_text_atomic
from omni.pipeline.metrics import Metric, asr_metrics, sft_metrics, talker_metrics, thinker_metrics, vision_metrics
from omni.pipeline.profiles import Profile, StageRun
from omni.pipeline.runner import ROOT, load_record, read_raw, run_command, save_dirs


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
