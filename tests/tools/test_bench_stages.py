"""lab/bench_stages.py and omni/tools/bench.py: every stage's real model, loss and collate, stepped by the
engine on the worst-case batch of its config."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_stages", ROOT / "lab" / "bench_stages.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_stages"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _check(results: list[dict], stages) -> None:
    assert [r["stage"] for r in results] == list(stages)
    for r in results:
        assert "error" not in r, r
        assert all(math.isfinite(x) for x in r["losses"]), r
        assert r["step_s"] > 0 and r["items_per_s"] > 0
        assert r["trainable_m"] <= r["params_m"]
        assert "peak_alloc_gib" not in r  # a CPU has no CUDA allocator to read
        assert r["flops_per_step"] > 0 and r["peak_flops"] > 0
        assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_s"] / r["peak_flops"])


def test_every_stage_steps_quick(tmp_path):
    got = _run(tmp_path, "--quick", "--warmup", "1", "--steps", "2", "--precision", "fp32")
    # only the precision that ran has its peak measured
    assert got["quick"] and set(got["matmul_peak_flops"]) == {"fp32"}
    _check(got["results"], bench.STAGES + (bench.REFERENCE,))
    # the SFT batch really carries both media: the frozen encoders are part of the model
    sft = next(r for r in got["results"] if r["stage"] == "sft")
    assert sft["trainable_m"] < sft["params_m"]


def test_a_broken_stage_is_reported_not_hidden(tmp_path, monkeypatch, capsys):
    real = bench.build

    def build(name, shape):
        if name == "codec":
            raise RuntimeError("no such shape")
        return real(name, shape)
    monkeypatch.setattr(bench, "build", build)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--quick", "--warmup", "0", "--steps", "1", "--stages", "codec", "ocr",
                       "--precision", "fp32", "--json", str(out)]) == 1
    results = json.loads(out.read_text())["results"]
    assert results[0]["error"] == "RuntimeError: no such shape" and "error" not in results[1]
    assert "codec precision=fp32 compile=False: FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_default_configs_worst_case_batches_step(tmp_path):
    """The full default shapes (every clip at its config's maximum, every sequence at ctx_len) fit
    the models: what the GPU benchmark measures is a batch the configs really admit."""
    got = _run(tmp_path, "--precision", "fp32", "--warmup", "0", "--steps", "1")
    _check(got["results"], bench.STAGES + (bench.REFERENCE,))
    shapes = {r["stage"]: r["shape"] for r in got["results"]}
    assert shapes["thinker"].startswith("8 x 512 tokens")
    assert shapes["audio_enc"].startswith("16 clips x 15 s, 376 characters")
    assert "200 characters + 12 s" in shapes["talker"]
    assert "10 s clip" in shapes["sft"]


def test_flop_count_is_the_thinker_formula(tmp_path):
    """The counter behind MFU sees every matmul, the chunked loss's included, and the CPU attention
    kernel: 6 x matmul weights per token (forward 2, backward 4) plus attention's QK^T and PV
    (4 x T x D per token and layer forward, 2.5 times that backward)."""
    from torch import nn

    from omni.tools.bench import Shape, build, count_micro_flops
    built = build("thinker", Shape(quick=True))
    x, _ = built.batch
    m = built.stage.model.cfg
    n_matmul = sum(mod.weight.numel() for mod in built.stage.model.modules() if isinstance(mod, nn.Linear))
    tokens, T = x.numel(), x.shape[1]
    expected = 6 * n_matmul * tokens + 14 * m.n_layers * T * m.d_model * tokens
    assert count_micro_flops(built, "cpu") == expected


def test_a_train_section_finds_its_stage():
    """update_configs_from_data.py --measure builds the stage of any config's train section: the
    talker config's nested codec section is a codec, the file itself a Talker; a stranger is None."""
    import json as _json

    from omni.tools.bench import kind_of
    raw = _json.loads((ROOT / "configs" / "talker_tiny.json").read_text())
    assert kind_of(raw)[0] == "talker" and kind_of(raw["codec"])[0] == "codec"
    assert kind_of({"model": {}, "train": {}}) is None
    for name, file in (("thinker", "thinker_tiny.json"), ("sft", "omni_sft_tiny.json"), ("ocr", "ocr_tiny.json")):
        assert kind_of(_json.loads((ROOT / "configs" / file).read_text()))[0] == name


def test_matmul_peak_of_a_slow_dtype_stops_at_its_time_budget(monkeypatch):
    """An emulated dtype (bf16 on a CPU without bf16 units) can take minutes per large product: the
    peak stops repeating once a size has spent its budget, and a size slower than the budget ends
    the sweep, so a benchmark (and CI) never waits on it."""
    import torch

    from omni.tools import machine as tools_bench
    calls, clock = [], [0.0]

    def slow_mm(a, b, out):  # a fake clock: the sweep's decisions do not depend on the machine's load
        calls.append(a.shape[0])
        clock[0] += 0.05 * a.shape[0] / 64

    monkeypatch.setattr(tools_bench.torch, "mm", slow_mm)
    monkeypatch.setattr(tools_bench.time, "perf_counter", lambda: clock[0])
    peak = tools_bench.matmul_peak(torch.device("cpu"), torch.float32, sizes=(64, 128, 256), repeats=5,
                                   budget_s=0.08)
    # 64: warmup and repeats until 0.08 s are spent; 128: its warmup alone passes the budget, one
    # timed product, and the sweep ends before 256
    assert calls == [64, 64, 128, 128] and peak == pytest.approx(2 * 128 ** 3 / 0.1)
