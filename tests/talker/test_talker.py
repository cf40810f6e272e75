"""The Talker: one-shift teacher forcing, causality, text conditioning, padding, KV cache, text input."""
import json

import pytest
import torch

from omni.speech.chunks import split_text
from omni.talker.data import collate_talker
from omni.talker.loss import TalkerLossConfig, self_fed, talker_loss
from omni.talker.model import IGNORE, Talker, TalkerConfig, make_targets
from omni.talker.phonemes import phonemize
from omni.talker.text import PAD, START, TextVocab
from tests.conftest import ROOT

N_Q, K, R = 3, 16, 2


def _talker(**kw) -> Talker:
    torch.manual_seed(0)
    args = dict(d_model=48, n_layers=2, n_heads=3, n_kv_heads=1, d_ff=96, ctx_len=256, dropout=0.0,
                frames_per_step=R, n_codebooks=N_Q, codebook_size=K, text_vocab_size=len(TextVocab.default()),
                depth_layers=0)
    args.update(kw)
    return Talker(TalkerConfig(**args)).eval()


def _text(s: str) -> torch.Tensor:
    ids, _ = TextVocab.default().encode(s)
    return torch.tensor([[START] + ids])


def test_targets_are_the_inputs_shifted_by_exactly_one():
    codes = torch.randint(0, K, (2, 9, N_Q))
    lengths = torch.tensor([9, 4])
    t = make_targets(codes, lengths, R)
    groups, targets, stop = t["groups"], t["targets"], t["stop"]
    assert groups.shape == (2, 5, R, N_Q) and targets.shape == (2, 6, R, N_Q)
    assert torch.equal(groups.flatten(1, 2)[0, :9], codes[0])          # inputs are the codes, in order
    # position j (0 = BOS) predicts group j+1, which is the input at position j+1
    assert torch.equal(targets[0, :4], groups[0, :4])
    assert torch.equal(targets[0, 4, 0], groups[0, 4, 0]) and (targets[0, 4, 1] == IGNORE).all()  # frame 10 absent
    assert (targets[:, -1] == IGNORE).all()
    assert torch.equal(targets[1, :2], groups[1, :2]) and (targets[1, 2:] == IGNORE).all()
    assert stop[0].tolist() == [0, 0, 0, 0, 0, 1] and stop[1].tolist() == [0, 0, 1, -1, -1, -1]
    assert (groups[1, 2:] == codes[1, 3]).all()                         # past the end: the last frame repeated


def test_logits_at_t_depend_only_on_groups_up_to_t():
    model = _talker()
    text = _text("hello there")
    groups = torch.randint(0, K, (1, 6, R, N_Q))
    lens = torch.tensor([text.shape[1]])
    base, stop = model(text, lens, groups)
    for k in range(groups.shape[1]):
        changed = groups.clone()
        changed[0, k] = (changed[0, k] + 1) % K
        logits, _ = model(text, lens, changed)
        # position p holds BOS (p=0) or group p; perturbing group k+1 (index k) changes p >= k+1 only
        assert torch.allclose(logits[0, :k + 1], base[0, :k + 1], atol=1e-5)
        assert not torch.allclose(logits[0, k + 1], base[0, k + 1], atol=1e-4)


def test_output_changes_when_the_text_changes():
    model = _talker()
    groups = torch.randint(0, K, (1, 4, R, N_Q))
    a, _ = model(_text("hello there"), torch.tensor([12]), groups)
    b, _ = model(_text("hello where"), torch.tensor([12]), groups)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.equal(model.generate(_text("good morning")[0, 1:].tolist(), max_groups=6),
                           model.generate(_text("good night")[0, 1:].tolist(), max_groups=6))


