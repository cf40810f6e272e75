"""ONNX export (issue #38): tiny checkpoints round-trip with parity, graphs take any length, the weight
audit refuses a partial or altered transfer, and the torch-free runner chats and speaks."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from omni.export import exporter as E
from omni.export import graphs as G
from omni.export.cli import main as export_main
from tests.conftest import ROOT
from tests.export.tiny_checkpoints import build_all, export_small


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("export_ckpts"))


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    src, report = export_small(tiny, out)
    return out, report, src


def test_export_round_trips_with_parity_inside_tolerance(exported):
    out, report, _ = exported
    assert report["passed"], (out / "parity.md").read_text()
    w = report["weights"]
    assert set(w) == {"omni", "talker", "codec", "vocoder"}
    for audit in w.values():
        assert audit["ok"] and not audit["missing"] and not audit["unexpected"] and not audit["mismatched"]
        assert audit["stats"]["checkpoint"] == audit["stats"]["onnx"]
    assert w["omni"]["exported_tensors"] == w["omni"]["checkpoint_tensors"]          # nothing left behind
    reasons = {e["reason"] for e in w["codec"]["excluded"]}
    assert any("past the Talker" in r for r in reasons) and any("encoder" in r for r in reasons)
    assert [e["tensors"] for e in w["talker"]["excluded"]] == [1]                     # text_aux, training only
    for name in ("thinker_prefill", "thinker_decode", "audio_encoder", "vision_encoder", "talker_prefill",
                 "talker_decode", "talker_depth", "codec_decoder", "vocoder"):
        part = report["parts"][name]
        assert part["ok"] and len(part["cases"]) >= 2, name
    g = report["thinker_greedy"]
    assert g["agreement"] == 1.0 and g["template_identical"] and g["tokens_compared"] > 0
    assert report["asr"]["identical"] == report["asr"]["clips"] == 2
    assert report["talker"]["agreement"] == 1.0 and report["speech"]["ok"]
    assert "PASSED" in (out / "parity.md").read_text()


def test_manifest_hashes_shapes_and_shared_weights(exported):
    out, _, _ = exported
    m = json.loads((out / "manifest.json").read_text())
    assert m["opset"] == E.OPSET and "TorchScript" in m["exporter"]
    for name, meta in m["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"], name
    dec = m["graphs"]["thinker_decode"]
    assert dec["inputs"][1]["shape"][3] == "past" and dec["outputs"][1]["shape"][3] == "total"
    # prefill and decode read one weights file: each tensor stored once
    thinker_params = sum(p.numel() for p in exported[2].omni.thinker.parameters())
    assert (out / "thinker.weights").stat().st_size < 1.3 * 4 * thinker_params
    for f in ("tokenizer.json", "config.json", "frontend.npz", "text_vocab.json", "parity.json", "configs/components.json"):
        assert (out / f).is_file(), f


def test_two_lengths_through_one_graph(exported, tiny):
    out, _, src = exported
    th = src.omni.thinker
    sess = ort.InferenceSession(str(out / "thinker_decode.onnx"))
    audio = ort.InferenceSession(str(out / "audio_encoder.onnx"))
    for P, T in ((3, 1), (17, 4)):
        prompt = torch.randint(12, th.cfg.vocab_size, (1, P))
        new = torch.randint(12, th.cfg.vocab_size, (1, T))
        cache = th.new_cache(1, P + T)
        with torch.no_grad():
            th.hidden(prompt, cache=cache)
            k, v = cache.k[:, :, :, :P].numpy().copy(), cache.v[:, :, :, :P].numpy().copy()
            ref = th(new, cache=cache)[:, -1]
        logits, pk, _ = sess.run(None, {"ids": new.numpy(), "past_k": k, "past_v": v})
        assert pk.shape[3] == P + T
        np.testing.assert_allclose(logits, ref.numpy(), atol=1e-5)
    for frames in (9, 130):
        mel = torch.randn(1, frames, 128) - 4
        with torch.no_grad():
            states, _ = src.omni.audio_encoder(mel, torch.tensor([frames]))
            ref = src.omni.proj_audio(states)
        got = audio.run(None, {"mel": mel.numpy()})[0]
        assert got.shape[1] == -(-frames // 8)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_a_missing_weight_fails_the_export_with_a_clear_message(tiny, tmp_path, monkeypatch):
    src = E.load_sources(tiny["sft"])

    def no_projector(self, images):   # a graph that silently leaves the image projector behind
        cls, patches = self.vision(images)
        return torch.cat([cls[:, None], patches], dim=1)

    monkeypatch.setattr(G.VisionEncoderGraph, "forward", no_projector)
    with pytest.raises(E.ExportError, match=r"omni: 4 tensor\(s\) missing from the ONNX graphs: proj_image\.0\.bias"):
        E.export(src, tmp_path / "out", parity=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("damage, message", [("extra", r"1 tensor\(s\) unexpected \(not in the checkpoint\): thinker\.extra"),
                                             ("changed", r"1 tensor\(s\) changed .*thinker\.norm\.weight")])
def test_an_extra_or_altered_weight_fails_the_export(tiny, tmp_path, monkeypatch, damage, message):
    src = E.load_sources(tiny["sft"])
    real = E.to_onnx

    def tampered(spec):
        model = real(spec)
        if spec.name == "thinker_prefill":
            if damage == "extra":
                model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "thinker.extra"))
            else:
                t = next(t for t in model.graph.initializer if t.name == "thinker.norm.weight")
                arr = onnx.numpy_helper.to_array(t).copy()
                arr[0] += 1e-3
                t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        return model

    monkeypatch.setattr(E, "to_onnx", tampered)
    with pytest.raises(E.ExportError, match=message):
        E.export(src, tmp_path / "out", parity=False)


def test_cli_reports_a_checkpoint_with_an_extra_tensor(tiny, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file
    bad = tmp_path / "sft"
    shutil.copytree(tiny["sft"], bad)
    state = load_file(str(bad / "model.safetensors"))
    state["thinker.stray.weight"] = torch.zeros(3)
    save_file(state, str(bad / "model.safetensors"))
    assert export_main(["--ckpt", str(bad), "--out", str(tmp_path / "out"), "--no-parity"]) == 2
    assert "thinker.stray.weight" in capsys.readouterr().err


BLOCK_TORCH = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "librosa", "scipy", "safetensors", "omni.audio"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
sys.argv = ["omni.export.runtime"] + sys.argv[1:]
runpy.run_module("omni.export.runtime", run_name="__main__")
"""


