"""Strict JSON configs loaded into typed dataclasses.

Every stage config is a dataclass whose fields are dataclasses (``model``, ``data``, ``train``).
Loading checks every key against the dataclass: unknown keys, missing required keys, wrong types and
values out of their declared range (``limits``) fail with the dotted path and a "did you mean" hint.
Command-line overrides (``train.lr=1e-3``) are applied to the raw JSON before that check, so they
pass through the same validation.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import operator
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match the stage's schema."""


# the bounds ``limits`` accepts: name -> (comparison that must hold, how the message says it)
_BOUNDS = {"min": (operator.ge, ">="), "gt": (operator.gt, ">"), "max": (operator.le, "<="), "lt": (operator.lt, "<")}


def limits(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, length: int | None = None,
           **bounds: float) -> Any:
    """A dataclass field whose value the loader checks against ``bounds`` (``min``/``max`` inclusive,
    ``gt``/``lt`` exclusive; for a list, every item, and ``length`` items): ``batch_size: int =
    limits(min=1)``. Without ``default``/``factory`` the key stays required."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"limits: unknown bound(s) {sorted(unknown)}; use {', '.join(_BOUNDS)} or length")
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"limits": bounds, "length": length})


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = limits(min=1)
    gradient_accumulation_steps: int = limits(min=1)
    lr: float = limits(gt=0)
    weight_decay: float = limits(min=0)
    warmup_steps: int = limits(min=0)
    max_steps: int = limits(min=1)
    max_epochs: int = limits(min=1)
    max_grad_norm: float = limits(gt=0)
    val_freq: int = limits(min=1)
    checkpoint_freq: int = limits(min=1)
    save_dir: str
    seed: int = limits(min=0)  # numpy's seeded generators refuse negative seeds
    min_lr_ratio: float = limits(0.1, min=0, max=1)
    betas: list[float] = limits(factory=lambda: [0.9, 0.95], length=2, min=0, lt=1)
    val_batches: int = limits(20, min=1)
    log_freq: int = limits(10, min=1)
    max_bad_steps: int = limits(5, min=1)
    device: str = "auto"
    compile: bool = False
    num_workers: int = limits(0, min=0)
    # stop after this many evaluations in a row without a better held-out metric (0: never)
    patience: int = limits(0, min=0)
    # also checkpoint when this many minutes have passed since the last save (0: only every
    # checkpoint_freq steps): on a CPU a step can take half a minute, and a run killed outright
    # (no signal to catch) would otherwise lose everything since its last checkpoint_freq step
    checkpoint_minutes: float = limits(30.0, min=0)
    # auto: bf16 autocast where the device multiplies bf16 natively (AMX-BF16 / AVX512-BF16 CPUs,
    # Ampere+ GPUs), fp16 + GradScaler on older GPUs, fp32 elsewhere (omni/engine/runtime.py)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @staticmethod
    def migrate(raw: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before ``precision`` existed (checkpoints keep theirs) said ``use_amp``:
        true meant what ``auto`` means now, false meant fp32."""
        if "use_amp" not in raw:
            return raw
        if "precision" in raw:
            raise ConfigError("train: use_amp and precision both given; use_amp is the old name, keep precision")
        raw = dict(raw)
        use_amp = raw.pop("use_amp")
        if not isinstance(use_amp, bool):
            raise ConfigError(f"train.use_amp: expected bool, got {type(use_amp).__name__} {use_amp!r}")
        raw["precision"] = "auto" if use_amp else "fp32"
        return raw


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {value} is too large for a float") from None
    if tp is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # "max_steps": 1e4 in a JSON file means 10000
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[T], raw: dict[str, Any], path: str) -> T:
    if hasattr(cls, "migrate"):  # old spellings of keys, from configs saved in checkpoints
        raw = cls.migrate(raw)
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
        _check_limits(values[name], field.metadata.get("limits", {}), field.metadata.get("length"), where)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as e:  # a dataclass's own __post_init__ check, given the section's path
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _check_limits(value: Any, bounds: dict[str, float], length: int | None, path: str) -> None:
    """Raise a ConfigError naming ``path`` when ``value`` (or an item of a list) breaks a bound."""
    if length is not None and len(value) != length:
        raise ConfigError(f"{path}: expected {length} values, got {len(value)}: {value!r}")
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        for name, bound in bounds.items():
            holds, says = _BOUNDS[name]
            if not holds(item, bound):
                raise ConfigError(f"{where}: must be {says} {bound}, got {item!r}")


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
    raw = _parse_json(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    raw = apply_overrides(raw, overrides or [])
    try:
        return _build(cls, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _parse_json(path: Path) -> Any:
    """The JSON value in ``path``; unreadable, non-UTF-8 or invalid JSON is a ConfigError with the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the config "
                          "as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None


def config_from_dict(raw: dict[str, Any], cls: type[T]) -> T:
    """Validate an already parsed dict (e.g. a checkpoint's config.json) into ``cls``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object of sections, got {type(raw).__name__}")
    return _build(cls, raw, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2)
