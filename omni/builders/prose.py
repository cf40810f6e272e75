"""Technical prose for a held-out text set: sentences from the docstrings of Python's standard
library (PSF licence), a kind of text the training corpus (web pages, encyclopaedia leads,
scripture, plays; omni/builders/text.py) does not hold. It ships with every Python, so the set
builds offline, and ``scripts/build_prose_text.py`` writes it one sentence per line."""
from __future__ import annotations

import importlib
import inspect
import random
import re

# pure-Python modules whose docstrings are written as prose
MODULES = ("argparse", "bisect", "calendar", "collections", "configparser", "contextlib", "csv", "dataclasses",
           "difflib", "doctest", "email.message", "fractions", "ftplib", "functools", "gettext", "glob", "gzip",
           "heapq", "http.client", "http.cookiejar", "imaplib", "inspect", "ipaddress", "json", "logging",
           "mailbox", "optparse", "pathlib", "pickle", "pickletools", "pydoc", "queue", "random", "sched",
           "shlex", "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile", "tempfile",
           "textwrap", "threading", "timeit", "tokenize", "trace", "unittest.case", "urllib.parse",
           "urllib.request", "uuid", "warnings", "weakref", "wave", "xml.dom.minidom", "zipfile")
CLEAN = re.compile(r"[A-Za-z][A-Za-z ,;:'-]*[.?!]")
CAMEL = re.compile(r"[A-Za-z][a-z]*[A-Z]")  # class names and acronyms (LogRecord, IP): code, not prose


def docstrings(module_name: str) -> list[str]:
    """The module's docstring and those of its public classes, functions and methods."""
    mod = importlib.import_module(module_name)
    out = [mod.__doc__ or ""]
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        out.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            out += [inspect.getdoc(m) or "" for n, m in sorted(vars(obj).items())
                    if not n.startswith("_") and callable(m)]
    return out


def sentences(text: str, min_words: int = 6, max_chars: int = 140) -> list[str]:
    """Plain sentences of a docstring: paragraphs joined into lines, split at sentence ends, kept
    only when made of letters and ordinary punctuation (no code, no numbers, no markup, no
    identifiers in mixed case)."""
    found = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        for s in re.split(r"(?<=[.?!])\s+", flat):
            if CLEAN.fullmatch(s) and len(s.split()) >= min_words and len(s) <= max_chars and s[0].isupper() \
                    and not CAMEL.search(s):
                found.append(s)
    return found


def technical_prose(n: int, seed: int = 0) -> list[str]:
    """n distinct sentences (fewer if the modules hold fewer), in a seeded random order."""
    seen: dict[str, None] = {}
    for name in MODULES:
        for doc in docstrings(name):
            for s in sentences(doc):
                seen.setdefault(s, None)
    pool = sorted(seen)
    random.Random(seed).shuffle(pool)
    return pool[:n]
