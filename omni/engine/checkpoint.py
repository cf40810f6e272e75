"""Checkpoint folders (docs/architecture.md): atomic writes, strict loads, metrics.jsonl.

``train_state.pt`` carries everything ``--resume`` needs in one atomically replaced file (weights,
optimizer, scaler, step, RNG, data position), so a kill at any moment of a save leaves the
previous, consistent checkpoint. ``model.safetensors`` is the weights-only export later stages read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omni.config import config_from_dict
from omni.files import atomic_write, copy_atomic, file_sha1, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(RuntimeError):
    pass


def save_weights(model: nn.Module, ckpt_dir: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights only, from the uncompiled, unwrapped module."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(ckpt_dir / MODEL_FILE, lambda p: save_file(state, str(p), metadata=metadata))


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Strictly load ``model.safetensors``; a missing file or any key/shape mismatch is an error."""
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no weights at {path}: train that stage first, or fix the path")
    state = load_file(str(path))
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


def save_config(cfg: dict[str, Any], ckpt_dir: Path) -> None:
    write_text_atomic(ckpt_dir / CONFIG_FILE, json.dumps(cfg, indent=2) + "\n")


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
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {ckpt_dir}: not a μOmni checkpoint folder")
    return json.loads(path.read_text(encoding="utf-8"))


def load_with_vocab(ckpt_dir: str | Path, stage_cls: type, vocab_cls: type, vocab_file: str, build,
                    device: torch.device, what: str) -> tuple[nn.Module, Any, Any]:
    """A stage that decodes characters, rebuilt strictly from its folder: config.json (parsed into
    ``stage_cls``), ``vocab_file`` (``vocab_cls.load``) and the weights. ``build(stage_cfg, vocab_size)``
    makes the model; ``what`` names the stage and the script that writes it, for the error.
    -> (model in eval mode on ``device``, vocab, stage config)."""
    cfg = config_from_dict(read_config(ckpt_dir), stage_cls)
    vocab_path = Path(ckpt_dir) / vocab_file
    if not vocab_path.is_file():
        raise CheckpointError(f"no {vocab_file} in {ckpt_dir}: not {what}")
    vocab = vocab_cls.load(vocab_path)
    model = build(cfg, len(vocab))
    load_weights(model, ckpt_dir)
    return model.to(device).eval(), vocab, cfg


def save_train_state(state: dict[str, Any], ckpt_dir: Path) -> None:
    atomic_write(ckpt_dir / STATE_FILE, lambda p: torch.save(state, p))


def load_train_state(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume: no {STATE_FILE} in {ckpt_dir}; run without --resume to start")
    return torch.load(path, map_location="cpu", weights_only=True)


def has_train_state(ckpt_dir: Path) -> bool:
    return (ckpt_dir / STATE_FILE).is_file()


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


def truncate_metrics(ckpt_dir: Path, step: int) -> None:
    """On resume, drop events logged after the checkpoint's step by the interrupted run."""
    records = [r for r in read_metrics(ckpt_dir) if r.get("step", 0) <= step]
    write_text_atomic(ckpt_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


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
    first = load_file(str(folders[0] / MODEL_FILE))
    total = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for f in folders[1:]:
        state = load_file(str(f / MODEL_FILE))
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
        if src.is_file() and src.name not in (MODEL_FILE, STATE_FILE, METRICS_FILE):
            write_bytes_atomic(out_dir / src.name, src.read_bytes())
    names = [str(f) for f in folders]
    atomic_write(out_dir / MODEL_FILE, lambda p: save_file(mean, str(p), metadata={"averaged_from": json.dumps(names)}))
    info = {"tensors": len(mean), "params": sum(v.numel() for v in mean.values()), "folders": names}
    write_text_atomic(out_dir / "averaged_from.json", json.dumps(info, indent=2) + "\n")
    return info
