"""The weight audit of an export: every tensor of every checkpoint is in a graph under its own name,
bit-identical, or excluded by a named rule (training-only parts, derived buffers); a missing, extra or
changed tensor fails the export (omni/export/exporter.py)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.torch import load_file

if TYPE_CHECKING:
    from omni.export.exporter import Sources
    from omni.export.specs import GraphSpec


class ExportError(RuntimeError):
    """The export cannot be trusted (a weight missing, unexpected or changed; an unsupported input)."""


def exclusions(src: Sources) -> dict[str, list[tuple[str, str]]]:
    """Checkpoint tensors that inference does not read, by design: (regex, reason) per source."""
    out: dict[str, list[tuple[str, str]]] = {"omni": [], "talker": [], "codec": [], "vocoder": []}
    if src.talker is not None:
        out["talker"].append((r"^text_aux\.", "training-only auxiliary head (talker.text_aux_layer)"))
        out["talker"].append((r"^(to_latent\.|latent_codes$|latent_mean$|latent_std$)",
                              "the duration Talker's aligner (training only: synthesis uses the predicted durations)"))
        out["codec"] += [
            (r"^encoder\.", "codec encoder (mel -> codes): builds the Talker's training targets, not used to speak"),
            (r"^rvq\.layers\.\d+\.(ema_count|ema_sum|unused_steps|initialised)$", "EMA codebook training state")]
        n_used = src.talker.cfg.n_codebooks
        n_all = len(src.codec.rvq.layers)
        if n_used < n_all:
            idx = "|".join(str(i) for i in range(n_used, n_all))
            out["codec"].append((rf"^rvq\.layers\.({idx})\.codebook$", "codebooks past the Talker's n_codebooks"))
    out["vocoder"].append((r"^disc\.", "discriminators (training only)"))
    return out


def _constants(model: onnx.ModelProto) -> list[np.ndarray]:
    """Float tensors of >= 16 elements held in Constant nodes (derived tables such as RoPE's)."""
    out = []
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    arr = numpy_helper.to_array(a.t)
                    if arr.dtype.kind == "f" and arr.size >= 16:
                        out.append(arr)
    return out


def audit_weights(models: dict[str, onnx.ModelProto], sources: dict[str, str],
                  checkpoints: dict[str, dict[str, np.ndarray]], excluded: dict[str, list[tuple[str, str]]],
                  derived: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every checkpoint tensor is in a graph (bit-identical, under its own name) or excluded by a
    named rule; every graph initializer is a checkpoint tensor; every large float constant equals a
    derived (rebuilt-from-config) buffer of the PyTorch module. Raises ExportError naming each problem."""
    report: dict[str, Any] = {}
    problems: list[str] = []
    for source, ckpt in checkpoints.items():
        graphs = [g for g, s in sources.items() if s == source]
        found: dict[str, np.ndarray] = {}
        per_graph = {}
        unexpected, mismatched = set(), set()
        for g in graphs:          # each graph against the checkpoint, not only against each other
            inits = {t.name: numpy_helper.to_array(t) for t in models[g].graph.initializer}
            per_graph[g] = len(inits)
            for name, arr in inits.items():
                table = derived.get(source, {}).get(name)
                if name not in ckpt and table is not None and np.array_equal(table, arr):
                    continue      # a derived buffer the exporter kept as an initializer
                found.setdefault(name, arr)
                if name not in ckpt:
                    unexpected.add(name)
                elif not (arr.dtype == ckpt[name].dtype and arr.shape == ckpt[name].shape
                          and np.array_equal(arr, ckpt[name])):
                    mismatched.add(name)
                    found[name] = arr
        unexpected, mismatched = sorted(unexpected), sorted(mismatched)
        ex_groups: dict[str, list[str]] = {}
        missing = []
        for name in ckpt:
            if name in found:
                continue
            reason = next((why for pat, why in excluded.get(source, []) if re.search(pat, name)), None)
            if reason is None:
                missing.append(name)
            else:
                ex_groups.setdefault(reason, []).append(name)
        consts_unmatched = []
        tables = list(derived.get(source, {}).items())
        for g in graphs:
            for arr in _constants(models[g]):
                if not any(t.shape == arr.shape and np.array_equal(t, arr) for _, t in tables):
                    consts_unmatched.append(f"{g}: constant {arr.dtype}{list(arr.shape)}")
        exported = [n for n in ckpt if n in found]
        stats = {k: _stats([v[n] for n in exported]) for k, v in (("checkpoint", ckpt), ("onnx", found))}
        report[source] = {
            "checkpoint_tensors": len(ckpt), "checkpoint_params": int(sum(a.size for a in ckpt.values())),
            "exported_tensors": len(exported), "exported_params": int(sum(ckpt[n].size for n in exported)),
            "excluded": [{"reason": why, "tensors": len(names), "params": int(sum(ckpt[n].size for n in names)),
                          "names": names[:6] + (["..."] if len(names) > 6 else [])}
                         for why, names in ex_groups.items()],
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
            "unexplained_constants": consts_unmatched, "initializers_per_graph": per_graph,
            "derived_constants": sorted(derived.get(source, {})), "stats": stats,
            "ok": not (missing or unexpected or mismatched or consts_unmatched)}
        for kind, names in (("missing from the ONNX graphs", missing), ("unexpected (not in the checkpoint)", unexpected),
                            ("changed (values differ from the checkpoint)", mismatched),
                            ("unexplained constant", consts_unmatched)):
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                problems.append(f"{source}: {len(names)} tensor(s) {kind}: {shown}")
    if problems:
        raise ExportError("weight audit failed; the export would not be the trained model:\n  " + "\n  ".join(problems))
    return report


def _stats(arrays: list[np.ndarray]) -> dict[str, float]:
    if not arrays:
        return {"params": 0}
    flat = [a.astype(np.float64).ravel() for a in arrays if a.dtype.kind == "f"]
    n = sum(a.size for a in flat)
    s = sum(float(a.sum()) for a in flat)
    sq = sum(float((a * a).sum()) for a in flat)
    return {"params": n, "sum": s, "sum_sq": sq, "max_abs": max(float(np.abs(a).max()) for a in flat if a.size)}


def derived_buffers(specs: list[GraphSpec]) -> dict[str, dict[str, np.ndarray]]:
    """Non-persistent buffers (rebuilt from the config, not saved) of each source's wrappers."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in specs:
        saved = set(s.module.state_dict())
        for name, b in s.module.named_buffers():
            if name not in saved:
                out.setdefault(s.source, {})[name] = b.detach().cpu().numpy()
    return out


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(str(path)).items()}
