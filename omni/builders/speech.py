"""Speech data: sentences from the text corpus, espeak-ng / flite / Festival synthesis, parallel jobs,
manifests.

Every synthesised or converted clip goes through `omni.audio.features` (16 kHz mono, 16-bit PCM WAV,
atomic write). A clip's file name is a hash of everything that determines its audio (engine,
voice, speed, pitch, text), so a re-run reuses finished files and never mixes up contents.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from omni.audio.features import AudioError, load_audio, save_wav
from omni.files import write_text_atomic

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the repository: assets/
CLIPS_CSV = ROOT / "assets" / "audio" / "clips.csv"
ESPEAK, FLITE, FESTIVAL = "espeak-ng", "flite", "festival"
# what each engine needs from apt (binaries first, paired with BINARIES)
APT_PACKAGES = {ESPEAK: ["espeak-ng"], FLITE: ["flite"],
                FESTIVAL: ["festival", "festvox-kdlpc16k", "festvox-us-slt-hts"]}
BINARIES = {ESPEAK: ["espeak-ng"], FLITE: ["flite"], FESTIVAL: ["text2wave"]}
# Festival is only ever an evaluation engine (no stage trains on it): a diphone voice no training
# engine has (ked) and an HTS voice (flite's slt is a different synthesis method)
FESTIVAL_VOICES = ("ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_CSV = "data/audio/festival_asr_val.csv"   # where the report card looks for it (the builder's default --out)
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# whole voices kept out of every training manifest, for the ASR validation split
HELD_OUT_ESPEAK_VARIANTS = ("f4", "m6")
HELD_OUT_FLITE_VOICES = ("rms",)
ESPEAK_SPEED, ESPEAK_PITCH = (130, 200), (25, 75)  # words/minute (default 175), 0-99 (default 50)
FLITE_STRETCH = (0.85, 1.2)  # duration_stretch: > 1 is slower
SMOKE_SENTENCES = (
    "The cat sat on the warm mat.", "Please open the window before you leave.",
    "We walked to the river and back.", "She reads a book every night.",
    "The train arrives at the station soon.", "My brother likes green apples.",
    "It is cold and windy outside today.", "Turn left at the old red house.",
    "They sang a song by the fire.", "A small bird built a nest in the tree.",
    "Bring me a cup of hot tea.", "The children played in the park all day.",
    "He fixed the broken chair with glue.", "Our dog sleeps under the kitchen table.",
    "The market opens early on Sunday.", "I lost my keys near the garden gate.",
    # the held-out rows speak only these, so no validation sentence is ever trained on (the
    # demo's SFT transcribes its held-out clips through chat: a seen sentence would be recalled)
    "Fresh bread smells good in the morning.", "Write your name at the top of the page.",
    "The boat drifted slowly across the lake.", "Wind blew the leaves along the road.",
)
HELD_OUT_SENTENCES = 4  # the last ones above


# ----------------------------------------------------------------------------- sentences

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,.;:'!?-]*[A-Za-z.!?]")
_ASCII_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": None, "\u201d": None,
                              '"': None, "\u2013": "-", "\u2014": ", "})


def clean_sentence(text: str, min_words: int = 3, max_words: int = 20) -> str | None:
    """A sentence fit to be spoken and transcribed exactly, or None.

    Keeps ASCII letters and light punctuation; drops sentences with digits (engines read them in
    ways a transcript cannot match), all-caps acronyms, brackets or other symbols.
    """
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCT))
    text = " ".join("".join(c for c in text if not unicodedata.combining(c)).split())
    if not _ALLOWED.fullmatch(text) or "--" in text:
        return None
    words = [w.strip(",.;:'!?-") for w in text.split()]
    if not min_words <= len(words) <= max_words or not all(words):
        return None
    if any(len(w) > 1 and w.isupper() for w in words):
        return None
    return text


def normalize_transcript(text: str) -> str:
    """ASR target: lowercase letters, apostrophes, single spaces.

    "Well-known, sir." -> "well known sir". Every ASR manifest written here (synthetic,
    LibriSpeech) uses it, so one character set covers them all.
    """
    text = re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " "))
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def corpus_sentences(path: Path, min_words: int = 3, max_words: int = 20) -> list[str]:
    """Clean sentences from a one-document-per-line corpus, in file order, unique by transcript."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build it with `python scripts/download_production_text.py` "
            f"or pass another one-document-per-line file with --corpus"
        )
    seen: set[str] = set()
    out: list[str] = []
    with open(path, encoding="utf-8") as f:
        for doc in f:
            for piece in _SENTENCE_END.split(doc.strip()):
                sentence = clean_sentence(piece, min_words, max_words)
                key = normalize_transcript(sentence) if sentence else ""
                if key and key not in seen:
                    seen.add(key)
                    out.append(sentence)
    return out


# ----------------------------------------------------------------------------- voices, jobs


