"""The duration Talker: monotonic alignment, durations, rate, padding, cache, learning."""
import json

import pytest
import torch

from omni.config import ConfigError
from omni.talker.align import durations_of, monotonic_alignment, path_of, round_durations
from omni.talker.data import collate_talker
from omni.talker.duration import DurationTalker
from omni.talker.duration_loss import duration_loss
from omni.talker.loss import TalkerLossConfig
from omni.talker.model import TalkerConfig, build_talker
from omni.talker.text import TextVocab
from tests.conftest import ROOT

N_Q, K, R, DIM = 3, 16, 2, 8


def _talker(**kw) -> DurationTalker:
    torch.manual_seed(0)
    args = dict(d_model=48, n_layers=2, n_heads=3, n_kv_heads=1, d_ff=96, ctx_len=256, dropout=0.0,
                frames_per_step=R, n_codebooks=N_Q, codebook_size=K, text_vocab_size=len(TextVocab.default()),
                depth_layers=1, alignment="durations", encoder_layers=1, latent_dim=DIM)
    args.update(kw)
    model = build_talker(TalkerConfig(**args))
    model.set_latent(torch.randn(N_Q, K, DIM), torch.randint(0, K, (500, N_Q)))
    return model.eval()


def _item(text: str, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(TextVocab.default().encode(text)[0]), torch.randint(0, K, (frames, N_Q), generator=g)


@pytest.mark.parametrize("seed", range(5))
def test_alignment_is_monotonic_covers_every_symbol_and_sums_to_the_frames(seed):
    g = torch.Generator().manual_seed(seed)
    n_sym, n_frames = torch.tensor([5, 3, 7]), torch.tensor([12, 3, 20])
    path = monotonic_alignment(torch.randn(3, 7, 20, generator=g), n_sym, n_frames)
    d = durations_of(path, 7)
    for b in range(3):
        p = path[b, :n_frames[b]]
        assert p[0] == 0 and p[-1] == n_sym[b] - 1
        assert bool(((p[1:] - p[:-1]) >= 0).all() and ((p[1:] - p[:-1]) <= 1).all())
        assert bool((d[b, :n_sym[b]] >= 1).all()) and int(d[b].sum()) == n_frames[b]
        assert bool((path[b, n_frames[b]:] == -1).all())


def test_alignment_finds_the_best_path_where_it_is_obvious():
    """Frames 0-3 look like symbol 0, 4-5 like symbol 1, 6-9 like symbol 2."""
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    logp = torch.full((1, 3, 10), -10.0)
    logp[0, truth, torch.arange(10)] = 0.0
    path = monotonic_alignment(logp, torch.tensor([3]), torch.tensor([10]))
    assert torch.equal(path[0], truth)
    with pytest.raises(ValueError, match="n_frames >= n_sym"):
        monotonic_alignment(logp, torch.tensor([3]), torch.tensor([2]))


def test_rounding_keeps_the_running_sum_and_rate_scales_the_length():
    frames = torch.tensor([1.4, 1.4, 1.4, 0.2, 3.0])
    d = round_durations(frames)
    assert int(d.sum()) == round(float(frames.sum())) and bool((d >= 0).all())
    assert len(path_of(d)) == int(d.sum())
    long = torch.rand(200) * 4
    for rate in (0.5, 2.0):
        assert abs(int(round_durations(long / rate).sum()) - float(long.sum()) / rate) <= 0.5


def test_generation_speaks_for_the_predicted_length_and_rate_changes_it_in_proportion():
    model = _talker()
    ids = TextVocab.default().encode("a longer sentence to read aloud, slowly.")[0]
    _, path = model.plan(ids)
    frames = path.shape[1]
    codes = model.generate(ids)
    assert len(codes) == -(-frames // R) * R
    fast = model.generate(ids, rate=2.0)
    assert abs(len(fast) - len(codes) / 2) <= 2 * R
    assert len(model.generate(ids, max_groups=3)) == 3 * R


def test_a_padded_row_gives_the_same_outputs_as_alone():
    model = _talker()
    items = [_item("hello there", 30, 1), _item("a much longer line of text", 60, 2)]
    both = model(**collate_talker(items))
    alone = model(**collate_talker(items[:1]))
    G = alone["logits"].shape[1]
    assert torch.allclose(both["logits"][0, :G], alone["logits"][0], atol=1e-5)
    assert torch.equal(both["durations"][0, :alone["durations"].shape[1]], alone["durations"][0])
    assert torch.allclose(both["log_dur"][0, :alone["log_dur"].shape[1]], alone["log_dur"][0], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_generation_equals_uncached(temperature):
    model = _talker()
    ids = TextVocab.default().encode("the cat sat on the mat")[0]
    a = model.generate(ids, temperature, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, temperature, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_the_text_changes_what_is_spoken():
    model = _talker()
    vocab = TextVocab.default()
    codes = torch.randint(0, K, (40, N_Q))
    a = model(**collate_talker([(torch.tensor(vocab.encode("red fish")[0]), codes)]))["logits"]
    b = model(**collate_talker([(torch.tensor(vocab.encode("big cat!")[0]), codes)]))["logits"]
    assert not torch.allclose(a, b)


def test_config_refuses_an_attention_reading_head_and_an_unknown_alignment():
    with pytest.raises(ConfigError, match="text_aux_layer"):
        _talker(text_aux_layer=1)
    with pytest.raises(ConfigError, match="alignment"):
        _talker(alignment="magic")


@pytest.mark.slow
def test_learns_a_tiny_set_to_low_code_loss_and_reads_it_back():
    """Four texts, each spoken as its own code sequence in which every character holds for
    three frames: teacher forcing learns the codes, the aligner finds the three-frame runs, the
    duration predictor learns them, and greedy generation from the text alone gives back the codes."""
    torch.manual_seed(0)
    model = _talker(d_model=66, d_ff=128).train()
    vocab = TextVocab.default()
    texts = ["red fish", "blue bird", "green frog", "yellow sun"]
    items = []
    for i, t in enumerate(texts):
        ids = torch.tensor(vocab.encode(t)[0])
        per_char = torch.randint(0, K, (len(ids), N_Q), generator=torch.Generator().manual_seed(i))
        items.append((ids, per_char.repeat_interleave(3, dim=0)))
    model.set_latent(torch.randn(N_Q, K, DIM, generator=torch.Generator().manual_seed(9)),
                     torch.cat([c for _, c in items]))
    batch = collate_talker(items)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(500):
        loss, logs = duration_loss(model, batch, TalkerLossConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["acc"] > 0.95 and logs["dur_frames"] < 0.3, logs
    for ids, codes in items:
        out = model.generate(ids.tolist())
        assert len(out) == -(-len(codes) // R) * R and (out[:len(codes)] == codes).float().mean() > 0.9


def test_synthesis_speaks_for_the_log_normal_mean_of_the_durations():
    """A head trained on log frames predicts the median; the mean adds half the error variance,
    which training keeps as a running mean (log_dur_var), so that speech is not too short."""
    model = _talker()
    ids = TextVocab.default().encode("a sentence long enough to measure its length by")[0]
    base = model.plan(ids)[1].shape[1]
    model.log_dur_var.fill_(0.4)
    assert abs(model.plan(ids)[1].shape[1] / base - 1.2214) < 0.05          # exp(0.4 / 2)
    batch = collate_talker([_item("hello there", 30, 1), _item("a longer line of text", 50, 2)])
    model.log_dur_var.zero_()
    model.eval()
    _, logs = duration_loss(model, batch, TalkerLossConfig())
    assert float(model.log_dur_var) == 0.0                                  # validation leaves it alone
    model.train()
    _, logs = duration_loss(model, batch, TalkerLossConfig())
    assert float(model.log_dur_var) == pytest.approx(0.01 * logs["dur"], rel=1e-4)


def test_default_config_is_a_duration_talker_of_about_3m_params():
    cfg = json.loads((ROOT / "configs" / "talker_tiny.json").read_text())
    codec = cfg["codec"]["model"]
    t = {**cfg["talker"], "n_codebooks": codec["n_codebooks"], "codebook_size": codec["codebook_size"],
         "text_vocab_size": len(TextVocab.default(cfg["talker"]["text_input"])), "latent_dim": codec["codebook_dim"]}
    model = build_talker(TalkerConfig(**t))
    assert isinstance(model, DurationTalker) and 2.9e6 < model.num_params() < 3.1e6
