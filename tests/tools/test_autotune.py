"""Config auto-tuning: every rule at its bucket edges, token counts, model sizes, memory estimate,
and the script's dry run / real run."""
import importlib.util
import json
import os

import pytest

from omni.audio.ctc import CharVocab
from omni.audio.encoder import AudioEncConfig
from omni.audio.stage import AsrModel
from omni.config import config_from_dict
from omni.thinker.model import ThinkerConfig, ThinkerLM
from omni.thinker.stage import TextStageConfig
from omni.thinker.tokenizer import train_bpe
from omni.tools import autotune as at
from omni.tools import token_count as tc
from omni.tools.json_edit import replace_values
from omni.tools.survey import model_info, train_slots
from tests.conftest import ROOT, SONNETS, tiny_config

spec = importlib.util.spec_from_file_location("update_configs", ROOT / "scripts" / "update_configs_from_data.py")
update_configs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_configs)

M = 1_000_000


# ---------------------------------------------------------------- rules
@pytest.mark.parametrize("tokens,epochs", [
    (0, 10), (1 * M, 10), (10 * M - 1, 6), (10 * M, 6), (50 * M - 1, 4), (50 * M, 4),
    (100 * M, 3), (100 * M + 1, 3), (1000 * M, 1), (5000 * M, 1)])
def test_epochs_at_bucket_edges(tokens, epochs):
    assert at.epochs_for_tokens(tokens) == epochs


@pytest.mark.parametrize("lo,hi,e_min,e_max", [
    (1, 10 * M - 1, 5, 10), (10 * M, 50 * M - 1, 3, 6), (50 * M, 100 * M, 2, 4), (100 * M + 1, 10**12, 1, 3)])
def test_epochs_stay_in_each_buckets_range(lo, hi, e_min, e_max):
    grid = [lo, hi] + [int(lo * (hi / lo) ** (k / 50)) for k in range(51)]
    assert all(e_min <= at.epochs_for_tokens(t) <= e_max for t in grid)


