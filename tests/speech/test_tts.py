"""Stage D data + synthesis: the code cache, bad rows, the Synthesizer's text handling, and
train_talker.py end to end (codec phase, then Talker phase) on the committed clips."""
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import train_talker
import train_vocoder
from omni.cli import evaluate
from omni.cli import tts as tts_cli
from omni.engine.checkpoint import CheckpointError, read_metrics
from omni.manifest import Manifest
from omni.speech.synthesis import Synthesizer, resolve_vocoder
from omni.speech.synthesis import talker_dir as tts_talker_dir
from omni.talker import stage as talker_stage
from omni.talker.data import CodeCache, TalkerDataset, collate_talker, evaluate_talker, unigram_code_ce
from omni.talker.loss import TalkerLossConfig, talker_loss
from omni.talker.model import Talker, TalkerConfig
from omni.talker.text import TextVocab
from tests.conftest import ROOT
from tests.vocoder.test_vocoder import _stage as vocoder_stage

CLIPS = ROOT / "assets" / "audio" / "clips.csv"
N_Q, K = 2, 8


class StandInCodec(nn.Module):
    """The codec interface (encode / decode / sizes) with a fixed, untrained mapping: tests only."""

    def __init__(self, frames_per_code: int = 2) -> None:
        super().__init__()
        self.n_codebooks, self.codebook_size, self.frames_per_code = N_Q, K, frames_per_code
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, log_mel: torch.Tensor, lengths=None) -> torch.Tensor:
        x = log_mel[:, ::self.frames_per_code]                         # (B, T', 128)
        base = (x.mean(-1) * 3).long() % K
        return torch.stack([base, (x[..., :8].mean(-1) * 7).long() % K], dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        mel = (codes.float().sum(-1, keepdim=True) - 8.0).expand(*codes.shape[:2], 128) * self.scale
        return mel.repeat_interleave(self.frames_per_code, dim=1)


def _clips_in(folder):
    """The committed clips copied into ``folder``: rows (text, wav name), paths a manifest there may read."""
    rows = Manifest(CLIPS)
    for i in range(len(rows)):
        shutil.copy(rows[i]["wav"], folder)
    return [(rows[i]["text"], Path(rows[i]["wav"]).name) for i in range(len(rows))]


def _csv_with_bad_rows(tmp_path):
    rows = _clips_in(tmp_path)
    lines = ["text,wav"] + [f"{text},{wav}" for text, wav in rows]
    lines += ["missing file,does_not_exist.wav", f"\u2603\u2603,{rows[0][1]}"]
    path = tmp_path / "tts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, len(rows)


def test_code_cache_builds_skips_bad_rows_and_is_reused(tmp_path):
    csv, n_good = _csv_with_bad_rows(tmp_path)
    codec = StandInCodec()
    cache = CodeCache.load_or_build(csv, tmp_path / "codes", codec, "sha-a", 12.0)
    assert cache.reasons == {n_good: "audio_missing"}
    assert cache.codes.shape[1] == N_Q and cache.codes.dtype == np.int16
    assert len(cache.offsets) == n_good + 3
    data = TalkerDataset(Manifest(csv), cache, TextVocab.default(), 200)
    items = [data[i] for i in range(len(data))]
    assert sum(x is None for x in items) == 2 and data.report()["skipped"] == 2
    assert data.lengths()[n_good] == 0 and data.lengths()[0] > 0
    batch = collate_talker(items)
    assert batch["text"].shape[0] == n_good and batch["codes"].max() < K
    first = TalkerDataset(Manifest(csv), cache, TextVocab.default(), 200, n_codebooks=1)  # the base codebook only
    assert torch.equal(first[0][1], items[0][1][:, :1])
    # a second load reads the cache; a different codec (SHA) re-encodes
    npy = tmp_path / "codes" / "tts.csv.codes.npy"
    mtime = npy.stat().st_mtime_ns
    assert np.array_equal(CodeCache.load_or_build(csv, tmp_path / "codes", codec, "sha-a", 12.0).codes, cache.codes)
    assert npy.stat().st_mtime_ns == mtime
    CodeCache.load_or_build(csv, tmp_path / "codes", codec, "sha-b", 12.0)
    assert json.loads((tmp_path / "codes" / "tts.csv.codes.json").read_text())["stamp"]["codec_sha1"] == "sha-b"


def test_text_gain_is_the_ce_lost_with_a_neighbours_text_and_zero_for_a_talker_that_ignores_text(tmp_path):
    csv, _ = _csv_with_bad_rows(tmp_path)
    cache = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)
    data = TalkerDataset(Manifest(csv), cache, TextVocab.default(), 200)
    talker = _synth().talker.eval()
    out = evaluate_talker(talker, data, TalkerLossConfig(), batch_size=3, n_items=100)
    assert out["val_text_gain"] != 0.0 and np.isfinite(out["val_text_gain_q0"])
    # the same number by hand: every usable row (by length) against its neighbour's text
    usable = sorted((i for i in range(len(data)) if data.reason(i) is None),
                    key=lambda i: int(cache.offsets[i + 1] - cache.offsets[i]))
    items = [data[i] for i in usable]
    with torch.no_grad():
        def ce(rows):
            return np.mean([talker_loss(talker, collate_talker([r]), TalkerLossConfig(), 2)[1]["ce"] for r in rows])
        right = ce(items)
        wrong = ce([(items[(j + 1) % len(items)][0], c) for j, (_, c) in enumerate(items)])
    one = evaluate_talker(talker, data, TalkerLossConfig(), batch_size=1, n_items=100)
    assert one["val_text_gain"] == pytest.approx(wrong - right, abs=1e-5)
    # rows that all say the same text lose nothing when given a neighbour's
    same = tmp_path / "same.csv"
    same.write_text("text,wav\n" + "".join(f"front left,{wav}\n" for _, wav in _clips_in(tmp_path)[:4]))
    same_data = TalkerDataset(Manifest(same), CodeCache.load_or_build(same, tmp_path / "codes", StandInCodec(),
                                                                       "sha", 12.0), TextVocab.default(), 200)
    assert evaluate_talker(talker, same_data, TalkerLossConfig(), 2, 100)["val_text_gain"] == pytest.approx(0.0)


