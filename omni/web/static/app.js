// The μOmni demo page. One WebSocket to the server (omni/web/server.py documents the messages);
// uploads go to POST /upload/{session}. A reply arrives as text events and binary frames of int16
// PCM, played back to back as they come and kept to make the reply's replayable WAV.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  ws: null, session: null, limits: null, sampleRate: 16000,
  busy: false,
  sent: null,          // the text of the message sent and not yet started (or refused)
  turn: null,          // the reply being written: its elements and audio chunks
  previews: new Map(), // uploaded image name -> object URL, for thumbnails
  player: null, playAt: 0, sources: [], muted: false,
  recorder: null,
};

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  S.busy = busy;
  $("send").disabled = busy || !S.session;
  $("stop").disabled = !busy;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const mb = (n) => `${(n / 2 ** 20).toFixed(1)} MB`;

// ---------------------------------------------------------------- the socket
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onEvent(JSON.parse(ev.data)) : onAudio(ev.data));
  ws.onclose = () => {
    S.session = null;
    $("status").textContent = "disconnected";
    for (const id of ["send", "stop", "mic", "reset"]) $(id).disabled = true;
    showError("The connection to the server was lost: reload the page to start a new conversation.");
  };
  S.ws = ws;
}

function onEvent(ev) {
  switch (ev.type) {
    case "hello": return onHello(ev);
    case "start": return startTurn(ev.attachments);
    case "text": if (S.turn) S.turn.reply.append(ev.delta); return;
    case "done": return finishTurn(ev);
    case "reset": return onReset();
    case "error": return onError(ev);
    default: showError(`The server sent an unknown event: ${ev.type}`);
  }
}

function onHello(ev) {
  S.session = ev.session;
  S.limits = ev.limits;
  S.sampleRate = ev.sample_rate;
  $("status").textContent = "connected";
  if (!ev.speech) {
    $("speech-status").textContent = `Speech is unavailable, so replies are text only: ${ev.speech_error}`;
    $("speech-status").hidden = false;
    $("speech").checked = false;
    $("speech").disabled = true;
  }
  $("reset").disabled = false;
  $("mic").disabled = false;
  setBusy(false);
}

function onError(ev) {
  showError(ev.message);
  if (ev.code === "busy") return; // a message sent while a reply runs: that reply goes on
  renderPending(ev.pending);
  if (S.turn) failTurn();
  if (S.sent !== null && !$("text").value) $("text").value = S.sent;
  S.sent = null;
  setBusy(false);
}

function onReset() {
  stopPlayback();
  $("history").replaceChildren();
  renderPending([]);
  S.turn = null;
  S.sent = null;
  clearError();
  setBusy(false);
}

// ---------------------------------------------------------------- turns
function send() {
  if (S.busy || !S.session) return;
  clearError();
  player(); // created in the click, so the browser lets it play
  const text = $("text").value.trim();
  S.ws.send(JSON.stringify({ type: "message", text, speech: $("speech").checked }));
  S.sent = text;
  $("text").value = "";
  setBusy(true);
}

function attachmentChips(items) {
  const box = el("div", "media");
  for (const a of items) {
    const chip = el("span", "chip");
    if (a.kind === "image" && S.previews.has(a.name)) {
      const img = el("img");
      img.src = S.previews.get(a.name);
      img.alt = a.name;
      chip.append(img);
    }
    chip.append(`${a.kind === "image" ? "🖼" : "🔊"} ${a.name} (${a.detail})`);
    box.append(chip);
  }
  return box;
}

function startTurn(attachments) {
  const user = el("div", "turn user");
  user.append(el("div", "who", "You"), el("div", "text", S.sent || ""));
  if (attachments.length) user.append(attachmentChips(attachments));
  const assistant = el("div", "turn assistant");
  const reply = el("div", "text reply");
  assistant.append(el("div", "who", "μOmni"), reply);
  $("history").append(user, assistant);
  S.turn = { user, assistant, reply, chunks: [], samples: 0, text: S.sent };
  S.sent = null;
  S.muted = false;
  renderPending([]);
  assistant.scrollIntoView({ block: "end" });
}

