"""Check that this machine can run μOmni's stages, and say how to fix what is missing.

    python scripts/check_setup.py                 # everything
    python scripts/check_setup.py --stage A       # only what Stage A (the Thinker) needs

Prints one line per check (OK / WARN / FAIL / INFO) and a ``fix:`` line under each problem:
Python and package versions, torch device and bf16 support, GPU memory, free disk, the optional
tools (espeak-ng, flite, pocketsphinx, tesseract), and for each stage its config (loaded through the
strict loader), the data files it trains and validates on and the checkpoints it reads.
Exit status 1 when something a requested stage needs is missing (WARN and INFO never fail).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.cli.common import Parser
from omni.config import ConfigError, config_from_dict
from omni.engine.checkpoint import read_metrics
from omni.engine.lock import live_holder
from omni.engine.runtime import pick_precision
from omni.tools.survey import FALLBACKS, builder_for, checkpoint_refs, data_files, get_path, omni_modules, train_slots

STAGES = {  # stage -> (what, config, the script that trains it)
    "A": ("Thinker language model", "configs/thinker_tiny.json", "train_text.py"),
    "B": ("audio encoder (ASR)", "configs/audio_enc_tiny.json", "train_audio_enc.py"),
    "C": ("vision encoder", "configs/vision_tiny.json", "train_vision.py"),
    "D": ("codec + Talker", "configs/talker_tiny.json", "train_talker.py"),
    "E": ("multimodal SFT", "configs/omni_sft_tiny.json", "sft_omni.py"),
    "vocoder": ("HiFi-GAN vocoder (optional)", "configs/vocoder_tiny.json", "train_vocoder.py"),
    "ocr": ("OCR (optional)", "configs/ocr_tiny.json", "train_ocr.py"),
}
# the strict loader each stage's script uses (found in omni/ by name; any *StageConfig if absent)
STAGE_CONFIG_CLASS = {"A": "TextStageConfig", "B": "AsrStageConfig", "C": "VisionStageConfig",
                      "D": "TalkerStageConfig", "E": "SftStageConfig", "vocoder": "VocoderStageConfig",
                      "ocr": "OcrStageConfig"}
# distribution, import name, version bound (None: any), required
PACKAGES = (("torch", "torch", None, True), ("numpy", "numpy", None, True), ("tokenizers", "tokenizers", None, True),
            ("sentencepiece", "sentencepiece", None, True), ("librosa", "librosa", (0, 10, 1, 0), True),
            ("soundfile", "soundfile", None, True), ("Pillow", "PIL", None, True),
            ("safetensors", "safetensors", None, True), ("tqdm", "tqdm", None, True),
            ("pocketsphinx", "pocketsphinx", None, False))
TOOLS = (("espeak-ng", "apt-get install espeak-ng", "speech data (scripts/download_production_audio.py, tests); the default Talker's phoneme input"),
         ("flite", "apt-get install flite", "speech data (production TTS voice)"),
         ("tesseract", "apt-get install tesseract-ocr tesseract-ocr-eng", "OCR baseline (optional stage)"))
MIN_FREE_GB = 5.0


@dataclass
class Row:
    status: str       # OK | WARN | FAIL | INFO
    what: str
    detail: str = ""
    fix: str = ""
    stage: str = ""   # "" = environment (needed by every stage)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in (v.split("+")[0].split(".") + ["0", "0"])[:3] if p.isdigit())


def check_python() -> list[Row]:
    v = sys.version_info
    ok = v >= (3, 10)
    return [Row("OK" if ok else "FAIL", "python", f"{v.major}.{v.minor}.{v.micro}",
                "" if ok else "install Python 3.11 (the version μOmni is tested on)")]


def check_packages() -> list[Row]:
    rows = []
    for dist, module, bounds, required in PACKAGES:
        fix = "pip install -r requirements.txt" if required else f"pip install {dist}  (optional)"
        if importlib.util.find_spec(module) is None:
            rows.append(Row("FAIL" if required else "WARN", dist, "not installed", fix))
            continue
        version = importlib.metadata.version(dist)
        if bounds and not (bounds[:2] <= _version_tuple(version)[:2] < bounds[2:]):
            rows.append(Row("FAIL", dist, f"{version} (need >={bounds[0]}.{bounds[1]},<{bounds[2]}.0)",
                            f"pip install '{dist}>={bounds[0]}.{bounds[1]},<{bounds[2]}.0'"))
            continue
        rows.append(Row("OK", dist, version))
    return rows


def check_device(root: Path) -> list[Row]:
    rows = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        bf16 = torch.cuda.is_bf16_supported()
        rows.append(Row("OK", "device", f"cuda: {props.name}, {torch.cuda.device_count()} GPU(s)"))
        rows.append(Row("OK", "precision", pick_precision(torch.device("cuda", 0))[1] if bf16 else
                        "no bf16: precision auto runs fp16 + GradScaler"))
        big = props.total_memory >= 11 * 2**30
        rows.append(Row("OK" if big else "WARN", "GPU memory", f"{props.total_memory / 2**30:.1f} GiB",
                        "" if big else "less than the 12 GB the configs assume: "
                        "python scripts/update_configs_from_data.py --vram-gb N"))
    else:
        mps = torch.backends.mps.is_available()
        rows.append(Row("INFO", "device", f"{'mps' if mps else 'cpu'} (no CUDA GPU: training runs, slowly)",
                        "" if mps else "for a GPU, install the CUDA build of torch==2.13.0"))
        dtype, why = pick_precision(torch.device("cpu"))
        rows.append(Row("OK" if dtype else "INFO", "precision", f"{'bf16' if dtype else 'fp32'} ({why})"))
    free = shutil.disk_usage(root).free / 2**30
    rows.append(Row("OK" if free >= MIN_FREE_GB else "WARN", "free disk", f"{free:.1f} GiB at {root.resolve()}",
                    "" if free >= MIN_FREE_GB else f"free at least {MIN_FREE_GB:g} GiB for data and checkpoints"))
    return rows


def check_tools() -> list[Row]:
    rows = [Row("OK" if shutil.which(name) else "WARN", name, shutil.which(name) or f"not found; for {use}",
                "" if shutil.which(name) else f"sudo {cmd}") for name, cmd, use in TOOLS]
    has_ps = importlib.util.find_spec("pocketsphinx") is not None
    rows.append(Row("OK" if has_ps else "WARN", "pocketsphinx (recogniser)",
                    "installed" if has_ps else "not installed; for speech intelligibility checks",
                    "" if has_ps else "pip install pocketsphinx"))
    return rows


def stage_config_classes() -> list[type]:
    """Every ``*StageConfig`` dataclass in the omni modules that define one."""
    out = []
    for module in omni_modules("StageConfig"):
        out += [c for n, c in vars(module).items() if n.endswith("StageConfig") and dataclasses.is_dataclass(c)
                and c.__module__ == module.__name__]
    return out


def load_strict(raw: dict, expected: str | None = None) -> tuple[str | None, str]:
    """(class that accepts the config, '') or (None, the error of the closest class). With
    ``expected`` present in omni/, only that class is tried, so its error is the one reported."""
    best, best_overlap = "no *StageConfig dataclass in omni/", -1
    classes = stage_config_classes()
    classes = [c for c in classes if c.__name__ == expected] or classes
    for cls in classes:
        try:
            config_from_dict(raw, cls)
            return cls.__name__, ""
        except ConfigError as e:
            names = {f.name for f in dataclasses.fields(cls)}
            overlap = len(names & raw.keys()) - len(names ^ raw.keys())
            if overlap > best_overlap:
                best, best_overlap = f"{cls.__name__}: {e}", overlap
    return None, best


FINISHED = ("done", "epochs", "converged")   # the statuses of a run that ended by itself


def run_state(folder: Path) -> tuple[str, str | None]:
    """(what a stage folder holds, the arguments that go on from it, or None when nothing is left to
    do): being trained now, not trained, trained (how it ended), or stopped part-way (a checkpoint to
    resume)."""
    holder = live_holder(folder)
    if holder is not None:
        return f"being trained now (PID {holder.pid}, since {holder.since})", None
    if not (folder / "model.safetensors").is_file():
        return "not trained yet", ""
    ends = [r for r in read_metrics(folder) if r.get("event") == "end"] \
        if (folder / "metrics.jsonl").is_file() else []
    if not ends:   # a run from before the end record: its weights are there, its fate is not
        return "has weights (the log does not say whether the run finished)", None
    end = ends[-1]
    if end.get("status") in FINISHED:
        return f"trained ({end['status']} at step {end['step']})", None
    return f"stopped part-way at step {end['step']} ({end.get('status')}): continue it", " --resume"


def check_stage(stage: str, root: Path) -> list[Row]:
    what, config, script = STAGES[stage]
    path = root / config
    if not path.is_file():
        return [Row("FAIL", config, "not found", f"restore it (git checkout {config}) or create it", stage)]
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [Row("FAIL", config, f"invalid JSON at line {e.lineno}: {e.msg}", f"fix {config}", stage)]
    cls, err = load_strict(raw, STAGE_CONFIG_CLASS.get(stage))
    rows = [Row("OK" if cls else "FAIL", config, f"loads as {cls}" if cls else err,
                "" if cls else f"fix the key named above in {config}", stage)]
    seen = set()
    for slot in train_slots(raw):
        for val in (False, True):
            for f in data_files(slot.data, root, val, slot.data_prefix):
                if f.key in seen:
                    continue
                seen.add(f.key)
                rows.append(data_row(f, stage))
        save_dir = get_path(raw, slot.path)["save_dir"]
        state, fix = run_state(root / save_dir)
        rows.append(Row("INFO", f"{'.'.join(slot.path)}.save_dir", f"{save_dir}: {state}",
                        "" if fix is None else f"python {script} --config {config}{fix}", stage))
    for key, ckpt in checkpoint_refs(raw):
        ok = (root / ckpt / "model.safetensors").is_file()
        rows.append(Row("OK" if ok else "FAIL", key, f"{ckpt}{'' if ok else ' has no model.safetensors'}",
                        "" if ok else f"train the stage that writes it first ({producer_of(ckpt, root)})", stage))
    return rows


def data_row(f, stage: str) -> Row:
    if f.exists and f.declared not in FALLBACKS or f.exists and not f.note:
        return Row("OK", f.key, f.note or f.declared, "", stage)  # the file, or a registered dataset
    if f.exists:  # only the synthetic fallback exists
        return Row("FAIL", f.key, f"{f.declared} missing (synthetic {FALLBACKS[f.declared]} exists)",
                   f"{builder_for(f.declared)}, or override {f.key}={FALLBACKS[f.declared]}", stage)
    return Row("FAIL", f.key, f"{f.declared} missing", builder_for(f.declared), stage)


def producer_of(ckpt: str, root: Path) -> str:
    """The stage config whose save_dir writes ``ckpt`` (``.../best`` is written with it)."""
    folder = ckpt[:-len("/best")] if ckpt.endswith("/best") else ckpt
    for stage, (_, config, script) in STAGES.items():
        path = root / config
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            if any(get_path(raw, s.path)["save_dir"] == folder for s in train_slots(raw)):
                return f"stage {stage}: python {script} --config {config}"
    return f"the config with train.save_dir {folder}"


def run_checks(root: Path, stages: list[str]) -> list[Row]:
    rows = check_python() + check_packages() + check_device(root) + check_tools()
    for stage in stages:
        rows += check_stage(stage, root)
    return rows


def print_rows(rows: list[Row]) -> None:
    width = max(len(r.what) for r in rows)
    section = None
    for r in rows:
        title = (f"stage {r.stage}: {STAGES[r.stage][0]}" if r.stage else "environment")
        if title != section:
            print(f"\n{title}")
            section = title
        print(f"  {r.status:<5} {r.what:<{width}}  {r.detail}")
        if r.fix and r.status != "OK":
            print(f"  {'':<5} {'':<{width}}  fix: {r.fix}")


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", default="all", choices=[*STAGES, "all"], help="the stage to check")
    p.add_argument("--root", type=Path, default=Path("."), help="project root")
    args = p.parse_args(argv)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    rows = run_checks(args.root, stages)
    print_rows(rows)
    failed = [r for r in rows if r.status == "FAIL"]
    print(f"\n{len(failed)} problem(s) for stage {args.stage}" if failed else f"\nready for stage {args.stage}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
