"""Rewrite the training parameters of the stage configs from their data and model sizes.

    python scripts/update_configs_from_data.py --dry-run            # print the per-config diff only
    python scripts/update_configs_from_data.py                      # ... and write the configs
    python scripts/update_configs_from_data.py --config configs/thinker_tiny.json --vram-gb 24
    python scripts/update_configs_from_data.py --config configs/thinker_tiny.json --measure

For each config: count the training tokens of its data files with the project's BPE tokenizer
(cached and resumable beside each file), build its model on the meta device to count parameters,
apply the rules in omni/tools/autotune.py (docs/architecture.md) to every train section, and
splice the new values into the file (key order and layout unchanged). ``--measure`` checks the
memory estimate at the planned batch: the peak of 3 real training steps on CUDA, or, without CUDA,
the activations autograd saves in one forward against the estimate's activation part.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from omni.cli.common import Parser
from omni.config import ConfigError, TrainConfig, config_from_dict
from omni.data import DataError
from omni.files import write_json_atomic, write_text_atomic
from omni.thinker.stage import TOKENIZER_FILES, TextStageConfig, prepare_tokenizer
from omni.thinker.tokenizer import TokenizerError
from omni.tools.autotune import GIB, DataSize, Plan, plan_training
from omni.tools.json_edit import replace_values, unified_diff
from omni.tools.survey import (
    ModelInfo,
    TrainSlot,
    checkpoint_model_info,
    data_files,
    get_path,
    model_fills,
    model_info,
    train_slots,
)
from omni.tools.token_count import TokenCount, count_file, file_kind


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=None, metavar="PATH",
                   help="a config to tune (repeatable; default: every configs/*.json)")
    p.add_argument("--dry-run", action="store_true", help="print the diff, write no config")
    p.add_argument("--vram-gb", type=float, default=12.0, help="per-device memory budget (GB)")
    p.add_argument("--thinker-config", default="configs/thinker_tiny.json",
                   help="whose tokenizer counts the tokens of non-text stages")
    p.add_argument("--recount", action="store_true", help="ignore cached token counts")
    p.add_argument("--measure", action="store_true",
                   help="check the memory estimate: measured peak of 3 real steps on CUDA; on CPU, the saved "
                        "activations of one forward")
    p.add_argument("--root", type=Path, default=Path("."), help="project root the config paths are relative to")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write every planned value, changed or not, as {config: {dotted key: value}} "
                        "(scripts/train_all.py reads its step budgets from it)")
    return p.parse_args(argv)


class Tokenizers:
    """One tokenizer per text-stage config: the one its training uses (trained first if absent,
    into a temp folder on --dry-run so nothing is written)."""

    def __init__(self, root: Path, dry_run: bool) -> None:
        self.root, self.dry_run, self._cache = root, dry_run, {}
        self._tmp: tempfile.TemporaryDirectory | None = None  # removed at exit

    def for_text_config(self, raw: dict):
        cfg = config_from_dict(raw, TextStageConfig)
        files = {f.key: f for f in data_files(raw["data"], self.root)}
        data = replace(cfg.data, train_file=str(files["data.train_file"].path),
                       tokenizer=str(self.root / cfg.data.tokenizer) if cfg.data.tokenizer else "")
        save_dir = self.root / cfg.train.save_dir
        key = (data.tokenizer, str(save_dir), data.train_file)
        if key not in self._cache:
            has_tok = data.tokenizer or any((save_dir / n).is_file() for n in TOKENIZER_FILES)
            if not has_tok:
                print(f"  no tokenizer in {save_dir}: training a {cfg.model.vocab_size}-token BPE on "
                      f"{data.train_file} as train_text.py does" + (" (not saved: --dry-run)" if self.dry_run else ""))
            if self.dry_run and not has_tok:
                self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="omni_tok_")
                save_dir = Path(self._tmp.name) / str(len(self._cache))
            self._cache[key] = prepare_tokenizer(data, cfg.model.vocab_size, save_dir)
        return self._cache[key]

    def project(self, thinker_config: str):
        path = self.root / thinker_config
        if not path.is_file():
            raise ConfigError(f"--thinker-config {path} not found: its tokenizer counts the tokens of the "
                              "other stages (pass the Stage A config)")
        return self.for_text_config(json.loads(path.read_text(encoding="utf-8")))


def count_sources(slot: TrainSlot, tok, root: Path, use_state: bool) -> tuple[dict[str, TokenCount], list[str]]:
    """Token counts per training data key; problems as messages (then the section is skipped)."""
    counts, problems = {}, []
    files = data_files(slot.data, root, prefix=slot.data_prefix)
    if not files:
        return counts, [f"unknown stage kind: {slot.data_prefix} names no data file"]
    for f in files:
        if f.note:
            print(f"  {f.key}: {f.note}")
        if not f.exists:
            problems.append(f"{f.key}: {f.path} not found")
        elif file_kind(f.path) is None:
            problems.append(f"{f.key}: unknown data kind '{f.path.suffix}' ({f.path})")
    if problems:
        return counts, problems
    for f in files:
        t0 = time.perf_counter()
        c = count_file(f.path, tok, use_state=use_state)
        counts[f.key] = c
        print(f"  {f.key} = {f.path}: {c.items:,} items, {c.tokens:,} tokens"
              f"{f' ({c.skipped:,} skipped)' if c.skipped else ''} [{time.perf_counter() - t0:.2f} s]")
    return counts, problems


def data_size(data: dict, counts: dict[str, TokenCount], packed: bool) -> DataSize:
    """Training tokens/samples; a held-out fraction (no val file) is taken off the train file."""
    held = float(data["val_fraction"]) if "val_fraction" in data and not data.get("val_file") else 0.0
    tokens = sum(c.tokens_with_eos if packed else c.tokens for c in counts.values())
    samples = sum(c.items for c in counts.values())
    if isinstance(data.get("epoch_size"), int):  # a mixture sampler defines its own epoch
        samples = data["epoch_size"]
    return DataSize(int(tokens * (1 - held)), int(samples * (1 - held)), packed)


def describe(section: str, info: ModelInfo | None, model_key: str | None, plan: Plan, vram_gb: float) -> None:
    if info:
        what = f"{info.name} {info.n_params / 1e6:.2f}M params"
    else:
        what = f"unknown model (no omni model class takes section '{model_key}')" if model_key \
            else "unknown model (no model section found)"
    u = plan.updates
    per_step = (f"{plan.tokens_per_step:,} tokens/step" if plan.tokens_per_step
                else f"{plan.effective_batch} samples/step")
    print(f"  [{section}] {what}: effective batch {plan.effective_batch} = {u['batch_size']} x "
          f"{u['gradient_accumulation_steps']}, {per_step}, {plan.steps_per_epoch:,} steps/epoch x "
          f"{plan.epochs} epochs = {u['max_steps']:,} steps")
    if plan.est_bytes is not None:
        print(f"    memory estimate at batch {u['batch_size']}: {plan.est_bytes / GIB:.2f} GiB "
              f"(budget {vram_gb:g} GB incl. 1 GiB CUDA context, 10% slack)")
    for note in plan.notes:
        print(f"    note: {note}")


def reduced_precision(train: dict) -> bool:
    """Whether a 12 GB GPU trains this section in bf16/fp16 (``precision`` auto on such a GPU, bf16
    or fp16 forced), which the memory estimate depends on."""
    return TrainConfig.migrate(train).get("precision", "auto") != "fp32"


def is_packed_text(raw: dict, slot: TrainSlot) -> bool:
    """Stage A: a Thinker-shaped model trained on a one-document-per-line file."""
    model = get_path(raw, slot.model_path) if slot.model_path else {}
    return {"ctx_len", "vocab_size"} <= model.keys() and "train_file" in slot.data


def plan_slot(raw: dict, slot: TrainSlot, args: argparse.Namespace, toks: Tokenizers) -> tuple[dict, list]:
    """Count, size and plan one train section: (every planned value by JSON path, measurement to run)."""
    name = ".".join(slot.path)
    packed = is_packed_text(raw, slot)
    tok = toks.for_text_config(raw) if packed else toks.project(args.thinker_config)
    counts, problems = count_sources(slot, tok, args.root, use_state=not args.recount)
    if not problems and not any(c.items for c in counts.values()):
        problems = [f"no training items in {', '.join(counts)} (an empty dataset has no step budget: build it "
                    "first)"]
    if problems:
        print(f"  [{name}] skipped: " + "; ".join(problems))
        return {}, []
    train = get_path(raw, slot.path)
    info = None
    if slot.model_path:
        model = get_path(raw, slot.model_path)
        vocab = tok.vocab_size if packed else None
        info = (model_info(model, slot.data, reduced_precision(train), vocab, model_fills(raw))
                or checkpoint_model_info(model, args.root))
    seq = info.memory.seq_len if info and info.memory else 1
    plan = plan_training(train, data_size(slot.data, counts, packed), seq, info.n_params if info else None,
                         info.memory if info else None, args.vram_gb)
    describe(name, info, ".".join(slot.model_path) if slot.model_path else None, plan, args.vram_gb)
    runs = [(name, raw, slot, info, plan)] if info and info.memory else []
    return {slot.path + (k,): v for k, v in plan.updates.items()}, runs


def tune_config(path: Path, args: argparse.Namespace, toks: Tokenizers,
                planned: dict[str, dict[str, int]]) -> tuple[str, list]:
    """Plan one config, print its diff, write it unless --dry-run: ('changed'|'unchanged'|'skipped', runs);
    every planned value goes into planned[str(path)] by dotted key."""
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    print(f"\n{path}")
    slots = train_slots(raw)
    if not slots:
        print("  skipped: no train section")
        return "skipped", []
    updates, runs = {}, []
    for slot in slots:
        slot_values, slot_runs = plan_slot(raw, slot, args, toks)
        if slot_values:
            planned.setdefault(str(path), {}).update({".".join(k): v for k, v in slot_values.items()})
        updates.update({k: v for k, v in slot_values.items() if get_path(raw, k[:-1])[k[-1]] != v})
        runs += [(path, *r) for r in slot_runs]
    new = replace_values(text, updates) if updates else text
    if new == text:
        print("  no change")
        return "unchanged", runs
    print(unified_diff(text, new, str(path)), end="")
    if not args.dry_run:
        write_text_atomic(path, new)
        print(f"  wrote {path}")
    return "changed", runs


def measured_stage(raw: dict, slot, info: ModelInfo, batch: int):
    """The stage of a train slot around a worst-case batch of the planned size (omni/tools/bench.py,
    which lab/bench_stages.py times too), or None when no stage's config class takes the
    section that holds the slot."""
    from omni.tools.bench import Shape, build, kind_of
    kind = kind_of(get_path(raw, slot.path[:-1]))
    if kind is None:
        return None
    name, cfg = kind
    if info.name == "ThinkerLM":  # the model uses the tokenizer's real size (train_text.py)
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=info.memory.head_width))
    return build(name, Shape(batch=batch), cfg)


def saved_activation_bytes(model, data, loss_fn, rt) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward (parameters excluded):
    what the batch- and length-dependent part of the estimate predicts; runs on any device."""
    import torch
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), rt.autocast():
        loss_fn(model, data)
    return sum(saved.values())


