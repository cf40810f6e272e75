"""ONNX export of a duration Talker (talker.alignment=durations): its plan, condition, start, step and
depth graphs match PyTorch part by part, the aligner's weights are accounted for as training-only, and
the runtime speaks the codes PyTorch speaks."""
import numpy as np
import pytest

from omni.export import runtime as R
from omni.speech.synthesis import Synthesizer
from tests.export.tiny_checkpoints import TEXTS, build_all, export_small


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tiny = build_all(tmp_path_factory.mktemp("dur_ckpts"), alignment="durations", vocoder=False)
    out = tmp_path_factory.mktemp("onnx") / "export"
    _, report = export_small(tiny, out)
    root = tiny["root"]
    return out, report, root


def test_duration_talker_exports_with_parity(exported):
    out, report, _ = exported
    assert report["passed"], (out / "parity.md").read_text()
    for name in ("talker_plan", "talker_cond", "talker_start", "talker_step", "talker_depth", "codec_decoder"):
        part = report["parts"][name]
        assert part["ok"] and len(part["cases"]) >= 2, name
    talker = report["weights"]["talker"]
    assert talker["ok"] and not talker["missing"] and not talker["unexpected"]
    assert any("aligner" in e["reason"] and e["tensors"] == 5 for e in talker["excluded"])  # to_latent w+b, 3 buffers
    assert report["talker"]["agreement"] == 1.0 and report["speech"]["ok"]


def test_runtime_speaks_the_codes_pytorch_speaks(exported):
    out, _, root = exported
    synth = Synthesizer.load(root / "tts", "cpu", temperature=0.0)
    rt = R.OnnxOmni(out)
    for text in TEXTS:
        for ids in synth.pieces(text):
            want = synth.talker.generate(ids).numpy()
            got = rt.voice.talker_codes(ids, 0.0, 0, np.random.default_rng(0))
            assert np.array_equal(got, want), text


def test_int8_copy_of_a_duration_talker_quantises_its_graphs_and_speaks(exported, tmp_path):
    """Every duration Talker graph reads the shared talker.weights: the INT8 copy quantises them all
    (none is left pointing at a weights file the folder does not have) and still speaks."""
    import onnx

    from omni.export.quantize import TALKER_GRAPHS, quantize_folder
    out, _, _ = exported
    quantize_folder(out, tmp_path / "int8")
    for name in ("talker_plan", "talker_cond", "talker_start", "talker_step", "talker_depth"):
        assert name in TALKER_GRAPHS
        graph = onnx.load(str(tmp_path / "int8" / f"{name}.onnx"), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer), name
    rt = R.OnnxOmni(tmp_path / "int8")
    assert len(rt.voice.synthesize("Red ball.")) > 0
