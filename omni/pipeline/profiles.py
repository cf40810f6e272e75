"""What ``scripts/train_all.py`` trains: the stages of a profile, in order, and how to build their data.

A stage is one of the stage scripts run on one config; everything else (the folders it writes, the
data it reads, the checkpoints it starts from) is read from that config, so a profile is only the
list. ``demo`` is the five-minute demo; ``default`` is the default-size μOmni (the ``*_tiny``
configs) with the vocoder and OCR as options.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageRun:
    key: str         # a short name: --only/--from/--until take it
    title: str       # how the report and the log name it
    script: str      # the stage script, relative to the repository
    config: str      # its config, relative to the repository
    bench: str       # the omni.tools.bench kind whose step --plan times
    optional: bool = False  # trained only when asked (--with)


@dataclass(frozen=True)
class Profile:
    name: str
    run_dir: str                         # the pipeline's record, REPORT.md, report.json and curves
    stages: tuple[StageRun, ...]
    # data files by path prefix -> the command that builds them (a missing file runs it once)
    builders: tuple[tuple[str, tuple[str, ...]], ...]
    # stage key -> {metric: the value the report card holds it to}; without one a stage must beat
    # its baseline
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    # step budgets from the auto-tuner's rules on the data (omni/pipeline/runner.py); the demo keeps
    # its configs' small fixed budgets, which are what makes it a five-minute demo
    tune: bool = False


def _stages(suffix: str, sft: str) -> tuple[StageRun, ...]:
    return (StageRun("thinker", "A Thinker", "train_text.py", f"configs/thinker_{suffix}.json", "thinker"),
            StageRun("audio_enc", "B audio encoder", "train_audio_enc.py", f"configs/audio_enc_{suffix}.json",
                     "audio_enc"),
            StageRun("vision", "C vision encoder", "train_vision.py", f"configs/vision_{suffix}.json", "vision"),
            StageRun("talker", "D codec + Talker", "train_talker.py", f"configs/talker_{suffix}.json", "talker"),
            StageRun("sft", "E omni SFT", "sft_omni.py", f"configs/{sft}.json", "sft"))


DEMO_DATA = ("scripts/make_synthetic_datasets.py", "--out", "data")

PROFILES: dict[str, Profile] = {
    "demo": Profile("demo", "checkpoints/demo", _stages("demo", "omni_sft_demo"),
                    (("data/", DEMO_DATA),)),
    "default": Profile(
        "default", "checkpoints/default",
        _stages("tiny", "omni_sft_tiny") + (
            StageRun("vocoder", "HiFi-GAN vocoder", "train_vocoder.py", "configs/vocoder_tiny.json", "vocoder",
                     optional=True),
            StageRun("ocr", "OCR", "train_ocr.py", "configs/ocr_tiny.json", "ocr", optional=True)),
        (("data/text/production_", ("scripts/download_production_text.py",)),
         ("data/audio/production_", ("scripts/download_production_audio.py",)),
         ("data/images/production_", ("scripts/download_production_image.py",)),
         ("data/ocr/production_", ("scripts/download_production_ocr.py",))),
        # held-out generated scenes: image->text R@1 and VQA accuracy
        targets={"vision": {"r1": 0.80}, "sft": {"vqa": 0.80}, "talker": {"cer": 0.25}}, tune=True),
}
