"""What a stage config trains, on what: its train sections, data files, checkpoints and model size.

Read from any config's raw JSON (no stage dataclass needed), so the config tools
(scripts/update_configs_from_data.py, scripts/check_setup.py) work on every stage, including ones
added later:

- train sections: ``train`` and any other section shaped like a ``TrainConfig``, at any depth
  (the talker config nests a whole codec stage under ``codec``); ``X_train`` trains the model in
  section ``X``, ``train`` the one in ``model`` (else the one model-like section beside it);
- data files: the ``data`` keys naming files (``train_file``, ``train_csv``, ``image_manifest``,
  ``asr_csv`` ...); a missing production file falls back to its synthetic counterpart by the
  spec's names, and the fallback is reported;
- model size: the model is built on the meta device (no memory, no init cost) and its parameters
  counted: ThinkerLM and the ASR model directly, any other ``omni`` module whose ``nn.Module`` takes
  a single config dataclass that accepts the section (ViTTiny, Talker, ...) by discovery.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from omni.audio.encoder import AudioEncConfig
from omni.config import ConfigError, TrainConfig, config_from_dict
from omni.thinker.model import ThinkerConfig
from omni.tools.autotune import MemoryModel

log = logging.getLogger(__name__)

OMNI_DIR = Path(__file__).resolve().parents[1]  # the omni package
REQUIRED_TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)
                                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
# production file -> synthetic file written by scripts/make_synthetic_datasets.py
FALLBACKS = {
    "data/text/production_corpus.txt": "data/text/tiny_corpus.txt",
    "data/text/production_val.txt": "data/text/tiny_val.txt",
    "data/images/production_annotations.json": "data/images/annotations.json",
    "data/images/production_annotations_val.json": "data/images/annotations_val.json",
    "data/audio/production_asr.csv": "data/audio/asr.csv",
    "data/audio/production_tts.csv": "data/audio/tts.csv",
    "data/ocr/production_ocr.csv": "data/ocr/ocr_train.csv",
    "data/ocr/production_ocr_val.csv": "data/ocr/ocr_val.csv",
}
# file name prefix -> the command that writes it
BUILDERS = (
    ("data/text/production_", "python scripts/download_production_text.py"),
    ("data/images/production_", "python scripts/download_production_image.py"),
    ("data/audio/production_", "python scripts/download_production_audio.py"),
    ("data/ocr/production_", "python scripts/download_production_ocr.py"),
    ("data/", "python scripts/make_synthetic_datasets.py --out data/"),
)
FILE_KEY_ENDINGS = ("_file", "_csv", "_tsv", "_manifest", "_json", "_annotations")


def builder_for(path: str) -> str:
    return next((cmd for prefix, cmd in BUILDERS if path.startswith(prefix)),
                "create it, or point the config at an existing file")


def is_train_section(value: Any) -> bool:
    return isinstance(value, dict) and REQUIRED_TRAIN_KEYS <= value.keys()


@dataclass
class TrainSlot:
    """One train section and what it trains: paths into the config's JSON."""
    path: tuple[str, ...]                 # ("train",) or ("codec", "train")
    model_path: tuple[str, ...] | None    # the model section it trains; None if none is found
    data: dict                            # the nearest ``data`` section (its own stage's, else the parent's)
    data_prefix: str = "data"             # its dotted path, for messages


