"""Stage E building blocks: the chat template, media slots, the SFT dataset, chat == SFT sequences."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from omni.audio.encoder import AudioEncConfig
from omni.audio.features import save_wav
from omni.multimodal.chat import ChatSession, Sampling
from omni.multimodal.data import SftDataConfig, SftDataset, Sources, collate_sft, draw_plan
from omni.multimodal.model import Components, OmniConfig, OmniModel
from omni.multimodal.template import AUDIO, IMAGE, TEXT, Turn, build_sequence, targets_for
from omni.thinker.model import ThinkerConfig
from omni.thinker.tokenizer import train_bpe
from omni.vision.encoder import VisionConfig
from tests.conftest import SONNETS


@pytest.fixture(scope="module")
def tok():
    lines = [line for line in SONNETS.read_text().splitlines() if line.strip()]
    return train_bpe(iter(lines), 400)


def tiny_model(vocab: int, **cfg) -> OmniModel:
    torch.manual_seed(0)
    comp = Components(ThinkerConfig(vocab, 32, 2, 2, 1, 64, 256, 0.0),
                      AudioEncConfig(24, 1, 2, 48, 0.0, 256),
                      VisionConfig(32, 8, 16, 1, 2, 32, 0.0))
    return OmniModel(comp, OmniConfig("t", "a", "v", image_pool=2, projector_hidden=16, **cfg)).eval()


def test_sequence_markers_slots_and_loss_mask(tok):
    sp = tok.special
    seq = build_sequence(tok, [Turn("user", "What is it?", [(IMAGE, 5), (AUDIO, 3)]), Turn("assistant", "a cat")])
    assert seq.ids[:2] == [sp["<|bos|>"], sp["<|system|>"]]
    img = [t for t, k in enumerate(seq.kinds) if k == IMAGE]
    aud = [t for t, k in enumerate(seq.kinds) if k == AUDIO]
    assert len(img) == 5 and len(aud) == 3
    assert seq.ids[img[0] - 1] == sp["<|image_start|>"] and seq.ids[img[-1] + 1] == sp["<|image_end|>"]
    assert seq.ids[aud[0] - 1] == sp["<|audio_start|>"] and seq.ids[aud[-1] + 1] == sp["<|audio_end|>"]
    start = seq.ids.index(sp["<|assistant|>"]) + 1
    assert seq.loss == [False] * start + [True] * (len(seq) - start)
    assert tok.decode(seq.ids[start:-1]) == "a cat" and seq.ids[-1] == sp["<|end|>"]
    tg = targets_for(seq)
    assert tg[start - 1] == seq.ids[start] and tg[-1] == -100
    assert all(t == -100 for t in tg[:start - 1])  # nothing before the reply is scored


def test_embed_fills_slots_in_order_and_checks_counts(tok):
    model = tiny_model(tok.vocab_size)
    n = model.image_slots()
    assert n == 1 + (32 // 8 // 2) ** 2
    seq = build_sequence(tok, [Turn("user", "hi", [(IMAGE, n)]), Turn("assistant", "yo")])
    ids, kinds = torch.tensor([seq.ids]), torch.tensor([seq.kinds])
    images = torch.randn(1, 3, 32, 32)
    x = model.embed(ids, kinds, images)
    feats = model.image_features(images)[0]
    assert torch.allclose(x[0][kinds[0] == IMAGE], feats)
    assert torch.equal(x[0][kinds[0] == TEXT], model.thinker.tok_emb(ids)[0][kinds[0] == TEXT])
    with pytest.raises(ValueError, match="slots"):
        model.embed(ids, kinds, torch.randn(2, 3, 32, 32))


def test_audio_slots_match_encoder_frames(tok):
    model = tiny_model(tok.vocab_size)
    for n in (1600, 16001, 23999):
        audio = torch.randn(1, n) * 0.1
        assert model.audio_features(audio, torch.tensor([n])).shape[0] == model.audio_slots(n)


def test_padding_changes_nothing_for_real_positions(tok):
    model = tiny_model(tok.vocab_size)
    a = torch.randn(7000) * 0.1
    b = torch.randn(12000) * 0.1
    both = torch.zeros(2, 12000)
    both[0, :7000], both[1] = a, b
    f2 = model.audio_features(both, torch.tensor([7000, 12000]))
    f1 = model.audio_features(a[None], torch.tensor([7000]))
    assert torch.allclose(f2[:f1.shape[0]], f1, atol=1e-5)


def make_sources(tmp_path, tok, n_img=6):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(n_img):
        Image.new("RGB", (40, 40), (40 * i, 100, 200)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"Picture number {i}.",
                     "qa": [["What number?", str(i)]]})
    (tmp_path / "ann.json").write_text(json.dumps(rows))
    save_wav(tmp_path / "a.wav", np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1)
    (tmp_path / "asr.csv").write_text("wav,text\na.wav,hello there\nmissing.wav,gone\n")
    (tmp_path / "text.txt").write_text("\n".join(" ".join(f"w{j}" for j in range(i, i + 30)) for i in range(5)))
    cfg = SftDataConfig(str(tmp_path / "ann.json"), str(tmp_path / "ann.json"), str(tmp_path / "asr.csv"),
                        str(tmp_path / "asr.csv"), str(tmp_path / "text.txt"), str(tmp_path / "text.txt"),
                        epoch_size=40)
    return Sources(cfg.image_manifest, cfg.asr_csv, cfg.text_file, "train"), cfg


def test_dataset_pairs_media_with_their_own_text_and_skips_bad_rows(tmp_path, tok):
    model = tiny_model(tok.vocab_size)
    src, cfg = make_sources(tmp_path, tok)
    plan = draw_plan(src, {"caption": 1, "vqa": 1, "asr": 1, "text": 1}, 40, seed=0)
    assert {t for t, _ in plan} == {"caption", "vqa", "asr", "text"}
    ds = SftDataset(src, plan, tok, cfg, 256, 32, model.image_slots(), model.audio_slots, seed=0)
    items = [ds[i] for i in range(len(ds))]
    for (task, row), item in zip(plan, items):
        if item is None:
            continue
        reply = tok.decode([t for t in item["targets"] if t != -100][:-1])
        if task == "caption":
            assert reply == f"Picture number {row}."
        if task == "vqa":
            assert reply == str(row)
        if task == "asr":
            assert reply == "hello there" and item["audio"] is not None
    report = ds.report()
    assert report["skipped"] == sum(x is None for x in items) and report.get("AudioError", 0) >= 1
    batch = collate_sft(items, tok.special["<|pad|>"])
    loss = model(batch)
    assert torch.isfinite(loss)


def test_mixed_turns_put_the_other_modality_in_an_earlier_turn(tmp_path, tok):
    import dataclasses
    model = tiny_model(tok.vocab_size)
    src, cfg = make_sources(tmp_path, tok)
    cfg = dataclasses.replace(cfg, mixed_turns=1.0)
    plan = [("caption", 0), ("vqa", 1), ("asr", 0), ("text", 0)]
    ds = SftDataset(src, plan, tok, cfg, 256, 32, model.image_slots(), model.audio_slots, seed=0)
    end = tok.special["<|end|>"]
    items = [ds[i] for i in range(len(plan))]
    assert sum(x is not None and x["image"] is not None for x in items) >= 2
    for (task, _), item in zip(plan, items):
        if item is None:  # the fixture has unreadable clips on purpose
            continue
        scored = [t for t in item["targets"] if t != -100]
        if task == "text":
            assert item["image"] is None and item["audio"] is None and scored.count(end) == 1
            continue
        assert item["image"] is not None and item["audio"] is not None, task
        assert scored.count(end) == 2  # the earlier reply and this one are both trained
        last_reply = tok.decode(scored[scored.index(end) + 1:-1])
        assert last_reply == (ds.example(plan.index((task, _))).answer), task
    batch = collate_sft([x for x in (ds[i] for i in range(len(plan))) if x is not None], tok.special["<|pad|>"])
    assert torch.isfinite(model(batch))


def test_chat_prompt_is_the_sft_sequence(tmp_path, tok):
    model = tiny_model(tok.vocab_size)
    src, cfg = make_sources(tmp_path, tok)
    ds = SftDataset(src, [("vqa", 3)], tok, cfg, 256, 32, model.image_slots(), model.audio_slots, seed=0)
    item = ds[0]
    ex = ds.example(0)
    chat = ChatSession(model, tok, Sampling(max_new_tokens=4))
    chat.attach_image(ex.image)
    entry = chat._user_entry(ex.prompt)
    prompt = chat.prompt([entry])
    assert prompt.ids == item["ids"][:len(prompt.ids)] and prompt.kinds == item["kinds"][:len(prompt.kinds)]
    # the reply part of the SFT sequence is exactly what chat would append after the prompt
    full = build_sequence(tok, [entry.turn, Turn("assistant", ex.answer)])
    assert full.ids == item["ids"]


def test_chat_streams_and_keeps_history(tmp_path, tok):
    model = tiny_model(tok.vocab_size)
    chat = ChatSession(model, tok, Sampling(max_new_tokens=5, temperature=0.8, seed=1))
    pieces = []
    reply, stats = chat.ask("hello", on_text=pieces.append)
    assert "".join(pieces).strip() == reply and stats.new_tokens <= 5
    chat.ask("again")
    assert [e.turn.role for e in chat.history] == ["user", "assistant", "user", "assistant"]
    chat.reset()
    assert chat.history == []


def test_image_manifest_errors_name_file_and_line(tmp_path):
    from omni.data import DataError
    from omni.multimodal.data import read_image_manifest
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "a cat"}\n{"image": "b.png", oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        read_image_manifest(bad)
    no_caption = tmp_path / "nocap.json"
    no_caption.write_text(json.dumps([{"image": "a.png", "caption": "x"}, {"image": "b.png"}]))
    with pytest.raises(DataError, match=r"nocap.json: row 2 lacks a 'caption'"):
        read_image_manifest(no_caption)
    good = tmp_path / "good.jsonl"
    good.write_text('{"image": "a.png", "caption": "a cat", "qa": [["what?", "cat"]]}\n')
    assert read_image_manifest(good) == [{"image": str(tmp_path / "a.png"), "caption": "a cat",
                                          "qa": [["what?", "cat"]]}]
