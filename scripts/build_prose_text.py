"""Write a held-out set of technical prose, one sentence per line, for the Talker's "different kind
of text" check: sentences from the docstrings of Python's standard library (omni/builders/prose.py).

    python scripts/build_prose_text.py --out data/text/technical_prose.txt --n 100
    python scripts/download_production_audio.py --corpus data/text/technical_prose.txt \\
        --out data/audio_prose --tts-train 0 --tts-val 100 --asr-train 0 --asr-val 0
"""
from __future__ import annotations

import sys
from pathlib import Path

from omni.builders.prose import technical_prose
from omni.cli.common import Parser
from omni.files import write_text_atomic


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/text/technical_prose.txt", help="the text file to write")
    p.add_argument("--n", type=int, default=100, help="sentences to keep")
    p.add_argument("--seed", type=int, default=0, help="seeds which sentences are kept")
    p.add_argument("--exclude", default="data/text/production_corpus.txt",
                   help="drop sentences found in this text (the training corpus), if it exists")
    args = p.parse_args(argv)
    pool = technical_prose(10 ** 9, args.seed)
    exclude = Path(args.exclude)
    corpus = exclude.read_text(encoding="utf-8") if exclude.is_file() else ""
    kept = [s for s in pool if s not in corpus][:args.n]
    if len(kept) < args.n:
        print(f"error: only {len(kept)} sentences found, {args.n} asked for", file=sys.stderr)
        return 1
    write_text_atomic(Path(args.out), "\n".join(kept) + "\n")
    print(f"{args.out}: {len(kept)} sentences ({len(pool) - len(kept)} more in the pool; "
          f"{sum(s in corpus for s in pool)} found in {exclude} and dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