function finishTurn(ev) {
  const t = S.turn;
  S.turn = null;
  setBusy(false);
  renderPending(ev.pending);
  if (!t) return;
  t.reply.textContent = ev.reply || "(empty reply)";
  if (t.samples !== ev.audio_samples) {
    showError(`The spoken reply arrived incomplete: ${t.samples} of ${ev.audio_samples} samples.`);
  }
  if (t.samples > 0) {
    const audio = el("audio");
    audio.controls = true;
    audio.preload = "auto";
    audio.src = URL.createObjectURL(wavBlob(t.chunks, S.sampleRate));
    t.assistant.append(audio);
  }
  t.assistant.append(el("div", "latency", latencyLine(ev.latency, ev.stopped)));
  for (const n of ev.notices) t.assistant.append(el("div", "notice", n));
  t.assistant.scrollIntoView({ block: "end" });
}

function failTurn() {
  const t = S.turn;
  S.turn = null;
  if (t.reply.textContent) {
    t.assistant.append(el("div", "notice", "(the reply failed; see the error above)"));
  } else { // nothing was answered: the message goes back to the input box
    t.user.remove();
    t.assistant.remove();
    if (!$("text").value) $("text").value = t.text;
  }
}

function latencyLine(l, stopped) {
  const ms = (s) => (s === null ? "–" : `${Math.round(s * 1000)} ms`);
  const parts = [`first token ${ms(l.ttft_s)}`];
  if (l.audio_s > 0) parts.push(`first audio ${ms(l.first_audio_s)}`);
  parts.push(`${l.tokens ?? "–"} tokens, ${l.tokens_per_s === null ? "–" : l.tokens_per_s.toFixed(1)} tok/s`);
  if (l.audio_s > 0) parts.push(`speech ${l.audio_s.toFixed(2)} s, RTF ${l.rtf === null ? "–" : l.rtf.toFixed(2)}`);
  parts.push(`total ${ms(l.total_s)}`);
  if (l.queued_s > 0.05) parts.push(`waited ${ms(l.queued_s)} for another tab's reply`);
  return parts.join(" · ") + (stopped ? " · stopped" : "");
}

// ---------------------------------------------------------------- audio out
function player() {
  if (!S.player) S.player = new AudioContext();
  if (S.player.state === "suspended") S.player.resume();
  return S.player;
}

function onAudio(buf) {
  if (!S.turn) return;
  const view = new DataView(buf);
  const pcm = new Int16Array(buf.byteLength / 2);
  for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(2 * i, true);
  S.turn.chunks.push(pcm);
  S.turn.samples += pcm.length;
  if (!S.muted) playChunk(pcm);
}

function playChunk(pcm) {
  const ctx = player();
  const buffer = ctx.createBuffer(1, pcm.length, S.sampleRate);
  const data = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  // back to back: each chunk starts where the last one ends, or now when the model fell behind
  const at = Math.max(S.playAt, ctx.currentTime + 0.03);
  src.start(at);
  S.playAt = at + buffer.duration;
  S.sources.push(src);
  src.onended = () => { S.sources = S.sources.filter((s) => s !== src); };
}

function stopPlayback() {
  for (const s of S.sources) s.stop();
  S.sources = [];
  S.playAt = 0;
}

function wavBlob(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf);
  const ascii = (at, s) => { for (let i = 0; i < s.length; i++) v.setUint8(at + i, s.charCodeAt(i)); };
  ascii(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); ascii(8, "WAVE");
  ascii(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  ascii(36, "data"); v.setUint32(40, 2 * n, true);
  let at = 44;
  for (const c of chunks) for (let i = 0; i < c.length; i++, at += 2) v.setInt16(at, c[i], true);
  return new Blob([buf], { type: "audio/wav" });
}

