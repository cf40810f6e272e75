import os
import time

import numpy as np
import pytest

from omni import data
from omni.data import DataError, LineFile, PackedTokens, build_line_offsets, is_val_line, tokenize_corpus
from omni.thinker.tokenizer import train_bpe
from tests.conftest import SONNETS


@pytest.mark.parametrize("content,lines", [
    (b"", []),
    (b"a\nbb\nccc\n", [b"a", b"bb", b"ccc"]),
    (b"a\nbb\nccc", [b"a", b"bb", b"ccc"]),          # no trailing newline
    (b"a\r\n\nz\r\n", [b"a", b"", b"z"]),           # CRLF and an empty line
])
def test_line_offsets(tmp_path, content, lines):
    p = tmp_path / "f.txt"
    p.write_bytes(content)
    lf = LineFile(p)
    assert len(lf) == len(lines) and [lf[i] for i in range(len(lf))] == lines


def test_offsets_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK", 7)
    rows = [("x" * (i % 13)).encode() for i in range(200)]
    p = tmp_path / "f.txt"
    p.write_bytes(b"\n".join(rows) + b"\n")
    offs = build_line_offsets(p)
    assert len(offs) == 201 and offs[-1] == p.stat().st_size
    assert [LineFile(p)[i] for i in range(200)] == rows


def test_offset_cache_reused_then_invalidated(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("one\ntwo\n")
    LineFile(p)
    cache = tmp_path / "f.txt.line_offsets.npy"
    assert cache.is_file()
    calls = []
    real = data.build_line_offsets
    monkeypatch.setattr(data, "build_line_offsets", lambda path: calls.append(path) or real(path))
    assert len(LineFile(p)) == 2 and calls == []       # reused
    with open(p, "a") as f:
        f.write("three\n")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    lf = LineFile(p)
    assert len(calls) == 1 and len(lf) == 3 and lf[2] == b"three"  # rebuilt after the edit
    assert np.load(cache, allow_pickle=False).dtype == np.int64    # plain array, no pickle


def test_bad_lines_are_skipped_and_counted(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"good line one\n\n\xff\xfe broken\n   \ngood line two\n")
    tok = train_bpe(iter(["good line one", "good line two"] * 5), 300)
    eos = tok.special["<|eos|>"]
    corpus = tokenize_corpus(p, tok, eos)
    assert corpus.n_skipped == 3
    assert tok.decode(corpus.tokens.tolist()) == "good line one<|eos|>good line two<|eos|>"


def test_tokens_cache_keyed_by_tokenizer(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("alpha beta\ngamma delta\n")
    a = train_bpe(iter(["alpha beta gamma delta"] * 3), 280)
    b = train_bpe(iter(["alpha beta gamma delta"] * 3), 300)
    ta = np.array(tokenize_corpus(p, a, 3).tokens)
    tb = np.array(tokenize_corpus(p, b, 3).tokens)
    assert a.decode(ta.tolist()) == b.decode(tb.tolist())
    assert not np.array_equal(ta, tb) or a.fingerprint() != b.fingerprint()


def test_packed_windows_shift_by_one():
    tokens = np.arange(1, 42, dtype=np.uint32)
    ds = PackedTokens(tokens, 8, "t")
    assert len(ds) == 5
    x, y = ds[2]
    assert x.tolist() == list(range(17, 25)) and y.tolist() == list(range(18, 26))
    with pytest.raises(DataError, match="fewer than one window"):
        PackedTokens(tokens[:8], 8, "t")


def test_val_split_deterministic_and_fractional():
    a, b = is_val_line(100_000, 0.05), is_val_line(100_000, 0.05)
    assert np.array_equal(a, b) and 0.045 < a.mean() < 0.055
    assert not np.array_equal(a, is_val_line(100_000, 0.05, seed=1))


def test_select_concatenates_kept_lines(tmp_path):
    src = tmp_path / "sonnets.txt"
    src.write_bytes(SONNETS.read_bytes())
    lines = LineFile(src)
    tok = train_bpe((t for _, t in lines.iter_text() if t), 300)
    corpus = tokenize_corpus(src, tok, tok.special["<|eos|>"])
    keep = np.zeros(len(lines), dtype=bool)
    keep[[0, 5]] = True
    text = tok.decode(corpus.select(keep).tolist())
    assert text == lines[0].decode() + "<|eos|>" + lines[5].decode() + "<|eos|>"


def test_epoch_batches_deterministic_ranked_and_resumable():
    from omni.data import EpochBatches
    full = list(EpochBatches(40, 4, 0, 1, seed=3, epoch=1, start=0))
    assert len(full) == 10 and sorted(i for b in full for i in b) == list(range(40))
    assert list(EpochBatches(40, 4, 0, 1, seed=3, epoch=1, start=6)) == full[6:]  # resume position
    r0 = list(EpochBatches(40, 2, 0, 2, seed=3, epoch=1, start=0))
    r1 = list(EpochBatches(40, 2, 1, 2, seed=3, epoch=1, start=0))
    assert [a + b for a, b in zip(r0, r1)] == full  # two ranks split the same global batches
    assert full != list(EpochBatches(40, 4, 0, 1, seed=3, epoch=2, start=0))


def test_epoch_batches_bucket_by_length():
    from omni.data import EpochBatches
    lengths = np.random.default_rng(0).integers(1, 1000, 400)
    batches = list(EpochBatches(400, 8, 0, 1, seed=0, epoch=0, start=0, lengths=lengths, pool=50))
    assert sorted(i for b in batches for i in b) == list(range(400))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)  # similar lengths share a batch
