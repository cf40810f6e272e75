"""Command-line plumbing shared by the entry points (train_*.py, scripts/): arguments, logging,
the run itself, and what the user sees on the console. omni/cli/ is the one part of the package
that prints; the library only logs."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

from omni.cli.parser import Parser
from omni.config import ConfigError, TrainConfig, load_config, to_json
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError, has_train_state
from omni.engine.lock import hold_folder
from omni.engine.runtime import Runtime, setup_runtime, teardown
from omni.engine.stage import Stage
from omni.engine.training import TrainingError, fit


def stage_parser(description: str, default_config: str) -> Parser:
    p = Parser(description=description)
    p.add_argument("--config", default=default_config, help="JSON config")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, validated like the file, e.g. train.lr=3e-4 train.max_steps=100")
    p.add_argument("--resume", action="store_true", help="continue the run in train.save_dir exactly")
    p.add_argument("--overwrite", action="store_true", help="start over even if train.save_dir holds a run")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and stop after STEP (schedule still targets max_steps); resume later")
    p.add_argument("--deadline", type=float, default=None, metavar="UNIX_TIME",
                   help="checkpoint and stop after the first step that ends past this time (exit 75; "
                        "resume later): how scripts/train_all.py --hours spends a time budget")
    return p


EXIT_DEADLINE = 75  # EX_TEMPFAIL: stopped at --deadline with a checkpoint; --resume continues


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """--device, read by omni.engine.runtime.pick_device."""
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps")


def vocoder_choice(text: str) -> str:
    """argparse type of --vocoder: auto, griffinlim, or an existing HiFi-GAN checkpoint folder."""
    if text in ("auto", "griffinlim"):
        return text
    if text == "hifigan":  # the old choice; the folder it read came from the old --vocoder-dir
        raise argparse.ArgumentTypeError("hifigan is now the HiFi-GAN checkpoint folder itself, "
                                         "e.g. --vocoder checkpoints/vocoder_tiny")
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not auto, griffinlim or a HiFi-GAN checkpoint folder")
    return text


def add_vocoder_args(p: argparse.ArgumentParser) -> None:
    """--vocoder, shared by everything that speaks; vocoder_kwargs turns it into Synthesizer.load's."""
    from omni.speech.synthesis import VOCODER_DIR
    p.add_argument("--vocoder", default="auto", type=vocoder_choice, metavar="auto|griffinlim|DIR",
                   help=f"auto: the HiFi-GAN in {VOCODER_DIR} (train_vocoder.py) once it beats Griffin-Lim "
                        "in validation, else Griffin-Lim; griffinlim; or a HiFi-GAN checkpoint folder, "
                        "used as it is")


def vocoder_kwargs(choice: str) -> dict:
    """--vocoder -> Synthesizer.load's ``vocoder`` and ``vocoder_dir``."""
    from omni.speech.synthesis import VOCODER_DIR, resolve_vocoder
    if choice == "auto":
        return {"vocoder": resolve_vocoder("auto", VOCODER_DIR), "vocoder_dir": VOCODER_DIR}
    if choice == "griffinlim":
        return {"vocoder": "griffinlim"}
    return {"vocoder": "hifigan", "vocoder_dir": Path(choice)}


