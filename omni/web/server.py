"""The web demo's server: the page, an upload endpoint and one WebSocket per browser tab.

    POST /upload/{session}   multipart form: "kind" (image | audio) and "file". The file is decoded as
                             the model will read it (and checked against ``Limits``), then kept for the
                             session's next message. -> {name, kind, detail, pending} or {error} (4xx)
    WS /ws                   page -> server, JSON text frames:
                                 {"type": "message", "text": str, "speech": bool}
                                 {"type": "stop"}     cancel the reply being written (and its speech)
                                 {"type": "reset"}    forget the conversation and the pending uploads
                             server -> page: JSON text frames
                                 hello {session, speech, speech_error, sample_rate, limits}
                                 start {attachments}  the message was accepted; its reply begins
                                 text {delta}         the next piece of reply text
                                 done {reply, stopped, audio_samples, latency, notices, pending}
                                 reset {pending}
                                 error {code, message, pending}
                             and binary frames: one per audio chunk of the spoken reply, int16
                             little-endian mono PCM at ``sample_rate``, played back to back.
    GET /health              {status, speech, speech_error, sessions, busy}

Each connection has its own ChatSession, so tabs never see each other's history. One model serves
them all: a turn runs ``live_turn`` in a worker thread under ``Demo.lock``, and its text and audio
reach the socket through one asyncio queue (``loop.call_soon_threadsafe``), in the order they were made.
Upload limits, the media checks and the PCM frames are in omni/web/media.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from omni.audio.features import SAMPLE_RATE, AudioError
from omni.images import BadImage
from omni.multimodal.chat import ChatSession, ReplyInterrupted, Sampling, TurnStats
from omni.multimodal.live import SpeechInterrupted, live_turn
from omni.multimodal.model import OmniModel
from omni.speech.synthesis import Synthesizer
from omni.thinker.tokenizer import Tokenizer
from omni.web.media import Limits, UploadError, check_upload, mb, pcm16

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
KINDS = ("image", "audio")
FORM_OVERHEAD = 64 * 1024     # multipart boundaries and the "kind" field around the file itself
MAX_ATTACHMENTS = 8           # per message; far more than the context holds, a bound on disk use

Emit = Callable[[object], None]   # a JSON-able dict or a bytes frame, queued for the socket




@dataclasses.dataclass
class Demo:
    """What every session shares. ``voice`` None: text only, and ``speech_error`` says why."""
    model: OmniModel
    tok: Tokenizer
    sampling: Sampling
    voice: Synthesizer | None
    speech_error: str | None
    limits: Limits = dataclasses.field(default_factory=Limits)
    seed: int | None = None           # the speech's seed (Sampling.seed seeds the text)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)














def _num(x: float | None) -> float | None:
    """JSON has no NaN (tokens/s of a one-token reply): such a number goes as null."""
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def _error(code: str, message: str, pending: list[dict] | None = None) -> dict:
    return {"type": "error", "code": code, "message": message, "pending": pending or []}


@dataclasses.dataclass
class Staged:
    kind: str
    path: Path
    name: str
    detail: str


class Session:
    """One browser tab: its ChatSession, the files uploaded for its next message, the turn running now."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.id = secrets.token_urlsafe(16)
        self.chat = ChatSession(demo.model, demo.tok, dataclasses.replace(demo.sampling))
        self.dir = Path(tempfile.mkdtemp(prefix="omni-web-"))
        self.staged: list[Staged] = []
        self.shown: dict[str, dict] = {}    # attached path -> how the page names it, for `pending`
        self.stop = threading.Event()
        self.task: asyncio.Task | None = None
        self.answering = False              # the worker thread has the ChatSession
        self.n_files = 0

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def pending(self) -> list[dict]:
        """What the next message carries: media a refused message left attached, then the uploads since.
        While a turn runs, the ChatSession's pending media are that turn's own."""
        left = [] if self.answering else [self.shown[p] for _, p in self.chat.pending_sources]
        return left + [{"kind": s.kind, "name": s.name, "detail": s.detail} for s in self.staged]

    async def upload(self, request: Request) -> dict:
        limit = self.demo.limits.upload_bytes
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise UploadError("the upload has no Content-Length; send the file as a form with a size", 411)
        if int(length) > limit + FORM_OVERHEAD:
            raise UploadError(f"the upload is {mb(int(length))} ({int(length):,} bytes), over the {mb(limit)} "
                              "limit", 413)
        if len(self.staged) + len(self.chat.pending_sources) >= MAX_ATTACHMENTS:
            raise UploadError(f"at most {MAX_ATTACHMENTS} attachments per message; send the message first")
        try:
            form = await request.form(max_files=1, max_fields=1)
        except HTTPException as e:
            raise UploadError(f"not a valid upload form: {e.detail}") from e
        kind, file = form.get("kind"), form.get("file")
        if kind not in KINDS or not isinstance(file, UploadFile):
            raise UploadError(f"send a form with 'kind' ({' or '.join(KINDS)}) and one 'file'")
        name = Path(file.filename or f"{kind} upload").name
        suffix = "".join(c for c in Path(name).suffix.lower() if c.isalnum() or c == ".")[:8]
        self.n_files += 1
        path = self.dir / f"{self.n_files}{suffix}"
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out)
        try:
            if path.stat().st_size > limit:
                size = path.stat().st_size
                raise UploadError(f"{name}: {mb(size)} ({size:,} bytes), over the {mb(limit)} limit", 413)
            detail = await asyncio.to_thread(check_upload, path, kind, name, self.demo.limits,
                                             self.demo.model.comp.vision.img_size)
        except UploadError:
            path.unlink()
            raise
        self.staged.append(Staged(kind, path, name, detail))
        log.info("session %s: %s %s (%s) attached", self.id[:6], kind, name, detail)
        return {"name": name, "kind": kind, "detail": detail, "pending": self.pending()}

    async def handle(self, raw: str, emit: Emit) -> None:
        """One frame from the page."""
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError as e:
            return emit(_error("bad_request", f"not JSON ({e}): send {{\"type\": \"message\" | \"stop\" | \"reset\"}}"))
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "stop":
            self.stop.set()  # nothing running: nothing to stop (the flag is cleared when a turn starts)
        elif kind == "reset":
            await self.reset(emit)
        elif kind == "message":
            self.start(msg, emit)
        else:
            emit(_error("bad_request", f"unknown message type {kind!r}: use message, stop or reset"))

    def start(self, msg: dict, emit: Emit) -> None:
        text, speech = msg.get("text"), msg.get("speech", False)
        if not isinstance(text, str) or not isinstance(speech, bool):
            return emit(_error("bad_request", "a message is {\"type\": \"message\", \"text\": string, "
                                              "\"speech\": true | false}", self.pending()))
        if self.busy:
            return emit(_error("busy", "μOmni is still answering your last message: wait for the reply, "
                                       "or press Stop", self.pending()))
        if len(text) > self.demo.limits.text_chars:
            return emit(_error("too_long", f"the message is {len(text):,} characters, over the "
                                           f"{self.demo.limits.text_chars:,}-character limit", self.pending()))
        if not text.strip() and not self.pending():
            return emit(_error("empty", "type a message, or attach an image or audio clip"))
        self.task = asyncio.create_task(self.run_turn(text.strip(), speech, emit))

    async def run_turn(self, text: str, speech: bool, emit: Emit) -> None:
        items, self.staged = self.staged, []
        self.stop.clear()
        # what this message carries: media a refused message left attached, then the new uploads
        emit({"type": "start", "attachments": self.pending() + [{"kind": s.kind, "name": s.name, "detail": s.detail}
                                                                 for s in items]})
        try:
            done = await self.in_worker(text, items, speech, emit)
        except UploadError as e:
            log.warning("session %s: %s", self.id[:6], e)
            emit(_error("attach", str(e), self.pending()))
        except ValueError as e:  # ChatSession.ask: the message does not fit the context; nothing was recorded
            kept = " (what was attached stays attached for your next message; Reset drops it)" \
                if self.chat.pending_sources else ""
            emit(_error("too_long", f"{e}{kept}", self.pending()))
        except Exception as e:  # a bug in one turn must not end the server: logged with its traceback
            log.exception("session %s: the turn failed", self.id[:6])
            emit(_error("internal", f"internal error ({type(e).__name__}: {e}); see the server's log", self.pending()))
        else:
            emit({"type": "done", **done, "pending": self.pending()})

    async def in_worker(self, text: str, items: list[Staged], speech: bool, emit: Emit) -> dict:
        """``answer`` in a worker thread, so that the loop goes on reading Stop and serving other tabs."""
        self.answering = True
        try:
            return await asyncio.to_thread(self.answer, text, items, speech, emit)
        finally:
            self.answering = False

    def answer(self, text: str, items: list[Staged], speech: bool, emit: Emit) -> dict:
        """The blocking part of a turn, in a worker thread: attach, live_turn -> the "done" fields."""
        voice = self.demo.voice if speech else None
        samples, first_audio = [0], []

        def on_text(delta: str) -> None:
            emit({"type": "text", "delta": delta})

        def on_audio(wav: np.ndarray) -> None:
            if not first_audio:
                first_audio.append(time.perf_counter() - t0)
            samples[0] += len(wav)
            emit(pcm16(wav))

        queued = time.perf_counter()
        with self.demo.lock:
            t0 = time.perf_counter()
            for item in items:
                try:
                    (self.chat.attach_image if item.kind == "image" else self.chat.attach_audio)(item.path)
                except (BadImage, AudioError, OSError) as e:  # checked at upload: the file changed since
                    raise UploadError(f"{item.name} could not be read any more: {e}".replace(str(item.path),
                                                                                            item.name)) from e
                self.shown[str(item.path)] = {"kind": item.kind, "name": item.name, "detail": item.detail}
                item.path.unlink()  # the session holds the decoded image / samples now
            stats, spoken, stopped = None, {}, False
            try:
                turn = live_turn(self.chat, text, voice, on_text=on_text, on_audio=on_audio, seed=self.demo.seed,
                                 should_stop=self.stop.is_set)
                reply, stats, spoken = turn.reply, turn.stats, turn.speech
            except ReplyInterrupted as e:  # Stop while the reply was written: kept as far as it got
                reply, stats, stopped = e.reply, e.stats, True
            except SpeechInterrupted as e:  # Stop while the finished reply was spoken: the whole reply is kept
                reply, stats, stopped = e.reply, e.stats, True
            total = time.perf_counter() - t0
        latency = {"queued_s": t0 - queued, "total_s": total, "first_audio_s": first_audio[0] if first_audio else None,
                   "audio_s": samples[0] / SAMPLE_RATE, "rtf": spoken.get("rtf") if samples[0] else None,
                   "ttft_s": stats.ttft_s if stats else None, "tokens": stats.new_tokens if stats else None,
                   "tokens_per_s": stats.tokens_per_s if stats else None}
        return {"reply": reply, "stopped": stopped, "audio_samples": samples[0], "sample_rate": SAMPLE_RATE,
                "latency": {k: v if k == "tokens" else _num(v) for k, v in latency.items()},
                "notices": self.notices(stats, speech, spoken, samples[0], stopped)}

    def notices(self, stats: TurnStats | None, speech: bool, spoken: dict, samples: int, stopped: bool) -> list[str]:
        """What the reply itself does not show."""
        out = []
        trimmed, hit_limit = getattr(stats, "trimmed", 0), getattr(stats, "hit_limit", False)
        if trimmed:
            out.append(f"history trimmed: the {trimmed} oldest exchange(s) no longer fit the model's context")
        if hit_limit and stats.max_tokens == self.chat.sampling.max_new_tokens:
            out.append(f"reply cut at the {stats.max_tokens}-token limit (--max-new-tokens)")
        elif hit_limit:
            out.append(f"reply cut at {stats.max_tokens} tokens: the model's context is full (Reset starts over)")
        if speech and self.demo.voice is None:
            out.append(f"not spoken: speech is unavailable ({self.demo.speech_error})")
        elif speech and not samples and not stopped:
            out.append("not spoken: nothing in the reply the voice can read")
        if spoken.get("dropped_chars"):
            out.append(f"the voice skipped {int(spoken['dropped_chars'])} character(s) it cannot read")
        return out

    async def reset(self, emit: Emit) -> None:
        await self.finish_turn()
        self.chat.reset()
        for s in self.staged:
            s.path.unlink()
        self.staged, self.shown = [], {}
        emit({"type": "reset", "pending": []})

    async def finish_turn(self) -> None:
        """Stop the running turn, if any, and wait for its worker thread to let go of the session."""
        if self.task is not None:
            self.stop.set()
            await self.task

    async def close(self) -> None:
        await self.finish_turn()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _send_all(ws: WebSocket, outbox: asyncio.Queue) -> None:
    """The socket's one writer: frames go out in the order they were queued."""
    while True:
        item = await outbox.get()
        try:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_text(json.dumps(item))
        except (WebSocketDisconnect, RuntimeError, OSError) as e:  # the page went away mid-reply
            log.info("socket closed while sending (%s)", type(e).__name__)
            return