def test_epochs_never_rise_with_more_data():
    values = [at.epochs_for_tokens(int(10 ** (k / 20))) for k in range(241)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("params,cap", [
    (0, 64), (10 * M - 1, 64), (10 * M, 32), (50 * M - 1, 32), (50 * M, 16), (100 * M, 16), (100 * M + 1, 8)])
def test_batch_cap_at_model_size_edges(params, cap):
    assert at.batch_cap_for_params(params) == cap


@pytest.mark.parametrize("max_steps,warmup", [
    (10, 0), (100, 4), (249_975, 9_999), (250_000, 10_000), (250_025, 10_000), (10**7, 10_000)])
def test_warmup_is_4_percent_capped(max_steps, warmup):
    assert at.warmup_for(max_steps) == warmup


@pytest.mark.parametrize("spe,val", [
    (4_999, 499), (5_000, 500), (9_999, 999), (10_000, 1_000), (10_010, 1_000), (10**6, 1_000), (50, 10)])
def test_val_freq_10_percent_of_epoch_at_most_1000(spe, val):
    assert at.val_freq_for(spe, max_steps=10**9) == val


@pytest.mark.parametrize("spe,ckpt", [
    (4_999, 4_999), (5_000, 5_000), (10_000, 10_000), (10_001, 10_000), (10**6, 10_000), (3, 10)])
def test_checkpoint_once_per_epoch_at_most_10000(spe, ckpt):
    assert at.checkpoint_freq_for(spe, max_steps=10**9) == ckpt


def test_freqs_never_exceed_the_run():
    assert at.val_freq_for(3, max_steps=6) == 6
    assert at.checkpoint_freq_for(3, max_steps=6) == 6


@pytest.mark.parametrize("patience,old,new,want", [(4, 500, 150, 14), (4, 500, 500, 4), (4, 500, 26, 77),
                                                   (5, 200, 1000, 1), (0, 500, 150, 0)])
def test_patience_waits_as_many_steps_at_the_new_interval(patience, old, new, want):
    assert at.patience_for(patience, old, new) == want
    assert want == 0 or (want * new >= patience * old > (want - 1) * new)


def test_plan_rescales_a_configured_patience_only():
    data = at.DataSize(38_282, 24_000, False)   # 1,500 steps an epoch at 16: validation every 150
    plan = at.plan_training({**_train(16, 1), "val_freq": 500, "patience": 4}, data, 1, 2 * M, None, 12)
    assert plan.updates["val_freq"] == 150 and plan.updates["patience"] == 14
    assert "patience" not in at.plan_training({**_train(16, 1), "val_freq": 500}, data, 1, 2 * M, None, 12).updates
    assert "patience" not in at.plan_training({**_train(16, 1), "val_freq": 500, "patience": 0}, data, 1, 2 * M,
                                              None, 12).updates


def _train(batch: int, accum: int) -> dict:
    return {"batch_size": batch, "gradient_accumulation_steps": accum}


@pytest.mark.parametrize("params,eff,batch", [
    (5 * M, 128, 64), (20 * M, 64, 32), (60 * M, 64, 16), (120 * M, 64, 8), (20 * M, 48, 24), (20 * M, 8, 8)])
def test_plan_keeps_the_effective_batch(params, eff, batch):
    plan = at.plan_training(_train(eff, 1), at.DataSize(10 * M, 1000, True), 512, params, None, 12)
    assert plan.updates["batch_size"] == batch
    assert plan.updates["batch_size"] * plan.updates["gradient_accumulation_steps"] == eff


def test_plan_steps_from_tokens_or_samples():
    packed = at.plan_training(_train(16, 2), at.DataSize(4_239_271, 25_878, True), 512, 20 * M, None, 12)
    assert packed.tokens_per_step == 32 * 512 and packed.steps_per_epoch == 4_239_271 // (32 * 512)
    u = packed.updates
    assert u["max_epochs"] == at.epochs_for_tokens(4_239_271) == 7 and u["max_steps"] == packed.steps_per_epoch * 7
    assert u["warmup_steps"] == u["max_steps"] * 4 // 100
    samples = at.plan_training(_train(16, 1), at.DataSize(38_282, 3_000, False), 1, 2 * M, None, 12)
    assert samples.steps_per_epoch == 3_000 // 16 and samples.tokens_per_step is None


def test_no_memory_model_never_raises_the_batch():
    """The vocoder (no memory estimate): the spec's 2 x 4 for 12 GB stays 2 x 4, not 8 x 1."""
    plan = at.plan_training(_train(2, 4), at.DataSize(M, 1000, False), 1, 1 * M, None, 12)
    assert (plan.updates["batch_size"], plan.updates["gradient_accumulation_steps"]) == (2, 4)
    capped = at.plan_training(_train(128, 1), at.DataSize(M, 1000, False), 1, 60 * M, None, 12)
    assert (capped.updates["batch_size"], capped.updates["gradient_accumulation_steps"]) == (16, 8)


def test_unknown_model_keeps_batch():
    plan = at.plan_training(_train(8, 4), at.DataSize(M, 100, False), 1, None, None, 12)
    assert (plan.updates["batch_size"], plan.updates["gradient_accumulation_steps"]) == (8, 4)
    assert plan.notes


# ---------------------------------------------------------------- memory
def _mem(**kw) -> at.MemoryModel:
    base = dict(n_params=20 * M, d_model=256, n_layers=4, d_ff=1024, seq_len=512, head_width=32000,
                chunked_head=True, amp=True)
    return at.MemoryModel(**{**base, **kw})


@pytest.mark.parametrize("kw", [{}, {"chunked_head": False, "head_width": 78, "front_bytes_per_sample": 4e6},
                                {"amp": False}])
def test_memory_estimate_monotonic_in_batch_and_ctx(kw):
    m = _mem(**kw)
    by_batch = [at.estimate_bytes(m, b) for b in range(1, 65)]
    by_ctx = [at.estimate_bytes(m, 8, t) for t in range(16, 2049, 16)]
    assert all(a < b for a, b in zip(by_batch, by_batch[1:]))
    assert all(a < b for a, b in zip(by_ctx, by_ctx[1:]))


def test_memory_budget_lowers_batch_and_raises_accumulation():
    m = _mem(n_params=120 * M, d_model=1024, n_layers=12, d_ff=4096, seq_len=2048)
    roomy = at.plan_training(_train(64, 1), at.DataSize(M, 10, True), 2048, m.n_params, m, 80)
    tight = at.plan_training(_train(64, 1), at.DataSize(M, 10, True), 2048, m.n_params, m, 6)
    assert roomy.updates["batch_size"] == 8
    assert tight.updates["batch_size"] < 8 and at.fits(m, tight.updates["batch_size"], 6)
    assert tight.updates["batch_size"] * tight.updates["gradient_accumulation_steps"] == 64


@pytest.mark.parametrize("amp", [False, True])
def test_memory_estimate_covers_measured_activations(amp, tmp_path):
    """The activation part of the estimate against what autograd really saves (CPU, tiny Thinker)."""
    from omni.engine.runtime import setup_runtime
    from omni.tools.bench import Shape, build
    full = tiny_config(tmp_path)
    raw = full["model"]
    info = model_info(raw, {}, amp=amp, vocab_size=300)
    cfg = config_from_dict({**full, "model": {**raw, "vocab_size": 300}}, TextStageConfig)
    built = build("thinker", Shape(batch=4), cfg)  # the worst case: 4 x ctx_len tokens
    got = update_configs.saved_activation_bytes(built.stage.model, built.batch, built.stage.loss_fn,
                                                setup_runtime("cpu", "bf16" if amp else "fp32"))
    parts = at.estimate_parts(info.memory, 4)
    est = sum(parts.values()) - parts["static"] + (2 * info.n_params if amp else 0)
    assert got < est < 3 * got


# ---------------------------------------------------------------- model size
def test_thinker_size_equals_instantiated_model(tmp_path):
    raw = tiny_config(tmp_path)["model"]
    info = model_info(raw, {}, amp=True, vocab_size=300)
    model = ThinkerLM(config_from_dict({**raw, "vocab_size": 300}, ThinkerConfig))
    assert info.name == "ThinkerLM" and info.n_params == sum(p.numel() for p in model.parameters())
    assert info.memory.head_width == 300 and info.memory.seq_len == raw["ctx_len"]


def test_asr_size_equals_instantiated_model():
    raw = {"d_model": 48, "n_layers": 2, "n_heads": 2, "d_ff": 96, "dropout": 0.1}
    info = model_info(raw, {"max_seconds": 4.0}, amp=False)
    model = AsrModel(config_from_dict(raw, AudioEncConfig), len(CharVocab.default()))
    assert info.name == "AsrModel" and info.n_params == sum(p.numel() for p in model.parameters())


def test_discovered_model_size_equals_instantiated_model():
    from omni.vision.encoder import VisionConfig, ViTTiny
    raw = {"img_size": 32, "patch": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "dropout": 0.0}
    info = model_info(raw, {}, amp=True)
    assert info.name == "ViTTiny"
    assert info.n_params == sum(p.numel() for p in ViTTiny(VisionConfig(**raw)).parameters())
    assert info.memory.seq_len == 17


def test_unknown_model_section_is_none():
    assert model_info({"frobnicate": 3}, {}, amp=True) is None


def test_train_slots_find_nested_sections(tmp_path):
    train = tiny_config(tmp_path)["train"]
    raw = {"codec": {"model": {"d_model": 8}, "data": {"train_csv": "a.csv"}, "train": train},
           "talker": {"d_model": 8}, "data": {"train_csv": "b.csv"}, "train": train}
    slots = train_slots(raw)
    assert [(s.path, s.model_path, s.data["train_csv"]) for s in slots] == [
        (("codec", "train"), ("codec", "model"), "a.csv"), (("train",), ("talker",), "b.csv")]


# ---------------------------------------------------------------- token counting
@pytest.fixture(scope="module")
def tok():
    lines = SONNETS.read_text(encoding="utf-8").splitlines()
    return train_bpe(iter(lines), 400)


def _expected(tok, texts):
    good = [t.strip() for t in texts if t is not None and t.strip()]
    return sum(len(tok.encode(t)) for t in good), len(good)


def test_line_counts_equal_the_tokenizers(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(tc, "_READ_BYTES", 97)  # many chunk edges, lines longer than one read
    lines = SONNETS.read_text(encoding="utf-8").splitlines()[:200]
    body = "\n".join(lines).encode() + b"\n\n  \nbad \xff\xfe utf8\r\nwindows line\r\n" + b"x" * 500 + b" last"
    path = tmp_path / "c.txt"
    path.write_bytes(body)
    texts = [(r.rstrip(b"\r").decode("utf-8") if b"\xff" not in r else None) for r in body.split(b"\n")]
    tokens, items = _expected(tok, texts)
    count = tc.count_lines(path, tok, progress=False)
    assert (count.tokens, count.items, count.done) == (tokens, items, True)
    assert count.skipped == sum(1 for t in texts if t is None or not t.strip())
    assert count.tokens_with_eos == tokens + items


def test_line_count_resumes_and_caches(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(tc, "_READ_BYTES", 1000)
    path = tmp_path / "c.txt"
    path.write_text(SONNETS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    full = tc.count_lines(path, tok, use_state=False, progress=False)
    part = tc.count_lines(path, tok, stop_after_bytes=5_000, progress=False)
    assert not part.done and 0 < part.tokens < full.tokens
    state = json.loads(tc.state_path(path, tok).read_text())
    assert 5_000 <= state["offset"] < path.stat().st_size
    resumed = tc.count_lines(path, tok, progress=False)
    assert (resumed.tokens, resumed.items, resumed.done) == (full.tokens, full.items, True)
    monkeypatch.setattr(tok, "encode_batch", lambda texts: pytest.fail("a finished count is not redone"))
    assert tc.count_lines(path, tok, progress=False).tokens == full.tokens


def test_stale_count_is_redone(tmp_path, tok):
    path = tmp_path / "c.txt"
    path.write_text("one two\n", encoding="utf-8")
    first = tc.count_lines(path, tok, progress=False)
    path.write_text("one two three four\nfive\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert tc.count_lines(path, tok, progress=False).tokens == _expected(tok, ["one two three four", "five"])[0]
    assert first.items == 1


def test_manifest_counts_equal_the_tokenizers(tmp_path, tok):
    csv_path = tmp_path / "asr.csv"
    csv_path.write_text('wav,text,voice\na.wav,"hello, world",x\nb.wav,,y\nc.wav,shall I compare thee,z\n',
                        encoding="utf-8")
    c = tc.count_file(csv_path, tok, progress=False)
    assert (c.tokens, c.items, c.skipped) == (*_expected(tok, ["hello, world", "shall I compare thee"]), 1)
    rows = [{"image": "a.png", "caption": "A red square."}, {"image": "b.png", "caption": ""},
            {"image": "c.png", "caption": "Two blue stars, left."}]
    for name, text in (("a.json", json.dumps(rows, indent=0)), ("b.jsonl", "\n".join(map(json.dumps, rows)))):
        (tmp_path / name).write_text(text, encoding="utf-8")
        c = tc.count_file(tmp_path / name, tok, progress=False)
        assert (c.tokens, c.items) == _expected(tok, ["A red square.", "Two blue stars, left."])


# ---------------------------------------------------------------- JSON splicing
def test_replace_values_keeps_layout():
    text = '{\n  "model": {"d": 1, "e": [1, 2]},\n  "train": {"a": 1,   "b": 2.5, "c": "x"}\n}\n'
    out = replace_values(text, {("train", "a"): 40, ("train", "b"): 7})
    assert out == '{\n  "model": {"d": 1, "e": [1, 2]},\n  "train": {"a": 40,   "b": 7, "c": "x"}\n}\n'
    with pytest.raises(KeyError):
        replace_values(text, {("train", "zz"): 1})


# ---------------------------------------------------------------- the script
def _project(tmp_path):
    cfg = tiny_config(tmp_path, model={"vocab_size": 300, "ctx_len": 32}, data={"val_file": ""},
                      train={"batch_size": 4, "gradient_accumulation_steps": 2, "precision": "auto"})
    path = tmp_path / "thinker.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path, cfg


def test_dry_run_writes_nothing(tmp_path, capsys):
    path, cfg = _project(tmp_path)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    argv = ["--config", str(path), "--dry-run", "--root", str(tmp_path), "--thinker-config", str(path)]
    assert update_configs.main(argv) == 0
    out = capsys.readouterr().out
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert "+++" in out and '"max_steps"' in out and "nothing written" in out
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()  # trained in a temp folder


def test_real_run_rewrites_train_values_only(tmp_path, capsys):
    path, cfg = _project(tmp_path)
    argv = ["--config", str(path), "--root", str(tmp_path), "--thinker-config", str(path)]
    assert update_configs.main(argv) == 0
    new = json.loads(path.read_text())
    assert list(new) == list(cfg) and list(new["train"]) == list(cfg["train"])
    assert new["model"] == cfg["model"] and new["data"] == cfg["data"]
    t = new["train"]
    assert t["batch_size"] * t["gradient_accumulation_steps"] == 8
    assert t["warmup_steps"] == t["max_steps"] * 4 // 100 and t["max_epochs"] == 10
    assert "wrote" in capsys.readouterr().out
    assert update_configs.main(argv) == 0 and "no change" in capsys.readouterr().out  # idempotent


def test_unknown_stage_kind_is_skipped(tmp_path, capsys):
    path, cfg = _project(tmp_path)
    (tmp_path / "odd.xyz").write_text("?")
    other = tmp_path / "odd.json"
    other.write_text(json.dumps({"model": {"d_model": 8}, "data": {"train_file": str(tmp_path / "odd.xyz")},
                                 "train": cfg["train"]}, indent=2))
    before = other.read_bytes()
    argv = ["--config", str(other), "--root", str(tmp_path), "--thinker-config", str(path)]
    assert update_configs.main(argv) == 0
    assert "unknown data kind" in capsys.readouterr().out and other.read_bytes() == before


def test_an_empty_dataset_gets_no_budget_and_json_holds_every_planned_value(tmp_path, capsys):
    """A header-only CSV is not a dataset of 0 steps: its section is skipped with the reason; --json
    holds every planned value of the configs it could plan, changed or not."""
    path, cfg = _project(tmp_path)
    (tmp_path / "empty.csv").write_text("wav,text\n")
    other = tmp_path / "asr.json"
    other.write_text(json.dumps({"model": {"d_model": 8}, "data": {"train_csv": str(tmp_path / "empty.csv")},
                                 "train": cfg["train"]}, indent=2))
    out = tmp_path / "plan.json"
    argv = ["--config", str(path), "--config", str(other), "--dry-run", "--root", str(tmp_path),
            "--thinker-config", str(path), "--json", str(out)]
    assert update_configs.main(argv) == 0
    assert "skipped: no training items in data.train_csv" in capsys.readouterr().out
    planned = json.loads(out.read_text())
    assert list(planned) == [str(path)]
    assert set(planned[str(path)]) == {f"train.{k}" for k in ("batch_size", "gradient_accumulation_steps",
                                                              "max_steps", "max_epochs", "warmup_steps",
                                                              "val_freq", "checkpoint_freq")}
