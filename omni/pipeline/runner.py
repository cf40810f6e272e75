"""The whole chain in one resumable command: which stages to train, skip or resume, and running them.

Each stage is its own script run as a child process, exactly as a user would type it, so a stage
run by the pipeline and one run by hand are the same run. The pipeline keeps one record,
``<run_dir>/pipeline.json``: per stage the fingerprint it was trained under, its status and the
wall time it took. The fingerprint hashes the stage's config file and the weights of every
checkpoint that config reads (an upstream stage's output). Then:
- a stage finished under the same fingerprint is skipped;
- a stage stopped part-way (``--hours`` spent, Ctrl-C) under the same fingerprint resumes from its
  ``train_state.pt``;
- anything else trains from the start, and the log says why (new, config changed, which input
  checkpoint changed). A retrained upstream stage changes its weights, so everything that reads
  them retrains after it.

A profile with ``tune`` (the default profile) takes each stage's step budget (max_steps, epochs,
warmup, validation and checkpoint intervals) from the auto-tuner's rules on the data there is
(scripts/update_configs_from_data.py, docs/architecture.md), passed to the stage script as
overrides, so a larger dataset gets a larger budget; the budget is part of the fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni.cli.common import EXIT_DEADLINE
from omni.engine.checkpoint import MODEL_FILE, has_train_state, load_train_state, read_metrics
from omni.files import file_sha256, write_json_atomic
from omni.pipeline.profiles import Profile, StageRun

ROOT = Path(__file__).resolve().parents[2]
RECORD = "pipeline.json"
TUNER = "scripts/update_configs_from_data.py"
# the train-section keys of the auto-tuner's plan that make a stage's step budget (the batch shape
# stays the config's: a stage's memory and speed do not change with the data)
BUDGET_KEYS = ("max_steps", "max_epochs", "warmup_steps", "val_freq", "checkpoint_freq", "patience")
# not fingerprinted: the tuned patience follows from the tuned val_freq and the config (both hashed), and
# it decides when a run stops, not what its steps compute
UNHASHED_BUDGET_KEYS = ("patience",)
DATA_SUFFIXES = (".csv", ".json", ".txt")


class PipelineError(RuntimeError):
    """A stage failed or its inputs are missing; the message names which and how to go on."""


# ---------------------------------------------------------------- what a config reads and writes
def read_raw(stage: StageRun, root: Path = ROOT) -> dict[str, Any]:
    path = root / stage.config
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: cannot read the stage's config ({e})") from None


def _walk(node: Any, path: tuple[str, ...] = ()):
    """(dotted key path, value) of every string in a raw config."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, str):
        yield path, node


def save_dirs(raw: dict[str, Any]) -> list[str]:
    """Every folder the stage trains into (the Talker's config has its codec's too); the last is
    the stage's own."""
    dirs = [v for p, v in _walk(raw) if p[-1] == "save_dir"]
    main = raw["train"]["save_dir"]
    return [d for d in dirs if d != main] + [main]


def input_dirs(raw: dict[str, Any]) -> list[str]:
    """The checkpoint folders the config starts from (model.thinker_ckpt, clip.thinker, ...): every
    path outside the data sections that is not a folder it trains into."""
    own = set(save_dirs(raw))
    return sorted({v for p, v in _walk(raw) if "/" in v and "data" not in p[:-1] and p[-1] != "save_dir"
                   and v not in own})


def data_files(raw: dict[str, Any]) -> list[str]:
    """The data files the config names (under any ``data`` section)."""
    return sorted({v for p, v in _walk(raw) if "data" in p[:-1] and v.endswith(DATA_SUFFIXES)})


def weights_digest(folder: Path) -> str | None:
    """sha256 of the folder's weights (None: not trained yet)."""
    path = folder / MODEL_FILE
    return file_sha256(path) if path.is_file() else None


# ---------------------------------------------------------------- fingerprint and decision
@dataclass
class Fingerprint:
    config: str                      # sha256 of the config file
    inputs: dict[str, str | None]    # input checkpoint folder -> sha256 of its weights
    data: dict[str, str | None]      # data file the config names -> sha256 (a rebuilt manifest differs)
    budget: dict[str, int] = field(default_factory=dict)  # the auto-tuner's overrides (tuned profiles)

    @property
    def hashed_budget(self) -> dict[str, int]:
        return hashed(self.budget)

    @property
    def digest(self) -> str:
        fields = {"config": self.config, "inputs": self.inputs, "data": self.data}
        if self.hashed_budget:  # digests of untuned stages stay what they were
            fields["budget"] = self.hashed_budget
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def fingerprint(stage: StageRun, root: Path = ROOT, budget: dict[str, int] | None = None) -> Fingerprint:
    raw = read_raw(stage, root)
    return Fingerprint(file_sha256(root / stage.config), {d: weights_digest(root / d) for d in input_dirs(raw)},
                       {f: file_sha256(root / f) if (root / f).is_file() else None for f in data_files(raw)},
                       dict(budget or {}))