def _synth(max_text_chars: int = 40, **kw) -> Synthesizer:
    torch.manual_seed(0)
    vocab = TextVocab.default()
    talker = Talker(TalkerConfig(d_model=48, n_layers=2, n_heads=3, n_kv_heads=1, d_ff=96, ctx_len=512,
                                 dropout=0.0, frames_per_step=2, n_codebooks=N_Q, codebook_size=K,
                                 text_vocab_size=len(vocab), max_text_chars=max_text_chars, max_frames_per_char=1.0))
    return Synthesizer(talker, vocab, StandInCodec(), torch.device("cpu"), gl_iters=2, **kw)


def test_unigram_code_baseline():
    every = np.stack([np.arange(8), np.arange(8)[::-1]], axis=1)  # each code once per codebook
    assert unigram_code_ce(every, every, 8) == pytest.approx(np.log(8))
    skewed = np.zeros((100, 2), dtype=np.int16)  # always code 0: cheap to predict, costly when wrong
    assert unigram_code_ce(skewed, skewed, 8) < 0.1 < unigram_code_ce(skewed, every, 8)


def test_synthesize_returns_16k_float32_with_stats():
    synth = _synth()
    wav = synth.synthesize("Hello there.")
    assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) > 0 and np.isfinite(wav).all()
    s = synth.last_stats
    assert s["chunks"] == 1 and abs(s["audio_s"] - len(wav) / 16000) < 1e-9
    assert s["rtf"] == pytest.approx(s["synth_s"] / s["audio_s"])
    # frame rates agree: T' codes -> 2 T' mel frames -> (2 T' - 1) * 256 samples
    assert len(wav) == (s["frames"] - 1) * 256


def test_seeded_synthesis_repeats_exactly():
    synth = _synth()
    synth.temperature = 0.6   # sampled (the default, 0, is greedy and repeats without a seed)
    a, b = synth.synthesize("Same seed.", seed=7), synth.synthesize("Same seed.", seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synth.synthesize("Same seed.", seed=8))


def test_empty_and_unreadable_text_give_empty_audio():
    synth = _synth()
    for text in ["", "   ", "\u2603\u2603"]:
        wav = synth.synthesize(text)
        assert wav.shape == (0,) and wav.dtype == np.float32 and synth.last_stats["audio_s"] == 0
    synth.synthesize("ok \u2603")
    assert synth.last_stats["dropped_chars"] == 1