// ---------------------------------------------------------------- uploads
function renderPending(items) {
  $("pending").replaceChildren(...(items.length ? [attachmentChips(items)] : []));
}

async function upload(file, kind) {
  clearError();
  if (!S.session) return showError("Not connected to the server: reload the page.");
  if (file.size > S.limits.upload_bytes) {
    return showError(`${file.name}: ${mb(file.size)}, over the ${mb(S.limits.upload_bytes)} upload limit`);
  }
  const form = new FormData();
  form.append("kind", kind);
  form.append("file", file, file.name);
  let response, body;
  try {
    response = await fetch(`/upload/${encodeURIComponent(S.session)}`, { method: "POST", body: form });
    body = await response.json();
  } catch (e) {
    return showError(`${file.name}: the upload failed (${e.message})`);
  }
  if (!response.ok) {
    showError(body.error);
    if (body.pending) renderPending(body.pending);
    return;
  }
  if (kind === "image") S.previews.set(body.name, URL.createObjectURL(file));
  renderPending(body.pending);
}

function onFileChosen(input, kind) {
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (file) await upload(file, kind);
    input.value = ""; // choosing the same file again uploads it again
  });
}

// ---------------------------------------------------------------- microphone
async function startRecording() {
  clearError();
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    return showError("Recording needs a secure page: open the demo at http://127.0.0.1 or http://localhost, or over https.");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    return showError(`Microphone: ${e.message} (allow this page to use the microphone)`);
  }
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/static/recorder.js");
  const node = new AudioWorkletNode(ctx, "pcm-recorder");
  const rec = { stream, ctx, parts: [], samples: 0 };
  const most = (S.limits.audio_s - 0.1) * ctx.sampleRate; // a block's margin under the server's limit
  node.port.onmessage = (e) => {
    rec.parts.push(e.data);
    rec.samples += e.data.length;
    $("mic").textContent = `Stop recording (${(rec.samples / ctx.sampleRate).toFixed(0)} s)`;
    if (rec.samples >= most) stopRecording();
  };
  ctx.createMediaStreamSource(stream).connect(node);
  node.connect(ctx.destination); // the graph pulls the worklet only when it reaches the output; it writes silence
  S.recorder = rec;
  $("mic").classList.add("recording");
  $("mic").textContent = "Stop recording";
}

async function stopRecording() {
  const rec = S.recorder;
  if (!rec) return;
  S.recorder = null;
  for (const track of rec.stream.getTracks()) track.stop();
  await rec.ctx.close();
  $("mic").classList.remove("recording");
  $("mic").textContent = "Record";
  if (!rec.samples) return showError("Nothing was recorded: is a microphone connected?");
  const pcm = new Int16Array(rec.samples);
  let at = 0;
  for (const part of rec.parts) {
    for (let i = 0; i < part.length; i++) pcm[at++] = Math.max(-32768, Math.min(32767, Math.round(part[i] * 32767)));
  }
  await upload(new File([wavBlob([pcm], rec.ctx.sampleRate)], "recording.wav", { type: "audio/wav" }), "audio");
}

// ---------------------------------------------------------------- wiring
function init() {
  $("send").addEventListener("click", send);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => {
    S.ws.send(JSON.stringify({ type: "stop" }));
    S.muted = true;
    stopPlayback();
  });
  $("reset").addEventListener("click", () => S.ws.send(JSON.stringify({ type: "reset" })));
  $("mic").addEventListener("click", () => (S.recorder ? stopRecording() : startRecording()));
  onFileChosen($("image-file"), "image");
  onFileChosen($("audio-file"), "audio");
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData ? e.clipboardData.items : []) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        const file = item.getAsFile();
        upload(new File([file], file.name || "pasted.png", { type: file.type }), "image");
      }
    }
  });
  connect();
}

init();
