"""Train the whole μOmni chain in one command, resumably, and write its report card.

    python scripts/train_all.py --profile demo              # the demo: every stage at demo size
    python scripts/train_all.py --profile default --plan    # what would run, and how long it would take here
    python scripts/train_all.py --profile default --hours 2 # a 2-hour slice; run it again to go on
    python scripts/train_all.py --profile default --only sft
    python scripts/train_all.py report --profile default    # rebuild REPORT.md from the checkpoints

Builds any missing dataset, then trains A the Thinker, B the audio encoder, C the vision encoder,
D the codec and Talker, E the omni SFT (and, with --with vocoder ocr, the optional stages), each by
its own script on its profile config; the default profile's step budgets come from the auto-tuner's
rules on the data there is (scripts/update_configs_from_data.py). Running it again skips every stage whose config and input
checkpoints are unchanged, resumes a stage that was stopped, and retrains what an upstream change
invalidates, saying why (omni/pipeline/runner.py). When every selected stage is done, the report
card goes to the profile's folder: REPORT.md, report.json, curves.png (omni/pipeline/report.py).

Exit status: 0 done, 2 a stage or its data failed, 75 the --hours budget ran out (run the same
command again to continue), 130 interrupted.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

from omni.cli.common import EXIT_DEADLINE, Parser, setup_logging
from omni.config import apply_overrides
from omni.pipeline.profiles import PROFILES, Profile, StageRun
from omni.pipeline.runner import (
    ROOT,
    TUNER,
    PipelineError,
    budget_args,
    decide,
    load_record,
    missing_data,
    read_raw,
    run_command,
    save_dirs,
    select,
    steps_done,
    train_stage,
    tuned_budgets,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("action", nargs="?", choices=("run", "report"), default="run",
                   help="run: build data, train, then write the report card; report: only the report card, "
                        "from the checkpoints there are")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="which configs to train")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="train only these stages (thinker audio_enc ...)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--with", dest="optional", nargs="+", default=[], metavar="STAGE",
                   help="also train these optional stages (default profile: vocoder, ocr)")
    p.add_argument("--hours", type=float, default=None,
                   help="stop cleanly, with a checkpoint, once this much time is spent; run again to continue")
    p.add_argument("--plan", action="store_true",
                   help="print what each stage would do, its steps and its time estimated from a few steps "
                        "measured on this machine; train nothing")
    p.add_argument("--jobs", type=int, default=1,
                   help="train up to this many stages at once where none reads another's checkpoint, the threads "
                        "shared between them (CPU: 2 gets more done on 2+ cores; GPU: keep 1)")
    p.add_argument("--n", type=int, default=100, help="held-out rows per metric in the report card")
    p.add_argument("--device", default="auto", help="where the report card evaluates: auto, cpu, cuda")
    return p.parse_args(argv)


def max_steps(raw: dict) -> list[tuple[str, int]]:
    """(phase, max_steps) of a stage config: the Talker's has its codec phase first."""
    phases = [("codec", raw["codec"]["train"]["max_steps"])] if "codec" in raw else []
    return [*phases, (raw["train"]["save_dir"].rsplit("/", 1)[-1], raw["train"]["max_steps"])]


def step_seconds(stage: StageRun, raw: dict) -> dict[str, float]:
    """Seconds per optimizer step of each phase, from 2 steps of the real model on the worst-case
    batch the config admits (omni/tools/bench.py): an upper bound, validation not included."""
    from omni.config import config_from_dict
    from omni.tools.bench import KINDS, Shape, build, step_stats
    out = {}
    parts = [("codec", raw["codec"], "codec")] if "codec" in raw else []
    parts.append((raw["train"]["save_dir"].rsplit("/", 1)[-1], raw, stage.bench))
    for phase, section, kind in parts:
        cfg = config_from_dict(section, KINDS[kind].config_cls())
        out[phase] = step_stats(build(kind, Shape(), cfg), "auto", None, False, 1, 2, Shape())["step_s"]
    return out


