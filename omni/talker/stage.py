"""Stage D, phase 2: the Talker stage: its config, the codec phase it depends on, and build_stage."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omni.codec import stage as codec_stage
from omni.codec.stage import CodecStageConfig, load_codec
from omni.config import ConfigError, TrainConfig, to_dict
from omni.engine import checkpoint as ckpt
from omni.engine.runtime import Runtime
from omni.engine.stage import Phase, Stage
from omni.files import file_sha1, write_json_atomic
from omni.manifest import Manifest, resolve_manifest
from omni.talker.data import (
    CODEC_LINK,
    CODEC_SUBDIR,
    VOCAB_FILE,
    CodeCache,
    TalkerDataset,
    codec_dir_of,
    collate_talker,
    evaluate_talker,
    unigram_code_ce,
)
from omni.talker.duration_loss import duration_loss, evaluate_duration_talker
from omni.talker.loss import TalkerLossConfig, talker_loss
from omni.talker.model import TalkerConfig, build_talker
from omni.talker.text import TextVocab

log = logging.getLogger(__name__)


@dataclass
class TtsDataConfig:
    """``text,wav`` CSVs (wav paths relative to the CSV)."""
    train_csv: str
    val_csv: str
    max_seconds: float = 12.0
    val_items: int = 100           # validation utterances (teacher-forced)
    allow_outside_paths: bool = False  # read wav paths outside the CSV's folder (../, absolute, symlinks out)


@dataclass
class TalkerStageConfig:
    """train_talker.py: phase 1 trains the codec (``codec``: a whole codec stage config, as in
    configs/codec_tiny.json) into ``codec.train.save_dir``, skipped when that folder holds a
    finished codec; phase 2 trains the Talker (``talker``, ``loss``, ``data``) into ``train.save_dir``."""
    codec: CodecStageConfig
    talker: TalkerConfig
    loss: TalkerLossConfig
    data: TtsDataConfig
    train: TrainConfig


def codec_finished(save_dir: Path, max_steps: int) -> bool:
    """Weights present, and (when a training state is there) trained to max_steps."""
    if not (save_dir / ckpt.MODEL_FILE).is_file():
        return False
    if not ckpt.has_train_state(save_dir):
        return True
    return ckpt.load_train_state(save_dir)["progress"]["step"] >= max_steps


def fill_from_codec(cfg: TalkerStageConfig, codec, vocab: TextVocab) -> None:
    """The Talker's code and text sizes come from the codec and the vocabulary; a config that
    names other values is an error rather than a silent override. ``talker.n_codebooks`` may also
    name fewer codebooks than the codec has: the Talker then predicts the first ones only and
    synthesis decodes from those (the base codebook and the first residuals carry the words)."""
    t = cfg.talker
    if not 0 <= t.n_codebooks <= codec.n_codebooks:
        raise ConfigError(f"talker.n_codebooks={t.n_codebooks} but the codec has {codec.n_codebooks}; set it to 0 "
                          f"(all of them) or to 1..{codec.n_codebooks} (the first ones)")
    t.n_codebooks = t.n_codebooks or codec.n_codebooks
    if t.n_codebooks < codec.n_codebooks:
        log.info("the Talker predicts the first %d of the codec's %d codebooks", t.n_codebooks, codec.n_codebooks)
    sizes = [("codebook_size", codec.codebook_size), ("text_vocab_size", len(vocab))]
    if t.alignment == "durations":
        sizes.append(("latent_dim", codec.codebook_dim))
    for key, actual in sizes:
        if getattr(t, key) not in (0, actual):
            raise ConfigError(f"talker.{key}={getattr(t, key)} but the codec/vocabulary has {actual}; set it to 0 "
                              "(filled automatically) or to the real value")
        setattr(t, key, actual)
    try:
        cfg.loss.code_weights(t.n_codebooks)  # checked before training, not at the first step
    except ValueError as e:
        raise ConfigError(str(e)) from None


def codec_vectors(codec, n_codebooks: int) -> torch.Tensor:
    """The codec's first n_codebooks codebooks (n_q, K, dim): the duration Talker's aligner space."""
    return torch.stack([vq.codebook.detach().float() for vq in codec.rvq.layers[:n_codebooks]])


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retrain-codec", action="store_true",
                   help="train the codec (codec.train.save_dir) again even if it is finished")


def before(cfg: TalkerStageConfig, rt: Runtime, args: argparse.Namespace) -> list[Phase]:
    """The codec phase, unless ``codec.train.save_dir`` holds a finished codec."""
    codec_dir = Path(cfg.codec.train.save_dir)
    if args.retrain_codec or not codec_finished(codec_dir, cfg.codec.train.max_steps):
        return [Phase("codec", lambda runtime: codec_stage.build_stage(cfg.codec, runtime), cfg.codec.train)]
    log.info("codec %s is finished; skipping it (--retrain-codec to train it again)", codec_dir)
    return []


def build_stage(cfg: TalkerStageConfig, rt: Runtime) -> Stage:
    device = rt.device
    codec_dir = codec_dir_of(cfg.codec.train.save_dir)
    codec, _ = load_codec(codec_dir, device)
    for p in codec.parameters():
        p.requires_grad_(False)
    sha = file_sha1(codec_dir / ckpt.MODEL_FILE)
    vocab = TextVocab.default(cfg.talker.text_input)
    fill_from_codec(cfg, codec, vocab)
    cache_dir = Path(cfg.train.save_dir) / "codes"
    durations = cfg.talker.alignment == "durations"
    sets = {}
    for split, name in (("train", cfg.data.train_csv), ("val", cfg.data.val_csv)):
        csv = resolve_manifest(name, split)
        outside = cfg.data.allow_outside_paths
        cache = CodeCache.load_or_build(csv, cache_dir, codec, sha, cfg.data.max_seconds, outside)
        sets[split] = TalkerDataset(Manifest(csv, allow_outside=outside), cache, vocab, cfg.talker.max_text_chars,
                                    cfg.talker.n_codebooks, aligned=durations)
    train_set, val_set = sets["train"], sets["val"]
    torch.manual_seed(cfg.train.seed)
    model = build_talker(cfg.talker)
    if durations:
        sample = torch.from_numpy(train_set.cache.codes[:200_000, :cfg.talker.n_codebooks].astype(np.int64))
        model.set_latent(codec_vectors(codec, cfg.talker.n_codebooks), sample)
    log.info("Talker: %.2fM parameters, predicting %d codebooks; codec %s: %d codebooks x %d codes",
             model.num_params() / 1e6, cfg.talker.n_codebooks, codec_dir, codec.n_codebooks, codec.codebook_size)
    lengths = train_set.lengths()
    log.info("%s: %d usable rows of %d, %d codec frames", cfg.data.train_csv, int((lengths > 0).sum()),
             len(train_set), int(train_set.cache.offsets[-1]))
    r = cfg.talker.frames_per_step
    baseline = {"val_unigram_ce": unigram_code_ce(train_set.cache.codes[:, :cfg.talker.n_codebooks],
                                                 val_set.cache.codes[:, :cfg.talker.n_codebooks], codec.codebook_size)}
    log.info("baseline: val code CE under the training code frequencies %.4f nats", baseline["val_unigram_ce"])

    def save_extra(d: Path) -> None:
        # the codec travels inside every Talker folder, so a copied or moved folder still speaks
        d.mkdir(parents=True, exist_ok=True)
        vocab.save(d / VOCAB_FILE)
        ckpt.copy_weights(codec_dir, d / CODEC_SUBDIR)
        write_json_atomic(d / CODEC_LINK, {"codec_dir": CODEC_SUBDIR, "codec_sha1": sha})

    if durations:
        loss_fn = lambda m, b: duration_loss(m, b, cfg.loss)  # noqa: E731
        evaluate = evaluate_duration_talker
    else:
        loss_fn = lambda m, b: talker_loss(m, b, cfg.loss, r)  # noqa: E731
        evaluate = evaluate_talker
    return Stage(
        name="talker", model=model, train_set=train_set, config=to_dict(cfg), loss_fn=loss_fn, collate=collate_talker,
        evaluate=lambda m: {**evaluate(m, val_set, cfg.loss, cfg.train.batch_size, cfg.data.val_items), **baseline},
        count_items=lambda b: float(b["code_lens"].sum()), items_unit="frames",
        best_metric="val_fed_loss" if cfg.loss.self_feed > 0 else "val_loss",
        lengths=lengths, skip_report=train_set.report, save_extra=save_extra)


CONFIG = TalkerStageConfig
DEFAULT_CONFIG = "configs/talker_tiny.json"
