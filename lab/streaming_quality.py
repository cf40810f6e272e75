"""Block-wise Griffin-Lim (what streaming speech uses) against whole-signal Griffin-Lim, on the true
log-mel of recordings: spectral convergence and pocketsphinx CER of each, beside the recording itself.

    python lab/streaming_quality.py [--csv assets/audio/clips.csv --csv data/audio/tts_val.csv] [--out F.json]

The CSVs are ``text,wav`` manifests (assets/audio/clips.csv: real people; data/audio/tts_val.csv:
the demo's synthetic held-out speech, made by `scripts/make_synthetic_datasets.py`).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from omni.audio.features import SPEECH_OUT_MEL, LogMel
from omni.cli.parser import Parser
from omni.speech.griffinlim import block_mel_to_wav, inverter, mel_to_wav, spectral_convergence
from omni.speech.intelligibility import original_path, read_rows, report_paths
from omni.tools.machine import cpu_model


def main() -> int:
    p = Parser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument("--csv", action="append", default=None,
                   help="a text,wav manifest (repeat for several; default: the two above)")
    p.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations, both ways")
    p.add_argument("--out", help="write the result to this JSON file")
    args = p.parse_args()
    logmel = LogMel(SPEECH_OUT_MEL)
    gl = inverter(torch.device("cpu"))
    whole = lambda text, audio: mel_to_wav(logmel(torch.from_numpy(audio)[None]), args.iters)[0].numpy()
    block = lambda text, audio: block_mel_to_wav(logmel(torch.from_numpy(audio)[None]), args.iters).numpy()
    result = {"cpu": cpu_model(), "torch": torch.__version__, "iters": args.iters, "sets": {}}
    for csv in args.csv or ["assets/audio/clips.csv", "data/audio/tts_val.csv"]:
        rows, _ = read_rows(csv, 10_000)
        sc = {"whole": [], "block": []}
        for _, audio in rows:
            mel = logmel(torch.from_numpy(audio)[None])
            mag = gl.mel_to_magnitude(mel)
            for name, fn in (("whole", whole), ("block", block)):
                sc[name].append(float(spectral_convergence(torch.from_numpy(fn("", audio))[None], mag)[0]))
        t0 = time.perf_counter()
        paths = report_paths(rows, {"recording": original_path(), "gl_whole": whole, "gl_block": block})
        res = {name: {k: paths[name][k] for k in ("cer", "wer", "n", "cer_interval", "synth_s", "audio_s")
                      if k in paths[name]} for name in paths}
        for name in ("whole", "block"):
            res[f"gl_{name}"]["spectral_convergence"] = float(np.mean(sc[name]))
        res["seconds"] = time.perf_counter() - t0
        result["sets"][csv] = res
        print(csv, f"({len(rows)} clips)")
        for name in ("recording", "gl_whole", "gl_block"):
            r = res[name]
            ci = r.get("cer_interval")
            ci = f" (95% {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
            sc_s = f"  spectral convergence {r['spectral_convergence']:.4f}" if "spectral_convergence" in r else ""
            print(f"  {name:10s} CER {r['cer']:.3f}{ci}  WER {r['wer']:.3f}{sc_s}  "
                  f"synth {r['synth_s']:.2f} s for {r['audio_s']:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
