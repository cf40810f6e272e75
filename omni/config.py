"""Strict JSON configs loaded into typed dataclasses.

Every stage config is a dataclass whose fields are dataclasses (``model``, ``data``, ``train``).
Loading checks every key against the dataclass: unknown keys, missing required keys and wrong types
fail with the dotted path and a "did you mean" hint. Command-line overrides (``train.lr=1e-3``)
are applied to the raw JSON before that check, so they pass through the same validation.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match the stage's schema."""


@dataclasses.dataclass
class TrainConfig:
    batch_size: int
    gradient_accumulation_steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_steps: int
    max_epochs: int
    max_grad_norm: float
    val_freq: int
    checkpoint_freq: int
    use_amp: bool
    save_dir: str
    seed: int
    min_lr_ratio: float = 0.1
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    val_batches: int = 20
    log_freq: int = 10
    max_bad_steps: int = 5
    device: str = "auto"
    compile: bool = False
    num_workers: int = 0


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {type(value).__name__}")
        return _build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_check_value(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # "max_steps": 1e4 in a JSON file means 10000
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[T], raw: dict[str, Any], path: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{where}'{hint}")
    values = {}
    for name, field in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in raw:
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required:
                raise ConfigError(f"missing required key '{where}' ({_type_name(hints[name])})")
            continue
        values[name] = _check_value(raw[name], hints[name], where)
    return cls(**values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-3'`` -> (['train', 'lr'], 0.001). Values are JSON, else plain strings."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, k in enumerate(keys[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(keys[:i + 1])}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def load_config(path: str | Path, cls: type[T], overrides: list[str] | None = None) -> T:
    """Read a JSON config file, apply ``key=value`` overrides, validate strictly into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    raw = apply_overrides(raw, overrides or [])
    try:
        return _build(cls, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def config_from_dict(raw: dict[str, Any], cls: type[T]) -> T:
    """Validate an already parsed dict (e.g. a checkpoint's config.json) into ``cls``."""
    return _build(cls, raw, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2)
