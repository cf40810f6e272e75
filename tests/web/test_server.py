"""The web demo's server (omni/web/server.py) through FastAPI's TestClient, on tiny untrained checkpoints:
the replies are gibberish, so these check the plumbing: events, audio frames, uploads, isolation, stop."""
import contextlib
import io
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from export.tiny_checkpoints import build_sft, build_talker
from fastapi.testclient import TestClient
from PIL import Image

from omni.audio.features import save_wav
from omni.multimodal.chat import ChatSession, Sampling
from omni.multimodal.live import live_turn
from omni.multimodal.stage import load_omni
from omni.speech.synthesis import Synthesizer
from omni.thinker.tokenizer import train_bpe
from omni.tools.latency import scripted
from omni.web import server
from omni.web.__main__ import load_voice, main
from omni.web.media import Limits, pcm16
from omni.web.server import Demo, create_app
from tests.conftest import ROOT, SONNETS

MAX_NEW_TOKENS = 24
# small limits, so that refusing a too-big upload costs no time; the checks are the same at any size
LIMITS = Limits(upload_bytes=200_000, audio_s=3.0, image_pixels=100_000, text_chars=4000)


def build_checkpoints(root):
    """A Stage E folder (root/sft) and a Talker folder (root/tts), as build_all makes them."""
    tok = train_bpe(iter([ln for ln in SONNETS.read_text().splitlines() if ln.strip()]), 400)
    build_sft(root / "sft", tok)
    build_talker(root / "tts")
    return root


@contextlib.contextmanager
def running_server(ckpts, tmp, *extra: str):
    """``python -m omni.web`` on a free port -> its URL; the server is stopped on exit."""
    log = tmp / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "omni.web", "--ckpt", str(ckpts / "sft"), "--talker",
                                 str(ckpts / "tts"), "--vocoder", "griffinlim", "--device", "cpu", "--port", "0",
                                 "--max-new-tokens", str(MAX_NEW_TOKENS), *extra],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a server that never prints its URL must not hang the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()
        watchdog.cancel()
        url = re.search(r"http://\S+/", line)
        assert url, f"the server printed no URL ({line!r}); its log:\n{log.read_text()}"
        yield url.group(0)
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def demo(ckpts):
    model, tok, _ = load_omni(ckpts / "sft", torch.device("cpu"))
    voice = Synthesizer.load(ckpts / "tts", "cpu")
    return Demo(model, tok, Sampling(max_new_tokens=MAX_NEW_TOKENS), voice, None, LIMITS)


@pytest.fixture(scope="module")
def client(demo):
    with TestClient(create_app(demo)) as c:
        yield c


