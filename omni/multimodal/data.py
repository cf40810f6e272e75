"""Stage E data: paired multimodal conversations drawn from the stage datasets.

Every example pairs media with ITS OWN text (an image with its caption or one of its questions, a
clip with its transcript): the pairing comes from the row, never from two different rows.
Tasks: ``caption`` and ``vqa`` (image manifest), ``asr`` (ASR CSV), ``text`` (an instruction:
continue a document from the text corpus) and ``text_lm`` (a plain corpus document, no template,
every token scored: rehearsal that keeps the Thinker's language modelling from eroding).
"""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import numpy as np
import torch

from omni.audio.features import AudioError, load_audio
from omni.data import BadRow, DataError, LineFile, SkipCountingDataset
from omni.images import BadImage, load_image_tensor
from omni.losses import IGNORE_INDEX
from omni.manifest import Manifest, resolve_manifest
from omni.multimodal.template import AUDIO, IMAGE, Turn, build_sequence, targets_for
from omni.thinker.tokenizer import Tokenizer
from omni.vision.data import manifest_objects

log = logging.getLogger(__name__)

TASKS = ("caption", "vqa", "asr", "text", "text_lm")
CAPTION_PROMPTS = ("Describe the image.", "What is in this picture?", "Write a short caption for this image.")
ASR_PROMPTS = ("Transcribe the audio.", "What is said in this recording?")
TEXT_PROMPT = "Continue the text: "


@dataclasses.dataclass
class MixtureConfig:
    """Relative weights of the tasks in a training epoch (normalised; 0 drops a task)."""
    caption: float = 1.0
    vqa: float = 2.0
    asr: float = 1.0
    text: float = 1.0
    text_lm: float = 1.0


@dataclasses.dataclass
class SftDataConfig:
    image_manifest: str
    image_val_manifest: str
    asr_csv: str
    asr_val_csv: str
    text_file: str
    text_val_file: str
    mixture: MixtureConfig = dataclasses.field(default_factory=MixtureConfig)
    epoch_size: int = 4000           # conversations per training epoch, drawn by the mixture
    max_audio_seconds: float = 10.0
    text_prompt_words: int = 12      # a text example shows this many words and asks for the rest
    text_answer_words: int = 24
    val_items: int = 100             # held-out conversations per task at each validation
    vqa_turns: int = 4               # a training VQA conversation asks up to this many questions of one image
    # share of image (audio) conversations that first hold an earlier turn about a clip (an image), so
    # the model learns that a question concerns the media of its own turn, as multi-turn chat needs
    mixed_turns: float = 0.0
    allow_outside_paths: bool = False  # read image and wav paths outside their manifest's folder


@dataclasses.dataclass
class Example:
    """One conversation before media are loaded: a user prompt with optional media, the answer."""
    task: str
    prompt: str
    answer: str
    image: str | None = None
    audio: str | None = None
    followups: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # more (question, answer) turns


def read_image_manifest(path: str | Path, allow_outside: bool = False) -> list[dict]:
    """Manifest rows (``vision_data.manifest_objects``), each with a ``caption``; ``image``
    resolved against the manifest's folder, rows whose image leaves it dropped unless ``allow_outside``."""
    path = Path(path)
    rows, dropped = manifest_objects(path, allow_outside)
    for i, row in enumerate(rows):
        if "caption" not in row:
            raise DataError(f"{path}: row {i + 1} lacks a 'caption'")
    if not rows:
        raise DataError(f"{path}: no rows" + (f" ({dict(dropped)} dropped)" if dropped else ""))
    if dropped:
        log.warning("%s: dropped %d rows (%s)", path, sum(dropped.values()), dict(dropped))
    return rows


def qa_pairs(row: dict) -> list[tuple[str, str]]:
    pairs = [tuple(p) for p in row.get("qa", [])]
    if not pairs and row.get("question") and row.get("answer"):
        pairs = [(row["question"], row["answer"])]
    return pairs


