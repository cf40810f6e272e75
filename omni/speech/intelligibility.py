"""Intelligibility of synthetic speech, measured by an independent recogniser (pocketsphinx).

pocketsphinx (CMU, ships its en-us acoustic model, language model and dictionary) shares nothing
with our models, so its character error rate against the text that was meant to be spoken says
how understandable the audio is. Absolute numbers depend on that recogniser (flite's own slt voice
scores a WER of about 0.37 with it, a real recording of a clear sentence about 0): compare paths,
not systems.

``report_paths`` runs the same held-out rows through several synthesis paths, each a function
``(text, reference_audio) -> audio``, and reports CER/WER per path:
  original                the reference recording itself
  griffinlim              ground-truth log-mel -> Griffin-Lim (the ceiling of this vocoder)
  codec_griffinlim        ground-truth log-mel -> codec encode/decode -> Griffin-Lim
  talker_codec_griffinlim text -> Talker -> codec decode -> Griffin-Lim (omni/cli/eval_tts.py)
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pocketsphinx import Decoder

from omni.audio.ctc import cer_interval, error_rates, normalize_text
from omni.audio.features import SPEECH_OUT_MEL, AudioError, LogMel, load_audio
from omni.codec.model import MelCodec
from omni.data import DataError
from omni.manifest import Manifest
from omni.speech.griffinlim import block_mel_to_wav

log = logging.getLogger(__name__)

SynthPath = Callable[[str, np.ndarray], np.ndarray]  # (text, reference audio (N,)) -> audio (M,) at 16 kHz


def _decoder() -> Decoder:
    """pocketsphinx's default en-us model (acoustic model, 3-gram LM, dictionary) at 16 kHz, new for
    every utterance (0.4 s): one decoder reused carries state from one utterance into the next (its
    transcript of the same audio changes after other audio; not the cepstral mean, which set_cmn
    resetting did not fix), so a score would depend on the order of the rows and on the other paths."""
    return Decoder(samprate=16000, loglevel="FATAL")


def transcribe(wav: np.ndarray) -> str:
    """(N,) float audio at 16 kHz in [-1, 1] -> pocketsphinx's best transcript of the whole
    utterance (lower case words); "" for empty or all-zero audio or when nothing was recognised."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"transcribe expects mono audio (N,), got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError("transcribe: audio contains NaN or infinite samples")
    pcm16 = (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)
    if not pcm16.any():
        return ""  # empty or digital silence: full_utt decoding would still force out a word
    pcm = pcm16.tobytes()
    dec = _decoder()
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return "" if hyp is None else hyp.hypstr.strip()


