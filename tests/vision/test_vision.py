"""Stage C: ViTTiny shapes, preprocessing, InfoNCE, bad image rows, retrieval metrics, the script
end to end (with a tiny Thinker trained by train_text.py), and a slow learning check."""
import json
import random
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train_text
import train_vision
from omni.builders.image import make_scene, make_synthetic_images
from omni.cli import evaluate
from omni.engine.checkpoint import CheckpointError, read_metrics
from omni.images import load_image_tensor, preprocess
from omni.vision.data import VisionDataset, collate_pairs, read_manifest
from omni.vision.encoder import VisionConfig, ViTTiny
from omni.vision.retrieval import candidate_sets, chance, recall_at
from omni.vision.stage import info_nce, load_clip, load_vision_encoder
from tests.conftest import ROOT, write_config

TINY_VIT = {"img_size": 32, "patch": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0}


def test_default_vit_is_about_914k_and_returns_cls_and_patches():
    cfg = VisionConfig(**json.loads((ROOT / "configs" / "vision_tiny.json").read_text())["model"])
    assert (cfg.img_size, cfg.patch, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff) == (224, 16, 128, 4, 2, 512)
    vit = ViTTiny(cfg).eval()
    assert abs(sum(p.numel() for p in vit.parameters()) - 914_000) < 0.05 * 914_000
    cls, patches = vit(torch.randn(2, 3, 224, 224))
    assert cls.shape == (2, 128) and patches.shape == (2, 196, 128)
    with pytest.raises(ValueError, match="224x224"):
        vit(torch.randn(1, 3, 112, 112))


def test_vit_is_not_causal_every_patch_sees_the_whole_image():
    vit = ViTTiny(VisionConfig(**TINY_VIT)).eval()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] += 1.0  # change only the last patch
    _, p1 = vit(x)
    _, p2 = vit(y)
    assert (p1[0, 0] - p2[0, 0]).abs().max() > 1e-4  # the first patch token noticed


