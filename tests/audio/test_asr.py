"""Stage B: encoder shapes, padding invariance, CTC decoding, bad rows, and learning real clips."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.audio.ctc import CharVocab, error_rates, greedy_decode, normalize_text
from omni.audio.encoder import AudioEncoderTiny, downsampled_lengths
from omni.audio.stage import AsrDataset, collate_asr
from omni.engine.checkpoint import read_metrics
from omni.manifest import Manifest
from tests.conftest import ROOT

CLIPS = ROOT / "assets" / "audio" / "clips.csv"


def _encoder(**kw):
    torch.manual_seed(0)
    args = dict(n_mels=128, d_model=48, n_layers=2, n_heads=3, d_ff=64, dropout=0.0, max_frames=256)
    args.update(kw)
    return AudioEncoderTiny(**args).eval()


def test_default_size_is_about_2m():
    cfg = json.loads((ROOT / "configs" / "audio_enc_tiny.json").read_text())["model"]
    enc = AudioEncoderTiny(128, cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["d_ff"], 0.0, 64)
    assert 1.95e6 < sum(p.numel() for p in enc.parameters()) < 2.15e6


@pytest.mark.parametrize("T", [1, 7, 8, 9, 63, 100, 101])
def test_downsampling_by_8_with_odd_lengths(T):
    enc = _encoder()
    out, lengths = enc(torch.randn(1, T, 128), torch.tensor([T]))
    assert out.shape == (1, -(-T // 8), 48) and lengths.item() == -(-T // 8)
    assert downsampled_lengths(torch.tensor([T])).item() == -(-T // 8)


def test_padding_never_changes_real_frames():
    enc = _encoder()
    x = torch.randn(1, 37, 128)
    alone, n = enc(x, torch.tensor([37]))
    padded = torch.cat([x, torch.randn(1, 50, 128)], 1)
    batch = torch.cat([padded, torch.randn(1, 87, 128)])
    both, lengths = enc(batch, torch.tensor([37, 87]))
    assert lengths.tolist() == [5, 11]
    assert torch.allclose(both[0, :5], alone[0], atol=1e-5)
    assert both[0, 5:].abs().max() == 0  # states past the length are zero


def test_ctc_greedy_decoding():
    vocab = CharVocab.default()
    a, b = vocab.index["a"], vocab.index["b"]
    path = [a, a, 0, a, b, b, 0, 0, b, 0]
    log_probs = torch.full((1, len(path), len(vocab)), -10.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert greedy_decode(log_probs, torch.tensor([len(path)]), vocab) == ["aabb"]
    assert greedy_decode(log_probs, torch.tensor([4]), vocab) == ["aa"]  # length respected


def test_text_normalisation_and_error_rates():
    assert normalize_text("Front-Center, it's 2 Café!") == "front center it's 2 cafe"
    assert error_rates(["abc de"], ["abd de"]) == {"cer": pytest.approx(1 / 6), "wer": pytest.approx(0.5)}


def test_bad_rows_are_skipped_and_counted(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    sf.write(tmp_path / "good.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    sf.write(tmp_path / "rate.wav", (0.3 * np.sin(2 * np.pi * 220 * t[:8000])).astype(np.float32), 8000)
    sf.write(tmp_path / "silent.wav", np.zeros(sr, dtype=np.float32), sr)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = ["wav,text", "good.wav,hello", "rate.wav,hi there", "silent.wav,quiet", "corrupt.wav,broken",
            "empty.wav,nothing", "missing.wav,gone", "good.wav,", '"bad,row']
    (tmp_path / "asr.csv").write_text("\n".join(rows) + "\n")
    ds = AsrDataset(Manifest(tmp_path / "asr.csv"), CharVocab.default(), 15.0, 2)
    items = [ds[i] for i in range(len(ds))]
    assert [x is not None for x in items] == [True, True, False, False, False, False, False, False]
    assert len(items[1][0]) == 16000  # 1 s at 8 kHz, resampled to 16 kHz at load
    report = ds.report()
    assert report["seen"] == 8 and report["skipped"] == 6 and report["empty_text"] == 1
    batch = collate_asr(items)
    assert batch["audio"].shape == (2, 16000) and batch["label_lengths"].tolist() == [5, 8]
    assert collate_asr([None, None]) is None


def test_manifest_errors_name_file_and_line(tmp_path):
    (tmp_path / "a.csv").write_text("path,words\nx.wav,hi\n")
    with pytest.raises(ValueError, match=r"a.csv:1: header .* lacks column"):
        Manifest(tmp_path / "a.csv")


def _asr_config(tmp_path, **train):
    cfg = json.loads((ROOT / "configs" / "audio_enc_tiny.json").read_text())
    cfg["data"].update(train_csv=str(CLIPS), val_csv=str(CLIPS))
    cfg["train"].update({"batch_size": 9, "max_steps": 4, "val_freq": 2, "checkpoint_freq": 2, "precision": "fp32",
                         "save_dir": str(tmp_path / "ck"), "warmup_steps": 2, "device": "cpu", **train})
    path = tmp_path / "asr.json"
    path.write_text(json.dumps(cfg))
    return path


def test_train_audio_enc_script_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "train_audio_enc.py", "--config", str(_asr_config(tmp_path))],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("model.safetensors", "config.json", "vocab.json", "train_state.pt", "metrics.jsonl"):
        assert (tmp_path / "ck" / name).is_file()
    assert any(m["event"] == "val" and "val_cer" in m for m in read_metrics(tmp_path / "ck"))
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "asr", "--ckpt", str(tmp_path / "ck"),
                        "--csv", str(CLIPS), "--lm", "--lm-order", "4", "--skip", "1", "--n", "6"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "overall      CER" in r.stdout and "speaker  alsa-utils" in r.stdout and "ref: " in r.stdout
    assert "6 of 9 rows decoded (rows 1-6" in r.stdout and "beam+LM      CER" in r.stdout, r.stdout
    assert "beam+LM: " in r.stdout   # each example shows the LM decoder's transcript too
    assert r.stdout.count("CER 95% ") == 2  # the bootstrap interval of the greedy and the LM column
    # the LM is built from the training transcripts (here the same clips) and each of their words said
    # alone (9 + 27), less every scored reference (6 two-word ones)
    assert "30 utterances from" in r.stdout, r.stdout
    assert "6 of them dropped as evaluated references" in r.stdout, r.stdout
    # an A/B of a checkpoint against itself: the same transcripts, so a difference of exactly zero
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "asr", "--ckpt", str(tmp_path / "ck"),
                        "--against", str(tmp_path / "ck"), "--csv", str(CLIPS), "--n", "5", "--examples", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "against      CER" in r.stdout and "paired 95% +0.0000 to +0.0000" in r.stdout, r.stdout
    assert "difference   CER +0.0000" in r.stdout and "  against: " in r.stdout, r.stdout
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Front left. And you always want to see it in the superlative degree. "
                      "Front right, said the man. A new sentence here.\n")
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "asr", "--ckpt", str(tmp_path / "ck"),
                        "--csv", str(CLIPS), "--lm", "--lm-text", str(corpus), "--skip", "7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # split as the audio builder splits a corpus ("Front left." is too short to be a sentence); the
    # arctic sentence is scored (row 8), so it leaves the LM; its words, alone, stay (3 sentences, 20 words)
    assert "22 utterances from" in r.stdout and "1 of them dropped" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "asr-tune", "--ckpt", str(tmp_path / "ck"),
                        "--csv", str(CLIPS), "--n", "4", "--lm-order", "3", "--lm-weight", "0.5", "1",
                        "--length-bonus", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("length bonus 1.0") == 2 and "best: --lm-weight" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "asr-tune", "--ckpt", str(tmp_path / "ck"),
                        "--csv", str(CLIPS), "--skip", "9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "clips.csv: no rows to decode from row 9 (9 rows)" in r.stderr, r.stderr


@pytest.mark.slow
def test_overfits_real_clips_to_near_zero_cer(tmp_path):
    cfg = _asr_config(tmp_path, max_steps=150, val_freq=50, checkpoint_freq=150, lr=0.002, warmup_steps=20)
    r = subprocess.run([sys.executable, "train_audio_enc.py", "--config", str(cfg), "model.spec_augment=false",
                        "model.dropout=0", "model.augment.telephone=0", "model.augment.reverb=0",
                        "model.augment.noise=0", "model.augment.speed=0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    cer = [m["val_cer"] for m in read_metrics(tmp_path / "ck") if m["event"] == "val"]
    assert cer[-1] < 0.05, cer


def test_registered_dataset_with_sidecar_transcripts_feeds_asr(tmp_path):
    """prepare_audio.py on a folder of clips with NAME.txt transcripts -> a registered dataset name
    that the ASR stage reads like a CSV."""
    import csv as csv_mod
    import shutil

    from omni.manifest import resolve_manifest
    from tests.builders.test_prepare_audio import prepare_script

    src = tmp_path / "clips"
    src.mkdir()
    rows = list(csv_mod.DictReader(open(CLIPS)))
    for row in rows:
        shutil.copy(CLIPS.parent / row["wav"], src / row["wav"])
        (src / row["wav"]).with_suffix(".txt").write_text(row["text"] + "\n")
    registry = tmp_path / "data" / "datasets.json"
    code = prepare_script().main(["--input-dir", str(src), "--dataset", "myclips", "--out",
                                  str(tmp_path / "data" / "processed"), "--val-fraction", "0.2",
                                  "--test-fraction", "0", "--workers", "1"])
    assert code == 0 and registry.is_file()
    m = Manifest(resolve_manifest("myclips", "train", registry))
    texts = {m[i]["text"] for i in range(len(m))}
    assert len(m) >= 6 and texts <= {r["text"] for r in rows}
    ds = AsrDataset(m, CharVocab.default(), 15.0, 2)
    assert all(ds[i] is not None for i in range(len(ds)))
    with pytest.raises(ValueError, match="not a registered dataset"):
        resolve_manifest("nope", "train", registry)
