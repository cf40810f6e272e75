"""OCR stage pieces: line-image preprocessing, the dataset, the loss, evaluation, loading.

Preprocessing never distorts the text: a line is scaled uniformly to ``img_size`` pixels tall; a
line that would then be wider than ``max_width`` is scaled down whole (aspect kept) and centred
vertically on a blank ``img_size``-tall strip. Pixels become ink in [0, 1] (background 0; a light-
on-dark image is inverted), so padding is blank paper. The width is padded to a multiple of the
patch; batches pad to their widest line and carry the real widths for the encoder's mask.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omni.audio.ctc import error_rates
from omni.audio.ctc import greedy_decode as ctc_greedy
from omni.config import TrainConfig, to_dict
from omni.data import BadRow
from omni.engine.checkpoint import load_with_vocab
from omni.engine.runtime import Runtime, unwrap
from omni.engine.stage import Stage
from omni.images import BadImage, load_image
from omni.manifest import Manifest, ManifestRows
from omni.ocr.model import BOS, EOS, PAD, OcrModel, OcrModelConfig, OcrVocab, beam_decode, ctc_decode, greedy_decode

log = logging.getLogger(__name__)
VOCAB_FILE = "vocab.json"


@dataclasses.dataclass
class OcrDataConfig:
    train_csv: str       # image,text[,font] (paths relative to the CSV)
    val_csv: str
    val_items: int = 200
    allow_outside_paths: bool = False  # read image paths outside the CSV's folder (../, absolute, symlinks out)


@dataclasses.dataclass
class OcrStageConfig:
    model: OcrModelConfig
    data: OcrDataConfig
    train: TrainConfig


def line_tensor(img: Image.Image, height: int, max_width: int, patch: int) -> tuple[torch.Tensor, int]:
    """Any PIL image of a text line -> ink (1, height, W) with W a multiple of patch, and the real width."""
    gray = img.convert("L")
    w0, h0 = gray.size
    w = max(1, round(w0 * height / h0))
    h = height
    if w > max_width:  # too long: shrink the whole line, keep its aspect, centre it vertically
        w, h = max_width, max(1, round(h0 * max_width / w0))
    ink = 1.0 - np.asarray(gray.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    if np.median(ink) > 0.5:  # light text on a dark background: make the background blank
        ink = 1.0 - ink
    W = -(-w // patch) * patch
    out = np.zeros((height, W), dtype=np.float32)
    top = (height - h) // 2
    out[top:top + h, :w] = ink
    return torch.from_numpy(out)[None], w


class OcrDataset(ManifestRows):
    """item i -> (ink (1, H, W), width, label ids) or None when the row is unusable (counted by reason)."""

    def __init__(self, csv: str | Path, vocab: OcrVocab, cfg: OcrModelConfig, allow_outside: bool = False) -> None:
        super().__init__(Manifest(csv, path_key="image", allow_outside=allow_outside))
        self.vocab, self.cfg = vocab, cfg

    def widths(self) -> np.ndarray:
        """Scaled width per row from the image headers (0 for unusable rows and unreadable images, which
        are counted when the sample itself is read): for length bucketing."""
        out = np.zeros(len(self), dtype=np.float32)
        for i, row in self.m.scan():
            if isinstance(row, BadRow):
                continue
            try:
                with Image.open(row["image"]) as img:
                    w, h = img.size
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
            out[i] = min(self.cfg.max_width, w * self.cfg.img_size / max(h, 1))
        return out

    def text(self, i: int) -> str:
        return self.m[i]["text"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, list[int]] | None:
        got = self._media_row(i, "image", lambda path: load_image(Path(path))[0], BadImage, "image")
        if got is None:
            return None
        row, img = got
        text = row["text"]
        if not text.strip():
            return self._skip("empty_text")
        if len(text) > self.cfg.max_text_len:
            return self._skip("text_too_long")
        if self.vocab.unknown(text):
            log.warning("%s:%d: characters outside the vocabulary: %r", self.m.path, i + 2, self.vocab.unknown(text))
            return self._skip("unknown_characters")
        x, w = line_tensor(img, self.cfg.img_size, self.cfg.max_width, self.cfg.patch)
        return x, w, self.vocab.encode(text)



def collate_ocr(items: list) -> dict[str, torch.Tensor] | None:
    """Pad images to the widest and labels to the longest: images (B, 1, H, W), widths (B,),
    inputs (B, L+1) = bos + text (pad after), targets (B, L+1) = text + eos (-100 after)."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    B, H = len(items), items[0][0].shape[1]
    W, L = max(x.shape[2] for x, _, _ in items), max(len(ids) for _, _, ids in items)
    images = torch.zeros(B, 1, H, W)
    inputs = torch.full((B, L + 1), PAD, dtype=torch.long)
    targets = torch.full((B, L + 1), -100, dtype=torch.long)
    for k, (x, _, ids) in enumerate(items):
        images[k, :, :, :x.shape[2]] = x
        inputs[k, 0], inputs[k, 1:len(ids) + 1] = BOS, torch.tensor(ids, dtype=torch.long)
        targets[k, :len(ids)], targets[k, len(ids)] = torch.tensor(ids, dtype=torch.long), EOS
    return {"images": images, "widths": torch.tensor([w for _, w, _ in items]), "inputs": inputs, "targets": targets}