@dataclass(frozen=True)
class Voice:
    """engine: espeak-ng | flite; name: `accent+variant` (espeak-ng) or a flite voice."""

    engine: str
    name: str


def espeak_voices(held_out: bool) -> list[Voice]:
    """Every accent x variant, split by variant: held-out variants never appear in training."""
    return [Voice(ESPEAK, f"{a}+{v}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS
            if (v in HELD_OUT_ESPEAK_VARIANTS) == held_out]


def flite_voices(held_out: bool) -> list[Voice]:
    """flite's built-in voices, split the same way."""
    return [Voice(FLITE, v) for v in FLITE_VOICES if (v in HELD_OUT_FLITE_VOICES) == held_out]


@dataclass(frozen=True)
class SynthJob:
    """One utterance to synthesise; speed is wpm (espeak-ng) or a duration stretch (flite; Festival
    speaks at its voice's own rate, 1.0); pitch is espeak-ng's 0-99 (None for flite and Festival,
    which speak at their voice's own pitch)."""

    voice: Voice
    text: str
    speed: float
    pitch: int | None
    out: Path

    def command(self, wav: Path) -> list[str]:
        """The engine's command line writing this utterance to wav (Festival reads it from stdin)."""
        if self.voice.engine == FESTIVAL:
            return ["text2wave", "-eval", f"(voice_{self.voice.name})", "-o", str(wav)]
        if self.voice.engine == ESPEAK:
            return [ESPEAK, "-v", self.voice.name, "-s", str(int(self.speed)),
                    "-p", str(self.pitch), "-w", str(wav), self.text]
        return [FLITE, "-voice", self.voice.name, "--setf", f"duration_stretch={self.speed}",
                "-t", self.text, "-o", str(wav)]


@dataclass(frozen=True)
class ConvertJob:
    """One existing audio file to standardise to 16 kHz mono WAV."""

    src: Path
    out: Path


@dataclass(frozen=True)
class JobResult:
    """samples is None when the job failed: reason is one word to count, error the full message.

    reused: the file was already there from an earlier run.
    """

    out: Path
    samples: int | None
    reason: str | None = None
    error: str | None = None
    reused: bool = False


def clip_name(voice: Voice, text: str, speed: float, pitch: int | None) -> str:
    """Content-addressed file name, stable across runs and plans."""
    key = f"{voice.engine}|{voice.name}|{speed}|{pitch}|{text}".encode()
    return hashlib.sha1(key).hexdigest()[:16] + ".wav"


def _reuse(out: Path) -> JobResult | None:
    if out.is_file():
        return JobResult(out, sf.info(str(out)).frames, reused=True)
    return None


def synthesize(job: SynthJob) -> JobResult:
    """Run the engine into a temp file beside job.out, then standardise it into job.out."""
    done = _reuse(job.out)
    if done is not None:
        return done
    job.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".wav", prefix=".synth", dir=job.out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        stdin = job.text if job.voice.engine == FESTIVAL else None
        proc = subprocess.run(job.command(tmp), input=stdin, capture_output=True, text=True)
        if proc.returncode != 0 or "SIOD ERROR" in proc.stderr:   # Festival exits 0 on a missing voice
            return JobResult(job.out, None, "engine_error", f"`{' '.join(job.command(tmp))}` "
                             f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
        save_wav(job.out, load_audio(tmp))
    except AudioError as e:
        return JobResult(job.out, None, f"output_{e.reason}", f"{job.voice.engine} {job.voice.name} "
                         f"on {job.text!r}: {e}")
    finally:
        tmp.unlink()
    return JobResult(job.out, sf.info(str(job.out)).frames)


def convert(job: ConvertJob) -> JobResult:
    """Decode job.src (any rate/channels), write job.out at 16 kHz mono; AudioError -> failed."""
    done = _reuse(job.out)
    if done is not None:
        return done
    try:
        audio = load_audio(job.src)
    except AudioError as e:
        return JobResult(job.out, None, e.reason, str(e))
    save_wav(job.out, audio)
    return JobResult(job.out, len(audio))


def run_parallel(fn: Callable, jobs: Sequence, workers: int, desc: str) -> list[JobResult]:
    """fn over jobs on `workers` processes (spawned; 1 = in this process), results in job order."""
    bar = tqdm(total=len(jobs), desc=desc, unit=" clip", leave=False)
    if workers <= 1 or len(jobs) < 2:
        results = []
        for job in jobs:
            results.append(fn(job))
            bar.update()
        bar.close()
        return results
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = []
        for result in pool.imap(fn, jobs, chunksize=8):
            results.append(result)
            bar.update()
    bar.close()
    return results


def require_engines(engines: Iterable[str]) -> None:
    """Raise with the apt command when a synthesis engine is missing."""
    missing = sorted({p for e in engines for b, p in zip(BINARIES[e], APT_PACKAGES[e])
                      if shutil.which(b) is None})
    if missing:
        raise FileNotFoundError(f"speech engines not found; install them: apt-get install -y {' '.join(missing)}")


# ----------------------------------------------------------------------------- manifests


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """A UTF-8 CSV (header + rows), written to a temp file and renamed into place."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest as dicts keyed by its header."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def relpath(path: Path, start: Path) -> str:
    """path relative to start, with forward slashes (manifests are portable)."""
    return Path(os.path.relpath(path, start)).as_posix()


# ----------------------------------------------------------------------------- smoke-test set


@dataclass(frozen=True)
class SyntheticSpeech:
    """What make_synthetic_speech wrote; source is "espeak-ng" or "committed-clips"."""

    asr_csv: Path
    tts_csv: Path
    source: str
    n: int                   # utterances written, training + held out
    asr_val_csv: Path | None = None
    tts_val_csv: Path | None = None


def make_synthetic_speech(out_dir: Path, n: int, seed: int) -> SyntheticSpeech:
    """A small ASR (wav,text,engine,voice) + TTS (text,wav) set in out_dir for smoke tests.

    Uses espeak-ng (random training voices, speeds, pitches) when it is installed; otherwise the
    committed real clips in assets/audio (at most as many as there are). Logs and returns which.
    ASR text is the normalised transcript; TTS text keeps case and punctuation.
    """
    out_dir = Path(out_dir)
    if shutil.which(ESPEAK) is None:
        log.warning("espeak-ng not installed (apt-get install -y espeak-ng): using the committed "
                    "clips in %s instead of synthetic speech", CLIPS_CSV.parent)
        return _smoke_from_clips(out_dir, n)
    rng, voices, held = random.Random(seed), espeak_voices(held_out=False), espeak_voices(held_out=True)
    n_val = max(1, n // 4)
    jobs = []
    train_text, val_text = SMOKE_SENTENCES[:-HELD_OUT_SENTENCES], SMOKE_SENTENCES[-HELD_OUT_SENTENCES:]
    for i in range(n + n_val):  # the last n_val rows: held-out voices and sentences, for validation
        text = train_text[i % len(train_text)] if i < n else val_text[(i - n) % len(val_text)]
        voice = rng.choice(voices if i < n else held)
        speed, pitch = rng.randint(*ESPEAK_SPEED), rng.randint(*ESPEAK_PITCH)
        jobs.append(SynthJob(voice, text, speed, pitch,
                             out_dir / "wavs" / clip_name(voice, text, speed, pitch)))
    results = run_parallel(synthesize, jobs, 1, "smoke speech")
    failed = [r.error for r in results if r.samples is None]
    if failed:
        raise RuntimeError(f"espeak-ng failed on {len(failed)} smoke utterances: {failed[0]}")
    rows = [(relpath(j.out, out_dir), j.text, j.voice.engine, j.voice.name) for j in jobs]
    log.info("smoke speech: %d espeak-ng utterances (+%d in held-out voices and sentences) in %s", n, n_val,
             out_dir)
    return _write_smoke(out_dir, rows, ESPEAK, n_val)


def _smoke_from_clips(out_dir: Path, n: int) -> SyntheticSpeech:
    clips = read_csv(CLIPS_CSV)[:n]
    rows = []
    for clip in clips:
        dest = out_dir / "wavs" / Path(clip["wav"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CLIPS_CSV.parent / clip["wav"], dest)
        rows.append((relpath(dest, out_dir), clip["text"], "recorded", clip["speaker"]))
    if len(rows) < n:
        log.warning("only %d committed clips exist; the smoke set has %d rows, not %d",
                    len(rows), len(rows), n)
    log.info("smoke speech: %d committed real clips in %s", len(rows), out_dir)
    return _write_smoke(out_dir, rows, "committed-clips", max(1, len(rows) // 4))


def _write_smoke(out_dir: Path, rows: list[tuple[str, ...]], source: str, n_val: int) -> SyntheticSpeech:
    """The last n_val rows go to asr_val.csv / tts_val.csv, the others to asr.csv / tts.csv."""
    asr_rows = [(r[0], normalize_transcript(r[1]), *r[2:]) for r in rows]
    header = ("wav", "text", "engine", "voice")
    asr = write_csv(out_dir / "asr.csv", header, asr_rows[:-n_val])
    asr_val = write_csv(out_dir / "asr_val.csv", header, asr_rows[-n_val:])
    tts = write_csv(out_dir / "tts.csv", ("text", "wav"), [(r[1], r[0]) for r in rows[:-n_val]])
    tts_val = write_csv(out_dir / "tts_val.csv", ("text", "wav"), [(r[1], r[0]) for r in rows[-n_val:]])
    return SyntheticSpeech(asr, tts, source, len(rows), asr_val, tts_val)