@pytest.mark.parametrize("depth", [0, 1])
def test_a_padded_row_gives_the_same_logits_as_alone(depth):
    model = _talker(depth_layers=depth)
    short = (torch.tensor(TextVocab.default().encode("hi")[0]), torch.randint(0, K, (5, N_Q)))
    long = (torch.tensor(TextVocab.default().encode("a much longer text")[0]), torch.randint(0, K, (11, N_Q)))
    batch = collate_talker([short, long])
    assert batch["text"][0].tolist()[:5] == [START] + short[0].tolist() + [PAD, PAD]
    t = make_targets(batch["codes"], batch["code_lens"], R)
    both, stop_both = model(batch["text"], batch["text_lens"], t["groups"], next_groups=t["targets"])
    alone_batch = collate_talker([short])
    t1 = make_targets(alone_batch["codes"], alone_batch["code_lens"], R)
    alone, stop_alone = model(alone_batch["text"], alone_batch["text_lens"], t1["groups"], next_groups=t1["targets"])
    n = alone.shape[1]
    assert torch.allclose(both[0, :n], alone[0], atol=1e-5)
    assert torch.allclose(stop_both[0, :n], stop_alone[0], atol=1e-4)


@pytest.mark.parametrize("temperature,depth", [(0.0, 0), (1.0, 0), (0.0, 1), (1.0, 1)])
def test_kv_cache_generation_equals_uncached(temperature, depth):
    model = _talker(depth_layers=depth)
    ids = TextVocab.default().encode("the cache must not change a thing")[0]
    cached = model.generate(ids, temperature, top_k=5, max_groups=12, generator=torch.Generator().manual_seed(3))
    full = model.generate(ids, temperature, top_k=5, max_groups=12, use_cache=False,
                          generator=torch.Generator().manual_seed(3))
    assert cached.shape[1] == N_Q and cached.shape[0] % R == 0 and cached.shape[0] > 0
    assert torch.equal(cached, full)
    assert cached.min() >= 0 and cached.max() < K


@pytest.mark.parametrize("depth", [0, 1])
def test_teacher_forced_argmax_reproduces_greedy_generation(depth):
    """Fed its own greedy output as the real codes, the teacher-forced argmax of every frame is that
    output: one shift, the same positions as generation (and, with the depth chain, the same order
    of codes within a group)."""
    model = _talker(depth_layers=depth)
    torch.nn.init.constant_(model.head.weight[-1], 0.0)  # never stops: all 7 groups
    ids = TextVocab.default().encode("teacher forcing")[0]
    out = model.generate(ids, 0.0, max_groups=7)
    assert out.shape == (7 * R, N_Q)
    assert torch.equal(model.teacher_forced(ids, out), out)
    assert model.teacher_forced(ids, out[:5]).shape == (5, N_Q)  # a length that is not a multiple of r


def test_self_feeding_replaces_inputs_by_the_talkers_own_one_shift_predictions():
    model = _talker()
    ids = TextVocab.default().encode("scheduled sampling")[0]
    text, lens = torch.tensor([[START] + ids]), torch.tensor([len(ids) + 1])
    codes = torch.randint(0, K, (12, N_Q))
    groups = make_targets(codes[None], torch.tensor([12]), R)["groups"]
    assert torch.equal(self_fed(model, text, lens, groups, 0.0), groups)
    fed = self_fed(model, text, lens, groups, 1.0)
    # every group is the Talker's greedy choice for it given the real groups before it: checked
    # against generation, which feeds one group at a time through the KV cache
    for j in range(groups.shape[1]):
        prefix = model.embed_prefix(text)
        if j:
            prefix = torch.cat([prefix, model.embed_groups(groups[:, :j])], dim=1)
        logits, _ = model.split_logits(model.hidden(prefix)[:, -1])
        assert torch.equal(fed[0, j], logits[0].argmax(-1))
    torch.manual_seed(1)
    half = self_fed(model, text, lens, groups, 0.5)
    same = (half == groups).flatten(2).all(-1)[0]
    assert torch.equal(half[0, ~same], fed[0, ~same]) and 0 < int(same.sum()) < groups.shape[1]


