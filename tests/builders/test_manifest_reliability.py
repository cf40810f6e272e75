"""Issue 37, the data side: a malformed manifest row is skipped and counted (never a stopped stage),
manifest paths stay in their data folder unless the config opts out, a broken registry or image
manifest is one clear error, and a corrupt cache is rebuilt. Ends with a fuzz of the manifest reader."""
import json
import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from omni.audio.ctc import CharVocab
from omni.audio.features import save_wav
from omni.audio.stage import AsrDataset
from omni.codec.stage import MelDataset
from omni.data import BadRow, DataError, LineFile
from omni.manifest import OUTSIDE, Manifest, resolve_manifest
from omni.multimodal.data import SftDataConfig, SftDataset, Sources, read_image_manifest
from omni.ocr.model import OcrModelConfig, OcrVocab
from omni.ocr.stage import OcrDataset
from omni.talker.data import CodeCache, TalkerDataset
from omni.talker.text import TextVocab
from omni.thinker.tokenizer import train_bpe
from omni.vision.data import read_manifest
from omni.vocoder.stage import CropDataset
from tests.conftest import ROOT
from tests.multimodal.test_sft import tiny_model

CLIPS = ROOT / "assets" / "audio" / "clips.csv"
TONE = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)


class StandInCodec(torch.nn.Module):
    """What CodeCache needs of a codec: n_codebooks and encode(log_mel (1, T, 128)) -> codes (1, T', 2)."""
    n_codebooks = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = log_mel[:, ::2]
        return torch.stack([(x.mean(-1) * 3).long() % 16, (x[..., :8].mean(-1) * 7).long() % 16], dim=-1)


