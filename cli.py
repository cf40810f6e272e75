"""Command-line plumbing shared by the entry points (train_*.py, scripts/): arguments, logging,
the run itself, and what the user sees on the console. It lives outside omni/ because it prints;
the library only logs."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable

from omni.checkpoint import CheckpointError
from omni.config import ConfigError, load_config, to_json
from omni.data import DataError
from omni.runtime import Runtime, setup_runtime, teardown
from omni.training import Stage, TrainingError, fit


def stage_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, help=f"JSON config (default {default_config})")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, validated like the file, e.g. train.lr=3e-4 train.max_steps=100")
    p.add_argument("--resume", action="store_true", help="continue the run in train.save_dir exactly")
    p.add_argument("--overwrite", action="store_true", help="start over even if train.save_dir holds a run")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="checkpoint and stop after STEP (schedule still targets max_steps); resume later")
    return p


def add_vocoder_args(p: argparse.ArgumentParser) -> None:
    """--vocoder auto|griffinlim|hifigan and --vocoder-dir, shared by everything that speaks."""
    from omni.tts import VOCODER_DIR
    p.add_argument("--vocoder", default="auto", choices=["auto", "griffinlim", "hifigan"],
                   help="auto: HiFi-GAN when --vocoder-dir holds a trained one (train_vocoder.py), else Griffin-Lim")
    p.add_argument("--vocoder-dir", default=str(VOCODER_DIR), help="HiFi-GAN checkpoint folder (default %(default)s)")


def add_talker_args(p: argparse.ArgumentParser) -> None:
    """How the Talker speaks: --temperature, --top-k, --decoding, --guidance, --chunk-chars
    (Synthesizer's arguments), shared by scripts/tts.py and evaluate.py tts."""
    from omni.tts import DECODINGS, DEFAULT_CHUNK_CHARS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0: greedy codes")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="0: sample from all codes")
    p.add_argument("--decoding", choices=DECODINGS, default="codes",
                   help="decode the Talker's codes, or the expected code vectors under its distributions")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance scale against the text-free branch (a Talker trained "
                        "with loss.text_dropout); 0 = none")
    p.add_argument("--chunk-chars", type=int, default=DEFAULT_CHUNK_CHARS,
                   help="speak the text in pieces of at most this many characters, cut at sentence, "
                        "clause and word boundaries (capped at the Talker's talker.max_text_chars)")


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


def run_stage(doc: str, default_config: str, cfg_cls: type, build: Callable[[Any, Runtime, argparse.Namespace], tuple[Stage, Any]],
              argv: list[str] | None = None) -> int:
    """The whole life of a stage script: arguments, strict config, runtime, build, fit, report.

    Exit status: 0 done, 2 bad config / data / checkpoint, 130 interrupted (resume with --resume).
    """
    args = stage_parser(doc.splitlines()[0], default_config).parse_args(argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        cfg = load_config(args.config, cfg_cls, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    rt = setup_runtime(cfg.train.device, cfg.train.use_amp)
    try:
        stage, cfg = build(cfg, rt, args)
        if rt.is_main:
            print("resolved config:\n" + to_json(cfg), flush=True)
        result = fit(stage, cfg.train, resume=args.resume, overwrite=args.overwrite, stop_at=args.stop_at)
    except (DataError, TrainingError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown(rt)
    if rt.is_main:
        print("result: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in result.items()), flush=True)
        print(f"checkpoint: {cfg.train.save_dir}", flush=True)
    return 130 if result["status"] == "interrupted" else 0


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
