"""OCR stage: preprocessing without distortion, encoder shapes and padding invariance, the one-shift
teacher forcing, greedy and beam decoding, bad rows, the script end to end, and learning a tiny set."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import train_ocr
from omni.audio.ctc import greedy_decode as ctc_greedy
from omni.builders.ocr import make_synthetic_ocr
from omni.cli import evaluate
from omni.engine.checkpoint import CheckpointError, read_metrics
from omni.images import BadImage
from omni.ocr.model import BOS, EOS, OcrModel, OcrModelConfig, OcrVocab, beam_decode, greedy_decode
from omni.ocr.stage import OcrDataset, collate_ocr, evaluate_ocr, line_tensor, load_ocr, ocr_loss, read_image
from tests.conftest import ROOT

SONNETS = ROOT / "assets" / "text" / "sonnets.txt"


def _cfg(**kw) -> OcrModelConfig:
    args = dict(img_size=32, max_width=256, patch=8, vision_d_model=32, vision_n_layers=1, vision_n_heads=2,
                vision_d_ff=64, decoder_d_model=32, decoder_n_layers=1, decoder_n_heads=2, decoder_d_ff=64,
                max_text_len=40, dropout=0.0)
    args.update(kw)
    return OcrModelConfig(**args)


def _model(**kw) -> OcrModel:
    torch.manual_seed(0)
    return OcrModel(_cfg(**kw), len(OcrVocab.ascii())).eval()


def _line(text: str, w: int = 200, h: int = 40, fg: int = 0, bg: int = 255) -> Image.Image:
    img = Image.new("L", (w, h), bg)
    ImageDraw.Draw(img).text((4, 10), text, fill=fg)
    return img


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr")
    return make_synthetic_ocr(out, 12, seed=0, train_text=SONNETS, val_text=SONNETS)


def test_vocab_round_trip_and_unknown_characters(tmp_path):
    v = OcrVocab.ascii()
    assert len(v) == 3 + 95 and v.decode(v.encode("Hello, World! 42")) == "Hello, World! 42"
    assert v.decode([*v.encode("ab"), EOS, *v.encode("cd")]) == "ab" and v.unknown("naïve ß") == "ßï"
    v.save(tmp_path / "vocab.json")
    assert OcrVocab.load(tmp_path / "vocab.json").chars == v.chars


def test_preprocessing_keeps_the_aspect_and_fits_long_lines():
    x, w = line_tensor(_line("abc", w=100, h=20), height=32, max_width=256, patch=8)
    assert x.shape == (1, 32, 160) and w == 160 and x.min() >= 0 and x.max() <= 1
    x, w = line_tensor(_line("abc", w=101, h=20), height=32, max_width=256, patch=8)
    assert x.shape == (1, 32, 168) and w == 162 and float(x[..., w:].abs().sum()) == 0  # padding is blank
    # 1000x20 at height 32 would be 1600 wide: scaled down whole to 256x5, centred, nothing cropped
    x, w = line_tensor(_line("a long line " * 8, w=1000, h=20), height=32, max_width=256, patch=8)
    assert x.shape == (1, 32, 256) and w == 256
    rows = (x[0].sum(1) > 0).nonzero().flatten()
    assert rows.min() >= 13 and rows.max() <= 18


def test_background_is_blank_for_dark_and_light_images():
    light, _ = line_tensor(_line("Hi there", fg=0, bg=255), 32, 256, 8)
    dark, _ = line_tensor(_line("Hi there", fg=255, bg=0), 32, 256, 8)
    assert float(light.median()) == 0.0 and float(dark.median()) == 0.0
    assert torch.allclose(light, dark, atol=1e-5)


def test_encoder_orders_patches_by_column_and_masks_padding():
    m = _model()
    x = torch.rand(2, 1, 32, 64)
    states, mask = m.encoder(x, torch.tensor([64, 20]))
    assert states.shape == (2, 4 * 8, 32) and mask.shape == (2, 32)
    assert mask[0].all() and mask[1].tolist() == [True] * 12 + [False] * 20  # ceil(20/8)=3 columns x 4 rows
    with pytest.raises(ValueError, match="multiple"):
        m.encoder(torch.rand(1, 1, 32, 60), torch.tensor([60]))


def test_padding_never_changes_the_real_line():
    m = _model()
    a = torch.rand(1, 1, 32, 48)
    ids = torch.tensor([[BOS, 40, 41, 42]])
    alone = m(a, torch.tensor([48]), ids)
    padded = torch.zeros(2, 1, 32, 128)
    padded[0, :, :, :48], padded[1] = a[0], torch.rand(1, 32, 128)
    both = m(padded, torch.tensor([48, 128]), ids.repeat(2, 1))
    assert torch.allclose(alone[0], both[0], atol=1e-5)


def test_ctc_head_reads_columns_left_to_right_and_ignores_padding():
    m = _model(ctc_weight=0.5, ctc_symbols=2)
    a = torch.rand(1, 1, 32, 48)
    lp, n = m.ctc(*m.encoder(a, torch.tensor([44])))
    assert lp.shape == (1, 6 * 2, 98) and n.tolist() == [12]  # ceil(44/8)=6 columns x 2 symbols
    assert torch.allclose(lp.exp().sum(-1), torch.ones(1, 12), atol=1e-5)
    padded = torch.zeros(2, 1, 32, 128)
    padded[0, :, :, :48], padded[1] = a[0], torch.rand(1, 32, 128)
    lp2, n2 = m.ctc(*m.encoder(padded, torch.tensor([44, 128])))
    assert n2.tolist() == [12, 32] and torch.allclose(lp[0], lp2[0, :12], atol=1e-5)
    with pytest.raises(ValueError, match="no CTC head"):
        _model().ctc(*m.encoder(a, torch.tensor([48])))


def test_hybrid_loss_adds_the_weighted_ctc_term():
    v = OcrVocab.ascii()
    items = [(torch.rand(1, 32, 64), 60, v.encode("hello")), (torch.rand(1, 32, 40), 40, v.encode("hi"))]
    b = collate_ocr(items)
    plain, logs = ocr_loss(_model(), b)
    assert set(logs) == {"loss"} and abs(plain.item() - logs["loss"]) < 1e-6
    m = _model(ctc_weight=0.5)
    total, logs = ocr_loss(m, b)
    assert set(logs) == {"loss", "ctc_loss"} and logs["ctc_loss"] > 0
    assert abs(total.item() - (logs["loss"] + 0.5 * logs["ctc_loss"])) < 1e-4
    # the CTC target is the text without eos: a best path of exactly those labels decodes to it
    lp, n = m.ctc(*m.encoder(b["images"], b["widths"]))
    fake = torch.full_like(lp, -1e4)
    fake[..., 0] = 0.0
    for k, text in enumerate(["hello", "hi"]):
        for t, c in enumerate(v.encode(text)):
            fake[k, 2 * t, 0], fake[k, 2 * t, c] = -1e4, 0.0
    assert ctc_greedy(fake, n, v) == ["hello", "hi"]


def test_the_configured_decoder_is_the_one_scored(lines):
    train_csv, _ = lines
    v = OcrVocab.ascii()
    data = OcrDataset(train_csv, v, _cfg())
    for decoder in ("attention", "ctc"):
        m = _model(ctc_weight=0.5, decoder=decoder)
        metrics, results = evaluate_ocr(m, data, v, 4, 4)
        assert metrics["val_cer"] == metrics[f"val_{decoder}_cer"] and len(results) == 4
    assert "val_ctc_cer" not in evaluate_ocr(_model(), data, v, 4, 4)[0]
    with pytest.raises(ValueError, match="not one this model has"):
        evaluate_ocr(_model(), data, v, 4, 4, decoder="ctc")
    with pytest.raises(ValueError, match="needs model.ctc_weight > 0"):
        _model(decoder="ctc")


def test_decoder_is_causal_one_shift():
    """Logits at position t depend on ids <= t only: changing id t+1 leaves positions <= t alone."""
    m = _model()
    x, w = torch.rand(1, 1, 32, 64), torch.tensor([64])
    a = m(x, w, torch.tensor([[BOS, 40, 41, 42, 43]]))
    b = m(x, w, torch.tensor([[BOS, 40, 41, 50, 51]]))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3])


def test_collate_shifts_targets_by_exactly_one():
    v = OcrVocab.ascii()
    items = [(torch.rand(1, 32, 16), 16, v.encode("ab")), (torch.rand(1, 32, 40), 33, v.encode("xyz"))]
    b = collate_ocr(items)
    assert b["images"].shape == (2, 1, 32, 40) and b["widths"].tolist() == [16, 33]
    assert b["inputs"][0].tolist() == [BOS, *v.encode("ab"), 0] and b["targets"][0].tolist() == [*v.encode("ab"), EOS, -100]
    assert b["inputs"][1, 1:].tolist() == b["targets"][1, :3].tolist() and collate_ocr([None]) is None


def test_beam_of_one_equals_greedy_and_beams_end():
    m = _model()
    x, w = torch.rand(3, 1, 32, 64), torch.tensor([64, 64, 40])
    greedy = greedy_decode(m, x, w, max_len=12)
    assert len(greedy) == 3 and all(len(g) <= 12 and EOS not in g for g in greedy)
    for k in range(3):
        assert beam_decode(m, x[k:k + 1], w[k:k + 1], beam=1, max_len=12) == greedy[k]
        assert len(beam_decode(m, x[k:k + 1], w[k:k + 1], beam=3, max_len=12)) <= 12


def test_bad_rows_are_skipped_and_counted(tmp_path, lines):
    train_csv, _ = lines
    good = open(train_csv, encoding="utf-8").read().splitlines()[1].split(",")[0]
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    src = train_csv.parent / good
    (tmp_path / "ok.png").write_bytes(src.read_bytes())
    rows = ["image,text", "ok.png,fine text", "missing.png,no file", "corrupt.png,bad bytes", "ok.png,",
            "ok.png,caf\u00e9 is not ascii".encode().decode("unicode_escape"), "ok.png," + "x" * 41, "ok.png,too,many"]
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = OcrDataset(csv, OcrVocab.ascii(), _cfg())
    items = [data[i] for i in range(len(data))]
    assert items[0] is not None and all(x is None for x in items[1:])
    report = data.report()
    assert report["seen"] == 7 and report["skipped"] == 6
    for reason in ("image_missing", "image_not_an_image", "empty_text", "unknown_characters", "text_too_long",
                   "malformed_row"):
        assert report[reason] == 1, (reason, report)


def _stage_config(tmp_path, lines, steps: int, **model) -> dict:
    train_csv, val_csv = lines
    return {"model": {**vars(_cfg(**model))},
            "data": {"train_csv": str(train_csv), "val_csv": str(val_csv), "val_items": 8},
            "train": {"batch_size": 4, "gradient_accumulation_steps": 1, "lr": 3e-3, "weight_decay": 0.0,
                      "warmup_steps": 2, "max_steps": steps, "max_epochs": 1000, "max_grad_norm": 1.0,
                      "val_freq": steps // 2, "checkpoint_freq": steps // 2, "precision": "fp32",
                      "save_dir": str(tmp_path / "ocr"), "seed": 0, "log_freq": 1, "device": "cpu"}}


def test_train_ocr_end_to_end_then_evaluate(tmp_path, lines, capsys):
    cfg = tmp_path / "ocr.json"
    cfg.write_text(json.dumps(_stage_config(tmp_path, lines, 4, ctc_weight=0.5)))
    assert train_ocr.main(["--config", str(cfg)]) == 0
    vals = [r for r in read_metrics(tmp_path / "ocr") if r["event"] == "val"]
    assert [r["step"] for r in vals] == [2, 4] and all(np.isfinite(r["val_cer"]) for r in vals)
    assert all(np.isfinite(r["val_ctc_cer"]) for r in vals)
    assert all("ctc_loss" in r for r in read_metrics(tmp_path / "ocr") if r["event"] == "train")
    model, vocab, _ = load_ocr(tmp_path / "ocr" / "best", torch.device("cpu"))
    assert len(vocab) == 98 and not model.training
    first = lines[0].parent / open(lines[0], encoding="utf-8").read().splitlines()[1].split(",")[0]
    assert isinstance(read_image(model, vocab, first, beam=2), str)
    with pytest.raises(BadImage):
        read_image(model, vocab, tmp_path / "missing.png")
    capsys.readouterr()
    assert evaluate.main(["ocr", "--ckpt", str(tmp_path / "ocr" / "best"), "--beam", "2", "--n", "2",
                          "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model        CER" in out and "CTC head   CER" in out and "font " in out and "tesseract" in out
    (tmp_path / "ocr" / "best" / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="no vocab.json in .*best: not an OCR checkpoint"):
        load_ocr(tmp_path / "ocr" / "best", torch.device("cpu"))


def test_config_errors_name_the_key(tmp_path, lines, capsys):
    raw = _stage_config(tmp_path, lines, 4)
    raw["model"]["vision_d_modle"] = 8
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    assert train_ocr.main(["--config", str(tmp_path / "bad.json")]) == 2
    assert "did you mean 'vision_d_model'" in capsys.readouterr().err


@pytest.mark.slow
def test_overfits_a_tiny_set(tmp_path, lines):
    train_csv, _ = lines
    raw = _stage_config(tmp_path, (train_csv, train_csv), 300, vision_d_model=64, decoder_d_model=64,
                        vision_n_layers=2, vision_d_ff=128, decoder_d_ff=128)
    raw["train"].update(lr=2e-3, val_freq=300, checkpoint_freq=300, batch_size=12)
    raw["data"]["val_items"] = 12
    (tmp_path / "ocr.json").write_text(json.dumps(raw))
    assert train_ocr.main(["--config", str(tmp_path / "ocr.json")]) == 0
    model, vocab, cfg = load_ocr(tmp_path / "ocr", torch.device("cpu"))
    data = OcrDataset(train_csv, vocab, cfg.model)
    greedy, _ = evaluate_ocr(model, data, vocab, 12)
    beam, _ = evaluate_ocr(model, data, vocab, 12, beam=3)
    assert greedy["val_cer"] < 0.05 and beam["val_cer"] < 0.05, (greedy, beam)