class Sources:
    """The rows each task draws from, for one split."""

    def __init__(self, image_manifest: str, asr_csv: str, text_file: str, split: str,
                 allow_outside: bool = False) -> None:
        self.images = read_image_manifest(image_manifest, allow_outside)
        self.vqa_rows = [r for r in self.images if qa_pairs(r)]
        self.asr = Manifest(resolve_manifest(asr_csv, split), allow_outside=allow_outside)
        self.text = LineFile(text_file)

    def size(self, task: str) -> int:
        return {"caption": len(self.images), "vqa": len(self.vqa_rows), "asr": len(self.asr),
                "text": len(self.text), "text_lm": len(self.text)}[task]

    def example(self, task: str, i: int, rng: random.Random, cfg: SftDataConfig) -> Example | None:
        """Row i of the task's source as a conversation; None for an unusable row."""
        try:
            return self.conversation(task, i, rng, cfg)
        except BadRow:  # the manifest has logged it
            return None

    def conversation(self, task: str, i: int, rng: random.Random, cfg: SftDataConfig) -> Example | None:
        """As ``example``, but an unusable manifest row raises BadRow (with the reason it is counted under)."""
        if task == "caption":
            row = self.images[i]
            return Example(task, rng.choice(CAPTION_PROMPTS), row["caption"], image=row["image"])
        if task == "vqa":
            row = self.vqa_rows[i]
            pairs = qa_pairs(row)
            pairs = rng.sample(pairs, min(len(pairs), rng.randint(1, max(1, cfg.vqa_turns))))
            return Example(task, pairs[0][0], pairs[0][1], image=row["image"], followups=pairs[1:])
        if task == "asr":
            row = self.asr[i]
            return Example(task, rng.choice(ASR_PROMPTS), row["text"], audio=row["wav"])
        words = (self.text[i].decode("utf-8", "replace")).split()
        if task == "text_lm":
            return Example(task, "", " ".join(words)) if words else None
        if len(words) < cfg.text_prompt_words + 4:
            return None
        n = cfg.text_prompt_words
        return Example(task, TEXT_PROMPT + " ".join(words[:n]), " ".join(words[n:n + cfg.text_answer_words]))


