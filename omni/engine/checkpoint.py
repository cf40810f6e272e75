"""Checkpoint folders (docs/architecture.md): atomic writes, strict loads, metrics.jsonl.

``train_state.pt`` carries everything ``--resume`` needs in one atomically replaced file (weights,
optimizer, scaler, step, RNG, data position), so a kill at any moment of a save leaves the
previous, consistent checkpoint. ``model.safetensors`` is the weights-only export later stages read.
"""
from __future__ import annotations

import errno
import functools
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from omni.config import config_from_dict
from omni.files import atomic_write, copy_atomic, file_sha1, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"

# every stage home (docs/architecture.md, "Stage rule") and how a user knows it: which stage wrote a
# config.json is told by which home's CONFIG accepts it
STAGE_HOMES = {
    "omni.thinker.stage": ("Stage A (Thinker)", "train_text.py"),
    "omni.audio.stage": ("Stage B (audio encoder)", "train_audio_enc.py"),
    "omni.vision.stage": ("Stage C (vision)", "train_vision.py"),
    "omni.codec.stage": ("the codec", "train_codec.py"),
    "omni.talker.stage": ("Stage D (Talker)", "train_talker.py"),
    "omni.multimodal.stage": ("Stage E (SFT)", "sft_omni.py"),
    "omni.vocoder.stage": ("the vocoder", "train_vocoder.py"),
    "omni.ocr.stage": ("the OCR stage", "train_ocr.py"),
}

T = TypeVar("T")


class CheckpointError(RuntimeError):
    pass


def _write_failure(e: OSError) -> CheckpointError:
    """The one line a failed checkpoint write ends with. ``atomic_write`` reports a full disk as
    ENOSPC naming the target file, whatever the writer raised."""
    where = e.filename or "a checkpoint file"
    if e.errno == errno.ENOSPC:
        return CheckpointError(f"No space left on device while writing {where}: free some space or set "
                               f"train.save_dir to another disk, then run again (--resume continues a run; "
                               f"the previous checkpoint is intact)")
    return CheckpointError(f"could not write {where}: {e.strerror or e}")


def reports_write_errors(func: Callable[..., T]) -> Callable[..., T]:
    """A checkpoint writer whose OSError (full disk, read-only folder, ...) becomes a one-line
    CheckpointError naming the file, instead of a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OSError as e:
            raise _write_failure(e) from e
    return wrapper


def _write_file(path: Path, write: Callable[[Path], None]) -> None:
    """``atomic_write`` of a torch or safetensors file. Their C++/Rust writers report an I/O failure
    as a RuntimeError without an errno (``basic_ios::clear: iostream error``); atomic_write already
    turned the full-disk ones into ENOSPC, and any other is still a failed write of this file."""
    try:
        atomic_write(path, write)
    except (RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"could not write {path} ({e}): check that its disk is not full, over quota "
                              "or failing; the previous checkpoint is intact") from e


@reports_write_errors
def save_weights(model: nn.Module, ckpt_dir: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights only, from the uncompiled, unwrapped module."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _write_file(ckpt_dir / MODEL_FILE, lambda p: save_file(state, str(p), metadata=metadata))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt one is a CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}): copy it again from where it came "
                              "from, or train that stage again") from e


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Strictly load ``model.safetensors``; a missing file or any key/shape mismatch is an error."""
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}: train that stage first, or fix the path")
    state = read_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the model built from its config: {e}") from e


def best_or_self(ckpt_dir: str | Path) -> Path:
    """``<dir>/best`` when validation saved weights there, else ``<dir>``."""
    d = Path(ckpt_dir)
    return d / "best" if (d / "best" / MODEL_FILE).is_file() else d


def copy_weights(src_dir: str | Path, dest_dir: str | Path) -> None:
    """Copy a model folder's weights and config.json into ``dest_dir`` (so a checkpoint that depends
    on another model carries it); skipped when ``dest_dir`` already holds the same weights."""
    src, dest = Path(src_dir), Path(dest_dir)
    if (dest / MODEL_FILE).is_file() and file_sha1(dest / MODEL_FILE) == file_sha1(src / MODEL_FILE):
        return
    copy_atomic(src / CONFIG_FILE, dest / CONFIG_FILE)
    copy_atomic(src / MODEL_FILE, dest / MODEL_FILE)  # last: a folder with weights is complete


@reports_write_errors
def save_config(cfg: dict[str, Any], ckpt_dir: Path) -> None:
    write_text_atomic(ckpt_dir / CONFIG_FILE, json.dumps(cfg, indent=2) + "\n")


@reports_write_errors
def save_snapshot(ckpt_dir: Path, cfg: dict[str, Any], model: nn.Module, metadata: dict[str, str],
                  save_extra: Callable[[Path], None]) -> None:
    """What a later stage loads from a folder: config.json, the stage's extras (e.g. its tokenizer),
    then the weights (written last, so a folder with weights is complete)."""
    save_config(cfg, ckpt_dir)
    save_extra(ckpt_dir)
    save_weights(model, ckpt_dir, metadata)