def measure_all(runs: list) -> int:
    """Check the estimate on the planned batch: the measured peak on CUDA; without CUDA, the saved
    activations of one forward against the estimate's activation part (static 16 B/param excluded)."""
    import torch

    from omni.engine.runtime import setup_runtime
    from omni.tools.autotune import estimate_parts
    from omni.tools.bench import Shape, step_stats
    cuda = torch.cuda.is_available()
    where = torch.cuda.get_device_name() if cuda else "CPU (no CUDA here: saved activations, not the peak)"
    print(f"\nmeasured on {where}, random data of the planned shape")
    for path, section, raw, slot, info, plan in runs:
        batch = plan.updates["batch_size"]
        train = get_path(raw, slot.path)
        rt = setup_runtime("cuda" if cuda else "cpu", TrainConfig.migrate(train).get("precision", "auto"))
        built = measured_stage(raw, slot, info, batch)
        if built is None:
            print(f"  {path} [{section}] {info.name}: no stage config takes this section; not measured")
            continue
        # the estimate of the precision that really runs here (a CPU without native bf16 trains in fp32)
        parts = estimate_parts(replace(info.memory, amp=rt.amp_dtype is not None), batch)
        if cuda:  # the engine's own steps: weights, optimizer states, batch and activations
            stats = step_stats(built, "cuda", None, False, 0, 3, Shape(batch=batch))
            est, got, what = sum(parts.values()), int(stats["peak_alloc_gib"] * GIB), "peak"
        else:
            est, got, what = sum(parts.values()) - parts["static"] + (2 * info.n_params if rt.amp_dtype else 0), \
                saved_activation_bytes(built.stage.model, built.batch, built.stage.loss_fn, rt), "saved activations"
        print(f"  {path} [{section}] {info.name} batch {batch}: estimate {est / GIB:.3f} GiB, measured {what} "
              f"{got / GIB:.3f} GiB (estimate / measured = {est / got:.2f})")
        del built
        if cuda:
            torch.cuda.empty_cache()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = [Path(p) for p in args.config] if args.config else sorted((args.root / "configs").glob("*.json"))
    toks = Tokenizers(args.root, args.dry_run)
    results, runs, planned = {}, [], {}
    for path in paths:
        try:
            status, config_runs = tune_config(path, args, toks, planned)
        except (ConfigError, DataError, TokenizerError, json.JSONDecodeError) as e:
            print(f"  error: {e}")
            status, config_runs = "error", []
        results[str(path)] = status
        runs += config_runs
    print("\nsummary: " + ", ".join(f"{s} {sum(v == s for v in results.values())}"
                                    for s in ("changed", "unchanged", "skipped", "error")
                                    if s in results.values()) + (" (dry run: nothing written)" if args.dry_run else ""))
    if args.json:
        write_json_atomic(args.json, planned)
    if args.measure:
        return measure_all(runs)
    return 1 if "error" in results.values() else 0


if __name__ == "__main__":
    sys.exit(main())