def logged_step_seconds(folder) -> float | None:
    """Median seconds per step between consecutive train records of the folder's metrics.jsonl (the
    stage's own data, validation included), or None where it has not logged enough yet."""
    from omni.engine.checkpoint import read_metrics
    train = [r for r in read_metrics(folder) if r.get("event") == "train" and "time" in r]
    gaps = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in itertools.pairwise(train)
            if b["step"] > a["step"] and b["time"] > a["time"]]
    return sorted(gaps)[len(gaps) // 2] if len(gaps) >= 2 else None


def budgets_of(profile: Profile, stages: list[StageRun], planning: bool = False) -> dict[str, dict[str, int]]:
    """Each stage's step budget from the auto-tuner (tuned profiles; {} for the others), printed. A
    stage it cannot plan is an error, except in --plan before its data is built (then the plan
    counts the config's own budget and says so)."""
    if not profile.tune:
        return {}
    print(f"step budgets: the auto-tuner's rules on the data here ({TUNER} --dry-run)", flush=True)
    budgets = tuned_budgets(stages)
    for stage in stages:
        if stage.key in budgets:
            print(f"  {stage.title:<18} " + " ".join(f"{k}={v}" for k, v in budgets[stage.key].items()), flush=True)
        elif planning:
            print(f"  {stage.title:<18} not planned (its data is missing or empty): the plan counts its config's own budget",
                  flush=True)
        else:
            raise PipelineError(f"the auto-tuner could not plan {stage.config}: run python {TUNER} --dry-run "
                                f"--config {stage.config} to see why")
    return budgets


def plan(profile: Profile, stages: list[StageRun], record: dict, jobs: int = 1) -> None:
    budgets = budgets_of(profile, stages, planning=True)
    total = 0.0
    print(f"plan for profile {profile.name} ({len(stages)} stages). A stage that has logged steps here is timed "
          "from its own log; otherwise from 2 steps measured now on the worst-case batch its config admits (an "
          "upper bound, validation not included)")
    for stage in stages:
        budget = budgets.get(stage.key, {})
        d = decide(stage, record["stages"].get(stage.key, {}), budget=budget)
        raw = apply_overrides(read_raw(stage), budget_args(budget))  # read_raw gives a fresh dict
        if d.action == "skip":
            print(f"  {stage.title:<18} skip: {d.reason}")
            continue
        done = steps_done(stage) if d.action == "resume" else 0
        logged = {phase: logged_step_seconds(ROOT / folder) for (phase, _), folder in zip(max_steps(raw), save_dirs(raw))}
        secs = logged if all(v is not None for v in logged.values()) else step_seconds(stage, raw)
        how = "its log" if secs is logged else "measured now"
        parts = []
        for phase, steps in max_steps(raw):
            left = max(0, steps - done) if phase == max_steps(raw)[-1][0] else steps
            t = secs[phase] * left
            total += t
            parts.append(f"{phase} {left:,} steps x {secs[phase]:.2f} s = {t / 60:.1f} min")
        print(f"  {stage.title:<18} {d.action}: {d.reason}; " + "; ".join(parts) + f" ({how})")
    print(f"  total: {total / 3600:.2f} h, one stage at a time" + (
        f" (with --jobs {jobs} independent stages run side by side on a share of the threads each, so the wall "
        "time is shorter than this sum, though each of them is slower)" if jobs > 1 else ""))


def run(args: argparse.Namespace, profile: Profile, stages: list[StageRun]) -> int:
    run_dir = ROOT / profile.run_dir
    if args.jobs < 1:
        raise PipelineError(f"--jobs {args.jobs}: give 1 or more stages to train at once")
    deadline = time.time() + args.hours * 3600 if args.hours is not None else None
    for cmd in missing_data(profile, stages):
        print(f"== data: {' '.join(cmd)}", flush=True)
        if run_command(list(cmd)) != 0:
            raise PipelineError(f"building data failed: {' '.join(cmd)}")
    budgets = budgets_of(profile, stages)
    record = load_record(run_dir)
    record["profile"] = profile.name
    t0 = time.time()
    code = (run_sequential if args.jobs <= 1 else run_parallel)(args, stages, budgets, deadline, run_dir, record)
    if code:
        return code
    print(f"== every stage is trained ({(time.time() - t0) / 60:.1f} min this run); the report card:", flush=True)
    return report(args, profile, stages)


def run_sequential(args: argparse.Namespace, stages: list[StageRun], budgets: dict, deadline: float | None,
                   run_dir: Path, record: dict) -> int:
    """The stages one after the other, their output on the terminal; 0 when all are trained."""
    trained = 0
    for stage in stages:
        d = decide(stage, record["stages"].get(stage.key, {}), budget=budgets.get(stage.key))
        print(f"== {stage.title}: {d.action} ({d.reason})", flush=True)
        if d.action == "skip":
            continue
        # every run makes progress: the first stage it trains gets at least one step
        if deadline is not None and trained and time.time() >= deadline:
            print(f"time budget of {args.hours:g} h spent before {stage.title}; run the same command to continue")
            return EXIT_DEADLINE
        status = train_stage(stage, d, deadline, run_dir, record)
        trained += 1
        if status == "stopped":
            print(f"time budget of {args.hours:g} h spent in {stage.title} (checkpoint written); "
                  "run the same command to continue")
            return EXIT_DEADLINE
        if status == "interrupted":
            return 130
    return 0


def run_parallel(args: argparse.Namespace, stages: list[StageRun], budgets: dict, deadline: float | None,
                 run_dir: Path, record: dict) -> int:
    """Up to --jobs stages at once (omni/pipeline/parallel.py); 0 when all are trained."""
    from omni.pipeline.parallel import Scheduler
    def decide_now(stage: StageRun):
        return decide(stage, record["stages"].get(stage.key, {}), budget=budgets.get(stage.key))

    status = Scheduler(stages, args.jobs, decide_now, deadline, run_dir, record,
                       lambda line: print(line, flush=True)).run()
    failed = [s for s in stages if status.get(s.key) == "failed"]
    if failed:
        raise PipelineError(", ".join(s.title for s in failed) + " failed (the end of its log is above; all of it in "
                            f"{run_dir / 'logs'}); fix the cause and run the same train_all command again "
                            "(finished stages are kept)")
    if "interrupted" in status.values():
        return 130
    if "stopped" in status.values() or "waiting" in status.values():
        print(f"time budget of {args.hours:g} h spent (checkpoints written); run the same command to continue")
        return EXIT_DEADLINE
    return 0


def report(args: argparse.Namespace, profile: Profile, stages: list[StageRun]) -> int:
    from omni.pipeline.report import build_report, markdown
    rep = build_report(profile, stages, ROOT / profile.run_dir, args.n, args.device)
    print(markdown(rep))
    print(f"written: {profile.run_dir}/REPORT.md, report.json, curves.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    os.chdir(ROOT)  # configs name their data and checkpoints relative to the repository
    profile = PROFILES[args.profile]
    try:
        stages = select(profile, args.only, args.start, args.until, args.optional)
        if args.plan:
            plan(profile, stages, load_record(ROOT / profile.run_dir), args.jobs)
            return 0
        return report(args, profile, stages) if args.action == "report" else run(args, profile, stages)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command to continue", file=sys.stderr)
        return 130