def retire_best(save_dir: Path, old_metric: str | None, step: int) -> Path:
    """Move ``best/`` to ``best_<old metric>/`` (``best_previous/`` when the metric was not recorded;
    ``_step<N>`` appended rather than overwrite an earlier one) -> the folder it went to."""
    kept = save_dir / f"best_{old_metric or 'previous'}"
    if kept.exists():
        kept = kept.with_name(f"{kept.name}_step{step}")
    if (save_dir / "best").is_dir():
        (save_dir / "best").rename(kept)
    return kept


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    """A folder's config.json as a dict; missing, not JSON, or not an object is a CheckpointError."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {ckpt_dir}: not a μOmni checkpoint folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}): the file is corrupt; copy the "
                              "folder again or train that stage again") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg}): the file is truncated "
                              "or was edited by hand; copy the folder again or train that stage again") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: the top level must be a JSON object; not a μOmni checkpoint config")
    return raw


def stage_of(raw: dict[str, Any]) -> tuple[str, str] | None:
    """Which stage wrote this config -> (what, script) from ``STAGE_HOMES``, or None when no stage
    accepts it. The homes are imported here, when asked, since they import this module."""
    for home, what in STAGE_HOMES.items():
        try:
            config_from_dict(raw, importlib.import_module(home).CONFIG)
        except ValueError:  # a ConfigError, or a section's own value check (__post_init__)
            continue
        return what
    return None


def _stage_named(cls: type) -> tuple[str, str]:
    home = next((h for h in STAGE_HOMES if importlib.import_module(h).CONFIG is cls), None)
    return STAGE_HOMES[home] if home else (cls.__name__, "that stage's script")


def read_stage_config(ckpt_dir: str | Path, cls: type[T]) -> T:
    """A folder's config.json validated into the stage config ``cls``. A config of another stage (a
    folder mixed up with another) says which stage wrote it and which one was expected."""
    raw = read_config(ckpt_dir)
    try:
        return config_from_dict(raw, cls)
    except ValueError as e:  # a ConfigError, or a section's own value check (__post_init__)
        path, (expected, script) = Path(ckpt_dir) / CONFIG_FILE, _stage_named(cls)
        found = stage_of(raw)
        if found is not None:
            raise CheckpointError(f"{path} is a config of {found[0]} ({found[1]}), not of {expected}: point "
                                  f"at a folder that {script} wrote") from e
        raise CheckpointError(f"{path} is not a config of {expected} ({e}): point at a folder that "
                              f"{script} wrote, or train it again") from e


def load_with_vocab(ckpt_dir: str | Path, stage_cls: type, vocab_cls: type, vocab_file: str, build,
                    device: torch.device, what: str) -> tuple[nn.Module, Any, Any]:
    """A stage that decodes characters, rebuilt strictly from its folder: config.json (parsed into
    ``stage_cls``), ``vocab_file`` (``vocab_cls.load``) and the weights. ``build(stage_cfg, vocab_size)``
    makes the model; ``what`` names the stage and the script that writes it, for the error.
    -> (model in eval mode on ``device``, vocab, stage config)."""
    cfg = read_stage_config(ckpt_dir, stage_cls)
    vocab_path = Path(ckpt_dir) / vocab_file
    if not vocab_path.is_file():
        raise CheckpointError(f"no {vocab_file} in {ckpt_dir}: not {what}")
    vocab = vocab_cls.load(vocab_path)
    model = build(cfg, len(vocab))
    load_weights(model, ckpt_dir)
    return model.to(device).eval(), vocab, cfg


@reports_write_errors
def save_train_state(state: dict[str, Any], ckpt_dir: Path) -> None:
    _write_file(ckpt_dir / STATE_FILE, lambda p: torch.save(state, p))


STATE_KEYS = ("model", "optimizer", "scaler", "rng", "world_size", "progress")


def load_train_state(ckpt_dir: Path) -> dict[str, Any]:
    """``train_state.pt`` (``weights_only``: no pickled code runs); a truncated or corrupt file, or one
    that is not a μOmni train state, is a CheckpointError saying what to do."""
    path = ckpt_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume: no {STATE_FILE} in {ckpt_dir}; run without --resume to start")
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is truncated or corrupt ({why}): it cannot be resumed; start over "
                               "with --overwrite (the weights in model.safetensors are a separate file)")

    # torch.save writes a zip; anything else sends torch.load to its legacy pickle reader, which
    # answers random bytes with whatever error the garbage happens to trigger (IndexError, KeyError...)
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise corrupt("not a zip archive")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # a damaged zip or pickle surfaces as whatever its bytes trigger (RuntimeError, EOFError,
    # UnpicklingError, BadZipFile, UnicodeDecodeError, ValueError...): the file exists, so each is damage
    except Exception as e:
        raise corrupt(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if not missing and not isinstance(state["model"], dict):
        missing = ["model tensors"]
    if missing:
        raise CheckpointError(f"{path} is not a μOmni train state (no {', '.join(missing)}): start over "
                              "with --overwrite, or set train.save_dir to the run's folder")
    return state


def check_state_fits(model: nn.Module, saved: dict[str, torch.Tensor], path: Path,
                     config: dict[str, Any]) -> None:
    """Before ``load_state_dict`` on --resume: a state of another stage or another model shape is a
    CheckpointError naming the differences (torch's own message lists every tensor). ``config`` is
    the running stage's, compared with the folder's config.json to name the stage that wrote it."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in saved.items()}
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    resized = sorted(k for k in own.keys() & theirs.keys() if own[k] != theirs[k])
    if not (missing or unexpected or resized):
        return
    folder_config = path.parent / CONFIG_FILE
    wrote, runs = (stage_of(read_config(path.parent)) if folder_config.is_file() else None), stage_of(config)
    if wrote is not None and runs is not None and wrote != runs:
        raise CheckpointError(f"{path.parent} holds a run of {wrote[0]} ({wrote[1]}), not of {runs[0]}: set "
                              "train.save_dir to this stage's folder, or start over there with --overwrite")
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown (e.g. {unexpected[0]})")
    if resized:
        k = resized[0]
        parts.append(f"{len(resized)} of another shape (e.g. {k}: {list(theirs[k])} saved, {list(own[k])} now)")
    raise CheckpointError(f"{path} does not fit this model ({'; '.join(parts)}): the model config changed or "
                          f"it is another stage's run; resume with the config it was trained with "
                          f"({folder_config}), or start over with --overwrite")


def has_train_state(ckpt_dir: Path) -> bool:
    return (ckpt_dir / STATE_FILE).is_file()


@reports_write_errors
def append_metrics(ckpt_dir: Path, record: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with open(ckpt_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(ckpt_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(ckpt_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            # a kill mid-append leaves one torn last line; anything else is real corruption
            if n != len(lines):
                raise CheckpointError(f"{path}:{n}: corrupt metrics line") from e
            log.warning("%s:%d: dropping a torn final line", path, n)
    return records


@reports_write_errors
def truncate_metrics(ckpt_dir: Path, step: int) -> None:
    """On resume, drop events logged after the checkpoint's step by the interrupted run."""
    records = [r for r in read_metrics(ckpt_dir) if r.get("step", 0) <= step]
    write_text_atomic(ckpt_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- one run per folder


def average_weights(folders: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Write the mean of the ``model.safetensors`` of ``folders`` (the same model: the same tensor
    names, shapes and dtypes, else an error naming the first folder that differs) to ``out_dir``,
    with the first folder's other files (config, vocabularies, codec link; not its optimizer state,
    metrics or sub-folders) beside it: a folder any loader of that stage reads. Floating-point
    tensors are averaged in float64; any other tensor (a counter) must be equal in all of them.
    -> {"tensors": n, "params": n, "folders": [...]}, also written to ``averaged_from.json``."""
    folders, out_dir = [Path(f) for f in folders], Path(out_dir)
    if len(folders) < 2:
        raise CheckpointError("give at least two checkpoint folders to average")
    if any(out_dir.resolve() == f.resolve() for f in folders):
        raise CheckpointError(f"{out_dir} is one of the folders being averaged; write the mean elsewhere")
    missing = [str(f / MODEL_FILE) for f in folders if not (f / MODEL_FILE).is_file()]
    if missing:
        raise CheckpointError(f"no weights at {', '.join(missing)}")
    first = read_weights(folders[0] / MODEL_FILE)
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for f in folders[1:]:
        state = read_weights(f / MODEL_FILE)
        if state.keys() != first.keys():
            diff = sorted(state.keys() ^ first.keys())[:5]
            raise CheckpointError(f"{f / MODEL_FILE} has other tensors than {folders[0] / MODEL_FILE} "
                                  f"(e.g. {diff}): not the same model")
        for k, v in state.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                raise CheckpointError(f"{f / MODEL_FILE}: {k} is {v.dtype} {tuple(v.shape)}, {folders[0] / MODEL_FILE} "
                                      f"has {first[k].dtype} {tuple(first[k].shape)}: not the same model")
            if v.is_floating_point():
                total[k] += v.double()
            elif not torch.equal(v, first[k]):
                raise CheckpointError(f"{f / MODEL_FILE}: the integer tensor {k} differs from {folders[0] / MODEL_FILE}")
    mean = {k: (v / len(folders)).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in total.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(folders[0].iterdir()):
        # not hidden files: a run's .lock or a killed save's temp file belong to that folder only
        if src.is_file() and src.name not in (MODEL_FILE, STATE_FILE, METRICS_FILE) and not src.name.startswith("."):
            write_bytes_atomic(out_dir / src.name, src.read_bytes())
    names = [str(f) for f in folders]
    _write_file(out_dir / MODEL_FILE, lambda p: save_file(mean, str(p), metadata={"averaged_from": json.dumps(names)}))
    info = {"tensors": len(mean), "params": sum(v.numel() for v in mean.values()), "folders": names}
    write_text_atomic(out_dir / "averaged_from.json", json.dumps(info, indent=2) + "\n")
    return info
