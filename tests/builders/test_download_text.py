"""Corpus builder: cleaning functions, resumable downloads (loopback HTTP) and the script end to end.

No apt tools and no network: the HTTP server is http.server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from omni.builders import download as dl
from omni.builders import text as tc
from tests.conftest import ROOT

STORIES = [
    "Once upon a time, there was a little cat named Tom. Tom liked to play in the sun.\n"
    "One day he found a red ball under the big tree and played with it all day long.",
    "Lily had a small blue boat. She took it to the pond with her dad every morning.\n\n"
    "The boat floated on the water and the ducks swam around it. Lily laughed and clapped.",
    "Ben wanted to fly a kite. The wind was strong, so the kite went up high in the sky.\n"
    "Ben held the string tight and smiled. His mom said he was a very good kite flyer.",
    "A little bird sat on a branch and sang a happy song. A girl heard the song and stopped.\n"
    "She sang back to the bird. They sang together until the sun went down behind the hill.",
    "The dog and the frog were friends. Every day they met by the river to talk and play.\n"
    "One day it rained, so they hid under a big leaf and told each other funny stories.",
]
SHORT = "Too short."
BAD_UTF8 = b"Mia found a shiny stone \xff\xfe in the garden and showed it to everybody she met."


def tinystories_bytes() -> bytes:
    """Five stories, one duplicate (modulo whitespace), one short, one empty, one bad UTF-8."""
    parts = [s.encode() for s in STORIES]
    parts += [STORIES[0].replace(" ", "  ").encode(), SHORT.encode(), b"   ", BAD_UTF8]
    return b"".join(p + b"\n<|endoftext|>\n" for p in parts)


# ----------------------------------------------------------------------------- cleaning


def test_normalize_whitespace_gives_one_line() -> None:
    raw = "\ufeffA  line\twith\r\nbreaks\u2028and\x85odd\x0cseparators\x00 and a NUL \n"
    out = tc.normalize_whitespace(raw)
    assert out == "A line with breaks and odd separators and a NUL"
    assert out.splitlines() == [out]


def test_strip_gutenberg_keeps_only_the_body() -> None:
    text = (
        "The Project Gutenberg EBook of Hamlet\nlicence blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
        "Ham. To be, or not to be.\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nmore licence\n"
    )
    body = tc.strip_gutenberg(text)
    assert body.strip() == "Ham. To be, or not to be."
    assert tc.strip_gutenberg("no markers here\n") == "no markers here\n"


def test_shakespeare_documents_merge_short_speeches_and_drop_sonnet_numbers() -> None:
    play = "Ber.\nWho's there?\n\nFran.\nNay, answer me: stand, and unfold yourself.\n\n" * 6
    docs = tc.shakespeare_documents(play, min_chars=200)
    assert all(len(d) >= 200 for d in docs)
    assert " ".join(docs) == tc.normalize_whitespace(play)
    sonnets = "I\n\nFrom fairest creatures we desire increase,\nThat thereby\n\nII\n\nWhen forty\n"
    assert tc.shakespeare_documents(sonnets, min_chars=10) == [
        "From fairest creatures we desire increase, That thereby",
        "When forty",
    ]


def test_verse_prefixes_are_stripped_and_chapters_grouped() -> None:
    assert tc.strip_verse_prefix("  II Samuel 3:4: The fourth") == ("II Samuel 3", "The fourth")
    assert tc.strip_verse_prefix("Esther (Greek) 1:1: In") == ("Esther (Greek) 1", "In")
    assert tc.strip_verse_prefix("who walk in the law") is None
    osis = (
        "Genesis 1:1: <w>In</w> <w>the</w> <w>beginning</w>, <w>God</w><w>created</w> it.\n"
        "Genesis 1:2: <w>The</w> earth &amp; sky.<milestone type=\"line\"/>\n"
        "A Psalm by David.  Genesis 2:1: <w>Done</w>.\n"
        "A Psalm by David.  Genesis 2:2: <w>Rest</w>.\n"
        "The following words used in the World English Bible are rare. Abba means father.\n"
        "(engWEB2015eb)\n"
    )
    assert tc.diatheke_chapters(osis) == [
        "In the beginning, God created it. The earth & sky.",
        "Done. Rest.",
        "The following words used in the World English Bible are rare. Abba means father.",
    ]
    kjv = (
        "\nGenesis 1\n\n  1 In the beginning God\ncreated the heaven.\n  2 And the earth.\n\n"
        "Genesis 2\n\n  1 Thus.\n"
    )
    assert tc.kjv_chapters(kjv) == [
        "In the beginning God created the heaven. And the earth.",
        "Thus.",
    ]


def test_split_on_separator_and_jsonl_dump() -> None:
    stories = list(tc.split_on_separator(tinystories_bytes().splitlines(keepends=True)))
    assert len(stories) == 9 and stories[-1] == BAD_UTF8 + b"\n"
    dump = [b'{"title": "A", "text": "Alpha\\nbeta"}\n', b"\n", b"Plain article line\n"]
    assert list(tc.dump_documents(dump)) == [b"Alpha\nbeta", b"Plain article line"]


def test_clean_documents_counts_every_drop_reason() -> None:
    stats, dedupe = tc.CleanStats(), tc.Deduper()
    raw = list(tc.split_on_separator(tinystories_bytes().splitlines(keepends=True)))
    docs = list(tc.clean_documents(raw, stats, dedupe, min_chars=50, max_chars=10_000))
    assert docs == [tc.normalize_whitespace(s) for s in STORIES]
    assert stats.dropped == {"empty": 1, "too_short": 1, "duplicate": 1, "non_utf8": 1}
    assert all("\n" not in d and d == d.strip() for d in docs)


def test_split_long_cuts_at_sentence_ends() -> None:
    text = " ".join(f"Sentence number {i} ends here." for i in range(100))
    pieces = tc.split_long(text, 200)
    assert all(len(p) <= 200 for p in pieces) and " ".join(pieces) == text
    assert all(p.endswith(".") for p in pieces)
    assert tc.split_long("x" * 450, 200) == ["x" * 200, "x" * 200, "x" * 50]


def test_split_train_val_is_deterministic_and_disjoint() -> None:
    train, val = tc.split_train_val(1000, 0.05, seed=3)
    assert (train, val) == tc.split_train_val(1000, 0.05, seed=3)
    assert len(val) == 50 and sorted(train + val) == list(range(1000))
    assert tc.split_train_val(1000, 0.05, seed=4)[1] != val
    assert len(tc.split_train_val(5, 0.005, seed=0)[1]) == 1  # never an empty val split
    with pytest.raises(ValueError):
        tc.split_train_val(10, 1.0, seed=0)


# ----------------------------------------------------------------------------- downloads


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    honour_range = True

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(m.group(1)) if m and self.honour_range else 0
        if start >= len(body) and m and self.honour_range:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    """A loopback HTTP server with Range support; yields the handler class (files, requests)."""
    handler = type("Handler", (_Handler,), {"files": {}, "requests": [], "honour_range": True})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def test_download_full_file_with_checksum(server, tmp_path: Path) -> None:
    data = tinystories_bytes()
    server.files["/TinyStories-valid.txt"] = data
    dest = tmp_path / "ts.txt"
    got = dl.download(f"{server.base}/TinyStories-valid.txt", dest, hashlib.sha256(data).hexdigest())
    assert got == dest and dest.read_bytes() == data
    assert not dest.with_name("ts.txt.part").exists()
    dl.download(f"{server.base}/TinyStories-valid.txt", dest, hashlib.sha256(data).hexdigest())
    assert len(server.requests) == 1  # a verified file is reused, not fetched again


def test_download_resumes_from_part_file(server, tmp_path: Path) -> None:
    data = tinystories_bytes() * 50
    server.files["/f.txt"] = data
    dest = tmp_path / "f.txt"
    dest.with_name("f.txt.part").write_bytes(data[:1234])
    dl.download(f"{server.base}/f.txt", dest, hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.requests == [("/f.txt", "bytes=1234-")]


def test_download_restarts_when_server_ignores_range(server, tmp_path: Path) -> None:
    data = tinystories_bytes()
    server.files["/f.txt"] = data
    server.honour_range = False
    dest = tmp_path / "f.txt"
    dest.with_name("f.txt.part").write_bytes(b"garbage that must not survive")
    dl.download(f"{server.base}/f.txt", dest, hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data


def test_download_complete_part_file_is_finished_without_refetching(server, tmp_path: Path) -> None:
    data = tinystories_bytes()
    server.files["/f.txt"] = data
    dest = tmp_path / "f.txt"
    dest.with_name("f.txt.part").write_bytes(data)
    dl.download(f"{server.base}/f.txt", dest, hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data


def test_download_checksum_mismatch_is_a_clear_error(server, tmp_path: Path) -> None:
    server.files["/f.txt"] = b"hello"
    dest = tmp_path / "f.txt"
    with pytest.raises(dl.ChecksumError, match=r"expected 0{64}, got [0-9a-f]{64}"):
        dl.download(f"{server.base}/f.txt", dest, "0" * 64)
    assert not dest.exists() and not dest.with_name("f.txt.part").exists()


def test_download_404_is_a_clear_error(server, tmp_path: Path) -> None:
    with pytest.raises(dl.DownloadError, match=r"HTTP 404 .*/missing.txt"):
        dl.download(f"{server.base}/missing.txt", tmp_path / "missing.txt")
    assert not (tmp_path / "missing.txt").exists()


def test_extract_archive_zip_and_tar(tmp_path: Path) -> None:
    import tarfile
    import zipfile

    src = tmp_path / "a.txt"
    src.write_text("hi")
    with zipfile.ZipFile(tmp_path / "x.whl", "w") as zf:
        zf.write(src, "pkg/a.txt")
    with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:
        tar.add(src, "pkg-1.0/a.txt")
    assert (dl.extract_archive(tmp_path / "x.whl", tmp_path / "w") / "pkg/a.txt").read_text() == "hi"
    assert (dl.extract_archive(tmp_path / "x.tar.gz", tmp_path / "t") / "pkg-1.0/a.txt").exists()


def test_missing_apt_package_without_root_names_the_command(monkeypatch) -> None:
    monkeypatch.setattr(dl, "missing_apt_packages", lambda pkgs: ["diatheke"])
    monkeypatch.setattr(dl.os, "geteuid", lambda: 1000)
    with pytest.raises(dl.MissingPackageError, match=r"sudo apt-get install -y diatheke"):
        dl.ensure_apt_packages(["sword-text-web", "diatheke"])


# ----------------------------------------------------------------------------- the script


def _script():
    spec = importlib.util.spec_from_file_location(
        "download_production_text", ROOT / "scripts" / "download_production_text.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_builds_tinystories_corpus(server, tmp_path: Path, capsys) -> None:
    data = tinystories_bytes()
    server.files["/TinyStories-valid.txt"] = data
    out, cache = tmp_path / "text", tmp_path / "cache"
    argv = [
        "--source", "tinystories", "--url", f"{server.base}/TinyStories-valid.txt",
        "--sha256", hashlib.sha256(data).hexdigest(), "--out", str(out), "--cache-dir", str(cache),
        "--val-fraction", "0.2", "--seed", "1", "--min-chars", "50",
    ]
    script = _script()
    assert script.main(argv + ["--dry-run"]) == 0
    assert not out.exists() and not cache.exists()

    assert script.main(argv) == 0
    train = (out / "production_corpus.txt").read_bytes()
    val = (out / "production_val.txt").read_bytes()
    lines = train.decode("utf-8").splitlines() + val.decode("utf-8").splitlines()
    assert sorted(lines) == sorted(tc.normalize_whitespace(s) for s in STORIES)
    assert len(val.decode().splitlines()) == 1
    assert train.endswith(b"\n") and b"\n\n" not in train and b"\r" not in train
    summary = capsys.readouterr().out
    assert "tinystories" in summary and "production_corpus.txt" in summary

    assert script.main(argv) == 0  # a re-run rebuilds identical files, never appends
    assert (out / "production_corpus.txt").read_bytes() == train
    assert (out / "production_val.txt").read_bytes() == val
    assert sorted(p.name for p in out.iterdir()) == ["production_corpus.txt", "production_val.txt"]


def test_script_max_samples_and_failed_source(server, tmp_path: Path, capsys) -> None:
    server.files["/ts.txt"] = tinystories_bytes()
    out = tmp_path / "text"
    common = ["--source", "tinystories", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    script = _script()
    assert script.main(common + ["--url", f"{server.base}/ts.txt", "--n", "3",
                                 "--min-chars", "50", "--val-fraction", "0"]) == 0
    assert len((out / "production_corpus.txt").read_text().splitlines()) == 3
    assert (out / "production_val.txt").read_text() == ""
    before = (out / "production_corpus.txt").read_bytes()
    assert script.main(common + ["--url", f"{server.base}/gone.txt"]) == 1
    assert "source 'tinystories' failed: HTTP 404" in capsys.readouterr().err
    assert (out / "production_corpus.txt").read_bytes() == before  # old outputs left intact
