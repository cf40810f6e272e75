import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from omni.thinker.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_bpe
from tests.conftest import SONNETS


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(SONNETS.read_text(encoding="utf-8").splitlines()), vocab_size=400)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=64))
def test_round_trip_any_utf8_bytes(bpe, raw):
    text = raw.decode("utf-8", errors="replace")
    assert bpe.decode(bpe.encode(text)) == text


def test_special_tokens_reserved(bpe):
    ids = [bpe.special[t] for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert bpe.special["<|pad|>"] != bpe.special["<|unk|>"]
    assert 12 < bpe.vocab_size <= 400


def test_special_strings_in_user_text_stay_text(bpe):
    ids = bpe.encode("hi <|eos|> there<|image_start|>")
    assert not set(ids) & set(bpe.special.values())
    assert bpe.decode(ids) == "hi <|eos|> there<|image_start|>"
    assert bpe.decode([bpe.special["<|eos|>"]]) == "<|eos|>"
    assert bpe.decode([bpe.special["<|eos|>"]], skip_special=True) == ""


def test_save_load_same_ids(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    text = "Shall I compare thee to a summer's day? 🌞"
    assert again.encode(text) == bpe.encode(text)
    assert again.fingerprint() == bpe.fingerprint()


def test_sentencepiece_model_loads(tmp_path):
    spm.SentencePieceTrainer.train(input=str(SONNETS), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    tok = load_tokenizer(tmp_path / "sp.model")
    text = "From fairest creatures we desire increase"
    assert tok.decode(tok.encode(text)) == text
    specials = list(tok.special.values())
    assert len(set(specials)) == len(SPECIAL_TOKENS)  # every special token has its own id
    assert tok.vocab_size >= 300 and max(specials) < tok.vocab_size
    end = tok.special["<|end|>"]
    assert tok.decode(tok.encode("a") + [end]) == "a<|end|>"


def test_missing_tokenizer_is_clear(tmp_path):
    with pytest.raises(ValueError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "tokenizer.json")
