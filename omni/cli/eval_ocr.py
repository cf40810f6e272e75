"""OCR evaluation: CER/WER of an OCR checkpoint on any OCR CSV, overall and per font, and, in the
same run on the same images, tesseract's (when it is installed: apt-get install tesseract-ocr).

    python scripts/evaluate.py ocr --ckpt checkpoints/ocr_tiny/best \
        [--csv data/ocr/production_ocr_val.csv] [--n 300] [--beam 4] [--decoder attention|ctc] [--no-tesseract]

tesseract reads each original image as one text line (``--psm 7``, its English model). Both are
scored case- and punctuation-sensitively against the CSV's text. ``add_parser`` registers the
subcommand in scripts/evaluate.py, the entry point.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections import defaultdict

from tqdm import tqdm

from omni.audio.ctc import error_rates
from omni.cli.common import add_device_arg
from omni.engine.runtime import pick_device
from omni.ocr.stage import OcrDataset, evaluate_ocr, load_ocr


def tesseract(image: str) -> str:
    """tesseract's reading of one line image (``--psm 7``), whitespace collapsed."""
    r = subprocess.run(["tesseract", image, "stdout", "--psm", "7", "-l", "eng"], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"tesseract failed on {image}: {r.stderr.strip()[-300:]}")
    return " ".join(r.stdout.split())


def per_font(data: OcrDataset, results: list[tuple[str, str, int]]) -> dict[str, dict[str, float]]:
    groups = defaultdict(list)
    for ref, hyp, row in results:
        groups[data.m[row].get("font", "-")].append((ref, hyp))
    return {f: {**error_rates([r for r, _ in g], [h for _, h in g]), "n": len(g)} for f, g in sorted(groups.items())}


def eval_ocr(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, vocab, cfg = load_ocr(args.ckpt, device)
    csv = args.csv or cfg.data.val_csv
    data = OcrDataset(csv, vocab, cfg.model)
    t0 = time.perf_counter()
    decoder = args.decoder or cfg.model.decoder
    metrics, results = evaluate_ocr(model, data, vocab, args.batch_size, args.n, beam=args.beam, decoder=decoder)
    t_model = time.perf_counter() - t0
    print(f"checkpoint   {args.ckpt}  ({model.num_params() / 1e6:.2f}M params)")
    search = "greedy" if args.beam <= 1 else f"beam {args.beam}"
    print(f"manifest     {csv}: {len(results)} lines decoded ({t_model:.1f} s, "
          f"{1000 * t_model / max(1, len(results)):.0f} ms/line, every decoder the model has)")
    print(f"model        CER {metrics['val_cer']:.4f}  WER {metrics['val_wer']:.4f}  ({decoder} decoder; "
          f"per font and examples below)")
    if "val_ctc_cer" in metrics:
        print(f"  attention  CER {metrics['val_attention_cer']:.4f}  ({search})")
        print(f"  CTC head   CER {metrics['val_ctc_cer']:.4f}  (greedy best path)")
    tess = None
    if not args.no_tesseract:
        if shutil.which("tesseract") is None:
            print("tesseract    not installed (apt-get install tesseract-ocr tesseract-ocr-eng): no baseline")
        else:
            t0 = time.perf_counter()
            tess = [(ref, tesseract(data.m[row]["image"]), row) for ref, _, row in tqdm(results, desc="tesseract")]
            r = error_rates([x[0] for x in tess], [x[1] for x in tess])
            print(f"tesseract    CER {r['cer']:.4f}  WER {r['wer']:.4f}  (same {len(tess)} images, --psm 7, "
                  f"{time.perf_counter() - t0:.1f} s)")
    ours, theirs = per_font(data, results), per_font(data, tess) if tess else {}
    for font, r in ours.items():
        other = f"   tesseract CER {theirs[font]['cer']:.4f}" if font in theirs else ""
        print(f"  font {font:<36} n={int(r['n']):<5} CER {r['cer']:.4f}  WER {r['wer']:.4f}{other}")
    for k, (ref, hyp, row) in enumerate(results[:args.examples]):
        print(f"  ref:       {ref}\n  model:     {hyp}" + (f"\n  tesseract: {tess[k][1]}" if tess else ""))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``ocr`` subcommand in scripts/evaluate.py."""
    o = subparsers.add_parser("ocr", help="CER/WER of the OCR model per font, beside tesseract")
    o.add_argument("--ckpt", default="checkpoints/ocr_tiny/best", help="OCR checkpoint folder (train_ocr.py)")
    o.add_argument("--csv", default="", help="image,text[,font] CSV; default: the checkpoint's validation CSV")
    o.add_argument("--n", type=int, default=None, help="lines to decode (default: all)")
    o.add_argument("--beam", type=int, default=1, help="attention decoder's beam width (1: greedy, batched)")
    o.add_argument("--decoder", choices=("attention", "ctc"), default=None,
                   help="which head the per-font numbers and examples use (default: the checkpoint's model.decoder)")
    o.add_argument("--batch-size", type=int, default=32, help="line images per forward pass")
    o.add_argument("--examples", type=int, default=5, help="reference/reading pairs to print")
    o.add_argument("--no-tesseract", action="store_true", help="skip the tesseract baseline")
    add_device_arg(o)
    o.set_defaults(run=eval_ocr)
    return o

