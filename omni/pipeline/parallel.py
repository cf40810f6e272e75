"""Stages side by side: ``train_all --jobs N`` on a multi-core CPU.

Stages that do not read each other's checkpoints (A the Thinker, B the audio encoder, D the codec
and Talker) can train at the same time. On a CPU that is worth doing: a small model's step does not
keep many cores busy, so two stages on one core each get more done than one stage on both (the
Thinker's step on the 2-core EPYC of docs/results.md: about 32 s on one core beside a Stage B run,
19.2 s alone on two, so about 1.2x the progress). On one GPU it is not: keep ``--jobs 1``.

A stage starts once every selected stage whose folder it reads has finished (the same reading of
its config that the fingerprint uses, omni/pipeline/runner.py); it is decided (skip, resume, train)
only then, when its inputs are final. Each running stage gets an equal share of the threads
(OMP_NUM_THREADS) and writes its output to ``<run_dir>/logs/<stage>.log``. When a stage finishes and
nothing is left to start, a running stage that could use the freed threads is stopped with a
checkpoint (SIGINT, as Ctrl-C) and resumed on its new share.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from omni.engine.checkpoint import METRICS_FILE
from omni.pipeline.profiles import StageRun
from omni.pipeline.runner import ROOT, Decision, begin_stage, end_stage, input_dirs, read_raw, save_dirs

POLL_S = 0.5
TAIL_LINES = 15  # of a failed stage's log, shown on the terminal


def _under(path: str, folder: str) -> bool:
    p, f = Path(path), Path(folder)
    return p == f or f in p.parents


def dependencies(stages: list[StageRun], root: Path = ROOT) -> dict[str, set[str]]:
    """stage key -> the keys of the selected stages whose folders its config reads."""
    raws = {s.key: read_raw(s, root) for s in stages}
    outs = {k: save_dirs(raw) for k, raw in raws.items()}
    return {s.key: {t.key for t in stages if t.key != s.key
                    and any(_under(i, d) for i in input_dirs(raws[s.key]) for d in outs[t.key])}
            for s in stages}


def available_threads() -> int:
    """The threads to share out: OMP_NUM_THREADS when set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Job:
    stage: StageRun
    child: subprocess.Popen
    cmd: list[str]
    log: IO[str]
    threads: int
    t0: float
    regrow: bool = False  # stopped by us to restart on more threads


