"""Stage D: train the speech codec (phase 1), then the text-conditioned Talker over its codes (phase 2).

    python train_talker.py --config configs/talker_tiny.json [section.key=value ...] [--resume]
        [--overwrite] [--retrain-codec] [--stop-at STEP]

Phase 1 is skipped when ``codec.train.save_dir`` already holds a finished codec (weights, and a
training state at max_steps if one is there); ``--retrain-codec`` trains it again (with
``--overwrite``). Phase 2 encodes the TTS CSVs once with the frozen codec (cached in
``train.save_dir/codes/``), then trains the Talker; ``--resume``/``--stop-at`` apply to the phase
being trained. Checkpoints: ``<codec.train.save_dir>`` and ``<train.save_dir>`` (best/ by val_loss; by
val_fed_loss, the self-fed validation loss, when ``loss.self_feed`` > 0).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from cli import setup_logging, stage_parser
from omni import checkpoint as ckpt
from omni.asr import Manifest, resolve_manifest
from omni.codec_stage import build_codec_stage, load_codec
from omni.config import ConfigError, load_config, to_dict, to_json
from omni.data import DataError
from omni.files import write_json_atomic
from omni.runtime import setup_runtime, teardown
from omni.talker import Talker
from omni.talker_text import TextVocab
from omni.talker_loss import talker_loss
from omni.training import Stage, TrainingError, fit
from omni.talker_data import (CODEC_LINK, VOCAB_FILE, CodeCache, TalkerDataset, TalkerStageConfig, codec_dir_of,
                               collate_talker, evaluate_talker, file_sha1, unigram_code_ce)

log = logging.getLogger("train_talker")


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
    for key, actual in (("codebook_size", codec.codebook_size), ("text_vocab_size", len(vocab))):
        if getattr(t, key) not in (0, actual):
            raise ConfigError(f"talker.{key}={getattr(t, key)} but the codec/vocabulary has {actual}; set it to 0 "
                              "(filled automatically) or to the real value")
        setattr(t, key, actual)
    try:
        cfg.loss.code_weights(t.n_codebooks)  # checked before training, not at the first step
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_talker_stage(cfg: TalkerStageConfig, device: torch.device) -> Stage:
    codec_dir = codec_dir_of(cfg.codec.train.save_dir)
    codec, _ = load_codec(codec_dir, device)
    for p in codec.parameters():
        p.requires_grad_(False)
    sha = file_sha1(codec_dir / ckpt.MODEL_FILE)
    vocab = TextVocab.default(cfg.talker.text_input)
    fill_from_codec(cfg, codec, vocab)
    cache_dir = Path(cfg.train.save_dir) / "codes"
    sets = {}
    for split, name in (("train", cfg.data.train_csv), ("val", cfg.data.val_csv)):
        csv = resolve_manifest(name, split)
        cache = CodeCache.load_or_build(csv, cache_dir, codec, sha, cfg.data.max_seconds)
        sets[split] = TalkerDataset(Manifest(csv), cache, vocab, cfg.talker.max_text_chars, cfg.talker.n_codebooks)
    train_set, val_set = sets["train"], sets["val"]
    torch.manual_seed(cfg.train.seed)
    model = Talker(cfg.talker)
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
        d.mkdir(parents=True, exist_ok=True)
        vocab.save(d / VOCAB_FILE)
        write_json_atomic(d / CODEC_LINK, {"codec_dir": str(codec_dir), "codec_sha1": sha})

    return Stage(
        name="talker", model=model, train_set=train_set, config=to_dict(cfg),
        loss_fn=lambda m, b: talker_loss(m, b, cfg.loss, r), collate=collate_talker,
        evaluate=lambda m: {**evaluate_talker(m, val_set, cfg.loss, cfg.train.batch_size, cfg.data.val_items),
                            **baseline},
        count_items=lambda b: float(b["code_lens"].sum()), items_unit="frames",
        best_metric="val_fed_loss" if cfg.loss.self_feed > 0 else "val_loss",
        lengths=lengths, skip_report=train_set.report, save_extra=save_extra)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage_parser(__doc__.splitlines()[0], "configs/talker_tiny.json")
    p.add_argument("--retrain-codec", action="store_true", help="train the codec even if it is finished")
    return p.parse_args(argv)


def run_phase(name: str, stage: Stage, train_cfg, args: argparse.Namespace) -> dict:
    resume = args.resume and ckpt.has_train_state(Path(train_cfg.save_dir))
    print(f"== {name}: {train_cfg.save_dir}", flush=True)
    result = fit(stage, train_cfg, resume=resume, overwrite=args.overwrite, stop_at=args.stop_at)
    print(f"{name} result: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in result.items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        cfg = load_config(args.config, TalkerStageConfig, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    rt = setup_runtime(cfg.train.device, cfg.train.use_amp)
    try:
        codec_dir = Path(cfg.codec.train.save_dir)
        if args.retrain_codec or not codec_finished(codec_dir, cfg.codec.train.max_steps):
            stage = build_codec_stage(cfg.codec)
            status = run_phase("phase 1 (codec)", stage, cfg.codec.train, args)["status"]
            if status in ("interrupted", "stopped"):  # Ctrl-C / --stop-at: continue later with --resume
                return 130 if status == "interrupted" else 0
        else:
            print(f"== phase 1 (codec): {codec_dir} is finished; skipping (--retrain-codec to train it again)")
        stage = build_talker_stage(cfg, rt.device)
        print("resolved config:\n" + to_json(cfg), flush=True)
        result = run_phase("phase 2 (talker)", stage, cfg.train, args)
    except (DataError, TrainingError, ckpt.CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown(rt)
    print(f"checkpoints: codec {codec_dir_of(codec_dir)}, talker {cfg.train.save_dir}", flush=True)
    return 130 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