def png_bytes(w=40, h=30, noise=True) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else \
        np.full((h, w, 3), 200, dtype=np.uint8)  # a flat image: many pixels in a small file
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(tmp_path, seconds=1.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return save_wav(tmp_path / f"clip{seconds}.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)).read_bytes()


def upload(client, sid, kind, name, data):
    return client.post(f"/upload/{sid}", data={"kind": kind}, files={"file": (name, data)})


def collect(ws) -> tuple[list[dict], bytes]:
    """Events up to the turn's end (done / error / reset); binary frames appear as {"type": "audio"}."""
    events, audio = [], bytearray()
    while True:
        frame = ws.receive()
        if frame.get("bytes") is not None:
            audio += frame["bytes"]
            events.append({"type": "audio", "samples": len(frame["bytes"]) // 2})
            continue
        events.append(json.loads(frame["text"]))
        if events[-1]["type"] in ("done", "error", "reset"):
            return events, bytes(audio)


def turn(ws, text, speech=False) -> tuple[list[dict], bytes]:
    ws.send_json({"type": "message", "text": text, "speech": speech})
    return collect(ws)


@contextlib.contextmanager
def session(client):
    """A connected tab -> (socket, session id)."""
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello"
        yield ws, hello["session"]


def test_hello_and_health(client):
    assert client.get("/health").json()["sessions"] == 0
    with client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["speech"] is True and hello["speech_error"] is None and hello["sample_rate"] == 16000
        assert hello["limits"]["upload_bytes"] == LIMITS.upload_bytes
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["sessions"] == 1 and health["speech"] is True
    page = client.get("/")
    assert page.status_code == 200 and 'id="error"' in page.text and "/static/app.js" in page.text
    assert "http" not in re.sub(r"https?://(127\.0\.0\.1|localhost)", "", page.text)  # nothing from a CDN
    assert client.get("/static/app.js").status_code == 200


def test_text_turn_streams_text_then_done(client):
    with session(client) as (ws, _):
        events, audio = turn(ws, "hello there")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"text"}
    assert len(kinds) > 3, "the reply came in one piece, not streamed"
    done = events[-1]
    assert "".join(e["delta"] for e in events if e["type"] == "text").strip() == done["reply"] != ""
    lat = done["latency"]
    assert 0 < lat["tokens"] <= MAX_NEW_TOKENS
    assert 0 < lat["ttft_s"] <= lat["total_s"] and lat["tokens_per_s"] > 0
    assert audio == b"" and done["audio_samples"] == 0 and lat["first_audio_s"] is None and not done["stopped"]


def test_audio_frames_are_the_reply_audio(client, demo):
    with session(client) as (ws, _):
        events, audio = turn(ws, "hello there", speech=True)
    done = events[-1]
    assert done["type"] == "done" and done["audio_samples"] > 0
    frames = [i for i, e in enumerate(events) if e["type"] == "audio"]
    texts = [i for i, e in enumerate(events) if e["type"] == "text"]
    assert texts[0] < frames[0], "audio before any text"
    got = np.frombuffer(audio, dtype="<i2")
    assert len(got) == done["audio_samples"] == sum(events[i]["samples"] for i in frames)
    # the same turn answered directly (greedy text, greedy codes, seeded Griffin-Lim: the same samples)
    with demo.lock:
        ref = live_turn(ChatSession(demo.model, demo.tok, Sampling(max_new_tokens=MAX_NEW_TOKENS)), "hello there",
                        demo.voice, seed=demo.seed)
    assert ref.reply == done["reply"]
    assert np.array_equal(got, np.frombuffer(pcm16(ref.audio), dtype="<i2"))
    lat = done["latency"]
    assert lat["audio_s"] == pytest.approx(len(got) / 16000, abs=1e-4) and lat["rtf"] > 0
    assert 0 < lat["first_audio_s"] <= lat["total_s"]


def test_image_turn_and_audio_turn(client, tmp_path):
    app_sessions = client.app.state.sessions
    with session(client) as (ws, sid):
        r = upload(client, sid, "image", "noise.png", png_bytes())
        assert r.status_code == 200, r.text
        assert r.json()["detail"] == "40x30" and r.json()["pending"][0]["name"] == "noise.png"
        events, _ = turn(ws, "What is in the picture?")
        assert events[0]["attachments"] == [{"kind": "image", "name": "noise.png", "detail": "40x30"}]
        assert events[-1]["type"] == "done" and events[-1]["pending"] == []
        entry = app_sessions[sid].chat.history[-2]
        assert len(entry.images) == 1 and [k for k, _ in entry.sources] == ["image"]

        r = upload(client, sid, "audio", "clip.wav", wav_bytes(tmp_path, 1.0))
        assert r.status_code == 200 and r.json()["detail"] == "1.0 s", r.text
        events, audio = turn(ws, "", speech=True)  # a spoken question with no text, as the Record button sends
        assert events[-1]["type"] == "done" and events[0]["attachments"][0]["kind"] == "audio"
        assert len(audio) // 2 == events[-1]["audio_samples"]
        entry = app_sessions[sid].chat.history[-2]
        assert len(entry.clips) == 1 and len(entry.clips[0]) == 16000
        assert len(app_sessions[sid].chat.history) == 4
        assert not any(app_sessions[sid].dir.iterdir()), "attached uploads stay on disk"


def test_bad_uploads_are_refused_with_a_reason(client, tmp_path):
    corrupt_wav = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x07" * 40
    cases = [  # kind, file name, contents, HTTP status, what the message must say
        ("image", "big.png", b"\x00" * (LIMITS.upload_bytes + 1), 413, "limit"),
        ("image", "notes.png", b"this is a text file, not a picture", 400, "notes.png: not an image"),
        ("image", "song.png", wav_bytes(tmp_path, 0.5), 400, "song.png: not an image"),
        ("image", "huge.png", png_bytes(400, 300, noise=False), 413, "400x300 is 120,000 pixels"),
        ("image", "empty.png", b"", 400, "empty.png: the file is empty"),
        ("audio", "broken.wav", corrupt_wav, 400, "broken.wav: cannot decode audio"),
        ("audio", "long.wav", wav_bytes(tmp_path, 4.0), 413, "long.wav: 4.0 s of audio, over the 3 s limit"),
        ("video", "clip.mp4", b"...", 400, "'kind'"),
    ]
    with session(client) as (ws, sid):
        for kind, name, data, status, says in cases:
            r = upload(client, sid, kind, name, data)
            assert r.status_code == status, (name, r.text)
            assert says in r.json()["error"] and "omni-web-" not in r.json()["error"], r.json()
            assert r.json()["pending"] == []
        assert not any(client.app.state.sessions[sid].dir.iterdir()), "a refused upload was kept"
        events, _ = turn(ws, "still there?")  # the session goes on, with nothing attached
        assert events[0]["attachments"] == [] and events[-1]["type"] == "done"
    r = upload(client, "no-such-session", "image", "a.png", png_bytes())
    assert r.status_code == 404 and "reload the page" in r.json()["error"]


def test_bad_frames_are_refused_and_the_session_goes_on(client):
    with session(client) as (ws, _):
        for frame, code in [("not json", "bad_request"), (json.dumps({"type": "dance"}), "bad_request"),
                            (json.dumps({"type": "message"}), "bad_request"),
                            (json.dumps({"type": "message", "text": "  ", "speech": False}), "empty"),
                            (json.dumps({"type": "message", "text": "x" * 4001}), "too_long")]:
            ws.send_text(frame)
            assert ws.receive_json()["code"] == code, frame
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["code"] == "bad_request"
        # fits the character limit, not the model's 256-position context: ChatSession.ask refuses it
        events, _ = turn(ws, "the fair youth " * 200)
        assert events[-1]["code"] == "too_long" and "context" in events[-1]["message"]
        events, _ = turn(ws, "hello")
        assert events[-1]["type"] == "done"


def test_refused_message_keeps_its_attachments(client):
    with session(client) as (ws, sid):
        assert upload(client, sid, "image", "cat.png", png_bytes()).status_code == 200
        events, _ = turn(ws, "the fair youth " * 200)
        assert events[-1]["code"] == "too_long" and "stays attached" in events[-1]["message"]
        assert [p["name"] for p in events[-1]["pending"]] == ["cat.png"]
        events, _ = turn(ws, "and now?")
        assert [a["name"] for a in events[0]["attachments"]] == ["cat.png"] and events[-1]["type"] == "done"
        assert len(client.app.state.sessions[sid].chat.history[-2].images) == 1


def test_connections_do_not_share_history(client):
    sessions = client.app.state.sessions
    with session(client) as (a, sid_a), session(client) as (b, sid_b):
        first_a = turn(a, "hello")[0][-1]["reply"]
        assert upload(client, sid_a, "image", "a.png", png_bytes()).status_code == 200
        events_b, _ = turn(b, "hello")
        assert events_b[0]["attachments"] == [], "B got A's upload"
        assert events_b[-1]["reply"] == first_a, "B's first reply differs from A's: it saw A's history"
        events_a, _ = turn(a, "hello")
        assert [x["name"] for x in events_a[0]["attachments"]] == ["a.png"]
        assert len(sessions[sid_a].chat.history) == 4 and len(sessions[sid_b].chat.history) == 2
    assert sid_a not in sessions and sid_b not in sessions


def test_reset_clears_the_session(client):
    sessions = client.app.state.sessions
    with session(client) as (ws, sid):
        first = turn(ws, "hello")[0][-1]["reply"]
        turn(ws, "tell me more")
        assert upload(client, sid, "image", "a.png", png_bytes()).status_code == 200
        ws.send_json({"type": "reset"})
        assert collect(ws)[0] == [{"type": "reset", "pending": []}]
        chat = sessions[sid].chat
        assert chat.history == [] and chat.pending_sources == [] and sessions[sid].staged == []
        events, _ = turn(ws, "hello")
        assert events[0]["attachments"] == [] and events[-1]["reply"] == first
        assert len(chat.history) == 2


@pytest.fixture
def slow_turns(monkeypatch):
    """live_turn with a pause after each piece of text and each audio chunk, so that a test can act while
    a reply is written or spoken."""
    def slow(session, text, voice=None, on_text=None, on_audio=None, **kw):
        def paced_text(delta):
            on_text(delta)
            time.sleep(0.05)

        def paced_audio(wav):
            on_audio(wav)
            time.sleep(0.3)
        return live_turn(session, text, voice, on_text=paced_text, on_audio=paced_audio, **kw)
    monkeypatch.setattr(server, "live_turn", slow)


def test_stop_cancels_the_reply(client, slow_turns):
    sessions = client.app.state.sessions
    with session(client) as (ws, _):
        full = turn(ws, "hello")[0][-1]
        assert full["latency"]["tokens"] >= 8, "too short a reply to stop half way"
    with session(client) as (ws, sid):
        ws.send_json({"type": "message", "text": "hello", "speech": False})
        assert ws.receive_json()["type"] == "start"
        assert ws.receive_json()["type"] == "text"
        ws.send_json({"type": "stop"})
        events, _ = collect(ws)
        done = events[-1]
        assert done["type"] == "done" and done["stopped"] is True
        assert done["latency"]["tokens"] < full["latency"]["tokens"]
        assert full["reply"].startswith(done["reply"])
        assert sessions[sid].chat.history[-1].turn.text == done["reply"]  # kept as far as it got
        events, _ = turn(ws, "hello again")
        assert events[-1]["type"] == "done" and events[-1]["stopped"] is False


def test_stop_while_speaking_keeps_the_whole_reply(client, demo, slow_turns):
    sessions = client.app.state.sessions
    # an untrained model's reply is mostly symbols the voice skips: this one is scripted, readable, one
    # piece of text (no clause end: spoken only once written) and long enough for several audio chunks
    reply = "stop me now as I speak on"
    with scripted(demo.tok.encode(reply), demo.tok.special["<|end|>"], demo.voice, []), session(client) as (ws, _):
        full, _ = turn(ws, "hello there", speech=True)
    assert full[-1]["reply"] == reply and sum(e["type"] == "audio" for e in full) >= 2
    with scripted(demo.tok.encode(reply), demo.tok.special["<|end|>"], demo.voice, []), session(client) as (ws, sid):
        ws.send_json({"type": "message", "text": "hello there", "speech": True})
        while ws.receive().get("bytes") is None:  # up to the first audio chunk
            pass
        ws.send_json({"type": "stop"})
        events, _ = collect(ws)
        done = events[-1]
        assert done["stopped"] is True and done["reply"] == full[-1]["reply"]  # the text was complete
        assert done["audio_samples"] < full[-1]["audio_samples"]
        assert sessions[sid].chat.history[-1].turn.text == done["reply"]


def test_message_during_a_reply_is_refused(client, slow_turns):
    with session(client) as (ws, _):
        ws.send_json({"type": "message", "text": "hello", "speech": False})
        assert ws.receive_json()["type"] == "start"
        ws.send_json({"type": "message", "text": "and another thing", "speech": False})
        busy = collect(ws)[0][-1]
        assert busy["code"] == "busy" and "still answering" in busy["message"]
        events, _ = collect(ws)  # the first reply goes on to its end
        assert events[-1]["type"] == "done" and events[-1]["stopped"] is False


def test_speech_unavailable_is_said_and_text_still_works(client, demo, tmp_path):
    voice, why = load_voice(str(tmp_path / "no_talker"), torch.device("cpu"), "griffinlim")
    assert voice is None and str(tmp_path / "no_talker") in why
    text_only = Demo(demo.model, demo.tok, demo.sampling, None, why, LIMITS)
    with TestClient(create_app(text_only)) as c, c.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["speech"] is False and hello["speech_error"] == why
        events, audio = turn(ws, "hello", speech=True)
        assert events[-1]["type"] == "done" and events[-1]["reply"] and audio == b""
        assert any("speech is unavailable" in n for n in events[-1]["notices"])


def test_entry_point(ckpts, tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "missing")]) == 2
    assert "components.json" in capsys.readouterr().err
    with running_server(ckpts, tmp_path, "--talker", str(tmp_path / "no_talker")) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "health", timeout=10) as r:
            health = json.load(r)
        assert health["status"] == "ok" and health["speech"] is False and "no_talker" in health["speech_error"]