class Scheduler:
    """Runs ``stages`` with at most ``jobs`` at a time; ``decide(stage)`` is the runner's decision
    for a stage whose inputs are final. ``run()`` returns stage key -> status (done, skip, stopped,
    interrupted, failed, waiting: not started because a stage it reads did not finish or the time
    budget was spent)."""

    def __init__(self, stages: list[StageRun], jobs: int, decide: Callable[[StageRun], Decision],
                 deadline: float | None, run_dir: Path, rec: dict[str, Any], say: Callable[[str], None],
                 root: Path = ROOT) -> None:
        self.stages, self.jobs, self.decide, self.deadline = stages, jobs, decide, deadline
        self.say = say  # a progress line for the person running the pipeline (train_all prints it)
        self.run_dir, self.rec, self.root = run_dir, rec, root
        self.deps = dependencies(stages, root)
        self.threads = available_threads()
        self.status: dict[str, str] = {}
        self.running: dict[str, Job] = {}
        self.started = 0
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def share(self, n_running: int) -> int:
        return max(1, self.threads // max(1, n_running))

    # ---------------------------------------------------------------- starting
    def _ready(self, stage: StageRun) -> bool | None:
        """True: start it; False: wait; None: it cannot start in this run."""
        deps = [self.status.get(k) for k in self.deps[stage.key]]
        if any(d is None for d in deps):
            return False
        return True if all(d in ("done", "skip") for d in deps) else None

    def _pending(self) -> list[StageRun]:
        return [s for s in self.stages if s.key not in self.status and s.key not in self.running]

    def _start_ready(self) -> None:
        launch: list[tuple[StageRun, Decision]] = []
        for stage in self._pending():
            ready = self._ready(stage)
            if ready is None:
                blocker = ", ".join(k for k in sorted(self.deps[stage.key]) if self.status[k] not in ("done", "skip"))
                self.say(f"== {stage.title}: not started ({blocker} did not finish)")
                self.status[stage.key] = "waiting"
                continue
            if not ready or len(self.running) + len(launch) >= self.jobs:
                continue
            if self.deadline is not None and self.started and time.time() >= self.deadline:
                self.status[stage.key] = "waiting"  # every run makes progress: the first start is free
                continue
            d = self.decide(stage)
            self.say(f"== {stage.title}: {d.action} ({d.reason})")
            if d.action == "skip":
                self.status[stage.key] = "skip"
            else:
                launch.append((stage, d))
        threads = self.share(len(self.running) + len(launch))
        for stage, d in launch:
            self._launch(stage, d, threads)

    def _launch(self, stage: StageRun, d: Decision, threads: int) -> None:
        cmd = begin_stage(stage, d, self.deadline, self.run_dir, self.rec)
        path = self.run_dir / "logs" / f"{stage.key}.log"
        log = path.open("a", encoding="utf-8")
        log.write(f"\n$ OMP_NUM_THREADS={threads} {' '.join(cmd)}\n")
        log.flush()
        child = subprocess.Popen([sys.executable, *cmd], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        self.running[stage.key] = Job(stage, child, cmd, log, threads, time.time())
        self.started += 1
        self.say(f"== {stage.title}: running on {threads} thread(s); its output: {path}")

    # ---------------------------------------------------------------- finishing
    def _reap(self) -> None:
        for key, job in list(self.running.items()):
            code = job.child.poll()
            if code is None:
                continue
            del self.running[key]
            job.log.close()
            status = end_stage(job.stage, code, time.time() - job.t0, self.run_dir, self.rec)
            minutes = (time.time() - job.t0) / 60
            if job.regrow and status == "interrupted":
                self.say(f"== {job.stage.title}: stopped with a checkpoint to resume on more threads")
                continue  # pending again: decided (resume) and relaunched by _start_ready
            self.status[key] = status
            self.say(f"== {job.stage.title}: {status} after {minutes:.1f} min (exit {code})")
            if status == "failed":
                lines = Path(job.log.name).read_text(encoding="utf-8", errors="replace").splitlines()
                self.say("\n".join(f"   | {line}" for line in lines[-TAIL_LINES:]))

    def _regrow(self) -> None:
        """Nothing left to start: give a running stage the threads a finished one freed. Not after a
        Ctrl-C: the running stages got that signal too, and a second one would abort them."""
        if not self.running or "interrupted" in self.status.values() or any(self._ready(s) for s in self._pending()):
            return
        share = self.share(len(self.running))
        for job in self.running.values():
            if job.threads < share and not job.regrow and self._training(job):
                job.regrow = True
                job.child.send_signal(signal.SIGINT)  # the stage checkpoints and exits 130

    def _training(self, job: Job) -> bool:
        """The child has reached its training loop (a metrics.jsonl written since it started), where
        SIGINT means "checkpoint and stop". Before that it ignores the signal (inherited from this
        process), and a second one would abort the run, so it is sent once, and only then."""
        folders = [self.root / d for d in save_dirs(read_raw(job.stage, self.root))]
        return any((f / METRICS_FILE).is_file() and (f / METRICS_FILE).stat().st_mtime > job.t0 for f in folders)

    def run(self) -> dict[str, str]:
        main_thread = threading.current_thread() is threading.main_thread()
        # Ctrl-C reaches the children (same process group): each checkpoints and exits 130, and this
        # process waits for them rather than dying first
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            while True:
                self._reap()
                if "interrupted" not in self.status.values():  # Ctrl-C: start nothing new
                    self._start_ready()
                if not self.running:
                    break
                if self.deadline is None or time.time() < self.deadline:
                    self._regrow()
                time.sleep(POLL_S)
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, old)
        for stage in self._pending():
            self.status[stage.key] = "waiting"
        return self.status