def _halves(w=60, h=40, mode="RGB") -> Image.Image:
    img = Image.new("RGB", (w, h), (255, 0, 0))
    img.paste((0, 0, 255), (w // 2, 0, w, h))  # red left half, blue right half
    return img.convert(mode)


def test_eval_preprocessing_is_deterministic_and_train_is_seeded():
    img = _halves()
    a, b = preprocess(img, 32), preprocess(img, 32)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    t1 = preprocess(img, 32, train=True, generator=torch.Generator().manual_seed(3))
    t2 = preprocess(img, 32, train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)
    for mode in ("P", "L", "RGBA", "LA", "1"):  # every mode comes out as normalised RGB
        assert preprocess(_halves(mode=mode), 32).shape == (3, 32, 32)


def test_flip_only_when_asked():
    img = _halves(64, 64)
    left_red = []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        x = preprocess(img, 32, train=True, generator=gen, flip=False)
        assert x[0, :, :8].mean() > x[2, :, :8].mean()  # the left edge stays red
        gen = torch.Generator().manual_seed(seed)
        y = preprocess(img, 32, train=True, generator=gen, flip=True)
        left_red.append(bool(y[0, :, :8].mean() > y[2, :, :8].mean()))
    assert 0 < sum(left_red) < 20  # flipped for some seeds, not all


def test_info_nce_matching_pairs_beat_shuffled_and_duplicates_are_positives():
    torch.manual_seed(0)
    txt = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    img = torch.nn.functional.normalize(txt + 0.3 * torch.randn(16, 32), dim=-1)
    ids = torch.arange(16)
    matched = info_nce(20 * img @ txt.T, ids)
    shuffled = info_nce(20 * img @ txt[torch.randperm(16)].T, ids)
    assert matched < shuffled - 1.0
    equal, diag = torch.tensor([[5.0, 5.0], [5.0, 5.0]]), torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    same, different = torch.tensor([0, 0]), torch.tensor([0, 1])
    assert info_nce(equal, same) < info_nce(diag, same)  # one caption twice: not pushed apart
    assert info_nce(diag, different) < info_nce(equal, different)


def _manifest_with_bad_rows(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    good = make_scene(random.Random(0))[0]
    good.save(d / "good.png")
    good.convert("P").save(d / "palette.png")
    good.convert("L").save(d / "grey.png")
    good.convert("RGBA").save(d / "alpha.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[:len(data) // 2])
    Image.new("1", (9000, 9000)).save(d / "huge.png")  # 81 Mpx: refused from the header, never decoded
    names = ["good", "palette", "grey", "alpha", "corrupt", "truncated", "missing", "huge"]
    rows = [{"image": f"imgs/{n}.png", "caption": f"A {n} picture.", "source": "test"} for n in names]
    rows.append({"image": "imgs/good.png", "caption": "  "})  # no caption: dropped at load
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # JSON Lines
    return path


def test_bad_image_rows_are_skipped_and_counted(tmp_path):
    rows, dropped = read_manifest(_manifest_with_bad_rows(tmp_path))
    assert len(rows) == 8 and dropped == 1 and rows[0].image == tmp_path / "imgs" / "good.png"
    ds = VisionDataset(rows, torch.randn(8, 8), 32, train=True, flip=False, max_zoom=1.14)
    items = [ds[i] for i in range(len(ds))]
    assert [x is None for x in items] == [False] * 4 + [True] * 4
    report = ds.report()
    assert report["seen"] == 8 and report["skipped"] == 4
    assert report["corrupt"] == 1 and report["truncated"] == 1 and report["missing"] == 1
    assert report["too_large"] == 1
    assert report["converted_palette"] == 1 and report["converted_greyscale"] == 1
    batch = collate_pairs(items)
    assert batch["images"].shape == (4, 3, 32, 32) and batch["text"].shape == (4, 8)
    assert collate_pairs(items[4:]) is None
    assert ds.report() == {}  # reading the report resets it for the next epoch
    with pytest.raises(Exception, match="truncated|corrupt"):
        load_image_tensor(rows[5].image, 32)


def test_recall_metrics_candidates_and_duplicates():
    n = 12
    cands = candidate_sets({"a": list(range(8)), "b": list(range(8, n))}, candidates=5, seed=0)
    assert cands["a"].shape == (8, 5) and cands["b"].shape == (4, 4)
    assert all(len(set(r.tolist())) == r.numel() for c in cands.values() for r in c)  # no repeats
    assert all((c[:, 0] == torch.tensor(i)).all() for c, i in ((cands["a"], range(8)), (cands["b"], range(8, n))))
    ids = torch.arange(n)
    perfect = torch.eye(n)
    m = recall_at(perfect, perfect, ids, cands)
    assert m["i2t_r1"] == 1.0 and m["t2i_r1"] == 1.0 and m["a/i2t_r1"] == 1.0
    worst = 1 - torch.eye(n)
    m = recall_at(worst, worst, ids, cands)
    assert m["i2t_r1"] == 0.0 and m["b/t2i_r5"] == 1.0  # only 4 candidates in b: R@5 is trivial
    ids_dup = ids.clone()
    ids_dup[1] = 0  # rows 0 and 1 share a caption: retrieving either is right
    sim = torch.eye(n)
    sim[0, 1] = 2.0
    assert recall_at(sim, sim, ids_dup, cands)["a/i2t_r1"] > recall_at(sim, sim, ids, cands)["a/i2t_r1"] or \
        1 not in cands["a"][0].tolist()
    c = chance(cands)
    assert abs(c["chance_r1"] - (8 / 5 + 4 / 4) / n) < 1e-6
    assert c["queries"] == n == 12 and (c["a/queries"], c["b/queries"]) == (8, 4)  # the intervals' sample sizes
    assert (c["a/chance_r1"], c["b/chance_r1"]) == (1 / 5, 1 / 4)


@pytest.fixture(scope="module")
def tiny_thinker(tmp_path_factory):
    """A Stage A checkpoint made by train_text.py on a tiny config (2 steps)."""
    tmp = tmp_path_factory.mktemp("thinker")
    cfg = write_config(tmp, train={"max_steps": 2, "val_freq": 2, "checkpoint_freq": 2})
    assert train_text.main(["--config", str(cfg)]) == 0
    return tmp / "ckpt"


def _vision_config(tmp_path, thinker, n_scenes=40, **train):
    train_m, val_m = make_synthetic_images(tmp_path / "data", n_scenes, seed=1, val_fraction=0.25)
    cfg = {"model": TINY_VIT,
           "clip": {"thinker": str(thinker), "embed_dim": 16, "text_hidden": 32},
           "data": {"train_manifest": str(train_m), "val_manifest": str(val_m), "candidates": 100},
           "train": {"batch_size": 8, "gradient_accumulation_steps": 1, "lr": 2e-3, "weight_decay": 0.05,
                     "warmup_steps": 2, "max_steps": 4, "max_epochs": 100, "max_grad_norm": 1.0, "val_freq": 2,
                     "checkpoint_freq": 2, "precision": "fp32", "save_dir": str(tmp_path / "vis"), "seed": 0,
                     "log_freq": 1, "device": "cpu", **train}}
    path = tmp_path / "vision.json"
    path.write_text(json.dumps(cfg))
    return path


def test_train_vision_end_to_end_checkpoint_and_eval(tmp_path, tiny_thinker, capsys):
    cfg = _vision_config(tmp_path, tiny_thinker)
    assert train_vision.main(["--config", str(cfg)]) == 0
    ckpt = tmp_path / "vis"
    for name in ("model.safetensors", "config.json", "thinker.json", "tokenizer.json", "best/model.safetensors",
                 "best/thinker.json", "best/tokenizer.json"):
        assert (ckpt / name).is_file(), name
    vals = [r for r in read_metrics(ckpt) if r["event"] == "val"]
    assert len(vals) == 2 and {"i2t_r1", "t2i_r5", "chance_r1", "hist_i2t_r1"} <= set(vals[-1])
    vit, vcfg = load_vision_encoder(ckpt / "best", torch.device("cpu"))
    assert vcfg.model.img_size == 32 and vit(torch.randn(1, 3, 32, 32))[1].shape == (1, 16, 32)
    model, *_ = load_clip(ckpt, torch.device("cpu"))
    assert torch.equal(model.vit.pos, load_clip(ckpt, torch.device("cpu"))[0].vit.pos)
    capsys.readouterr()
    assert evaluate.main(["vision", "--ckpt", str(ckpt / "best"), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "true:" in out and "hist" in out


def test_resume_continues_exactly(tmp_path, tiny_thinker):
    """4 steps in one go == 2 steps, stop, --resume to 4 (augmentation RNG included)."""
    cfg = _vision_config(tmp_path, tiny_thinker, save_dir=str(tmp_path / "straight"))
    assert train_vision.main(["--config", str(cfg)]) == 0
    assert train_vision.main(["--config", str(cfg), f"train.save_dir={tmp_path / 'split'}", "--stop-at", "2"]) == 0
    assert train_vision.main(["--config", str(cfg), f"train.save_dir={tmp_path / 'split'}", "--resume"]) == 0
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_or_mismatched_checkpoints_are_clear_errors(tmp_path, tiny_thinker, capsys):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_vision_encoder(tmp_path / "nowhere", torch.device("cpu"))
    cfg = _vision_config(tmp_path, tmp_path / "no_thinker")
    assert train_vision.main(["--config", str(cfg)]) == 2
    assert "no_thinker" in capsys.readouterr().err
    cfg = _vision_config(tmp_path, tiny_thinker, max_steps=1)
    assert train_vision.main(["--config", str(cfg)]) == 0
    raw = json.loads((tmp_path / "vis" / "config.json").read_text())
    raw["model"]["d_model"] = 48  # weights no longer match the config
    (tmp_path / "vis" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="do not match"):
        load_vision_encoder(tmp_path / "vis", torch.device("cpu"))
    thinker_copy = tmp_path / "thinker_copy"
    shutil.copytree(tiny_thinker, thinker_copy)
    cfg = _vision_config(tmp_path, thinker_copy, max_steps=1, save_dir=str(tmp_path / "vis2"))
    assert train_vision.main(["--config", str(cfg)]) == 0
    # the folder carries the Thinker it read captions with: moved elsewhere, without that Thinker, it loads
    shutil.rmtree(thinker_copy)
    shutil.copytree(tmp_path / "vis2", tmp_path / "moved" / "vis2")
    model, _, thinker, _ = load_clip(tmp_path / "moved" / "vis2", torch.device("cpu"))
    assert model.text_mean.shape == (thinker.cfg.d_model,)
    carried = tmp_path / "moved" / "vis2" / "thinker" / "model.safetensors"
    carried.write_bytes(carried.read_bytes() + b" ")
    with pytest.raises(CheckpointError, match="changed since"):
        load_clip(tmp_path / "moved" / "vis2", torch.device("cpu"))


@pytest.mark.slow
def test_learns_a_tiny_generated_set_to_high_recall(tmp_path, tiny_thinker):
    """48 scenes at 64 px: after 300 steps image->text R@1 over all 48 captions is high, far above
    chance and above the colour-histogram baseline."""
    cfg = _vision_config(tmp_path, tiny_thinker, n_scenes=48, max_steps=300, val_freq=300, checkpoint_freq=300,
                         batch_size=16, lr=3e-3, warmup_steps=20)
    raw = json.loads(cfg.read_text())
    raw["model"].update(img_size=64, patch=8, d_model=64, n_layers=2, d_ff=128)
    raw["data"]["val_manifest"] = raw["data"]["train_manifest"]  # learn the set itself
    cfg.write_text(json.dumps(raw))
    assert train_vision.main(["--config", str(cfg)]) == 0
    final = [r for r in read_metrics(tmp_path / "vis") if r["event"] == "val"][-1]
    assert final["i2t_r1"] >= 0.8 and final["t2i_r1"] >= 0.8, final
    assert final["i2t_r1"] > final["hist_i2t_r1"], final
