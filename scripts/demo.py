"""The main job: build small datasets, train every stage at demo size, chat with the result.

    python scripts/demo.py            # about 10 minutes on a 2-core CPU

Builds smoke-test data for every stage (scripts/make_synthetic_datasets.py), then trains, each
for a minute or two: A the Thinker (Shakespeare's sonnets), B the audio encoder (CTC on espeak-ng
speech), C the vision encoder (CLIP-style on generated scenes), D the speech codec and Talker,
E multimodal SFT joining them. Then one scripted chat session (an image question and an audio
clip, replies spoken to WAV) and a held-out report of every modality. Each stage's metric is
printed beside a baseline it has to beat.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from omni.cli.common import Parser
from omni.config import load_config
from omni.engine.checkpoint import read_metrics
from omni.thinker.stage import TextStageConfig, load_streams, tokenizer_in, unigram_loss

ROOT = Path(__file__).resolve().parents[1]

DEMO = ROOT / "checkpoints" / "demo"
CONFIGS = {"A": "configs/thinker_demo.json", "B": "configs/audio_enc_demo.json", "C": "configs/vision_demo.json",
           "D": "configs/talker_demo.json", "E": "configs/omni_sft_demo.json"}
STAGE_DIRS = ("thinker", "audio_enc", "vision", "talker/talker", "omni_sft")
CHAT = "python infer_chat.py --ckpt checkpoints/demo/omni_sft --talker checkpoints/demo/talker"
SCRIPTS = {"A": "train_text.py", "B": "train_audio_enc.py", "C": "train_vision.py", "D": "train_talker.py",
           "E": "sft_omni.py"}


def run(cmd: list[str], stdin: str | None = None) -> str:
    """Run a project command, echoing it; stop the demo with its output if it fails."""
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, text=True, stdout=subprocess.PIPE, input=stdin)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"demo step failed (exit {r.returncode}): {' '.join(cmd)}")
    return r.stdout


def last_val(ckpt: Path) -> dict[str, float]:
    vals = [m for m in read_metrics(ckpt) if m["event"] == "val"]
    if not vals:
        raise SystemExit(f"{ckpt}: no validation metrics were written")
    return vals[-1]


def train(stage: str, steps: int | None) -> float:
    t0 = time.perf_counter()
    extra = [f"train.max_steps={steps}"] if steps and stage != "D" else []
    run([SCRIPTS[stage], "--config", CONFIGS[stage], "--overwrite", *extra])
    return time.perf_counter() - t0


def thinker_baseline() -> float:
    cfg = load_config(ROOT / CONFIGS["A"], TextStageConfig)
    tok = tokenizer_in(ROOT / cfg.train.save_dir)
    streams = load_streams(cfg.data, tok, cfg.train.seed)
    return unigram_loss(np.asarray(streams.train), np.asarray(streams.val), tok.vocab_size)


def chat_session() -> str:
    """One scripted REPL session: a held-out scene with a question, then a held-out audio clip."""
    scene = json.loads((ROOT / "data/images/annotations_val.json").read_text())[0]
    question, answer = scene["qa"][0]
    clip = (ROOT / "data/audio/asr_val.csv").read_text().splitlines()[1].split(",")
    script = (f"/speak on\n/image data/images/{scene['image']}\n{question}\n"
              f"/audio data/audio/{clip[0]}\nTranscribe the audio.\n/quit\n")
    print(f"(expected answers: {answer!r}; {clip[1]!r})")
    return run(["infer_chat.py", "--ckpt", "checkpoints/demo/omni_sft", "--talker", "checkpoints/demo/talker",
                "--audio-out", "checkpoints/demo/reply.wav"], stdin=script)


def summary(times: dict[str, float], unigram: float) -> list[str]:
    a, b, c = last_val(DEMO / "thinker"), last_val(DEMO / "audio_enc"), last_val(DEMO / "vision")
    d, e = last_val(DEMO / "talker" / "talker"), last_val(DEMO / "omni_sft")
    return [
        f"A Thinker    held-out loss {a['val_loss']:.3f} nats/token vs unigram {unigram:.3f}  ({times['A']:.0f} s)",
        f"B audio enc  held-out CER {b['val_cer']:.3f} (held-out voices; silence would score 1.0)  ({times['B']:.0f} s)",
        f"C vision     image->text R@1 {c['i2t_r1']:.3f} vs chance {c['chance_r1']:.3f} and colour-histogram "
        f"{c['hist_i2t_r1']:.3f}  ({times['C']:.0f} s)",
        f"D Talker     held-out code CE {d['val_ce']:.3f} vs code unigram {d['val_unigram_ce']:.3f}  "
        f"({times['D']:.0f} s)",
        f"E omni SFT   VQA {e['val_vqa_acc']:.3f} vs blind prior {e['val_vqa_prior']:.3f}, "
        f"caption keywords {e['val_caption_kw']:.3f}, transcription CER {e['val_asr_cer']:.3f}, "
        f"text ppl {e['val_text_ppl']:.1f}  ({times['E']:.0f} s)",
    ]


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="override max_steps of stages A, B, C, E (a smoke run)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    run(["scripts/make_synthetic_datasets.py", "--out", "data"])
    times = {s: train(s, args.steps) for s in "ABCDE"}
    unigram = thinker_baseline()
    run(["scripts/plot_metrics.py", *[a for d in STAGE_DIRS for a in ("--ckpt", str(DEMO / d))],
         "--out", str(DEMO / "curves.png")])
    chat_session()
    run(["scripts/evaluate.py", "omni", "--ckpt", "checkpoints/demo/omni_sft", "--talker", "checkpoints/demo/talker",
         "--n", "30", "--speech-n", "3"])
    lines = summary(times, unigram)
    print("\n== μOmni demo summary\n" + "\n".join(lines))
    print("checkpoints: checkpoints/demo/{thinker,audio_enc,vision,talker,omni_sft} (each with best/, "
          "metrics.jsonl)")
    print("spoken reply: checkpoints/demo/reply.wav    curves: checkpoints/demo/curves.png")
    print(f"total time:  {time.perf_counter() - t0:.0f} s")
    print(f"chat with it: {CHAT}")
    (DEMO / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
