"""The duration Talker's objective and its validation: code CE given the aligned text, the
aligner's prior loss and the duration predictor's squared error in log frames."""
from __future__ import annotations

import torch
from torch import nn

from omni.engine.runtime import unwrap
from omni.talker.data import TalkerDataset, held_out_items, mean_over_batches
from omni.talker.loss import TalkerLossConfig, code_ce

VAR_MOMENTUM = 0.01  # the running mean of the duration error follows about the last 100 batches


def duration_loss(model: nn.Module, batch: dict[str, torch.Tensor], cfg: TalkerLossConfig
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """batch: text (B, L), text_lens (B,), codes (B, T, n_q), code_lens (B,) -> (loss, logs).

    logs: code_ce's (ce, ce_q<i>, acc), prior, dur (squared log error per symbol), dur_frames
    (mean absolute error in frames per symbol) and len_ratio (the length synthesis would give each
    row, DurationTalker.log_frames, over its real length, averaged). In training it also updates
    the Talker's running duration error, log_dur_var."""
    out = model(batch["text"], batch["text_lens"], batch["codes"], batch["code_lens"])
    code_loss, logs = code_ce(out["logits"], out["targets"], cfg)
    d = out["durations"]
    real = torch.arange(d.shape[1], device=d.device)[None, :] < (batch["text_lens"] - 1)[:, None]
    pred = out["log_dur"].float()
    dur = ((pred - d.clamp(min=1).float().log()).pow(2) * real).sum() / real.sum().clamp(min=1)
    loss = code_loss + cfg.prior_weight * out["prior"] + cfg.duration_weight * dur
    with torch.no_grad():
        if model.training:
            unwrap(model).log_dur_var.lerp_(dur.detach().to(torch.float32), VAR_MOMENTUM)
        frames = (pred + 0.5 * unwrap(model).log_dur_var).exp() * real
        err = ((frames - d).abs() * real).sum() / real.sum().clamp(min=1)
        ratio = (frames.sum(1) / batch["code_lens"].float()).mean()
    logs.update(prior=out["prior"].item(), dur=dur.item(), dur_frames=err.item(), len_ratio=ratio.item())
    return loss, logs


@torch.no_grad()
def evaluate_duration_talker(model: nn.Module, data: TalkerDataset, loss_cfg: TalkerLossConfig, batch_size: int,
                             n_items: int) -> dict[str, float]:
    """Teacher-forced metrics over the first n_items usable rows (sorted by length, for tight
    batches): val_loss = the code CE (mean over codebooks) given the aligned text; val_ce_q<i>,
    val_acc, val_prior, val_dur, val_dur_frames and val_len_ratio as in duration_loss."""
    items = held_out_items(data, n_items)
    out = mean_over_batches(data, items, batch_size, next(model.parameters()).device,
                            lambda batch, _: duration_loss(model, batch, loss_cfg)[1])
    out["val_loss"] = out["val_ce"]
    return out