def cer_wer(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus CER and WER after omni.audio.ctc.normalize_text on both sides (case, punctuation)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return error_rates([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])


LENGTH_BINS = (40, 60, 90)  # text length bins (characters): < 40, 40-59, 60-89, >= 90


def cer_by_length(refs: list[str], hyps: list[str], edges: tuple[int, ...] = LENGTH_BINS) -> list[dict]:
    """Corpus CER of the rows in each text-length bin (length of the raw reference, in characters):
    [{"lo", "hi" (None: no upper end), "n", "cer"}], empty bins left out."""
    bounds = [0, *edges, None]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pick = [i for i, r in enumerate(refs) if len(r) >= lo and (hi is None or len(r) < hi)]
        if pick:
            out.append({"lo": lo, "hi": hi, "n": len(pick),
                        "cer": cer_wer([refs[i] for i in pick], [hyps[i] for i in pick])["cer"]})
    return out


# ---------------------------------------------------------------- synthesis paths
def original_path() -> SynthPath:
    return lambda text, audio: audio


def griffinlim_path(n_iter: int = 32, device: torch.device | str = "cpu") -> SynthPath:
    """Ground-truth speech-out log-mel -> Griffin-Lim (block-wise, as the Synthesizer speaks)."""
    logmel = LogMel(SPEECH_OUT_MEL).to(device)

    def run(text: str, audio: np.ndarray) -> np.ndarray:
        mel = logmel(torch.from_numpy(audio).to(device)[None])
        return block_mel_to_wav(mel, n_iter=n_iter).cpu().numpy()
    return run


def codec_path(codec: MelCodec, n_iter: int = 32, keep: int | None = None) -> SynthPath:
    """Ground-truth log-mel -> codec.encode -> codec.decode (of the first ``keep`` codebooks; all
    by default) -> block-wise Griffin-Lim (codec's device)."""
    device = next(codec.parameters()).device
    logmel = LogMel(SPEECH_OUT_MEL).to(device)

    @torch.no_grad()
    def run(text: str, audio: np.ndarray) -> np.ndarray:
        mel = logmel(torch.from_numpy(audio).to(device)[None])
        recon = codec.decode(codec.encode(mel), keep)[:, :mel.shape[1]]
        return block_mel_to_wav(recon, n_iter=n_iter).cpu().numpy()
    return run


def read_rows(csv_path: str | Path, n: int, skip: int = 0) -> tuple[list[tuple[str, np.ndarray]], dict[str, int]]:
    """The first n usable rows of a ``text,wav`` CSV from row ``skip`` on (0-based, header not
    counted) as (text, audio); and skip counts by reason."""
    m = Manifest(csv_path)
    rows, skipped = [], {}
    for i in range(skip, len(m)):
        if len(rows) >= n:
            break
        row = m[i]
        try:
            audio = load_audio(row["wav"])
        except AudioError as e:
            log.warning("%s:%d: %s", csv_path, i + 2, e)
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            continue
        if not normalize_text(row["text"]):
            skipped["empty_text"] = skipped.get("empty_text", 0) + 1
            continue
        rows.append((row["text"], audio))
    if not rows:
        raise DataError(f"{csv_path}: no usable rows from row {skip} of {len(m)} (skipped: {skipped})")
    return rows, skipped


def report_paths(rows: list[tuple[str, np.ndarray]], paths: dict[str, SynthPath], keep_examples: int = 3,
                 also: dict[str, Callable[[np.ndarray], str]] | None = None) -> dict[str, dict]:
    """Run every row through every path, transcribe with pocketsphinx, score against the text.

    -> {path: {"cer", "wer", "n", "synth_s" (seconds spent synthesising), "audio_s" (seconds of
    audio produced), "by_length": CER per text-length bin (cer_by_length), "examples": [(reference,
    hypothesis), ...] (first keep_examples), "rows": [(text, transcript)] (every row, for
    comparing runs: scripts/evaluate.py tts-compare)}}, and with two
    rows or more "cer_other": the same transcripts scored against the next row's text, the CER of
    speech that says nothing of its own text (a path near it conveys little of what it was given).
    ``also``: more recognisers (name -> wav -> text, e.g. our Stage B model) scored on the same
    audio, as ``<name>_cer`` / ``<name>_wer``.
    """
    out = {}
    also = also or {}
    for name, synth in paths.items():
        refs, hyps, synth_s, audio_s = [], [], 0.0, 0.0
        other: dict[str, list[str]] = {k: [] for k in also}
        for text, audio in rows:
            t0 = time.perf_counter()
            wav = synth(text, audio)
            synth_s += time.perf_counter() - t0
            audio_s += len(wav) / 16000
            refs.append(text)
            hyps.append(transcribe(wav))
            for k, recognise in also.items():
                other[k].append(recognise(wav))
        out[name] = {**cer_wer(refs, hyps), "n": len(rows), "synth_s": synth_s, "audio_s": audio_s,
                     "by_length": cer_by_length(refs, hyps),
                     "examples": [(normalize_text(r), h) for r, h in list(zip(refs, hyps))[:keep_examples]],
                     "rows": list(zip(refs, hyps))}
        if len(rows) > 1:
            out[name]["cer_other"] = cer_wer(refs[1:] + refs[:1], hyps)["cer"]
            out[name]["cer_interval"] = cer_interval(refs, hyps)
        for k, h in other.items():
            r = cer_wer(refs, h)
            out[name].update({f"{k}_cer": r["cer"], f"{k}_wer": r["wer"]})
        log.info("%s: cer %.3f wer %.3f over %d rows", name, out[name]["cer"], out[name]["wer"], len(rows))
    return out