def add_talker_args(p: argparse.ArgumentParser) -> None:
    """How the Talker speaks: --temperature, --top-k, --chunk-chars, --rate (Synthesizer's arguments),
    shared by scripts/tts.py and evaluate.py tts."""
    from omni.speech.synthesis import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy codes")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0: sample from all codes")
    p.add_argument("--chunk-chars", type=int, default=None,
                   help="speak the text in pieces of at most this many characters, cut at sentence, "
                        "clause and word boundaries (capped at the Talker's talker.max_text_chars; default: "
                        "60 for an attention Talker, whole sentences up to talker.max_text_chars for a "
                        "duration Talker)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="speaking rate, 2.0 twice as fast (a Talker with talker.alignment=durations)")


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def setup_logging(rank: int = 0) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _result_line(result: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())


def run_stage(home: ModuleType, doc: str, argv: list[str] | None = None) -> int:
    """The whole life of a stage script: arguments, strict config, runtime, build, fit, report.

    ``home`` is the stage's module (``omni.thinker.stage``, ...): ``CONFIG`` (its config dataclass),
    ``DEFAULT_CONFIG`` and ``build_stage(cfg, runtime) -> Stage``; optionally ``add_args(parser)``
    and ``before(cfg, runtime, args) -> list[Phase]``, the earlier phases to train first (the
    Talker's codec). Exit status: 0 done (or converged, or --stop-at), 2 bad config / data /
    checkpoint, 75 stopped at --deadline, 130 interrupted (resume with --resume either way).
    """
    p = stage_parser(doc.splitlines()[0], home.DEFAULT_CONFIG)
    if hasattr(home, "add_args"):
        home.add_args(p)
    args = p.parse_args(argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        cfg = load_config(args.config, home.CONFIG, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    rt = setup_runtime(cfg.train.device, cfg.train.precision)
    try:
        # the folder is this run's from the first file a stage writes there (a tokenizer, a code
        # cache), not only from the first checkpoint; fit holds it again, nested
        with hold_folder(rt, Path(cfg.train.save_dir)):
            phases = home.before(cfg, rt, args) if hasattr(home, "before") else []
            for phase in phases:
                result = _run_phase(phase.name, phase.build(rt), phase.train, args, several=True, rt=rt)
                if result["status"] in ("interrupted", "stopped", "deadline"):  # continue with --resume
                    return _exit_status(result)
            stage = home.build_stage(cfg, rt)
            if rt.is_main:
                print("resolved config:\n" + to_json(cfg), flush=True)
            result = _run_phase(stage.name, stage, cfg.train, args, several=bool(phases), rt=rt)
    except (DataError, TrainingError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown(rt)
    return _exit_status(result)


def _exit_status(result: dict) -> int:
    return {"interrupted": 130, "deadline": EXIT_DEADLINE}.get(result["status"], 0)


def _run_phase(name: str, stage: Stage, train: TrainConfig, args: argparse.Namespace, several: bool,
               rt: Runtime) -> dict:
    """fit one phase. With several phases, --resume applies to the phase that has a state to resume."""
    resume = args.resume and (not several or has_train_state(Path(train.save_dir)))
    if rt.is_main and several:
        print(f"== {name}: {train.save_dir}", flush=True)
    result = fit(stage, train, resume=resume, overwrite=args.overwrite, stop_at=args.stop_at, deadline=args.deadline)
    if rt.is_main:
        print(f"{name} result: " + _result_line(result), flush=True)
        print(f"checkpoint: {train.save_dir}", flush=True)
    return result


def data_script(argv: list[str] | None, parse_args: Callable[[list[str] | None], argparse.Namespace],
                describe_plan: Callable[[argparse.Namespace], None],
                build: Callable[[argparse.Namespace, float], int], errors: tuple[type[BaseException], ...]) -> int:
    """The shared life of a dataset builder: arguments, logging, ``--dry-run`` (describe, touch
    nothing), then ``build(args, start_time)``; an expected failure is one clear line, exit 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        describe_plan(args)
        return 0
    try:
        return build(args, time.perf_counter())
    except errors as e:
        print(f"error: --source {args.source}: {e}", file=sys.stderr)
        return 1


def parse_sources(p: argparse.ArgumentParser, text: str, known: tuple[str, ...]) -> list[str]:
    """``--sources a,b`` -> ["a", "b"]; an unknown name is a usage error listing the known ones."""
    sources = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(sources) - set(known))
    if unknown:
        p.error(f"unknown --sources {unknown}; choose from {','.join(known)}")
    return sources
