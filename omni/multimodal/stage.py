"""Stage E: multimodal SFT of the Thinker + projectors on paired conversations, and its metrics.

Validation answers held-out conversations through omni.multimodal.chat.ChatSession (the chat code path):
VQA exact-match accuracy, caption keyword accuracy, transcription CER; and the Thinker's
perplexity on plain validation text, to measure what SFT costs the language model ("omni tax").
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omni.audio.ctc import error_rates, normalize_text
from omni.config import TrainConfig, to_dict
from omni.data import PackedTokens, tokenize_corpus
from omni.engine.checkpoint import CheckpointError, load_weights, read_stage_config
from omni.engine.runtime import Runtime
from omni.engine.stage import Stage
from omni.multimodal.chat import ChatSession, Sampling
from omni.multimodal.data import TASKS, Example, SftDataConfig, SftDataset, Sources, collate_sft, draw_plan, qa_pairs
from omni.multimodal.model import Components, OmniConfig, OmniModel, components_from_dict, from_stages
from omni.thinker.stage import evaluate_lm, save_tokenizer, tokenizer_in
from omni.thinker.tokenizer import Tokenizer

log = logging.getLogger(__name__)
STOPWORDS = frozenset("a an the and or of on in at to is are with this that it its there".split())


@dataclasses.dataclass
class SftStageConfig:
    model: OmniConfig
    data: SftDataConfig
    train: TrainConfig


def answer_key(text: str) -> str:
    """What VQA accuracy compares: lowercase words without punctuation."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def keyword_recall(ref: str, hyp: str) -> float:
    """Share of the reference caption's content words that the hypothesis contains."""
    want = [w for w in answer_key(ref).split() if w not in STOPWORDS]
    have = set(answer_key(hyp).split())
    return sum(w in have for w in want) / len(want) if want else float(ref.strip() == hyp.strip())


def answer_examples(model: OmniModel, tok: Tokenizer, examples: list[Example],
                    max_new_tokens: int = 48) -> list[str]:
    """Greedy replies to single-turn conversations, each through a fresh ChatSession."""
    out = []
    chat = ChatSession(model, tok, Sampling(max_new_tokens=max_new_tokens))
    for ex in examples:
        chat.reset()
        if ex.image is not None:
            chat.attach_image(ex.image)
        if ex.audio is not None:
            chat.attach_audio(ex.audio)
        out.append(chat.ask(ex.prompt)[0])
    return out


def task_metrics(task: str, refs: list[str], hyps: list[str]) -> dict[str, float]:
    if task == "vqa":
        return {"vqa_acc": float(np.mean([answer_key(r) == answer_key(h) for r, h in zip(refs, hyps)]))}
    if task == "caption":
        return {"caption_kw": float(np.mean([keyword_recall(r, h) for r, h in zip(refs, hyps)])),
                "caption_exact": float(np.mean([answer_key(r) == answer_key(h) for r, h in zip(refs, hyps)]))}
    if task == "asr":
        r = error_rates([normalize_text(x) for x in refs], [normalize_text(x) for x in hyps])
        return {"asr_cer": r["cer"], "asr_wer": r["wer"]}
    return {}


def vqa_prior(train: Sources) -> dict[str, str]:
    """A blind baseline: for each training question, its most common training answer."""
    counts: dict[str, Counter] = {}
    for row in train.vqa_rows:
        for q, a in qa_pairs(row):
            counts.setdefault(q, Counter())[answer_key(a)] += 1
    return {q: c.most_common(1)[0][0] for q, c in counts.items()}


def held_out(sources: Sources, task: str, n: int, cfg: SftDataConfig, seed: int) -> list[Example]:
    """The first n usable rows of a task's validation source as single-turn conversations."""
    out = []
    single = dataclasses.replace(cfg, vqa_turns=1)
    for i in range(sources.size(task)):
        ex = sources.example(task, i, random.Random(seed + i), single)
        if ex is not None:
            out.append(ex)
        if len(out) >= n:
            break
    return out


