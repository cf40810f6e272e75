"""Does the Talker read the text? Teacher-forced metrics of a Talker on held-out rows (Stage D).

A duration Talker (talker.alignment=durations) is given its text frame by frame, so for it this
prints the code CE, the aligner's prior loss and how far its predicted durations are from the
aligned ones; what follows is about an attention Talker.

    python scripts/evaluate.py talker --talker checkpoints/talker_tiny \
        [--csv data/audio/production_tts_val.csv] [--n 100]

Prints what validation logs in training (code CE per codebook, accuracy, end-of-speech accuracy),
the text gain (how much worse the same codes are predicted when each row gets its length
neighbour's text: 0 for a Talker that ignores the text), and per layer how the frame queries'
attention treats the text: the share of it on the characters (the rest is on ``<s>`` and the speech
so far) and the perplexity of its distribution over them (about how many characters a head reads
at once). ``--free N`` also lets the Talker speak the first N rows on its own and compares where its
first guided layer reads in the text, frame by frame, with where it reads given the real codes. The
codes come from the cache training wrote (``<ckpt>/talker/codes/``), built there with the Talker's
codec when the CSV has none. ``add_parser`` registers the subcommand in
scripts/evaluate.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from omni.config import config_from_dict
from omni.engine.checkpoint import read_config
from omni.manifest import Manifest
from omni.speech.synthesis import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, Synthesizer, talker_dir
from omni.talker.data import CODEC_LINK, CodeCache, TalkerDataset, collate_talker, evaluate_talker
from omni.talker.duration_loss import evaluate_duration_talker
from omni.talker.loss import TalkerLossConfig, TextAttention, frame_scores
from omni.talker.model import make_targets
from omni.talker.stage import TtsDataConfig


def text_position(talker, text: torch.Tensor, groups: torch.Tensor, layer: int) -> torch.Tensor:
    """One row's text (1, L) ``[<s>, chars]`` and groups (1, G, r, n_q) -> (G + 1,): where ``layer``'s
    frame queries read in the text, the expected character position (heads averaged, over the
    characters only) as a fraction of the text, 0 at the first character and 1 at the last."""
    L, found = text.shape[1], {}

    def probe(i, block, x):
        if i == layer:
            index = L + torch.arange(groups.shape[1] + 1)[None]
            p = frame_scores(block, x, index)[..., 1:L].softmax(-1).mean(1)[0]        # (G + 1, chars)
            found["pos"] = p @ torch.arange(L - 1, dtype=p.dtype) / max(L - 2, 1)
    with torch.no_grad():
        talker.speech_hidden(text, torch.tensor([L]), groups, probe=probe)
    return found["pos"]


def free_alignment(synth, data: TalkerDataset, n_items: int, layer: int, seed: int = 0) -> dict[str, float]:
    """The Talker speaks the first n_items usable rows on its own (the synthesiser's sampling); per row,
    its length against the recording's and how far its reading position strays from the one it has
    with the real codes at the same point of the utterance (both on a 0..1 time axis, 50 points)."""
    talker, r = synth.talker, synth.talker.cfg.frames_per_step
    usable = [i for i in range(len(data)) if data.reason(i) is None][:n_items]
    gen, grid = torch.Generator().manual_seed(seed), torch.linspace(0, 1, 50)
    ratios, strays, backs = [], [], []
    for i in usable:
        batch = collate_talker([data[i]])
        text = batch["text"][:, :int(batch["text_lens"][0])]
        real = make_targets(batch["codes"], batch["code_lens"], r)["groups"]
        codes = talker.generate(text[0, 1:].tolist(), synth.temperature, synth.top_k, generator=gen)
        spoken = make_targets(codes[None], torch.tensor([codes.shape[0]]), r)["groups"]
        curves = [text_position(talker, text, g, layer) for g in (real, spoken)]
        tf, fr = (torch.from_numpy(np.interp(grid, torch.linspace(0, 1, len(c)), c)) for c in curves)
        ratios.append(codes.shape[0] / int(batch["code_lens"][0]))
        strays.append((fr - tf).abs().mean().item())
        backs.append((-curves[1].diff()).clamp(min=0).sum().item())
    return {"rows": len(usable), "length_ratio": float(np.mean(ratios)), "length_min": float(np.min(ratios)),
            "length_max": float(np.max(ratios)), "stray": float(np.mean(strays)), "backwards": float(np.mean(backs))}


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
    synth = Synthesizer.load(args.talker, "cpu", temperature=args.temperature, top_k=args.top_k)  # checks the codec is the one the Talker was trained with
    tdir = talker_dir(Path(args.talker))
    cfg = read_config(tdir)
    loss_cfg = config_from_dict(cfg["loss"], TalkerLossConfig)
    max_seconds = config_from_dict(cfg["data"], TtsDataConfig).max_seconds
    sha = json.loads((tdir / CODEC_LINK).read_text(encoding="utf-8"))["codec_sha1"]
    csv = Path(args.csv)
    cache = CodeCache.load_or_build(csv, Path(args.talker) / "talker" / "codes", synth.codec, sha, max_seconds)
    talker = synth.talker.eval()
    durations = talker.cfg.alignment == "durations"
    data = TalkerDataset(Manifest(csv), cache, synth.vocab, talker.cfg.max_text_chars, talker.cfg.n_codebooks,
                         aligned=durations)
    torch.manual_seed(0)
    n_q = talker.cfg.n_codebooks
    if durations:
        out = evaluate_duration_talker(talker, data, loss_cfg, args.batch_size, args.n)
        print(f"{tdir} on {csv}, the first {min(args.n, len(data))} usable rows, teacher-forced on the aligned text:")
        print(f"  code CE {out['val_ce']:.3f} nats (per codebook "
              + " / ".join(f"{out[f'val_ce_q{q}']:.3f}" for q in range(n_q)) + f"), accuracy {out['val_acc']:.3f}")
        print(f"  aligner prior {out['val_prior']:.3f}; durations off by {out['val_dur_frames']:.2f} frames per "
              f"symbol; predicted length {out['val_len_ratio']:.3f} of the recording's")
        return 0
    out = evaluate_talker(talker, data, loss_cfg, args.batch_size, args.n)
    print(f"{tdir} on {csv}, the first {min(args.n, len(data))} usable rows, teacher-forced:")
    print(f"  code CE {out['val_ce']:.3f} nats (per codebook "
          + " / ".join(f"{out[f'val_ce_q{q}']:.3f}" for q in range(n_q))
          + f"), accuracy {out['val_acc']:.3f}, end-of-speech accuracy {out['val_stop_acc']:.3f}")
    print(f"  text gain {out['val_text_gain']:.3f} nats ({out['val_text_gain_q0']:.3f} on the first codebook): "
          "the CE lost when each row gets its length neighbour's text")
    for layer, s in sorted(text_attention(talker, data, args.n, args.batch_size).items()):
        print(f"  layer {layer}: {s['mass']:.3f} of the attention on the text, spread over ~{s['chars']:.1f} characters")
    if args.free:
        layer = loss_cfg.guided_layers[0]
        a = free_alignment(synth, data, args.free, layer)
        print(f"  free-running, {a['rows']} rows (temperature {synth.temperature}, top-k {synth.top_k}): length "
              f"{a['length_ratio']:.2f} of the recording's ({a['length_min']:.2f}-{a['length_max']:.2f}); layer {layer} "
              f"reads {a['stray']:.3f} of the text away from where it reads given the real codes, at the same "
              f"point of the utterance; it steps back {a['backwards']:.3f} of the text per row")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``talker`` subcommand in scripts/evaluate.py."""
    t = subparsers.add_parser("talker", help="teacher-forced CE, text gain and attention on the text (Stage D)")
    t.add_argument("--talker", required=True, help="Stage D checkpoint folder (train_talker.py's train.save_dir parent)")
    t.add_argument("--csv", default="data/audio/production_tts_val.csv", help="text,wav CSV (held out)")
    t.add_argument("--n", type=int, default=100, help="rows to evaluate")
    t.add_argument("--batch-size", type=int, default=16, help="rows per teacher-forced forward pass")
    t.add_argument("--free", type=int, default=0, metavar="N",
                   help="also speak the first N rows free-running and compare where it reads in the text")
    t.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="--free's sampling; 0: greedy")
    t.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="--free's top-k; 0: all codes")
    t.set_defaults(run=eval_talker)
    return t
