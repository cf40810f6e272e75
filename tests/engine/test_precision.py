"""train.precision: what ``auto`` picks on a faked machine, and that a forced choice is kept."""
import pytest
import torch

from omni.engine import runtime
from omni.engine.runtime import pick_precision, setup_runtime

CPU = torch.device("cpu")


@pytest.fixture
def cpu_units(monkeypatch):
    def fake(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    return fake


@pytest.mark.parametrize("amx,avx,dtype,says", [(True, True, torch.bfloat16, "AMX-BF16"),
                                                (False, True, torch.bfloat16, "AVX512-BF16"),
                                                (False, False, None, "no native bf16")])
def test_auto_on_cpu(cpu_units, amx, avx, dtype, says):
    cpu_units(amx, avx)
    got, why = pick_precision(CPU, "auto")
    assert got == dtype and says in why and why.startswith("auto")


def test_forced_choice_is_kept(cpu_units, caplog):
    cpu_units(False, False)
    assert pick_precision(CPU, "fp32") == (None, "fp32 as configured")
    got, why = pick_precision(CPU, "bf16")
    assert got == torch.bfloat16 and "emulated" in why
    assert "several times slower" in caplog.text  # forced onto a slow path: said so


def test_auto_on_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_precision(torch.device("cuda", 0))[0] == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    got, why = pick_precision(torch.device("cuda", 0))
    assert got == torch.bfloat16 and "Old GPU supports bf16" in why


def test_runtime_carries_the_choice(cpu_units):
    cpu_units(True, False)
    rt = setup_runtime("cpu", "auto")
    assert rt.precision == "bf16" and rt.precision_reason == "auto: this CPU has AMX-BF16"
    assert setup_runtime("cpu", "fp32").precision == "fp32"


def test_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision(CPU, "fp8")
    assert runtime._DTYPES["bf16"] == torch.bfloat16
