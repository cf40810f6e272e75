"""The one chat template, shared token for token by SFT (omni/multimodal/stage.py) and chat (omni/multimodal/chat.py).

    <|bos|><|system|>{system}<|end|>
    <|user|>[<|image_start|> image slots <|image_end|>][<|audio_start|> audio slots <|audio_end|>]{text}<|end|>
    <|assistant|>{reply}<|end|>
    ...

Media occupy "slots": positions whose input embedding is a projected encoder state instead of a
token embedding. In ``ids`` a slot holds the pad id, and ``kinds`` says which modality fills it.
The loss covers the assistant's reply tokens and the ``<|end|>`` that closes them, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omni.thinker.tokenizer import Tokenizer

SYSTEM_PROMPT = "You are μOmni, a small assistant that sees, hears and speaks."
TEXT, IMAGE, AUDIO = 0, 1, 2
MEDIA_MARKERS = {IMAGE: ("<|image_start|>", "<|image_end|>"), AUDIO: ("<|audio_start|>", "<|audio_end|>")}
ROLES = ("user", "assistant")


@dataclass
class Turn:
    """One message. ``media`` is a list of (kind, n_slots) placed before the text, in order."""
    role: str
    text: str
    media: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")


@dataclass
class Sequence:
    """Parallel lists: token id (pad on media slots), slot kind, and whether the loss scores it."""
    ids: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    loss: list[bool] = field(default_factory=list)

    def add(self, ids: list[int], kind: int = TEXT, loss: bool = False) -> None:
        self.ids += ids
        self.kinds += [kind] * len(ids)
        self.loss += [loss] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)


def build_sequence(tok: Tokenizer, turns: list[Turn], system: str = SYSTEM_PROMPT,
                   generation_prompt: bool = False) -> Sequence:
    """Conversation -> token ids, slot kinds and loss mask. ``generation_prompt`` appends
    ``<|assistant|>`` so the model's next token starts the reply (what chat does)."""
    sp = tok.special
    seq = Sequence()
    seq.add([sp["<|bos|>"], sp["<|system|>"]] + tok.encode(system) + [sp["<|end|>"]])
    for turn in turns:
        seq.add([sp[f"<|{turn.role}|>"]])
        for kind, n in turn.media:
            start, end = MEDIA_MARKERS[kind]
            seq.add([sp[start]])
            seq.add([sp["<|pad|>"]] * n, kind)
            seq.add([sp[end]])
        scored = turn.role == "assistant"
        seq.add(tok.encode(turn.text) + [sp["<|end|>"]], loss=scored)
    if generation_prompt:
        seq.add([sp["<|assistant|>"]])
    return seq


def targets_for(seq: Sequence, ignore_index: int = -100) -> list[int]:
    """Next-token targets aligned with ``seq.ids``: position t predicts ids[t+1] when ids[t+1] is
    scored, else ``ignore_index``. Exactly one shift; the last position predicts nothing."""
    out = [ignore_index] * len(seq)
    for t in range(len(seq) - 1):
        if seq.loss[t + 1]:
            out[t] = seq.ids[t + 1]
    return out


def render(tok: Tokenizer, seq: Sequence) -> str:
    """Human-readable form of a sequence, media slots shown as [image×n] / [audio×n]."""
    parts, t = [], 0
    while t < len(seq):
        kind, start = seq.kinds[t], t
        while t < len(seq) and seq.kinds[t] == kind:
            t += 1
        if kind == TEXT:
            parts.append(tok.decode(seq.ids[start:t], skip_special=False))
        else:
            parts.append(f"[{'image' if kind == IMAGE else 'audio'}×{t - start}]")
    return "".join(parts)