def test_depth_chain_code_s_sees_the_codes_before_it_in_its_group_only():
    """With depth_layers, the logits of code s (frame-major slot order) at a position change with
    slots < s of the group it predicts and never with slots >= s, nor with later input groups; a
    forward pass without the predicted groups is an error, not a silent independent-heads answer."""
    model = _talker(depth_layers=1)
    text = _text("a chain of codes")
    lens = torch.tensor([text.shape[1]])
    groups = torch.randint(0, K, (1, 4, R, N_Q))
    nxt = torch.randint(0, K, (1, 5, R, N_Q))
    base, _ = model(text, lens, groups, next_groups=nxt)
    S = R * N_Q
    for s in range(S):
        changed = nxt.clone().flatten(2)
        changed[0, 2, s] = (changed[0, 2, s] + 1) % K
        logits, _ = model(text, lens, groups, next_groups=changed.view_as(nxt))
        flat, ref = logits.flatten(2, 3), base.flatten(2, 3)  # (1, G+1, S, K)
        assert torch.allclose(flat[0, 2, :s + 1], ref[0, 2, :s + 1], atol=1e-5)
        assert s == S - 1 or not torch.allclose(flat[0, 2, s + 1:], ref[0, 2, s + 1:], atol=1e-4)
        assert torch.allclose(torch.cat([flat[0, :2], flat[0, 3:]]), torch.cat([ref[0, :2], ref[0, 3:]]), atol=1e-5)
    later = groups.clone()
    later[0, 2:] = (later[0, 2:] + 1) % K
    logits, _ = model(text, lens, later, next_groups=nxt)
    assert torch.allclose(logits[0, :3], base[0, :3], atol=1e-5)
    with pytest.raises(ValueError, match="next groups"):
        model(text, lens, groups)


def test_generation_stops_at_the_limit_and_rejects_empty_text():
    model = _talker()
    torch.nn.init.constant_(model.head.weight[-1], 0.0)  # stop logit 0 -> p = 0.5, never > 0.5
    out = model.generate([5, 6, 7], max_groups=4)
    assert out.shape == (4 * R, N_Q)
    assert model.max_groups(10) < model.max_groups(100)
    with pytest.raises(ValueError, match="empty text"):
        model.generate([])


def test_unknown_characters_are_dropped_and_counted():
    vocab = TextVocab.default()
    ids, dropped = vocab.encode("Caf\u00e9 \u2014 \u201cquoted\u201d \u00a9 2024 \u2603!")
    clean, _ = vocab.normalize("Caf\u00e9 \u2014 \u201cquoted\u201d \u00a9 2024 \u2603!")
    assert clean == 'cafe - "quoted" 2024 !'
    assert dropped == {"\u00a9": 1, "\u2603": 1}
    assert all(3 <= i < len(vocab) for i in ids)
    assert vocab.encode("\u2603\u2603")[0] == [] and vocab.encode("   ")[0] == []


def test_vocab_round_trips_through_json(tmp_path):
    vocab = TextVocab(list("abc "))
    vocab.save(tmp_path / "v.json")
    assert TextVocab.load(tmp_path / "v.json").chars == list("abc ")
    assert json.loads((tmp_path / "v.json").read_text())["pad"] == PAD
    phonemes = TextVocab.default("phonemes")
    phonemes.save(tmp_path / "p.json")
    back = TextVocab.load(tmp_path / "p.json")
    assert back.kind == "phonemes" and back.chars == phonemes.chars
    # a vocabulary written before phoneme input (no "kind") reads characters
    (tmp_path / "old.json").write_text(json.dumps({"pad": 0, "start": 1, "unk": 2, "chars": list("ab ")}))
    assert TextVocab.load(tmp_path / "old.json").kind == "chars"
    with pytest.raises(ValueError, match="unknown Talker text input 'graphemes'"):
        TextVocab(list("ab"), "graphemes")


def test_phonemes_are_espeak_ng_ipa_with_clause_punctuation():
    assert phonemize("the night was cold, and dark.") == "ðə nˈaɪt wʌz kˈoʊld, ænd dˈɑːɹk."
    # spelling that hides the sound: the same vowel sound, different letters
    assert phonemize("through")[-2:] == phonemize("true")[-2:] == "uː"
    assert phonemize("read 42") == "ɹˈiːd fˈoːɹɾi tˈuː" and phonemize("   ") == ""
    vocab = TextVocab.default("phonemes")
    ids, dropped = vocab.encode("Caf\u00e9 \u2603! Is it 3:30?")
    assert dropped == {"\u2603": 1} and all(3 <= i < len(vocab) for i in ids)
    assert "".join(vocab.chars[i - 3] for i in ids) == phonemize(vocab.normalize("Cafe! Is it 3:30?")[0])
    assert vocab.encode("\u2603")[0] == [] and vocab.encode("")[0] == []


