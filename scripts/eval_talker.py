"""Does the Talker read the text? Teacher-forced metrics of a Talker on held-out rows (Stage D).

    python scripts/evaluate.py talker --talker checkpoints/talker_tiny \
        [--csv data/audio/production_tts_val.csv] [--n 100]

Prints what validation logs in training (code CE per codebook, accuracy, end-of-speech accuracy),
the text gain (how much worse the same codes are predicted when each row gets its length
neighbour's text: 0 for a Talker that ignores the text), and per layer how the frame queries'
attention treats the text: the share of it on the characters (the rest is on ``<s>`` and the speech
so far) and the perplexity of its distribution over them (about how many characters a head reads
at once). The codes come from the cache training wrote (``<ckpt>/talker/codes/``), built there with
the Talker's codec when the CSV has none. ``add_parser`` registers the subcommand in
scripts/evaluate.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omni.asr import Manifest  # noqa: E402
from omni.checkpoint import read_config  # noqa: E402
from omni.config import config_from_dict  # noqa: E402
from omni.talker import make_targets  # noqa: E402
from omni.talker_data import CODEC_LINK, CodeCache, TalkerDataset, TtsDataConfig, collate_talker, evaluate_talker  # noqa: E402
from omni.talker_loss import TalkerLossConfig, TextAttention  # noqa: E402
from omni.tts import Synthesizer, talker_dir  # noqa: E402


def text_attention(talker, data: TalkerDataset, n_items: int, batch_size: int) -> dict[int, dict[str, float]]:
    """TextAttention's per-layer mass and characters, averaged over the first n_items usable rows."""
    usable = [i for i in range(len(data)) if data.reason(i) is None][:n_items]
    sums: dict[int, dict[str, float]] = {}
    for s in range(0, len(usable), batch_size):
        batch = collate_talker([data[i] for i in usable[s:s + batch_size]])
        t = make_targets(batch["codes"], batch["code_lens"], talker.cfg.frames_per_step)
        probe = TextAttention(batch["text_lens"], t["n_groups"])
        with torch.no_grad():
            talker.speech_hidden(batch["text"], batch["text_lens"], t["groups"], probe=probe)
        for layer, stats in probe.stats.items():
            for key, v in stats.items():
                sums.setdefault(layer, {}).setdefault(key, 0.0)
                sums[layer][key] += v * len(batch["text"])
    return {layer: {k: v / len(usable) for k, v in stats.items()} for layer, stats in sums.items()}


def eval_talker(args: argparse.Namespace) -> int:
    synth = Synthesizer.load(args.talker, "cpu")  # checks the codec is the one the Talker was trained with
    tdir = talker_dir(Path(args.talker))
    cfg = read_config(tdir)
    loss_cfg = config_from_dict(cfg["loss"], TalkerLossConfig)
    max_seconds = config_from_dict(cfg["data"], TtsDataConfig).max_seconds
    sha = json.loads((tdir / CODEC_LINK).read_text(encoding="utf-8"))["codec_sha1"]
    csv = Path(args.csv)
    cache = CodeCache.load_or_build(csv, Path(args.talker) / "talker" / "codes", synth.codec, sha, max_seconds)
    talker = synth.talker.eval()
    data = TalkerDataset(Manifest(csv), cache, synth.vocab, talker.cfg.max_text_chars, talker.cfg.n_codebooks)
    torch.manual_seed(0)
    out = evaluate_talker(talker, data, loss_cfg, args.batch_size, args.n)
    n_q = talker.cfg.n_codebooks
    print(f"{tdir} on {csv}, the first {min(args.n, len(data))} usable rows, teacher-forced:")
    print(f"  code CE {out['val_ce']:.3f} nats (per codebook "
          + " / ".join(f"{out[f'val_ce_q{q}']:.3f}" for q in range(n_q))
          + f"), accuracy {out['val_acc']:.3f}, end-of-speech accuracy {out['val_stop_acc']:.3f}")
    print(f"  text gain {out['val_text_gain']:.3f} nats ({out['val_text_gain_q0']:.3f} on the first codebook): "
          "the CE lost when each row gets its length neighbour's text")
    for layer, s in sorted(text_attention(talker, data, args.n, args.batch_size).items()):
        print(f"  layer {layer}: {s['mass']:.3f} of the attention on the text, spread over ~{s['chars']:.1f} characters")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``talker`` subcommand in scripts/evaluate.py."""
    t = subparsers.add_parser("talker", help="teacher-forced CE, text gain and attention on the text (Stage D)")
    t.add_argument("--talker", required=True, help="Stage D checkpoint folder (train_talker.py's train.save_dir parent)")
    t.add_argument("--csv", default="data/audio/production_tts_val.csv", help="text,wav CSV (held out)")
    t.add_argument("--n", type=int, default=100, help="rows to evaluate")
    t.add_argument("--batch-size", type=int, default=16)
    t.set_defaults(run=eval_talker)
    return t