def test_very_long_text_is_spoken_in_chunks():
    synth = _synth(max_text_chars=40)
    text = "This is one sentence. " * 6 + "and a clause that goes on, and on, and on, without a full stop"
    wav = synth.synthesize(text)
    assert synth.last_stats["chunks"] >= 7 and len(wav) > 0


def test_chunk_chars_sets_the_pieces_and_never_exceeds_what_the_talker_read():
    text = "A first clause here, a second clause there, and a third one at the very end."  # 76 chars
    chunks = {}
    for n in (20, 40, 200):
        synth = _synth(max_text_chars=80, chunk_chars=n)
        synth.synthesize(text)
        chunks[n] = synth.last_stats["chunks"]
    assert chunks[200] == 1 and chunks[40] == 3 and chunks[20] == 5  # cut at the commas, then spaces
    assert _synth(max_text_chars=40, chunk_chars=100).chunk_chars == 40  # capped at max_text_chars
    with pytest.raises(ValueError, match="chunk_chars"):
        _synth(chunk_chars=0)


def test_synthesizer_rejects_an_unknown_vocoder(tmp_path):
    with pytest.raises(ValueError, match="unknown vocoder 'wavenet'"):
        Synthesizer.load(tmp_path, vocoder="wavenet")
    assert resolve_vocoder("auto", tmp_path) == "griffinlim" and resolve_vocoder("hifigan", tmp_path) == "hifigan"


def _tiny_config(tmp_path) -> dict:
    train = {"batch_size": 4, "gradient_accumulation_steps": 1, "lr": 3e-3, "weight_decay": 0.0,
             "warmup_steps": 2, "max_steps": 4, "max_epochs": 100, "max_grad_norm": 1.0, "val_freq": 2,
             "checkpoint_freq": 2, "precision": "fp32", "seed": 0, "log_freq": 1, "device": "cpu"}
    return {
        "codec": {"model": {"n_codebooks": 2, "codebook_size": 8, "codebook_dim": 8, "d_model": 16, "n_layers": 1,
                            "frames_per_code": 2, "kmeans_iters": 2},
                  "data": {"train_csv": str(CLIPS), "val_csv": str(CLIPS), "crop_frames": 32, "val_items": 4},
                  "train": {**train, "save_dir": str(tmp_path / "ckpt" / "codec")}},
        "talker": {"d_model": 24, "n_layers": 2, "n_heads": 3, "n_kv_heads": 1, "d_ff": 48, "ctx_len": 512,
                   "dropout": 0.0, "frames_per_step": 2},
        "loss": {"guided_layers": [1]},
        "data": {"train_csv": str(CLIPS), "val_csv": str(CLIPS), "val_items": 4},
        "train": {**train, "save_dir": str(tmp_path / "ckpt" / "talker")},
    }


