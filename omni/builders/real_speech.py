"""A held-out set of real people speaking English, from recordings Debian ships (no network beyond apt):
``real_speech.csv`` (wav,text,speaker,source) + 16 kHz WAVs in ``real_speech/``, built by
``python scripts/download_production_audio.py --source real``. No stage trains on it: it says how a
recogniser trained on speech engines does on people (scripts/evaluate.py asr --csv, per source and
per speaker beside pocketsphinx).

Sources (licences in DATA_LICENSES.md):
- asterisk: the Asterisk PBX prompts recorded by Allison Smith (one US speaker, studio, 8 kHz
  telephone band): isolated numbers, the NATO alphabet and phone-menu sentences, with the exact
  recording script as transcript (``core-sounds-en.txt``). Letter names and symbols are left out
  (a letter's name is not its spelling), as are tones, silences and clips over ``MAX_SECONDS``.
- pocketsphinx: CMU's test clips with their transcripts: five LibriVox sentences (Sense and
  Sensibility), five playing-card phrases, "go forward ten meters" (about 3 speakers). The TIDIGITS
  clip is left out (an LDC corpus).
- klettres: KDE's letter game, isolated words spoken by a US and a UK English voice (the file name is
  the word; the letters and the sound-only items aw, ch, th are left out).
- tuxpaint: Tux Paint's spoken stamp descriptions ("A frog."), short phrases recorded for the paint
  program, with line 1 of the stamp's ``NAME.txt`` (its English description) as transcript; a stamp
  whose English line is empty is left out.
- saytime: the talking clock's words (one speaker, 8 kHz): the numbers it says ("thirteen"),
  "the time is", "o'clock", "exactly", ... The letter names "am"/"pm" and the 0.15 s "oh" (shorter
  than two of Stage B's 80 ms frames) are left out.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from omni.audio.features import SAMPLE_RATE, AudioError, load_audio, save_wav
from omni.builders import download as dl
from omni.builders import speech as sd
from omni.builders.speech_manifests import ManifestPlan, SourceError

APT_PACKAGES = ["asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", "pocketsphinx-testdata", "klettres-data",
                "tuxpaint-stamps-default", "saytime"]
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_SCRIPT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SPHINX_DIR = Path("/usr/share/pocketsphinx/test/data")
KLETTRES_DIR = Path("/usr/share/klettres")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
SAYTIME_DIR = Path("/usr/share/saytime")
HEADER = ("wav", "text", "speaker", "source")
REAL_CSV = "data/audio/real_speech.csv"   # where the report card looks for it (the builder's default --out)
MAX_SECONDS = 12.0
SOUND_ONLY = {"aw", "ch", "th"}   # klettres items that are a sound, not a word
SAYTIME_WORDS = {"the_time_is": "the time is", "oclock": "o'clock", "0": "zero", "1": "one", "2": "two",
                 "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight", "9": "nine",
                 "10": "ten", "11": "eleven", "12": "twelve", "13": "thirteen", "14": "fourteen",
                 "15": "fifteen", "16": "sixteen", "17": "seventeen", "18": "eighteen", "19": "nineteen",
                 "20": "twenty", "30": "thirty", "40": "forty", "50": "fifty"}
SAYTIME_LEFT_OUT = {"am", "pm", "oh"}   # letter names; a clip shorter than two encoder frames


def spoken_text(script: str) -> str | None:
    """A recording-script line -> the ASR transcript, or None when it is not plain words: a tone or
    silence ("[beep tone]"), digits or symbols (spoken as words the script does not spell), or letter
    names (a lone letter other than "a" and "i")."""
    words = re.sub(r"\[[^\]]*\]", " ", script)
    if re.search(r"[0-9#*@$%&+=/<>]", words):  # said as words the script does not spell ("press 1", "#")
        return None
    text = sd.normalize_transcript(words)
    if not text or any(len(w) == 1 and w not in ("a", "i") for w in text.split()):
        return None
    return text


def asterisk_rows() -> list[tuple[Path, str, str]]:
    """(wav, transcript, speaker) of the Asterisk prompts kept (module docstring)."""
    rows = []
    with gzip.open(ASTERISK_SCRIPT, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        name, sep, script = line.partition(":")
        name = name.strip()
        if not sep or name.startswith(("letters/", "silence/")):
            continue
        text = spoken_text(script)
        path = ASTERISK_DIR / f"{name}.wav"
        if text is not None and path.is_file():
            rows.append((path, text, "asterisk-allison"))
    return rows


def sphinx_transcripts(path: Path) -> dict[str, str]:
    """A Sphinx ``transcription`` file ("<s> words </s> (fileid)" per line) -> {fileid: words}."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
        if m:
            out[m.group(2).strip()] = sd.normalize_transcript(m.group(1))
    return out