def create_app(demo: Demo) -> FastAPI:
    app = FastAPI(title="μOmni web demo", docs_url=None, redoc_url=None, openapi_url=None)
    sessions: dict[str, Session] = {}
    app.state.demo, app.state.sessions = demo, sessions
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "speech": demo.voice is not None, "speech_error": demo.speech_error,
                "sessions": len(sessions), "busy": demo.lock.locked()}

    @app.post("/upload/{sid}")
    async def upload(sid: str, request: Request) -> JSONResponse:
        session = sessions.get(sid)
        if session is None:
            return JSONResponse({"error": "this chat session has ended (the page was closed or the server "
                                          "restarted): reload the page"}, status_code=404)
        try:
            return JSONResponse(await session.upload(request))
        except UploadError as e:
            log.warning("session %s: upload refused: %s", sid[:6], e)
            return JSONResponse({"error": str(e), "pending": session.pending()}, status_code=e.status)

    @app.websocket("/ws")
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def emit(item: object) -> None:  # from the worker thread as well as from the loop
            loop.call_soon_threadsafe(outbox.put_nowait, item)

        session = Session(demo)
        sessions[session.id] = session
        sender = asyncio.create_task(_send_all(ws, outbox))
        log.info("session %s opened (%d open)", session.id[:6], len(sessions))
        emit({"type": "hello", "session": session.id, "speech": demo.voice is not None,
              "speech_error": demo.speech_error, "sample_rate": SAMPLE_RATE, "limits": dataclasses.asdict(demo.limits)})
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    emit(_error("bad_request", "send JSON text frames, not binary ones"))
                else:
                    await session.handle(message["text"], emit)
        finally:
            del sessions[session.id]
            await session.close()
            sender.cancel()
            log.info("session %s closed", session.id[:6])

    return app
