"""Edit values in a JSON file's text without touching anything else.

Re-serialising a config would reflow a hand-formatted file (``configs/vision_demo.json`` keeps
short sections on one line); here the new values are spliced into the original text at the
spans the parser recorded, so key order, layout and every other byte stay as they were.
"""
from __future__ import annotations

import difflib
import json
import re
from json.decoder import scanstring
from typing import Any

_WS = re.compile(r"\s*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")

Path_ = tuple[str | int, ...]


def value_spans(text: str) -> dict[Path_, tuple[int, int]]:
    """(section, key, ...) -> (start, end) character span of every value in a JSON document."""
    spans: dict[Path_, tuple[int, int]] = {}

    def skip(pos: int) -> int:
        return _WS.match(text, pos).end()

    def value(pos: int, path: Path_) -> int:
        pos = skip(pos)
        start, ch = pos, text[pos:pos + 1]
        if ch == "{":
            pos = skip(pos + 1)
            while text[pos] != "}":
                key, pos = scanstring(text, skip(pos) + 1)
                pos = skip(pos)
                if text[pos] != ":":
                    raise ValueError(f"expected ':' at character {pos}")
                pos = skip(value(pos + 1, path + (key,)))
                if text[pos] == ",":
                    pos = skip(pos + 1)
            end = pos + 1
        elif ch == "[":
            pos, i = skip(pos + 1), 0
            while text[pos] != "]":
                pos = skip(value(pos, path + (i,)))
                i += 1
                if text[pos] == ",":
                    pos = skip(pos + 1)
            end = pos + 1
        elif ch == '"':
            _, end = scanstring(text, pos + 1)
        else:
            m = _SCALAR.match(text, pos)
            if m is None:
                raise ValueError(f"unexpected character {ch!r} at {pos}")
            end = m.end()
        spans[path] = (start, end)
        return end

    value(0, ())
    return spans


def replace_values(text: str, updates: dict[Path_, Any]) -> str:
    """``text`` with the value at each path replaced by ``json.dumps(new)``; other bytes unchanged.

    The result is checked: it parses to the original document with exactly these updates.
    """
    spans = value_spans(text)
    missing = [p for p in updates if p not in spans]
    if missing:
        raise KeyError(f"no value at {['.'.join(map(str, p)) for p in missing]}")
    out = text
    for path, new in sorted(updates.items(), key=lambda kv: spans[kv[0]][0], reverse=True):
        s, e = spans[path]
        out = out[:s] + json.dumps(new, ensure_ascii=False) + out[e:]
    expected = json.loads(text)
    for path, new in updates.items():
        node = expected
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = new
    if json.loads(out) != expected:
        raise AssertionError("JSON splice produced a different document; this is a bug")
    return out


def unified_diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{name} (now)", tofile=f"{name} (tuned)", n=1))
