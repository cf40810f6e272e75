"""Does the Talker read its text: the attention-on-text probe and the text readout head."""
import pytest
import torch

from omni.talker.data import collate_talker
from omni.talker.loss import TalkerLossConfig, TextAttention, talker_loss
from omni.talker.model import make_targets
from omni.talker.text import TextVocab
from tests.talker.test_talker import N_Q, K, R, _talker


def test_text_attention_reports_the_mass_on_the_text_and_how_many_characters_it_spreads_over():
    """With every score zero each frame query attends uniformly to the keys it sees: <s>, the n
    characters and the speech up to itself, so the text gets n / (seen keys), spread over n characters."""
    model = _talker()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.zero_()
    n_chars, frames = 5, 6
    batch = collate_talker([(torch.tensor(TextVocab.default().encode("hello")[0]), torch.randint(0, K, (frames, N_Q)))])
    t = make_targets(batch["codes"], batch["code_lens"], R)
    probe = TextAttention(batch["text_lens"], t["n_groups"])
    with torch.no_grad():
        model.speech_hidden(batch["text"], batch["text_lens"], t["groups"], probe=probe)
    queries = torch.arange(int(t["n_groups"][0]) + 1) + 1 + n_chars          # BOS and each group
    expect = (n_chars / (queries + 1).float()).mean().item()
    assert set(probe.stats) == {0, 1}
    for stats in probe.stats.values():
        assert stats["mass"] == pytest.approx(expect, rel=1e-5) and stats["chars"] == pytest.approx(n_chars, rel=1e-4)


def test_text_aux_head_predicts_the_next_base_codes_from_what_its_layer_read():
    """talker.text_aux_layer: a head on that layer's attention output predicts the base codes of the
    group each position predicts; its CE joins the loss (loss.text_aux_weight) and trains the text side."""
    vocab = TextVocab.default()
    batch = collate_talker([(torch.tensor(vocab.encode("hello there")[0]), torch.randint(0, K, (9, N_Q)))])
    plain = _talker(depth_layers=1).train()
    _, logs = talker_loss(plain, batch, TalkerLossConfig(), R)
    assert "text_aux_ce" not in logs and plain.text_aux is None
    model = _talker(depth_layers=1, text_aux_layer=1).train()
    loss, logs = talker_loss(model, batch, TalkerLossConfig(), R)
    assert abs(logs["text_aux_ce"] - torch.log(torch.tensor(float(K))).item()) < 0.5   # near uniform at init
    loss.backward()
    assert model.text_aux.weight.grad.abs().sum() > 0 and model.text_emb.weight.grad.abs().sum() > 0
    heavier, _ = talker_loss(model, batch, TalkerLossConfig(text_aux_weight=3.0), R)
    light, _ = talker_loss(model, batch, TalkerLossConfig(text_aux_weight=0.0), R)
    assert (heavier - light).item() == pytest.approx(3.0 * logs["text_aux_ce"], rel=1e-3)
    with pytest.raises(ValueError, match="text_aux_layer"):
        _talker(text_aux_layer=2)


def test_text_position_is_the_expected_character_as_a_fraction_of_the_text(monkeypatch):
    """``evaluate.py talker --free``'s reading position: with every score zero a frame query reads all
    characters alike, so it reads at the middle (0.5); queries made to read character c alone read at
    c / (n - 1): the first character at 0, the last at 1, whatever the keys of <s> and the speech score."""
    from omni.cli import eval_talker as et
    model = _talker().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.zero_()
    text = torch.tensor([[0] + TextVocab.default().encode("hello")[0]])      # <s> and 5 characters
    groups = torch.randint(0, K, (1, 3, R, N_Q))
    pos = et.text_position(model, text, groups, layer=1)
    assert pos.shape == (4,) and torch.allclose(pos, torch.full((4,), 0.5), atol=1e-6)
    reads = torch.tensor([0, 2, 4, 1])                                        # the character each query reads

    def peaked(block, x, index):
        scores = torch.zeros(1, 2, index.shape[1], x.shape[1])
        scores[0, :, torch.arange(4), 1 + reads] = 60.0                       # key 0 is <s>
        scores[..., 0] = 90.0                                                 # <s> outscores all: not text
        return scores
    monkeypatch.setattr(et, "frame_scores", peaked)
    assert torch.allclose(et.text_position(model, text, groups, layer=1), reads / 4.0, atol=1e-6)
