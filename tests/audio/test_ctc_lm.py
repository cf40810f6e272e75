"""Stage B decoding: the character n-gram LM and CTC prefix beam search with shallow fusion."""
import argparse

import numpy as np
import pytest
import torch

from omni.audio.ctc import BLANK, CharVocab, greedy_decode
from omni.audio.lm import EOS, CharNgramLM, beam_decode, prefix_beam_search
from omni.cli.eval_asr import lm_sentences

VOCAB = CharVocab.default()
SENTENCES = ["the cat sat on the mat", "a cat sat by the door", "the cat ran to the mat", "my cat is fat"]


def _frames(spec: list[dict[str, float]]) -> np.ndarray:
    """One dict per frame {char or '_' (blank): probability}; the rest of the mass spread thinly."""
    out = np.full((len(spec), len(VOCAB)), 1e-6)
    for t, probs in enumerate(spec):
        for c, p in probs.items():
            out[t, BLANK if c == "_" else VOCAB.index[c]] = p
    out /= out.sum(1, keepdims=True)
    return np.log(out)


@pytest.mark.parametrize("order", [1, 3, 6])
def test_lm_distributions_sum_to_one_in_seen_and_unseen_contexts(order):
    lm = CharNgramLM.train(SENTENCES, order, VOCAB.chars)
    for prefix in ["", "the c", "zzqx", "my cat is fat"]:
        p = np.exp(lm.log_probs(lm.context(prefix)))
        assert p.shape == (len(VOCAB.chars) + 1,) and abs(p.sum() - 1) < 1e-9 and (p > 0).all()


def test_lm_prefers_text_like_its_sentences():
    lm = CharNgramLM.train(SENTENCES, 5, VOCAB.chars)
    assert lm.sentence_log_prob("the cat sat on the door") > lm.sentence_log_prob("eht tac tas no eht rood")
    # after "the ca" the next letter is "t" far more often than anything else, and a sentence ends after "mat"
    nxt = lm.log_probs(lm.context("the ca"))
    assert int(np.argmax(nxt)) == lm.index["t"]
    assert int(np.argmax(lm.log_probs(lm.context("the cat sat on the mat")))) == lm.index[EOS]


def test_lm_rejects_characters_outside_its_alphabet_and_empty_input():
    with pytest.raises(ValueError, match="sentence 2"):
        CharNgramLM.train(["ok", "NOT ok"], 3, VOCAB.chars)
    with pytest.raises(ValueError, match="no sentences"):
        CharNgramLM.train([], 3, VOCAB.chars)


def test_beam_search_sums_the_paths_that_greedy_misses():
    # two frames, each 60% blank / 40% "a": the best single path is blank-blank (""), but the paths
    # that spell "a" (aa, a_, _a) add up to 0.64 against 0.36
    lp = _frames([{"_": 0.6, "a": 0.4}, {"_": 0.6, "a": 0.4}])
    assert greedy_decode(torch.from_numpy(lp)[None], torch.tensor([2]), VOCAB) == [""]
    assert prefix_beam_search(lp, VOCAB, None, beam=4) == "a"


def test_beam_search_without_lm_keeps_repeats_apart_only_across_a_blank():
    lp = _frames([{"l": 0.9}, {"l": 0.9}, {"_": 0.9}, {"l": 0.9}, {"o": 0.9}])
    assert prefix_beam_search(lp, VOCAB, None) == "llo"


def test_lm_resolves_acoustically_ambiguous_vowel():
    # "c", then a 50/50 choice between "a" and "o" (slightly favouring "o"), then "t"
    lp = _frames([{"c": 0.9}, {"a": 0.45, "o": 0.5}, {"t": 0.9}])
    assert prefix_beam_search(lp, VOCAB, None) == "cot"
    lm = CharNgramLM.train(SENTENCES, 4, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.5, length_bonus=0.0) == "cat"