def evaluate_sft(model: OmniModel, tok: Tokenizer, val: Sources, cfg: SftStageConfig,
                 text_windows: PackedTokens | None, prior: dict[str, str] | None = None) -> dict[str, float]:
    """Per-task metrics through chat (and the blind VQA prior on the same questions), and the
    Thinker's perplexity on plain validation text."""
    was = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for task in ("vqa", "caption", "asr"):
        if getattr(cfg.data.mixture, task) <= 0:
            continue
        exs = held_out(val, task, cfg.data.val_items, cfg.data, cfg.train.seed)
        metrics.update({f"val_{k}": v for k, v in
                        task_metrics(task, [e.answer for e in exs], answer_examples(model, tok, exs)).items()})
        if task == "vqa" and prior is not None:
            metrics["val_vqa_prior"] = float(np.mean([prior.get(e.prompt) == answer_key(e.answer) for e in exs]))
    if text_windows is not None:
        lm = evaluate_lm(model.thinker, text_windows, cfg.train.batch_size, cfg.train.val_batches)
        metrics["val_text_loss"], metrics["val_text_ppl"] = lm["val_loss"], lm["val_ppl"]
    model.train(was)
    return metrics


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    return model(batch), {}


def text_windows(path: str, tok: Tokenizer, ctx_len: int) -> PackedTokens:
    corpus = tokenize_corpus(path, tok, tok.special["<|eos|>"])
    return PackedTokens(np.asarray(corpus.tokens), ctx_len, path)


def build_stage(cfg: SftStageConfig, rt: Runtime) -> Stage:
    device = rt.device
    model, tok, comp = from_stages(cfg.model, device)
    model.train()
    d = cfg.data
    train_src = Sources(d.image_manifest, d.asr_csv, d.text_file, "train", d.allow_outside_paths)
    val_src = Sources(d.image_val_manifest, d.asr_val_csv, d.text_val_file, "val", d.allow_outside_paths)
    weights = {t: getattr(d.mixture, t) for t in TASKS}
    plan = draw_plan(train_src, weights, d.epoch_size, cfg.train.seed)
    log.info("SFT plan: %s conversations per epoch", dict(zip(*np.unique([t for t, _ in plan], return_counts=True))))
    train_set = SftDataset(train_src, plan, tok, d, comp.thinker.ctx_len, comp.vision.img_size,
                           model.image_slots(), model.audio_slots, cfg.train.seed)
    windows = text_windows(d.text_val_file, tok, comp.thinker.ctx_len) if d.mixture.text > 0 else None
    pad = tok.special["<|pad|>"]
    prior = vqa_prior(train_src)

    def save_extra(ckpt: Path) -> None:
        save_tokenizer(tok, ckpt)
        (ckpt / "components.json").write_text(json.dumps(dataclasses.asdict(comp), indent=2))

    return Stage(
        name="omni_sft", model=model, train_set=train_set, loss_fn=sft_loss, config=to_dict(cfg),
        collate=lambda items: collate_sft(items, pad), skip_report=train_set.report,
        evaluate=lambda m: evaluate_sft(m, tok, val_src, cfg, windows, prior),
        count_items=lambda b: float((b["targets"] != -100).sum()), items_unit="tok",
        best_metric="val_vqa_acc" if d.mixture.vqa > 0 else None, best_max=True, save_extra=save_extra,
        find_unused_parameters=True)


def load_omni(ckpt_dir: str | Path, device: torch.device) -> tuple[OmniModel, Tokenizer, SftStageConfig]:
    """Rebuild the SFT model from its own folder (config.json, components.json, weights, tokenizer)."""
    ckpt_dir = Path(ckpt_dir)
    comp_path = ckpt_dir / "components.json"
    if not comp_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no components.json; is this a Stage E checkpoint? "
                              "(python sft_omni.py --config configs/omni_sft_tiny.json)")
    cfg = read_stage_config(ckpt_dir, SftStageConfig)
    comp: Components = components_from_dict(json.loads(comp_path.read_text()), comp_path)
    model = OmniModel(comp, cfg.model)
    load_weights(model, ckpt_dir)
    return model.to(device).eval(), tokenizer_in(ckpt_dir), cfg


CONFIG = SftStageConfig
DEFAULT_CONFIG = "configs/omni_sft_tiny.json"