def test_the_torch_free_runner_answers_with_an_image_an_audio_clip_and_a_spoken_reply(exported, tiny, tmp_path):
    out, _, _ = exported
    data = tiny["root"] / "data"
    wav = tmp_path / "reply.wav"
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(out), "--text", "What do you see and hear?",
                        "--image", str(data / "images/i1.png"), "--audio", str(data / "audio/c1.wav"),
                        "--audio-out", str(wav), "--max-new-tokens", "8", "--seed", "0", "--temperature", "0.8",
                        "--top-k", "50", "--top-p", "0.95"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "μOmni: " in r.stdout and "[ttft " in r.stdout
    import soundfile as sf
    audio, sr = sf.read(wav)
    assert sr == 16000 and len(audio) > 0 and np.isfinite(audio).all()
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(out), "--text", "hi", "--image", "/no/such.png"],
                       check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such image" in r.stderr


def test_int8_copy_quantises_the_matmuls_and_still_runs(exported, tmp_path):
    from omni.export import runtime as R
    from omni.export.quantize import model_bytes, quantize_folder
    out, _, _ = exported
    quantize_folder(out, tmp_path / "int8")
    q = onnx.load(str(tmp_path / "int8" / "thinker_decode.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in q.graph.node)
    assert model_bytes(tmp_path / "int8") < model_bytes(out)
    m = R.OnnxOmni(tmp_path / "int8")
    ids, kinds = R.build_sequence(m.encode, m.special, [R.Turn("user", "hello")], m.cfg["system_prompt"])
    reply = m.generate(*m.inputs(ids, kinds, [], []), 5, (), R.Sampling(), np.random.default_rng(0))
    assert len(reply) == 5 and len(m.voice.synthesize("Red ball.")) > 0


@pytest.mark.parametrize("vocoder", ["griffinlim", "hifigan"])
def test_runtime_speech_streams_the_audio_pytorch_speaks(exported, vocoder):
    """The runtime's streamed speech (Talker groups -> chunked codec -> block Griffin-Lim or chunked
    HiFi-GAN, a pause between text pieces) is PyTorch's Synthesizer output, sample for sample up to
    float rounding, and its chunks joined are its offline synthesis."""
    from omni.export import runtime as R
    from omni.speech.synthesis import Synthesizer
    out, _, src = exported
    m = R.OnnxOmni(out)
    text = "Red ball, blue box. A cat sat on the mat, and then it left."
    synth = Synthesizer(src.talker, src.vocab, src.codec, torch.device("cpu"),
                        src.vocoder if vocoder == "hifigan" else None, chunk_chars=m.cfg["speech"]["chunk_chars"])
    ref = synth.synthesize(text)
    utt = m.voice.start(vocoder=vocoder)
    chunks = list(utt.say(text))
    got = np.concatenate(chunks)
    assert synth.last_stats["chunks"] >= 2 and len(chunks) > 2 and utt.first_audio_s is not None
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3 * max(np.abs(ref).max(), 1e-3)
    np.testing.assert_array_equal(m.voice.synthesize(text, vocoder=vocoder), got)