def test_long_text_is_split_at_sentences_then_clauses_then_words():
    text = ("first sentence here. " * 3 + "a clause, " * 30 + "x" * 75).strip()
    pieces = split_text(text, 60)
    assert all(0 < len(p) <= 60 for p in pieces)
    assert pieces[0] == "first sentence here."
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert split_text("short.", 60) == ["short."]


@pytest.mark.parametrize("self_feed,depth", [(0.0, 0), (0.5, 0), (0.5, 1)])
def test_loss_decreases_and_reports_per_codebook_ce(self_feed, depth):
    model = _talker(depth_layers=depth).train()
    batch = collate_talker([(torch.tensor(TextVocab.default().encode("hello")[0]), torch.randint(0, K, (7, N_Q)))])
    loss, logs = talker_loss(model, batch, TalkerLossConfig(self_feed=self_feed), R)
    assert set(f"ce_q{i}" for i in range(N_Q)) <= set(logs) and 0 <= logs["guided"] <= 1
    assert abs(logs["ce"] - torch.log(torch.tensor(float(K))).item()) < 0.5  # near uniform at init
    loss.backward()
    assert model.blocks[1].attn.qkv.weight.grad.abs().sum() > 0
    if depth:
        assert model.depth.layers[0][1].weight.grad.abs().sum() > 0


def test_attention_config_is_about_2_24m_params():
    cfg = json.loads((ROOT / "configs" / "talker_attention_tiny.json").read_text())
    codec = cfg["codec"]["model"]
    t = {**cfg["talker"], "n_codebooks": codec["n_codebooks"], "codebook_size": codec["codebook_size"],
         "text_vocab_size": len(TextVocab.default())}
    assert 2.15e6 < Talker(TalkerConfig(**t)).num_params() < 2.3e6


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1])
def test_overfits_a_few_utterances(depth):
    """Four texts, each with its own code sequence: teacher forcing reaches ~100% accuracy and
    greedy generation from the text alone reproduces the codes and stops at the right length."""
    torch.manual_seed(0)
    model = _talker(d_model=66, d_ff=128, dropout=0.0, depth_layers=depth).train()
    vocab = TextVocab.default()
    texts = ["red fish", "blue bird", "green frog in a pond", "yellow sun"]
    items = [(torch.tensor(vocab.encode(t)[0]), torch.randint(0, K, (2 * len(t), N_Q))) for t in texts]
    batch = collate_talker(items)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss, logs = talker_loss(model, batch, TalkerLossConfig(guided_weight=0.0), R)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["acc"] > 0.98 and logs["stop_acc"] == 1.0
    for ids, codes in items:
        out = model.generate(ids.tolist())
        assert torch.equal(out[:len(codes)], codes) and len(out) == len(codes)


def test_codebook_weights_weight_the_code_loss_and_leave_the_logged_ce_unweighted():
    model = _talker().train()
    torch.manual_seed(2)
    batch = collate_talker([(torch.tensor(TextVocab.default().encode("weights")[0]), torch.randint(0, K, (8, N_Q)))])
    cfg = TalkerLossConfig(guided_weight=0.0, stop_weight=0.0, codebook_weights=(1.0, 0.0, 0.0))
    model.eval()  # no dropout: the two passes see the same model
    loss, logs = talker_loss(model, batch, cfg, R)
    assert abs(loss.item() - logs["ce_q0"]) < 1e-5
    assert abs(logs["ce"] - sum(logs[f"ce_q{i}"] for i in range(N_Q)) / N_Q) < 1e-5
    with pytest.raises(ValueError, match=r"codebook_weights=\[1.0, 1.0\]: give 3 non-negative"):
        talker_loss(model, batch, TalkerLossConfig(codebook_weights=(1.0, 1.0)), R)
