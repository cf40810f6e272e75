"""Export μOmni to ONNX with a parity report (the omni-export command).

    python scripts/export.py --ckpt checkpoints/omni_sft_tiny --talker checkpoints/talker_tiny --out export/
    python scripts/export.py --ckpt ... --talker ... --data data --out export/      # held-out data layout
    python -m omni.export.runtime export/ --text "hello" --audio-out reply.wav     # then run it without torch

Writes the ONNX graphs (Thinker prefill + decode with an explicit KV cache, audio and vision
encoders with their projectors, Talker prefill + decode [+ depth chain step], codec decoder,
[HiFi-GAN]), the tokenizer, configs, manifest.json (shapes, opsets, sha256) and the parity report
(parity.json, parity.md). Exit status: 0 exported and parity passed; 2 the export failed (a
checkpoint, a weight missing/unexpected/changed, bad input: nothing written); 3 exported but a
parity check is out of tolerance (see parity.md).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omni.cli.common import Parser, setup_logging
from omni.data import DataError
from omni.engine.checkpoint import CheckpointError

log = logging.getLogger("omni.export")


def parse_args(argv: list[str] | None):
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--ckpt", required=True, help="Stage E checkpoint folder (sft_omni.py)")
    p.add_argument("--talker", default=None, help="Stage D checkpoint folder (train_talker.py), for speech out")
    p.add_argument("--vocoder", default=None, help="HiFi-GAN folder (train_vocoder.py); without it speech uses Griffin-Lim")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.add_argument("--data", default=None, help="a data folder in the demo/synthetic layout: audio/asr_val.csv, "
                   "audio/tts_val.csv, images/annotations_val.json, text/*val*.txt (the held-out inputs)")
    p.add_argument("--asr-csv", default=None, help="held-out wav,text CSV (overrides --data)")
    p.add_argument("--image-manifest", default=None, help="held-out image manifest (overrides --data)")
    p.add_argument("--tts-csv", default=None, help="held-out text,wav CSV for speech (overrides --data)")
    p.add_argument("--text-file", default=None, help="held-out text, one document a line (overrides --data)")
    p.add_argument("--prompts", type=int, default=20, help="Thinker greedy agreement: prompts")
    p.add_argument("--new-tokens", type=int, default=256, help="Thinker greedy agreement: tokens per prompt "
                   "(capped by the context)")
    p.add_argument("--asr-clips", type=int, default=15, help="held-out clips for transcript agreement")
    p.add_argument("--vqa-questions", type=int, default=20, help="held-out image questions for VQA agreement")
    p.add_argument("--tts-texts", type=int, default=8, help="held-out texts for Talker codes and speech")
    p.add_argument("--no-sphinx", action="store_true", help="skip the pocketsphinx CER of the synthesised speech")
    p.add_argument("--tolerance", type=float, default=1e-4, help="per-graph relative error limit")
    p.add_argument("--int8", action="store_true", help="also write an INT8 (dynamic) copy in int8/ and measure it")
    p.add_argument("--no-parity", action="store_true", help="skip the parity measurements (the weight audit still runs)")
    return p.parse_args(argv)


def data_paths(args) -> dict[str, str | None]:
    base = Path(args.data) if args.data else None

    def pick(explicit, *rel):
        if explicit:
            return explicit
        if base is None:
            return None
        for r in rel:
            hits = sorted(base.glob(r))
            if hits:
                return str(hits[0])
        return None

    return {"asr_csv": pick(args.asr_csv, "audio/asr_val.csv", "audio/*asr*val*.csv"),
            "image_manifest": pick(args.image_manifest, "images/annotations_val.json", "images/*val*.json"),
            "tts_csv": pick(args.tts_csv, "audio/tts_val.csv", "audio/*tts*val*.csv"),
            "text_file": pick(args.text_file, "text/*val*.txt")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from omni.export.exporter import ExportError, ExportOptions, export, load_sources

    opts = ExportOptions(prompts=args.prompts, new_tokens=args.new_tokens, asr_clips=args.asr_clips,
                         vqa_questions=args.vqa_questions, tts_texts=args.tts_texts, sphinx=not args.no_sphinx,
                         tolerance=args.tolerance, data=data_paths(args), quantize=args.int8)
    try:
        src = load_sources(args.ckpt, args.talker, args.vocoder)
        report = export(src, args.out, opts, overwrite=args.overwrite, parity=not args.no_parity)
    except (ExportError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.no_parity:
        print(f"exported to {out} (weights audited; parity not measured)")
        return 0
    print((out / "parity.md").read_text(encoding="utf-8"))
    if not report["passed"]:
        print(f"error: parity out of tolerance; see {out / 'parity.md'}", file=sys.stderr)
        return 3
    print(f"exported to {out}: parity passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