def get_path(raw: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        raw = raw[k]
    return raw


def _has_train(node: Any) -> bool:
    return isinstance(node, dict) and any(is_train_section(v) or _has_train(v) for v in node.values())


def train_slots(raw: dict) -> list[TrainSlot]:
    """Every train section, at any depth (a sub-stage such as the talker config's ``codec``), in
    file order, each paired with its model section and data section."""
    out: list[TrainSlot] = []

    def visit(node: dict, prefix: tuple[str, ...], data: dict, data_prefix: str) -> None:
        if isinstance(node.get("data"), dict):
            data, data_prefix = node["data"], ".".join(prefix + ("data",))
        names = [k for k, v in node.items() if is_train_section(v)]
        stems = {n[:-len("_train")] for n in names if n.endswith("_train")}
        claimed = {s for s in stems if isinstance(node.get(s), dict)}
        free = [k for k, v in node.items()
                if isinstance(v, dict) and "d_model" in v and k not in claimed and not _has_train(v)]
        for k, v in node.items():
            if k in names:
                stem = k[:-len("_train")] if k.endswith("_train") else None
                model = stem if stem in claimed else "model" if isinstance(node.get("model"), dict) \
                    else free[0] if len(free) == 1 else None
                out.append(TrainSlot(prefix + (k,), prefix + (model,) if model else None, data, data_prefix))
            elif not is_train_section(v) and _has_train(v):
                visit(v, prefix + (k,), data, data_prefix)

    visit(raw, (), {}, "data")
    return out


def model_fills(raw: dict) -> dict[str, int]:
    """Values a stage fills in at build time where its config says 0 (the Talker takes its codebooks
    from the codec section and its text vocabulary from the default set of its ``text_input``)."""
    fills: dict[str, int] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("n_codebooks", 0) > 0 and node.get("codebook_size", 0) > 0:
                fills.setdefault("n_codebooks", node["n_codebooks"])
                fills.setdefault("codebook_size", node["codebook_size"])
                if node.get("codebook_dim", 0) > 0:
                    fills.setdefault("latent_dim", node["codebook_dim"])  # a duration Talker's aligner space
            for v in node.values():
                walk(v)

    walk(raw)
    from omni.talker.text import TextVocab
    kind = raw["talker"]["text_input"] if "text_input" in raw.get("talker", {}) else "chars"
    fills["text_vocab_size"] = len(TextVocab.default(kind))
    return fills


@dataclass
class DataFile:
    key: str          # dotted config key, e.g. data.train_file
    declared: str     # the path the config names
    path: Path        # the file that is read (the declared one, or its fallback)
    note: str = ""    # why a different file is read, or what is missing

    @property
    def exists(self) -> bool:
        return self.path.is_file()


def data_keys(data: dict, val: bool) -> list[str]:
    """Keys of the ``data`` section that name data files: training ones, or validation ones."""
    keys = []
    for k, v in data.items():
        if not isinstance(v, str) or not v or k == "tokenizer":
            continue
        if not (k.startswith("train_") or k.endswith(FILE_KEY_ENDINGS)):
            continue
        if ("val" in k.split("_")) == val:
            keys.append(k)
    return keys


def resolve_file(key: str, declared: str, root: Path) -> DataFile:
    """The declared file if it exists; else its synthetic counterpart (noted); else a registered
    ASR dataset name (scripts/prepare_audio.py); else the declared path, noted as missing."""
    path = root / declared
    if path.is_file():
        return DataFile(key, declared, path)
    fallback = FALLBACKS.get(declared)
    if fallback and (root / fallback).is_file():
        return DataFile(key, declared, root / fallback,
                        f"{declared} missing ({builder_for(declared)}); sized from {fallback}")
    if not Path(declared).suffix:
        registry = root / "data/datasets.json"
        if registry.is_file():
            from omni.manifest import resolve_manifest
            tsv = resolve_manifest(declared, "val" if "val" in key else "train", registry)
            if tsv.is_file():
                return DataFile(key, declared, tsv, f"registered dataset {declared} -> {tsv}")
    return DataFile(key, declared, path, f"missing: {declared} ({builder_for(declared)})")


def data_files(data: dict, root: Path, val: bool = False, prefix: str = "data") -> list[DataFile]:
    """The data files a ``data`` section names (training ones, or validation ones)."""
    return [resolve_file(f"{prefix}.{k}", data[k], root) for k in data_keys(data, val)]


def checkpoint_refs(raw: dict) -> list[tuple[str, str]]:
    """(dotted key, folder) of every checkpoint a config reads (``checkpoints/...`` values outside
    train sections, whose save_dir is written, not read)."""
    out = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and not is_train_section(node):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, str) and node.startswith("checkpoints/"):
            out.append((path, node))

    walk(raw, "")
    return out


# ---------------------------------------------------------------- model size
@dataclass
class ModelInfo:
    name: str                      # class name, e.g. ThinkerLM
    n_params: int
    memory: MemoryModel | None     # None: no memory estimate for this kind
    packed_text: bool = False      # trains on packed token windows of ctx_len