def _data_dir(tmp_path):
    """tmp/data/ with a.wav, and tmp/outside/secret.wav beside it (a file a manifest must not reach)."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    save_wav(data / "a.wav", TONE)
    save_wav(outside / "secret.wav", TONE)
    return data


def _write(path, lines, raw_line: bytes = b""):
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8") + raw_line)
    return path


# ---------------------------------------------------------------- malformed rows
MALFORMED = ["a.wav", "a.wav,hello,extra,more", ""]  # missing column, extra columns, empty line


def _asr_csv_with_malformed_rows(data):
    # the non-UTF-8 row is the last one, as in a file cut from a Latin-1 export
    return _write(data / "asr.csv", ["wav,text,speaker", "a.wav,hello,x", *MALFORMED, "a.wav,good again,y"],
                  b"a.wav,caf\xe9 au lait,z\n")


def test_asr_skips_malformed_rows_at_build_and_when_read(tmp_path, caplog):
    csv = _asr_csv_with_malformed_rows(_data_dir(tmp_path))
    ds = AsrDataset(Manifest(csv), CharVocab.default(), 15.0, 2)
    durations = ds.durations()  # read every row for length bucketing: stopped Stage B before
    assert durations[0] == pytest.approx(0.5) and durations[4] == pytest.approx(0.5)
    assert list(durations[1:4]) == [0, 0, 0] and durations[5] == 0
    assert "asr.csv:3: 1 fields, header has 3" in caplog.text and "asr.csv:7: unreadable row" in caplog.text
    caplog.clear()
    for _ in range(2):  # two epochs: every bad row counted each time, logged once only
        items = [ds[i] for i in range(len(ds))]
        assert [x is not None for x in items] == [True, False, False, False, True, False]
        report = ds.report()
        assert report["malformed_row"] == 4 and report["skipped"] == 4 and report["seen"] == 6
    assert caplog.text == ""  # the durations pass logged them already


@pytest.mark.parametrize("make", [lambda m: MelDataset(m, 20.0, None), lambda m: CropDataset(m, 2048)],
                         ids=["codec", "vocoder"])
def test_codec_and_vocoder_datasets_skip_malformed_rows(tmp_path, make):
    ds = make(Manifest(_asr_csv_with_malformed_rows(_data_dir(tmp_path))))
    assert [ds[i] is not None for i in range(len(ds))] == [True, False, False, False, True, False]
    assert ds.report()["malformed_row"] == 4


def test_a_bad_header_or_a_file_without_one_usable_row_is_still_an_error(tmp_path):
    data = _data_dir(tmp_path)
    with pytest.raises(DataError, match=r"h.csv:1: header .* lacks column"):
        Manifest(_write(data / "h.csv", ["wave,text", "a.wav,hi"]))
    with pytest.raises(DataError, match=r"u.csv:1: unreadable header"):
        Manifest(_write(data / "u.csv", [], b"w\xffv,text\na.wav,hi\n"))
    with pytest.raises(DataError, match=r"d.csv:1: .* names a column twice"):
        Manifest(_write(data / "d.csv", ["wav,text,text", "a.wav,hi,ho"]))
    bad = AsrDataset(Manifest(_write(data / "all_bad.csv", ["wav,text", *MALFORMED[:2]])), CharVocab.default(), 15, 2)
    with pytest.raises(DataError, match=r"all_bad.csv: none of its 2 rows is usable"):
        bad.durations()
    bom = Manifest(_write(data / "bom.csv", ["\ufeffwav,text", "a.wav,hi"]))  # a spreadsheet's byte-order mark
    assert bom[0]["text"] == "hi"


def test_ocr_skips_malformed_rows(tmp_path):
    data = tmp_path / "ocr"
    data.mkdir()
    Image.new("L", (64, 16), 255).save(data / "line.png")
    csv = _write(data / "ocr.csv", ["image,text,font", "line.png,hello,f", "line.png,no font", "line.png,a,b,c"])
    cfg = OcrModelConfig(16, 128, 8, 16, 1, 2, 32, 16, 1, 2, 32, 40, 0.0)
    ds = OcrDataset(csv, OcrVocab.ascii(), cfg)
    widths = ds.widths()
    assert widths[0] > 0 and list(widths[1:]) == [0, 0]
    assert [ds[i] is not None for i in range(3)] == [True, False, False]
    assert ds.report()["malformed_row"] == 2


def test_talker_cache_and_dataset_skip_malformed_rows(tmp_path):
    data = _data_dir(tmp_path)
    csv = _write(data / "tts.csv", ["text,wav", "hello there,a.wav", "no wav column", "bad,a.wav,x"],
                 b"caf\xe9,a.wav\n")
    cache = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)
    assert cache.reasons == {1: "malformed_row", 2: "malformed_row", 3: "malformed_row"}
    ds = TalkerDataset(Manifest(csv), cache, TextVocab.default(), 200)
    assert [ds[i] is not None for i in range(4)] == [True, False, False, False]
    assert ds.report()["malformed_row"] == 3


def test_sft_counts_malformed_asr_rows(tmp_path):
    data = _data_dir(tmp_path)
    Image.new("RGB", (40, 40), (10, 100, 200)).save(data / "0.png")
    (data / "ann.json").write_text(json.dumps([{"image": "0.png", "caption": "A picture."}]))
    _write(data / "asr.csv", ["wav,text", "a.wav,hello", "a.wav"])
    (data / "text.txt").write_text("some words here\n")
    src = Sources(str(data / "ann.json"), str(data / "asr.csv"), str(data / "text.txt"), "train")
    tok = train_bpe(iter(["hello picture words"] * 4), 300)
    cfg = SftDataConfig(*[""] * 6)
    model = tiny_model(tok.vocab_size)
    ds = SftDataset(src, [("asr", 0), ("asr", 1)], tok, cfg, 256, 32, model.image_slots(), model.audio_slots, 0)
    assert ds[0] is not None and ds[1] is None
    assert ds.report()["malformed_row"] == 1
    assert src.example("asr", 1, random.Random(0), cfg) is None  # what validation sees


# ---------------------------------------------------------------- paths stay in the data folder
ESCAPES = ["../outside/secret.wav", "../../x/secret.wav", "/etc/shadow", "../../../../etc/passwd", "link/secret.wav"]


def _escaping_csv(data):
    os.symlink(data.parent / "outside", data / "link")  # a symlink inside the folder that points out
    return _write(data / "asr.csv", ["wav,text", "a.wav,inside", *(f"{p},escape" for p in ESCAPES)])


def test_asr_refuses_paths_outside_the_data_folder(tmp_path, caplog, monkeypatch):
    csv = _escaping_csv(_data_dir(tmp_path))
    opened = []
    import omni.manifest

    real_load = omni.manifest.load_audio
    monkeypatch.setattr(omni.manifest, "load_audio", lambda p: opened.append(p) or real_load(p))
    ds = AsrDataset(Manifest(csv), CharVocab.default(), 15.0, 2)
    assert [ds[i] is not None for i in range(len(ds))] == [True] + [False] * len(ESCAPES)
    assert ds.report()[OUTSIDE] == len(ESCAPES)
    assert opened == [str(csv.parent / "a.wav")]  # not one outside file was opened
    assert "asr.csv:4: '../../x/secret.wav' is outside the data folder" in caplog.text
    assert "data.allow_outside_paths=true" in caplog.text
    assert list(ds.durations()[1:]) == [0] * len(ESCAPES)
    opted_in = AsrDataset(Manifest(csv, allow_outside=True), CharVocab.default(), 15.0, 2)
    assert opted_in[1] is not None and opted_in[5] is not None  # ../outside/secret.wav and the symlink


def test_committed_and_built_manifests_stay_inside(tmp_path):
    from omni.builders.image import make_synthetic_images
    from omni.builders.speech import _smoke_from_clips

    assert all(os.path.isfile(row["wav"]) for _, row in Manifest(CLIPS).scan())
    smoke = _smoke_from_clips(tmp_path / "speech", 6)  # what the demo builds without espeak-ng
    for csv in (smoke.asr_csv, smoke.asr_val_csv, smoke.tts_csv, smoke.tts_val_csv):
        assert all(os.path.isfile(row["wav"]) for _, row in Manifest(csv).scan())
    for path in make_synthetic_images(tmp_path / "images", 6, seed=0, val_fraction=0.34):
        rows, dropped = read_manifest(path)
        assert dropped == 0 and all(r.image.is_file() for r in rows)


def test_talker_refuses_outside_paths_even_from_a_cache_that_allowed_them(tmp_path):
    data = _data_dir(tmp_path)
    csv = _write(data / "tts.csv", ["text,wav", "hello there,a.wav", "a secret,../outside/secret.wav"])
    cache = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0, allow_outside=True)
    assert cache.reasons == {}  # encoded: the run that built it opted in
    refused = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)
    assert refused.reasons == {1: OUTSIDE}  # the option is part of the stamp: re-encoded without it
    ds = TalkerDataset(Manifest(csv), cache, TextVocab.default(), 200)
    assert ds[0] is not None and ds[1] is None and ds.report()[OUTSIDE] == 1


def test_ocr_refuses_outside_image_paths(tmp_path):
    data = tmp_path / "ocr"
    data.mkdir()
    Image.new("L", (64, 16), 255).save(data / "line.png")
    Image.new("L", (64, 16), 255).save(tmp_path / "secret.png")
    csv = _write(data / "ocr.csv", ["image,text", "line.png,hello", "../secret.png,secret"])
    cfg = OcrModelConfig(16, 128, 8, 16, 1, 2, 32, 16, 1, 2, 32, 40, 0.0)
    ds = OcrDataset(csv, OcrVocab.ascii(), cfg)
    assert ds.widths()[1] == 0 and ds[1] is None and ds.report()[OUTSIDE] == 1
    assert OcrDataset(csv, OcrVocab.ascii(), cfg, allow_outside=True)[1] is not None


def _image_manifest(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    Image.new("RGB", (40, 40), (10, 100, 200)).save(data / "ok.png")
    Image.new("RGB", (40, 40), (10, 100, 200)).save(tmp_path / "secret.png")
    rows = [{"image": "ok.png", "caption": "A picture."}, {"image": "../secret.png", "caption": "Secret."},
            {"image": "/etc/passwd", "caption": "Passwords."}]
    path = data / "ann.json"
    path.write_text(json.dumps(rows))
    return path


def test_image_manifests_drop_rows_outside_their_folder(tmp_path, caplog):
    path = _image_manifest(tmp_path)
    rows, dropped = read_manifest(path)
    assert [r.image.name for r in rows] == ["ok.png"] and dropped == 2
    assert "row 2: '../secret.png' is outside the data folder" in caplog.text
    assert len(read_manifest(path, allow_outside=True)[0]) == 3
    assert [r["image"] for r in read_image_manifest(path)] == [str(path.parent / "ok.png")]
    assert len(read_image_manifest(path, allow_outside=True)) == 3


# ---------------------------------------------------------------- one clear error per broken file
def test_registry_errors_name_the_file_and_line(tmp_path):
    registry = tmp_path / "datasets.json"
    registry.write_text('{\n  "a": "x",\n  "b": \n}')
    with pytest.raises(DataError, match=r"datasets.json:4:1: invalid JSON"):
        resolve_manifest("a", "train", registry)
    registry.write_bytes(b'{"a": "x",\n "\xff": "y"}')
    with pytest.raises(DataError, match=r"datasets.json:2: not UTF-8"):
        resolve_manifest("a", "train", registry)
    registry.write_text('{"a": ["x"]}')
    with pytest.raises(DataError, match=r"datasets.json: expected one JSON object"):
        resolve_manifest("a", "train", registry)
    registry.write_text('[' * 100_000)
    with pytest.raises(DataError, match=r"datasets.json"):
        resolve_manifest("a", "train", registry)
    registry.write_text('{"a": "x"}')
    assert resolve_manifest("a", "val", registry) == tmp_path / "x" / "val.tsv"


def test_non_utf8_image_manifest_names_the_line(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "caption": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"ann.jsonl:2: not UTF-8"):
        read_manifest(path)
    with pytest.raises(DataError, match=r"ann.jsonl:2: not UTF-8"):
        read_image_manifest(path)


# ---------------------------------------------------------------- corrupt caches are rebuilt
@pytest.mark.parametrize("garbage", [b"", b"not numpy at all", b"\x93NUMPY\x01\x00garbage",
                                     b"PK\x03\x04zip?", "truncated"])
def test_a_corrupt_offset_cache_is_rebuilt(tmp_path, garbage):
    data = _data_dir(tmp_path)
    csv = _write(data / "asr.csv", ["wav,text", "a.wav,hello", "a.wav,again"])
    cache = data / "asr.csv.row_offsets.npy"
    assert len(Manifest(csv)) == 2 and cache.is_file()
    cache.write_bytes(cache.read_bytes()[:-7] if garbage == "truncated" else garbage)
    m = Manifest(csv)
    assert len(m) == 2 and m[1]["text"] == "again"
    assert len(LineFile(csv, suffix=".row_offsets.npy")) == 3  # and the rebuilt cache reads back


def test_a_corrupt_talker_code_cache_is_rebuilt(tmp_path):
    data = _data_dir(tmp_path)
    csv = _write(data / "tts.csv", ["text,wav", "hello there,a.wav"])
    first = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)
    npy, meta = CodeCache.paths(tmp_path / "codes", csv)
    for broken in (lambda: meta.write_text("{not json"), lambda: npy.write_bytes(b"junk"),
                   lambda: meta.write_text(json.dumps({"stamp": json.loads(meta.read_text())["stamp"]}))):
        CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)  # a good cache again
        broken()
        again = CodeCache.load_or_build(csv, tmp_path / "codes", StandInCodec(), "sha", 12.0)
        assert np.array_equal(again.codes, first.codes) and again.reasons == {}


# ---------------------------------------------------------------- fuzz
HEADERS = [b"wav,text", b"wav,text,speaker", b"text,wav", b"path\tnum_samples\ttext", b"wav", b"", b"w\xffv,text"]
CELLS = st.one_of(st.sampled_from(["a.wav", "../x.wav", "/etc/passwd", "link/x.wav", "", "hi", '"', "a,b",
                                   "\t", "\x00", "é", "\r"]),
                  st.text(max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(HEADERS), suffix=st.sampled_from([".csv", ".tsv"]),
       rows=st.lists(st.one_of(st.lists(CELLS, max_size=5).map(lambda c: ",".join(c).encode("utf-8", "surrogatepass")),
                               st.binary(max_size=30)), max_size=6),
       allow_outside=st.booleans())
def test_fuzz_manifest_rows_load_or_fail_naming_the_file(tmp_path_factory, header, suffix, rows, allow_outside):
    """Any bytes: the manifest either loads (each row a dict, or a BadRow naming file:line), or
    refuses to load with a DataError naming the file. Never another exception."""
    data = tmp_path_factory.mktemp("fuzz")
    path = data / f"m{suffix}"
    path.write_bytes(header + b"\n" + b"\n".join(rows))
    try:
        m = Manifest(path, allow_outside=allow_outside)
    except DataError as e:
        assert str(path) in str(e)
        return
    for i in range(len(m)):
        try:
            row = m[i]
        except BadRow as e:
            assert f"{path}:{i + 2}:" in str(e) and e.reason in ("malformed_row", OUTSIDE)
            continue
        assert set(m.header) == set(row) and isinstance(row["wav"], str)
        if not allow_outside:
            assert os.path.realpath(row["wav"]).startswith(str(data.resolve()))