def test_beam_decode_batches_with_lengths():
    lp = np.stack([_frames([{"h": 0.9}, {"i": 0.9}, {"_": 0.9}]), _frames([{"o": 0.9}, {"_": 0.9}, {"k": 0.99}])])
    out = beam_decode(torch.from_numpy(lp).float(), torch.tensor([3, 2]), VOCAB, None)
    assert out == ["hi", "o"]   # the second row's third frame is padding



def test_length_bonus_and_end_of_sentence_decide_between_hypotheses():
    # a confident "the" and then an unsure "n" (0.3): without a bonus the LM-free search drops it,
    # a large enough bonus per character keeps it
    lp = _frames([{"t": 0.9}, {"h": 0.9}, {"e": 0.9}, {"_": 0.7, "n": 0.3}])
    lm = CharNgramLM.train(["then", "the end"], 3, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.0, length_bonus=0.0) == "the"
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.0, length_bonus=2.0) == "then"
    # with the LM alone: "the" never ends a sentence it knows ("the" + end of sentence is unseen,
    # "then" + end is), so the end-of-sentence term tips the choice to "then"
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=1.0, length_bonus=0.0) == "then"
    no_eos = CharNgramLM.train(["the", "the end"], 3, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, no_eos, lm_weight=1.0, length_bonus=0.0) == "the"


def test_spaces_that_separate_nothing_are_not_transcribed():
    # the model says a space over the silence before and after a word and between two words twice
    lp = _frames([{" ": 0.9}, {"_": 0.9}, {"d": 0.9}, {"o": 0.9}, {"g": 0.9}, {" ": 0.9}, {"_": 0.9}, {" ": 0.9},
                  {"r": 0.9}, {"a": 0.9}, {"n": 0.9}, {" ": 0.9}])
    lengths = torch.tensor([12])
    assert greedy_decode(torch.from_numpy(lp)[None], lengths, VOCAB) == ["dog ran"]
    assert prefix_beam_search(lp, VOCAB, None) == "dog ran"
    lm = CharNgramLM.train(SENTENCES + ["a dog ran to the cat", "a dog sat"], 4, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.8, length_bonus=1.0) == "dog ran"


def test_a_leading_space_does_not_become_a_word_the_lm_likes():
    # " cat", the space unsure against "a": the LM never saw a sentence open with a space and often
    # with "a ", yet the space over the silence is neither kept nor read as the word "a"
    lp = _frames([{" ": 0.6, "a": 0.3}, {"_": 0.9}, {"c": 0.9}, {"a": 0.9}, {"t": 0.9}])
    lm = CharNgramLM.train(SENTENCES, 4, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.8, length_bonus=1.0) == "cat"


def test_an_lm_of_sentences_and_their_words_lets_a_word_be_said_alone(tmp_path):
    # a confident "cat" after a weak "the " (the silence before a word said alone): an LM of whole
    # sentences reads a sentence opening into the silence; the evaluation's LM, which also learns each
    # word as an utterance of its own, does not
    lp = _frames([{"t": 0.3, "_": 0.6}, {"h": 0.3, "_": 0.6}, {"e": 0.3, "_": 0.6}, {" ": 0.3, "_": 0.6},
                  {"c": 0.9}, {"a": 0.9}, {"t": 0.9}])
    assert prefix_beam_search(lp, VOCAB, None) == "cat"
    sentences_only = CharNgramLM.train(SENTENCES, 6, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, sentences_only, lm_weight=0.8, length_bonus=1.0) == "the cat"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. A cat sat by the door. The cat ran to the mat. "
                      "My cat is fat and happy.\n")
    _, utterances = lm_sentences(argparse.Namespace(lm_text=str(corpus)), "", ["my cat is fat and happy"])
    assert "my cat is fat and happy" not in utterances and {"cat", "happy", "the cat sat on the mat"} <= set(utterances)
    lm = CharNgramLM.train(utterances, 6, VOCAB.chars)
    assert prefix_beam_search(lp, VOCAB, lm, lm_weight=0.8, length_bonus=1.0) == "cat"