def test_train_talker_end_to_end_then_synthesize(tmp_path, capsys, caplog):
    """In-process (the scripts' main()) to keep the test fast; the CLI itself is the same code."""
    caplog.set_level(logging.INFO, logger="omni.talker.stage")
    cfg_path = tmp_path / "talker.json"
    cfg_path.write_text(json.dumps(_tiny_config(tmp_path)))
    assert train_talker.main(["--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "codec result: status=done" in out and "talker result: status=done" in out
    talker_dir = tmp_path / "ckpt" / "talker"
    vals = [r for r in read_metrics(talker_dir) if r["event"] == "val"]
    assert [r["step"] for r in vals] == [2, 4] and all(np.isfinite(r["val_loss"]) for r in vals)
    assert {"val_ce_q0", "val_ce_q1", "val_stop_acc", "val_unigram_ce", "val_text_gain", "val_text_gain_q0"} <= set(vals[0])
    cache = talker_dir / "codes" / "clips.csv.codes.npy"
    mtime = cache.stat().st_mtime_ns
    # a second run skips the finished codec and reuses the cached codes; fed its own predictions
    # (loss.self_feed) it also validates self-fed, and keeps best/ by that loss
    assert train_talker.main(["--config", str(cfg_path), "--overwrite", "train.max_steps=2",
                              "loss.self_feed=0.5"]) == 0
    assert "is finished; skipping" in caplog.text and cache.stat().st_mtime_ns == mtime
    val = [r for r in read_metrics(talker_dir) if r["event"] == "val"][-1]
    assert val["val_fed_loss"] == pytest.approx(val["val_fed_ce"] + val["val_fed_stop_bce"])
    with safe_open(str(talker_dir / "best" / "model.safetensors"), "pt") as f:
        assert float(f.metadata()["val_fed_loss"]) == pytest.approx(val["val_fed_loss"])
    synth = Synthesizer.load(tmp_path / "ckpt", "cpu", gl_iters=2)
    wav = synth.synthesize("Front left.", seed=0)
    assert wav.dtype == np.float32 and len(wav) > 0
    # a Talker folder carries its codec: copied elsewhere, with the codec it was trained on gone, it speaks alike
    moved = tmp_path / "elsewhere" / "my_talker"
    shutil.copytree(tts_talker_dir(tmp_path / "ckpt"), moved / "talker")
    (tmp_path / "ckpt" / "codec").rename(tmp_path / "codec_away")
    assert np.array_equal(Synthesizer.load(moved, "cpu", gl_iters=2).synthesize("Front left.", seed=0), wav)
    (tmp_path / "codec_away").rename(tmp_path / "ckpt" / "codec")
    out_wav = tmp_path / "hello.wav"
    assert tts_cli.main(["--text", "Hello there.", "--out", str(out_wav), "--talker", str(tmp_path / "ckpt"),
                         "--seed", "0", "--device", "cpu", "--gl-iters", "2"]) == 0
    assert out_wav.is_file() and "RTF" in capsys.readouterr().out
    # a Talker of the codec's first codebook only: trained on those codes, decoded from them alone
    assert train_talker.main(["--config", str(cfg_path), "--overwrite", "train.max_steps=2",
                              "talker.n_codebooks=1"]) == 0
    assert json.loads((talker_dir / "config.json").read_text())["talker"]["n_codebooks"] == 1
    synth = Synthesizer.load(tmp_path / "ckpt", "cpu", gl_iters=2)
    assert [c.shape[1] for c in synth.codes("Front left.")] == [1]
    wav = synth.synthesize("Front left.", seed=0)
    assert len(wav) > 0
    # a Talker that reads espeak-ng phonemes: its vocabulary says so, and synthesis phonemizes
    assert train_talker.main(["--config", str(cfg_path), "--overwrite", "train.max_steps=2",
                              "talker.text_input=phonemes"]) == 0
    assert json.loads((talker_dir / "text_vocab.json").read_text(encoding="utf-8"))["kind"] == "phonemes"
    synth = Synthesizer.load(tmp_path / "ckpt", "cpu", gl_iters=2)
    assert synth.vocab.kind == "phonemes" and synth.talker.text_emb.num_embeddings == len(synth.vocab)
    assert len(synth.synthesize("Front left.", seed=0)) > 0
    # a vocabulary that disagrees with the config is a mixed-up folder, not something to guess around
    loaded = tts_talker_dir(tmp_path / "ckpt") / "text_vocab.json"  # best/ when there is one
    vocab_bytes = loaded.read_bytes()
    TextVocab.default().save(loaded)
    with pytest.raises(CheckpointError, match="reads chars but config.json says talker.text_input=phonemes"):
        Synthesizer.load(tmp_path / "ckpt", "cpu")
    loaded.write_bytes(vocab_bytes)
    capsys.readouterr()
    # every speech-out path on the same rows (the teacher-forced one with that Talker), scored by
    # pocketsphinx, plus codebook usage
    assert evaluate.main(["tts", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--n", "2",
                          "--gl-iters", "2", "--codec-keep", "1"]) == 0
    out = capsys.readouterr().out
    for path in ("original", "griffinlim", "codec_griffinlim", "codec_first1_griffinlim", "talker_codec_griffinlim",
                 "teacher_forced_talker", "q1: usage"):
        assert path in out
    assert "other text" in out  # each path's CER against the next row's text, beside its own
    assert evaluate.main(["tts", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--n", "1",
                          "--gl-iters", "2", "--paths", "talker,teacher"]) == 0
    assert "teacher_forced_talker" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="codec-keep"):
        evaluate.main(["tts", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--paths", "codec",
                       "--codec-keep", "9"])
    # does it read the text: teacher-forced CE, text gain and where the attention goes, per layer
    assert evaluate.main(["talker", "--talker", str(tmp_path / "ckpt"), "--csv", str(CLIPS), "--n", "4",
                          "--free", "2", "--temperature", "0.6"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"free-running, 2 rows \(temperature 0.6, top-k 20\): length \d+\.\d\d of the recording's", out)
    n_layers = json.loads((talker_dir / "config.json").read_text())["talker"]["n_layers"]
    assert "the first 4 usable rows" in out and "text gain" in out
    assert out.count("of the attention on the text, spread over") == n_layers
    # a trained HiFi-GAN takes Griffin-Lim's place when asked for (or found by "auto")
    (tmp_path / "voc.json").write_text(json.dumps(vocoder_stage(tmp_path, tmp_path / "voc", steps=2)))
    assert train_vocoder.main(["--config", str(tmp_path / "voc.json")]) == 0
    # two steps do not beat Griffin-Lim: "auto" keeps Griffin-Lim until validation says otherwise
    assert resolve_vocoder("auto", tmp_path / "voc") == "griffinlim"
    metrics = tmp_path / "voc" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({"event": "val", "step": 9, "val_mel_l1": 0.1,
                                                         "val_gl_mel_l1": 0.2}) + "\n")
    assert resolve_vocoder("auto", tmp_path / "voc") == "hifigan"
    synth = Synthesizer.load(tmp_path / "ckpt", "cpu", vocoder="hifigan", vocoder_dir=tmp_path / "voc")
    wav = synth.synthesize("Front left.", seed=0)
    assert synth.vocoder_name == "hifigan" and wav.dtype == np.float32 and len(wav) > 0


def test_tts_cli_fails_cleanly_without_a_checkpoint(tmp_path, capsys):
    assert tts_cli.main(["--text", "Hi.", "--out", str(tmp_path / "x.wav"), "--talker", str(tmp_path)]) == 2
    assert "train_talker.py" in capsys.readouterr().err


def test_config_rejects_an_unknown_text_input(tmp_path, capsys):
    cfg_path = tmp_path / "talker.json"
    cfg_path.write_text(json.dumps(_tiny_config(tmp_path)))
    assert train_talker.main(["--config", str(cfg_path), "talker.text_input=graphemes"]) == 2
    assert "talker.text_input must be one of chars, phonemes, got 'graphemes'" in capsys.readouterr().err


def test_config_rejects_unknown_keys(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    cfg["talker"]["d_modle"] = 8
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    assert train_talker.main(["--config", str(tmp_path / "bad.json")]) == 2
    assert "did you mean 'd_model'" in capsys.readouterr().err


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
def test_codebook_weights_must_give_one_weight_per_codec_codebook(weights):
    from types import SimpleNamespace

    from omni.config import ConfigError, config_from_dict
    from omni.talker.stage import TalkerStageConfig
    raw = json.loads((ROOT / "configs" / "talker_tiny.json").read_text())
    raw["loss"]["codebook_weights"] = weights
    cfg = config_from_dict(raw, TalkerStageConfig)
    with pytest.raises(ConfigError, match="codebook_weights"):
        talker_stage.fill_from_codec(cfg, SimpleNamespace(n_codebooks=4, codebook_size=256, codebook_dim=64), TextVocab.default())


def test_talker_may_predict_the_first_codebooks_only():
    from types import SimpleNamespace

    from omni.config import ConfigError, config_from_dict
    from omni.talker.stage import TalkerStageConfig
    raw = json.loads((ROOT / "configs" / "talker_tiny.json").read_text())
    codec = SimpleNamespace(n_codebooks=4, codebook_size=256, codebook_dim=64)
    for asked, filled in ((0, 4), (2, 2), (4, 4)):
        raw["talker"]["n_codebooks"] = asked
        raw["loss"]["codebook_weights"] = [1.0] * filled
        cfg = config_from_dict(raw, TalkerStageConfig)
        talker_stage.fill_from_codec(cfg, codec, TextVocab.default())
        assert cfg.talker.n_codebooks == filled and cfg.talker.codebook_size == 256
    for bad in (5, -1):
        raw["talker"]["n_codebooks"] = bad
        with pytest.raises(ConfigError, match=rf"talker.n_codebooks={bad} but the codec has 4"):
            talker_stage.fill_from_codec(config_from_dict(raw, TalkerStageConfig), codec, TextVocab.default())