def hashed(budget: dict[str, int]) -> dict[str, int]:
    """The part of a step budget that decides what a stage's steps compute (UNHASHED_BUDGET_KEYS)."""
    return {k: v for k, v in budget.items() if k.rsplit(".", 1)[-1] not in UNHASHED_BUDGET_KEYS}


def patience_grew(raw: dict[str, Any], record: dict[str, Any], budget: dict[str, int], root: Path = ROOT
                  ) -> tuple[int, int] | None:
    """(old, new) patience when the stage's own run stopped early (``converged``) and would now wait
    longer (a tuned patience that came after it, or a longer one); else None."""
    key = "train.patience"
    own = raw.get("train", {}).get("patience", 0)
    old, new = record.get("budget", {}).get(key, own), budget.get(key, own)
    ends = [r for r in read_metrics(root / save_dirs(raw)[-1]) if r.get("event") == "end"]
    return (old, new) if new > old and ends and ends[-1].get("status") == "converged" else None


# ---------------------------------------------------------------- step budgets from the data
def tuned_budgets(stages: list[StageRun], root: Path = ROOT) -> dict[str, dict[str, int]]:
    """stage key -> its step budget by dotted config key, from one dry run of the auto-tuner over the
    stages' configs (nothing written; token counts are cached beside the data). A stage it could not
    plan (a data file not built yet) has no entry."""
    if not stages:
        return {}
    with tempfile.TemporaryDirectory(prefix="omni_tune_") as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [sys.executable, TUNER, "--dry-run", "--json", str(out)]
        for stage in stages:
            cmd += ["--config", stage.config]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise PipelineError(f"the auto-tuner failed (exit {done.returncode}): {' '.join(cmd[1:])}\n"
                                + (done.stdout + done.stderr)[-3000:])
        planned = json.loads(out.read_text(encoding="utf-8"))
    # a config it could not plan (its data not built yet) is missing from the answer
    return {stage.key: {k: v for k, v in planned[stage.config].items() if k.rsplit(".", 1)[-1] in BUDGET_KEYS}
            for stage in stages if planned.get(stage.config)}


def budget_args(budget: dict[str, int]) -> list[str]:
    """The budget as the stage scripts' ``section.key=value`` overrides (omni/config.py applies them)."""
    return [f"{k}={v}" for k, v in budget.items()]


@dataclass
class Decision:
    action: str   # "skip", "resume" or "train"
    reason: str
    fp: Fingerprint = field(repr=False, default=None)


def decide(stage: StageRun, record: dict[str, Any], root: Path = ROOT,
           budget: dict[str, int] | None = None) -> Decision:
    """What to do with ``stage`` given the pipeline's record of it (empty: never run by the pipeline)
    and the step budget it would train under (tuned profiles)."""
    fp = fingerprint(stage, root, budget)
    raw = read_raw(stage, root)
    missing = [d for d, digest in fp.inputs.items() if digest is None]
    if missing:
        return Decision("train", f"needs {', '.join(missing)}, not trained yet (an earlier stage makes it)", fp)
    dirs = [root / d for d in save_dirs(raw)]
    if record.get("fingerprint") == fp.digest:
        if record.get("status") == "done" and weights_digest(dirs[-1]) is not None:
            grew = patience_grew(raw, record, fp.budget, root)
            if grew and has_train_state(dirs[-1]):
                return Decision("resume", f"it stopped early after {grew[0]} validations without a better "
                                f"metric; its patience is now {grew[1]}", fp)
            return Decision("skip", f"unchanged since {record.get('finished', '?')}", fp)
        if any(has_train_state(d) for d in dirs):
            return Decision("resume", f"continuing the run stopped at {record.get('status', '?')}", fp)
    if not record:
        made = weights_digest(dirs[-1]) is not None
        return Decision("train", "a checkpoint is there, but this pipeline has no record of how it was trained"
                        if made else "not trained yet", fp)
    old = record.get("inputs", {})
    changed = [d for d, digest in fp.inputs.items() if old.get(d) != digest]
    if record.get("config") != fp.config:
        return Decision("train", f"{stage.config} changed", fp)
    if changed:
        return Decision("train", f"input {', '.join(changed)} changed", fp)
    data = [f for f, digest in fp.data.items() if record.get("data", {}).get(f) != digest]
    if data:
        return Decision("train", f"data {', '.join(data)} changed", fp)
    if hashed(record.get("budget", {})) != fp.hashed_budget:
        return Decision("train", f"step budget changed ({hashed(record.get('budget', {}))} -> {fp.hashed_budget})",
                        fp)
    return Decision("train", "its last run did not finish and left no state to resume", fp)