def draw_plan(sources: Sources, weights: dict[str, float], n: int, seed: int) -> list[tuple[str, int]]:
    """(task, row) for n conversations: each task gets its share of n by weight, its rows taken in
    a shuffled order (cycled when the share exceeds the rows), deterministic given the seed."""
    live = {t: w for t, w in weights.items() if w > 0 and sources.size(t) > 0}
    if not live:
        raise DataError("SFT mixture selects no task with data: check data.mixture and the data files")
    total = sum(live.values())
    rng = np.random.default_rng(seed)
    plan = []
    for task, w in live.items():
        count = max(1, round(n * w / total))
        order = np.concatenate([rng.permutation(sources.size(task))
                                for _ in range(-(-count // sources.size(task)))])[:count]
        plan += [(task, int(i)) for i in order]
    rng.shuffle(plan)
    return plan


class SftDataset(SkipCountingDataset):
    """item i -> {ids, kinds, targets, image, audio, task} or None (bad row, counted)."""

    def __init__(self, sources: Sources, plan: list[tuple[str, int]], tok: Tokenizer, cfg: SftDataConfig,
                 ctx_len: int, image_size: int, image_slots: int, audio_slots, seed: int) -> None:
        self.sources, self.plan, self.tok, self.cfg = sources, plan, tok, cfg
        self.ctx_len, self.image_size, self.image_slots, self.audio_slots = ctx_len, image_size, image_slots, audio_slots
        self.seed = seed
        super().__init__()

    def __len__(self) -> int:
        return len(self.plan)

    def _draw(self, i: int) -> tuple[str, int, random.Random, SftDataConfig]:
        task, row = self.plan[i]
        return task, row, random.Random(self.seed * 1_000_003 + i), self.cfg

    def example(self, i: int) -> Example | None:
        return self.sources.example(*self._draw(i))

    def __getitem__(self, i: int) -> dict | None:
        self.counts["seen"] += 1
        try:
            ex = self.sources.conversation(*self._draw(i))
        except BadRow as e:
            return self._skip(e.reason)
        if ex is None:
            return self._skip("unusable_row")
        if ex.task == "text_lm":
            return self.plain_text(ex.answer)
        prefix = self.earlier_turn(i, ex)
        try:
            turn, image, audio = load_media(ex, self.image_size, self.image_slots, self.audio_slots)
            if prefix is not None:
                p_turn, p_image, p_audio = load_media(prefix, self.image_size, self.image_slots, self.audio_slots)
                image, audio = image if image is not None else p_image, audio if audio is not None else p_audio
        except (BadImage, AudioError, DataError) as e:
            log.warning("%s", e)
            return self._skip(type(e).__name__)
        if audio is not None and len(audio) > self.cfg.max_audio_seconds * 16000:
            return self._skip("audio_too_long")
        turns = [p_turn, Turn("assistant", prefix.answer)] if prefix is not None else []
        turns += [turn, Turn("assistant", ex.answer)]
        for q, a in ex.followups:
            turns += [Turn("user", q), Turn("assistant", a)]
        seq = build_sequence(self.tok, turns)
        if len(seq) > self.ctx_len:
            return self._skip("longer_than_ctx")
        return {"ids": seq.ids, "kinds": seq.kinds, "targets": targets_for(seq, IGNORE_INDEX),
                "image": image, "audio": audio, "task": ex.task}

    def earlier_turn(self, i: int, ex: Example) -> Example | None:
        """With probability ``mixed_turns``: a conversation about the other modality (a clip before an
        image question, an image before a clip) to place before ``ex``; one image and one clip at most."""
        rng = random.Random(self.seed * 1_000_003 + i + 500_009)
        if (ex.image is None) == (ex.audio is None) or rng.random() >= self.cfg.mixed_turns:
            return None
        task = "asr" if ex.image is not None else rng.choice(("caption", "vqa"))
        if self.sources.size(task) == 0:
            return None
        return self.sources.example(task, rng.randrange(self.sources.size(task)), rng,
                                    dataclasses.replace(self.cfg, vqa_turns=1))

    def plain_text(self, text: str) -> dict:
        """A document as Stage A saw it (no template), cut to the context, every token scored."""
        ids = self.tok.encode(text)[:self.ctx_len - 1] + [self.tok.special["<|eos|>"]]
        return {"ids": ids, "kinds": [0] * len(ids), "targets": ids[1:] + [IGNORE_INDEX],
                "image": None, "audio": None, "task": "text_lm"}



def load_media(ex: Example, image_size: int, image_slots: int, audio_slots) -> tuple[Turn, torch.Tensor | None,
                                                                                    np.ndarray | None]:
    """The user turn of an example with its media loaded (raises BadImage / AudioError)."""
    media, image, audio = [], None, None
    if ex.image is not None:
        image = load_image_tensor(ex.image, image_size)
        media.append((IMAGE, image_slots))
    if ex.audio is not None:
        audio = load_audio(ex.audio)
        media.append((AUDIO, audio_slots(len(audio))))
    return Turn("user", ex.prompt, media), image, audio


def collate_sft(items: list, pad_id: int) -> dict[str, torch.Tensor] | None:
    """Right-pad to the longest sequence (pad / text kind / ignored target); stack the media in
    sample order, which is the order their slots appear in the flattened batch."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    T = max(len(x["ids"]) for x in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    kinds = torch.zeros((len(items), T), dtype=torch.long)
    targets = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)
    for b, x in enumerate(items):
        n = len(x["ids"])
        ids[b, :n], kinds[b, :n], targets[b, :n] = (torch.tensor(x[k]) for k in ("ids", "kinds", "targets"))
    batch = {"ids": ids, "kinds": kinds, "targets": targets}
    images = [x["image"] for x in items if x["image"] is not None]
    if images:
        batch["images"] = torch.stack(images)
    clips = [x["audio"] for x in items if x["audio"] is not None]
    if clips:
        lengths = torch.tensor([len(a) for a in clips])
        audio = torch.zeros(len(clips), int(lengths.max()))
        for k, a in enumerate(clips):
            audio[k, :len(a)] = torch.from_numpy(a)
        batch["audio"], batch["audio_lengths"] = audio, lengths
    return batch
