"""Every stage's script on tiny configs, then a scripted chat session (the REPL driven via stdin)
with an image, an audio clip, a bad path and a spoken reply — as a user runs them."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.slow


def run(args: list[str], stdin: str | None = None, timeout: int = 300) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, input=stdin,
                       timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def steps(n: int, save_dir) -> list[str]:
    return [f"train.max_steps={n}", f"train.val_freq={n}", f"train.checkpoint_freq={n}",
            f"train.save_dir={save_dir}", "train.device=cpu", "train.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data, ck = tmp / "data", tmp / "ckpt"
    run(["scripts/make_synthetic_datasets.py", "--out", str(data), "--images", "40", "--speech", "16", "--ocr", "10"])
    # Stage A: a tiny Thinker whose context holds an image, a clip and a reply
    cfg = write_config(tmp, model={"ctx_len": 256}, data={"train_file": str(data / "text/tiny_corpus.txt")},
                       train={"save_dir": str(ck / "thinker")})
    run(["train_text.py", "--config", str(cfg)])
    run(["train_audio_enc.py", "--config", "configs/audio_enc_demo.json", *steps(3, ck / "audio"),
         "model.d_model=48", "model.n_layers=1", "model.n_heads=2", "model.d_ff=96",
         f"data.train_csv={data / 'audio/asr.csv'}", f"data.val_csv={data / 'audio/asr_val.csv'}",
         "data.val_items=4"])
    run(["train_vision.py", "--config", "configs/vision_demo.json", *steps(3, ck / "vision"),
         "model.img_size=32", "model.patch=8", "model.d_model=32", "model.n_layers=1", "model.d_ff=64",
         f"clip.thinker={ck / 'thinker'}", f"data.train_manifest={data / 'images/annotations.json'}",
         f"data.val_manifest={data / 'images/annotations_val.json'}", "data.candidates=4"])
    tts = [f"{section}{k}={data / 'audio' / f}" for section in ("codec.data.", "data.")
           for k, f in (("train_csv", "tts.csv"), ("val_csv", "tts_val.csv"))]
    run(["train_talker.py", "--config", "configs/talker_demo.json", *tts,
         *[f"codec.{s}" for s in steps(3, ck / "talker" / "codec")], *steps(3, ck / "talker" / "talker")])
    run(["sft_omni.py", "--config", "configs/omni_sft_demo.json", *steps(3, ck / "sft"),
         f"model.thinker_ckpt={ck / 'thinker'}", f"model.audio_ckpt={ck / 'audio'}",
         f"model.vision_ckpt={ck / 'vision'}", f"data.image_manifest={data / 'images/annotations.json'}",
         f"data.image_val_manifest={data / 'images/annotations_val.json'}",
         f"data.asr_csv={data / 'audio/asr.csv'}", f"data.asr_val_csv={data / 'audio/asr_val.csv'}",
         f"data.text_file={data / 'text/tiny_corpus.txt'}", f"data.text_val_file={data / 'text/tiny_val.txt'}",
         "data.epoch_size=40", "data.val_items=2", "train.val_batches=1"])
    return tmp, data, ck


def test_every_stage_then_a_scripted_chat_session(trained):
    tmp, data, ck = trained
    scene = json.loads((data / "images/annotations_val.json").read_text())[0]
    clip = (data / "audio/asr_val.csv").read_text().splitlines()[1].split(",")[0]
    wav = tmp / "reply.wav"
    script = "\n".join([
        "/help", "/speak on", f"/image {data / 'images' / scene['image']}", scene["qa"][0][0],
        "/image /no/such/image.png", "/ocr /no/such/line.png", f"/audio {data / 'audio' / clip}", "Transcribe the audio.",
        "/reset", "hello", "/quit"]) + "\n"
    out = run(["infer_chat.py", "--ckpt", str(ck / "sft"), "--talker", str(ck / "talker"),
               "--audio-out", str(wav), "--max-new-tokens", "8", "--seed", "0"], stdin=script)
    assert "/image PATH" in out                             # help
    assert out.count("μOmni: ") == 3                        # three replies, the session went on
    assert "could not use image /no/such/image.png" in out  # a bad path is a message, not a crash
    assert "could not read text from /no/such/line.png" in out
    assert out.count("[ttft ") == 3 and "conversation cleared" in out
    spoken = sorted(tmp.glob("reply*.wav"))
    assert spoken, out
    audio, sr = sf.read(spoken[0])
    assert sr == 16000 and len(audio) > 0 and np.isfinite(audio).all()


def test_one_shot_flags_and_missing_checkpoint(trained, tmp_path):
    tmp, data, ck = trained
    scene = json.loads((data / "images/annotations_val.json").read_text())[0]
    out = run(["infer_chat.py", "--ckpt", str(ck / "sft"), "--image", str(data / "images" / scene["image"]),
               "--text", "What is in this picture?", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9",
               "--max-new-tokens", "6", "--seed", "1", "--device", "cpu"])
    assert "μOmni: " in out and "[ttft " in out
    r = subprocess.run([sys.executable, "infer_chat.py", "--ckpt", str(tmp_path / "none"), "--text", "hi"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "components.json" in r.stderr


def test_sft_refuses_a_missing_stage_checkpoint(trained, tmp_path):
    _, data, ck = trained
    r = subprocess.run([sys.executable, "sft_omni.py", "--config", "configs/omni_sft_demo.json",
                        f"model.thinker_ckpt={ck / 'thinker'}", f"model.audio_ckpt={tmp_path / 'missing'}",
                        f"model.vision_ckpt={ck / 'vision'}", f"train.save_dir={tmp_path / 'out'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing" in r.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_all_media_reports_numbers(trained):
    _, _, ck = trained
    out = run(["scripts/evaluate.py", "omni", "--ckpt", str(ck / "sft"), "--n", "2", "--speech-n", "0",
               "--text-batches", "1"])
    for key in ("vqa_acc", "caption_kw", "asr_cer", "Stage B alone", "omni tax"):
        assert key in out