# ---------------------------------------------------------------- the record
def load_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RECORD
    if not path.is_file():
        return {"stages": {}}
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON ({e}); delete it to retrain every stage") from None
    rec.setdefault("stages", {})
    return rec


def save_record(run_dir: Path, rec: dict[str, Any]) -> None:
    write_json_atomic(run_dir / RECORD, rec)


def select(profile: Profile, only: list[str] | None, start: str | None, until: str | None,
           with_optional: list[str]) -> list[StageRun]:
    """The stages to consider, in order; an unknown name is an error listing the known ones."""
    keys = [s.key for s in profile.stages]
    for name in [*(only or []), *([start] if start else []), *([until] if until else []), *with_optional]:
        if name not in keys:
            raise PipelineError(f"no stage '{name}' in profile {profile.name}; its stages: {', '.join(keys)}")
    lo = keys.index(start) if start else 0
    hi = keys.index(until) if until else len(keys) - 1
    chosen = [s for i, s in enumerate(profile.stages) if lo <= i <= hi and (not s.optional or s.key in with_optional)]
    return [s for s in chosen if s.key in only] if only else chosen


def missing_data(profile: Profile, stages: list[StageRun], root: Path = ROOT) -> list[tuple[str, ...]]:
    """The builder commands whose files the selected stages need and do not find, each once."""
    commands: list[tuple[str, ...]] = []
    for stage in stages:
        for f in data_files(read_raw(stage, root)):
            if (root / f).exists():
                continue
            cmd = next((c for prefix, c in profile.builders if f.startswith(prefix)), None)
            if cmd is None:
                raise PipelineError(f"{stage.config} reads {f}, which does not exist and no builder of "
                                    f"profile {profile.name} makes it")
            if cmd not in commands:
                commands.append(cmd)
    return commands


def steps_done(stage: StageRun, root: Path = ROOT) -> int:
    """Optimizer steps already in the stage's own folder (0 if none)."""
    d = root / save_dirs(read_raw(stage, root))[-1]
    return load_train_state(d)["progress"]["step"] if has_train_state(d) else 0


# ---------------------------------------------------------------- running
def run_command(cmd: list[str], root: Path = ROOT) -> int:
    """A project command as a child process on this interpreter, its output shown as it comes.

    Ctrl-C reaches the child too (same process group); the stage scripts answer it by finishing the
    step and writing a checkpoint, so this process ignores it meanwhile rather than killing the
    child before it has saved, and reads the child's exit status (130) instead."""
    print("$ " + " ".join(cmd), flush=True)
    child = subprocess.Popen([sys.executable, *cmd], cwd=root)
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        return child.wait()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old)


def begin_stage(stage: StageRun, decision: Decision, deadline: float | None, run_dir: Path,
                rec: dict[str, Any]) -> list[str]:
    """Record ``stage`` as running and return the command that trains it."""
    cmd = [stage.script, "--config", stage.config, "--resume" if decision.action == "resume" else "--overwrite"]
    cmd += budget_args(decision.fp.budget)
    if deadline is not None:
        cmd += ["--deadline", f"{deadline:.0f}"]
    entry = rec["stages"].setdefault(stage.key, {})
    if decision.action == "train":
        entry["wall_s"] = 0.0
    entry.update(fingerprint=decision.fp.digest, config=decision.fp.config, inputs=decision.fp.inputs,
                 data=decision.fp.data, budget=decision.fp.budget, status="running", started=time.time())
    save_record(run_dir, rec)
    return cmd


def end_stage(stage: StageRun, code: int, seconds: float, run_dir: Path, rec: dict[str, Any]) -> str:
    """Record how the stage's script ended and return it: done, stopped (time budget), interrupted or
    failed."""
    entry = rec["stages"][stage.key]
    entry["wall_s"] = entry.get("wall_s", 0.0) + seconds
    entry["ended"] = time.time()
    if code == 0:
        entry.update(status="done", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    elif code == EXIT_DEADLINE:
        entry["status"] = "stopped"
    elif code == 130:
        entry["status"] = "interrupted"
    else:
        entry["status"] = "failed"
    save_record(run_dir, rec)
    return entry["status"]


def train_stage(stage: StageRun, decision: Decision, deadline: float | None, run_dir: Path,
                rec: dict[str, Any], root: Path = ROOT) -> str:
    """Run one stage's script; record and return its status: done, stopped (time budget), interrupted."""
    cmd = begin_stage(stage, decision, deadline, run_dir, rec)
    t0 = time.time()
    code = run_command(cmd, root)
    status = end_stage(stage, code, time.time() - t0, run_dir, rec)
    if status == "failed":
        raise PipelineError(f"{stage.title} failed (exit {code}): {' '.join(cmd)}; fix the cause above and run "
                            "the same train_all command again (finished stages are kept)")
    return status