def sphinx_rows() -> list[tuple[Path, str, str]]:
    rows = [(SPHINX_DIR / "goforward.raw", "go forward ten meters", "sphinx-goforward")]
    for folder, speaker in (("librivox", "librivox-austen"), ("cards", "sphinx-cards")):
        for fileid, text in sorted(sphinx_transcripts(SPHINX_DIR / folder / f"{'cards.' if folder == 'cards' else ''}"
                                                      "transcription").items()):
            rows.append((SPHINX_DIR / folder / f"{Path(fileid).name}.wav", text, speaker))
    return rows


def klettres_rows() -> list[tuple[Path, str, str]]:
    rows = []
    for lang in ("en", "en_GB"):
        for path in sorted((KLETTRES_DIR / lang / "syllab").glob("*.ogg")):
            if path.stem.lower() not in SOUND_ONLY:
                rows.append((path, sd.normalize_transcript(path.stem), f"klettres-{lang}"))
    return rows


def tuxpaint_rows() -> list[tuple[Path, str, str]]:
    rows = []
    for path in sorted(TUXPAINT_DIR.rglob("*_desc.ogg")):
        desc = path.with_name(path.name[: -len("_desc.ogg")] + ".txt")
        text = stamp_description(desc) if desc.is_file() else ""
        if text:
            rows.append((path, text, "tuxpaint"))
    return rows


def stamp_description(path: Path) -> str:
    """A Tux Paint ``NAME.txt`` -> its English line (line 1, before the ``lang.utf8=`` lines), normalised."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = lines[0] if lines else ""
    return "" if "=" in first else sd.normalize_transcript(first)


def saytime_rows() -> list[tuple[Path, str, str]]:
    rows = []
    for path in sorted(SAYTIME_DIR.glob("*.au")):
        if path.stem in SAYTIME_LEFT_OUT:
            continue
        rows.append((path, SAYTIME_WORDS.get(path.stem, path.stem.replace("_", " ")), "saytime"))
    return rows


def read_clip(path: Path) -> np.ndarray:
    """16 kHz mono float32; a ``.raw`` file is headerless 16-bit little-endian PCM at 16 kHz (Sphinx's)."""
    if path.suffix == ".raw":
        return (np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0)
    return load_audio(path)


def build_real_speech(out: Path) -> dict[str, ManifestPlan]:
    """Install the packages if missing, convert every kept clip to ``out/real_speech/*.wav`` ->
    {"real_speech.csv": plan}. A clip that cannot be read is a failed row (counted, not written)."""
    dl.ensure_apt_packages(APT_PACKAGES)
    sources = {"asterisk": (ASTERISK_DIR, asterisk_rows()), "pocketsphinx": (SPHINX_DIR, sphinx_rows()),
               "klettres": (KLETTRES_DIR, klettres_rows()), "tuxpaint": (TUXPAINT_DIR, tuxpaint_rows()),
               "saytime": (SAYTIME_DIR, saytime_rows())}
    empty = [name for name, (_, rows) in sources.items() if not rows]
    if empty:
        raise SourceError(f"no clips found for {', '.join(empty)}: is the package installed ({', '.join(APT_PACKAGES)})?")
    plan = ManifestPlan(HEADER)
    folder = out / "real_speech"
    folder.mkdir(parents=True, exist_ok=True)
    for source, (root, rows) in sources.items():
        for path, text, speaker in rows:
            slug = re.sub(r"[^A-Za-z0-9_-]+", "_", str(path.relative_to(root).with_suffix("")))
            dest = folder / f"{source}_{slug}.wav"
            try:
                audio = read_clip(path)
            except (AudioError, OSError, ValueError) as e:  # a failed row, counted by write_manifests
                plan.add((dest.name, text, speaker, source), source, sd.JobResult(dest, None, error=f"{path}: {e}",
                                                                                  reason="unreadable"))
                continue
            if len(audio) > MAX_SECONDS * SAMPLE_RATE:
                continue
            save_wav(dest, audio)
            plan.add((f"real_speech/{dest.name}", text, speaker, source), source, sd.JobResult(dest, len(audio)))
    return {"real_speech.csv": plan}