def ocr_loss(model: OcrModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher-forced character cross-entropy (pad positions ignored), plus ``ctc_weight`` x the CTC
    head's loss when the model has one (rows it cannot spell in its columns add nothing)."""
    cfg = unwrap(model).cfg
    out = model(batch["images"], batch["widths"], batch["inputs"], with_ctc=cfg.ctc_weight > 0)
    logits, ctc = out if cfg.ctc_weight > 0 else (out, None)
    ce = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    if ctc is None:
        return ce, {"loss": ce.item()}
    log_probs, lengths = ctc
    labels = batch["targets"].clamp(min=0)  # text + eos, -100 after: CTC reads label_lengths, eos excluded
    label_lengths = (batch["targets"] >= 0).sum(1) - 1
    ctc_loss = F.ctc_loss(log_probs.transpose(0, 1), labels, lengths, label_lengths, blank=PAD,
                          reduction="mean", zero_infinity=True)
    return ce + cfg.ctc_weight * ctc_loss, {"loss": ce.item(), "ctc_loss": ctc_loss.item()}


@torch.no_grad()
def transcribe_batch(model: OcrModel, vocab: OcrVocab, batch: dict[str, torch.Tensor], beam: int = 1,
                     decoder: str | None = None) -> list[str]:
    """Transcripts of a collated batch by ``decoder`` (default: the model's ``cfg.decoder``):
    "attention" greedy (beam 1, batched) or beam search, or "ctc", the CTC head's best path."""
    decoder = decoder or model.cfg.decoder
    if decoder == "ctc":
        return ctc_greedy(*ctc_decode(model, batch["images"], batch["widths"]), vocab)
    if decoder != "attention":
        raise ValueError(f"decoder must be 'attention' or 'ctc', got {decoder!r}")
    if beam <= 1:
        return [vocab.decode(ids) for ids in greedy_decode(model, batch["images"], batch["widths"])]
    return [vocab.decode(beam_decode(model, batch["images"][k:k + 1], batch["widths"][k:k + 1], beam))
            for k in range(batch["images"].shape[0])]


@torch.no_grad()
def evaluate_ocr(model: OcrModel, data: OcrDataset, vocab: OcrVocab, batch_size: int, n_items: int | None = None,
                 beam: int = 1, decoder: str | None = None) -> tuple[dict[str, float], list[tuple[str, str, int]]]:
    """CER/WER (case and punctuation kept) of ``decoder`` (default: the model's) and the teacher-
    forced cross-entropy over the first n_items rows; a model with a CTC head also reports both
    decoders' CER (val_attention_cer, val_ctc_cer; ``beam`` applies to the attention decoder).
    Also (reference, hypothesis of ``decoder``, row) per decoded row."""
    was_training = model.training
    model.eval()
    decoder = decoder or model.cfg.decoder
    decoders = ("attention", "ctc") if model.ctc_head is not None else ("attention",)
    if decoder not in decoders:
        raise ValueError(f"decoder {decoder!r} is not one this model has: {', '.join(decoders)}")
    device = next(model.parameters()).device
    n = len(data) if n_items is None else min(n_items, len(data))
    refs, rows, losses = [], [], []
    hyps: dict[str, list[str]] = {d: [] for d in decoders}
    for lo in range(0, n, batch_size):
        kept = [(i, x) for i in range(lo, min(lo + batch_size, n)) if (x := data[i]) is not None]
        batch = collate_ocr([x for _, x in kept])
        if batch is None:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        losses.append(ocr_loss(model, batch)[1]["loss"])
        for d in decoders:
            hyps[d] += transcribe_batch(model, vocab, batch, beam, d)
        refs += [vocab.decode(ids) for _, (_, _, ids) in kept]
        rows += [i for i, _ in kept]
    data.report()  # evaluation reads are not training skips
    model.train(was_training)
    nan = {"cer": float("nan"), "wer": float("nan")}
    rates = {d: error_rates(refs, h) if refs else nan for d, h in hyps.items()}
    metrics = {"val_loss": float(np.mean(losses)) if losses else float("nan"), "val_cer": rates[decoder]["cer"],
               "val_wer": rates[decoder]["wer"], "val_items": float(len(refs))}
    if len(decoders) > 1:
        metrics.update({f"val_{d}_cer": r["cer"] for d, r in rates.items()})
    return metrics, list(zip(refs, hyps[decoder], rows))


@torch.no_grad()
def read_image(model: OcrModel, vocab: OcrVocab, path: str | Path, beam: int = 1) -> str:
    """The text of one line image file, read by the model's ``cfg.decoder`` (raises BadImage with the
    path when it cannot be read)."""
    img, _ = load_image(Path(path))
    x, w = line_tensor(img, model.cfg.img_size, model.cfg.max_width, model.cfg.patch)
    device = next(model.parameters()).device
    batch = {"images": x[None].to(device), "widths": torch.tensor([w], device=device)}
    return transcribe_batch(model, vocab, batch, beam)[0]


def load_ocr(ckpt_dir: str | Path, device: torch.device) -> tuple[OcrModel, OcrVocab, OcrStageConfig]:
    """Rebuild the OCR model from its checkpoint folder (config.json, vocab.json, weights); strict."""
    return load_with_vocab(ckpt_dir, OcrStageConfig, OcrVocab, VOCAB_FILE, lambda c, n: OcrModel(c.model, n),
                           device, "an OCR checkpoint (train_ocr.py writes it)")


def build_stage(cfg: OcrStageConfig, rt: Runtime) -> Stage:
    vocab = OcrVocab.ascii()
    train_set = OcrDataset(cfg.data.train_csv, vocab, cfg.model, cfg.data.allow_outside_paths)
    val_set = OcrDataset(cfg.data.val_csv, vocab, cfg.model, cfg.data.allow_outside_paths)
    torch.manual_seed(cfg.train.seed)
    model = OcrModel(cfg.model, len(vocab))
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    log.info("OCR model: %.2fM parameters (encoder %.2fM, decoder %.2fM), %d symbols", model.num_params() / 1e6,
             n_enc / 1e6, (model.num_params() - n_enc) / 1e6, len(vocab))
    widths = train_set.widths()
    log.info("%s: %d rows, mean scaled width %.0f px", cfg.data.train_csv, len(train_set), widths.mean())

    def save_extra(d: Path) -> None:
        vocab.save(d / VOCAB_FILE)

    return Stage(
        name="ocr", model=model, train_set=train_set, loss_fn=ocr_loss, config=to_dict(cfg), collate=collate_ocr,
        lengths=widths, skip_report=train_set.report,
        evaluate=lambda m: evaluate_ocr(m, val_set, vocab, cfg.train.batch_size, cfg.data.val_items)[0],
        count_items=lambda b: float(b["widths"].shape[0]), items_unit="lines", best_metric="val_cer",
        save_extra=save_extra)


CONFIG = OcrStageConfig
DEFAULT_CONFIG = "configs/ocr_tiny.json"