def count_params_meta(build: Callable[[], nn.Module]) -> int:
    """Parameters of ``build()`` constructed on the meta device: exact, no memory used."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def _blocks(model: dict, seq_len: int, n_params: int, amp: bool, **kw) -> MemoryModel | None:
    if not {"d_model", "n_layers", "d_ff"} <= model.keys():
        return None
    return MemoryModel(n_params, model["d_model"], model["n_layers"], model["d_ff"], seq_len, amp=amp, **kw)


def thinker_info(model: dict, vocab_size: int | None, amp: bool) -> ModelInfo:
    from omni.thinker.model import ThinkerLM
    cfg = config_from_dict(model, ThinkerConfig)
    if vocab_size is not None:  # the model uses the tokenizer's real size (train_text.py)
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    n = count_params_meta(lambda: ThinkerLM(cfg))
    mem = _blocks(model, cfg.ctx_len, n, amp, head_width=cfg.vocab_size, chunked_head=True)
    return ModelInfo("ThinkerLM", n, mem, packed_text=True)


def asr_info(model: dict, data: dict, amp: bool) -> ModelInfo:
    from omni.audio.ctc import CharVocab
    from omni.audio.features import ENCODER_MEL
    from omni.audio.stage import AsrModel
    cfg = config_from_dict(model, AudioEncConfig)
    n_vocab = len(CharVocab.default())
    n = count_params_meta(lambda: AsrModel(cfg, n_vocab))
    seconds = float(data["max_seconds"]) if "max_seconds" in data else 15.0
    frames = int(seconds * ENCODER_MEL.sample_rate / ENCODER_MEL.hop_length) + 1
    # log-mel (fp32, + SpecAugment copy) and three conv outputs at 1/2, 1/4, 1/8 rate (+ GELU input)
    front = frames * ENCODER_MEL.n_mels * 4 * 3 + frames * (1 / 2 + 1 / 4 + 1 / 8) * cfg.d_model * 4 * 2
    mem = _blocks(model, math.ceil(frames / 8), n, amp, head_width=n_vocab * cfg.symbols_per_frame,
                  front_bytes_per_sample=front)
    return ModelInfo("AsrModel", n, mem)


def _single_config_arg(cls: type) -> type | None:
    """The dataclass type of ``cls.__init__``'s one required argument, if it has exactly one."""
    params = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
              if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    if len(params) != 1:
        return None
    try:
        hint = typing.get_type_hints(cls.__init__).get(params[0].name)
    except NameError:  # an annotation that names something the module does not import
        return None
    return hint if dataclasses.is_dataclass(hint) else None


def omni_modules(containing: str) -> list[types.ModuleType]:
    """Every module of the omni package whose source contains ``containing``, imported."""
    out = []
    for path in sorted(OMNI_DIR.rglob("*.py")):
        if path.name != "__init__.py" and containing in path.read_text(encoding="utf-8"):
            name = ".".join(path.relative_to(OMNI_DIR.parent).with_suffix("").parts)
            out.append(importlib.import_module(name))
    return out


def discovered_builders() -> list[tuple[str, type, type]]:
    """(module, nn.Module class, config dataclass) for every omni module class built from one config."""
    out = []
    for module in omni_modules("nn.Module"):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, nn.Module):
                cfg_cls = _single_config_arg(cls)
                if cfg_cls is not None:
                    out.append((module.__name__, cls, cfg_cls))
    return out


def discovered_info(model: dict, amp: bool) -> ModelInfo | None:
    """The largest discovered model whose config dataclass accepts ``model`` strictly."""
    best: ModelInfo | None = None
    for _, cls, cfg_cls in discovered_builders():
        try:
            cfg = config_from_dict(model, cfg_cls)
            n = count_params_meta(lambda: cls(cfg))
        except (ConfigError, ValueError, TypeError, RuntimeError) as e:
            log.debug("%s does not take this section: %s", cls.__name__, e)
            continue
        if best is None or n > best.n_params:
            seq = _seq_len(model)
            best = ModelInfo(cls.__name__, n, _blocks(model, seq, n, amp) if seq else None)
    return best


def _seq_len(model: dict) -> int | None:
    """Positions per sample for kinds found by discovery: patches + CLS, else the context length."""
    if "img_size" in model and "patch" in model:
        return (model["img_size"] // model["patch"]) ** 2 + 1
    for key in ("ctx_len", "max_frames", "max_len"):
        if isinstance(model.get(key), int):
            return model[key]
    return None


def model_info(model: dict, data: dict, amp: bool, vocab_size: int | None = None,
               fills: dict[str, int] | None = None) -> ModelInfo | None:
    """Size and memory shape of the model a section describes; None when no known model takes it.
    ``fills`` replace the section's zero values (see ``model_fills``)."""
    model = {**model, **{k: v for k, v in (fills or {}).items() if model.get(k) == 0}}
    if {"ctx_len", "vocab_size", "n_kv_heads"} <= model.keys() and "symbols_per_frame" not in model:
        try:
            return thinker_info(model, vocab_size, amp)
        except ConfigError as e:  # shaped like a Thinker but not one: try the other kinds
            log.debug("not a ThinkerConfig: %s", e)
    try:
        return asr_info(model, data, amp)
    except ConfigError as e:
        log.debug("not an AudioEncConfig: %s", e)
    return discovered_info(model, amp)


def safetensors_params(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def checkpoint_model_info(model: dict, root: Path) -> ModelInfo | None:
    """A model assembled from other stages' checkpoints (SFT: ``*_ckpt`` keys): the sum of their
    weights, a lower bound (projectors are not counted); None unless every checkpoint exists."""
    files = [root / v / "model.safetensors" for k, v in model.items() if k.endswith("_ckpt") and isinstance(v, str)]
    if not files or not all(f.is_file() for f in files):
        return None
    return ModelInfo("components from checkpoints (projectors not counted)", sum(map(safetensors_params, files)), None)
