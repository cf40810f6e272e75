"""The Talker's training objective: code CE over every codebook (one shift), the end-of-speech
flag, DC-TTS guided attention, and optional self-feeding (parallel scheduled sampling).

A guided-attention loss nudges frame queries in the chosen layers towards the diagonal of the text,
which is what makes a tiny model read the text within a CPU budget. Self-feeding replaces a share of
the input frames with the Talker's own predictions, so it learns to continue from the kind of history
it makes when it speaks on its own (exposure bias); it helps as a second phase on a trained Talker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.engine.runtime import unwrap
from omni.layers import Block
from omni.talker.model import IGNORE, make_targets


@dataclass
class TalkerLossConfig:
    """Loss weights: CE over codes (mean over codebooks and frames) + stop BCE + guided attention."""
    stop_weight: float = 1.0
    stop_pos_weight: float = 5.0        # one end per utterance against ~100 non-ends
    guided_weight: float = 1.0          # 0 turns the guided-attention loss off
    guided_sigma: float = 0.2           # DC-TTS's g: width of the allowed band around the diagonal
    guided_layers: tuple[int, ...] = (1, 2)
    self_feed: float = 0.0              # share of input groups replaced by the Talker's own prediction
    codebook_weights: tuple[float, ...] = ()  # the code CE's weight per codebook (empty: equal)
    text_aux_weight: float = 1.0        # the weight of talker.text_aux_layer's CE (when that layer is set)
    prior_weight: float = 1.0           # durations: the aligner's prior loss (omni/talker/duration.py)
    duration_weight: float = 1.0        # durations: the duration predictor's squared log error

    def code_weights(self, n_codebooks: int) -> list[float]:
        """The per-codebook CE weights for a Talker of ``n_codebooks`` (equal when none are given);
        ValueError for a wrong count, a negative weight or all zeros."""
        w = list(self.codebook_weights) or [1.0] * n_codebooks
        if len(w) != n_codebooks or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"loss.codebook_weights={list(self.codebook_weights)}: give {n_codebooks} non-negative "
                             "weights (one per codebook the Talker predicts, not all zero), or [] for equal weights")
        return w


class GuidedAttention:
    """DC-TTS guided attention for a prefix LM: each frame query's attention over the *text* keys
    (softmax over text positions only) is penalised by 1 - exp(-(n/N - t/T)^2 / 2g^2).

    Used as ``Talker.hidden``'s probe: for the chosen layers it recomputes q and k from the block's
    own (normed) input with the block's own weights, so the penalty is on the real attention."""

    def __init__(self, text_lens: torch.Tensor, n_groups: torch.Tensor, layers: tuple[int, ...],
                 sigma: float) -> None:
        self.layers = set(layers)
        device = text_lens.device
        n_chars = text_lens - 1                                                   # without <s>
        has_text = n_chars > 0                                                    # rows without text: no guide
        self.L = int(text_lens.max())
        col = torch.arange(self.L - 1, device=device)[None, :]
        self.key_ok = col < n_chars[:, None]                                      # (B, L-1)
        text_pos = (col + 0.5) / n_chars.clamp(min=1)[:, None]
        G = int(n_groups.max()) + 1
        j = torch.arange(G, device=device)[None, :]
        self.index = text_lens[:, None] + j                                       # (B, G+1) query positions
        self.q_ok = (j <= n_groups[:, None]) & has_text[:, None]
        speech_pos = ((j + 0.5) / n_groups.clamp(min=1)[:, None]).clamp(max=1.0)
        diff = speech_pos[:, :, None] - text_pos[:, None, :]                      # (B, G+1, L-1)
        self.weight = 1.0 - torch.exp(-diff.pow(2) / (2 * sigma ** 2))
        self.losses: list[torch.Tensor] = []

    def __call__(self, i: int, block: Block, x: torch.Tensor) -> None:
        if i not in self.layers:
            return
        scores = frame_scores(block, x, self.index)[..., 1:self.L]                  # text keys
        # -1e9, not -inf: a row without text keys gets a finite (unused) softmax, no NaN gradient
        probs = scores.masked_fill(~self.key_ok[:, None, None, :], -1e9).softmax(-1)
        per_query = (probs * self.weight[:, None]).sum(-1)                         # (B, H, G+1)
        mask = self.q_ok[:, None].float()
        self.losses.append((per_query * mask).sum() / (mask.sum() * probs.shape[1]).clamp(min=1))

    def loss(self) -> torch.Tensor:
        return torch.stack(self.losses).mean()


def frame_scores(block: Block, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The attention scores (B, H, Q, S) of ``block`` (its input x (B, S, D)) for the queries at
    positions ``index`` (B, Q) over every key, recomputed with the block's own weights (before masking)."""
    attn = block.attn
    q, k, _ = attn.split_heads(attn.qkv(block.attn_norm(x)))
    q, k = attn.rope(q, 0), attn.rope(k, 0)
    q = q.gather(2, index[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
    return (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.head_dim)


class TextAttention:
    """A diagnostic probe for ``Talker.hidden``: per layer, how the frame queries' real (causal)
    attention treats the text: ``mass``, the share of attention on the text characters (the rest
    is on ``<s>`` and the speech so far), and ``chars``, the perplexity of the attention over the
    characters (exp of its entropy): about how many characters a head reads at once."""

    def __init__(self, text_lens: torch.Tensor, n_groups: torch.Tensor) -> None:
        j = torch.arange(int(n_groups.max()) + 1, device=text_lens.device)[None, :]
        self.index, self.text_lens = text_lens[:, None] + j, text_lens
        self.q_ok = j <= n_groups[:, None]
        self.stats: dict[int, dict[str, float]] = {}

    def __call__(self, i: int, block: Block, x: torch.Tensor) -> None:
        scores = frame_scores(block, x, self.index)
        pos = torch.arange(scores.shape[-1], device=x.device)
        probs = scores.masked_fill(pos > self.index[:, None, :, None], -1e9).softmax(-1)
        is_text = (pos[None, :] >= 1) & (pos[None, :] < self.text_lens[:, None])   # (B, S)
        text = probs * is_text[:, None, None, :]
        mass = text.sum(-1)                                                        # (B, H, Q)
        p = text / mass.clamp(min=1e-9)[..., None]
        chars = torch.exp(-(p * p.clamp(min=1e-12).log()).sum(-1))
        ok = self.q_ok[:, None].expand_as(mass)
        self.stats[i] = {"mass": mass[ok].mean().item(), "chars": chars[ok].mean().item()}


class TextReadout:
    """A probe for ``Talker.hidden`` that takes the attention output of ``talker.text_aux_layer`` at
    the frame queries (what that layer read, from the text when it attends there) and predicts from
    it alone, through ``Talker.text_aux``, the base codes of the group each position predicts.
    Its CE trains what the text carries to say what comes next, not only what the speech so far says."""

    def __init__(self, talker, text_lens: torch.Tensor, n_groups: torch.Tensor) -> None:
        self.talker, self.layer = talker, talker.cfg.text_aux_layer
        self.index = text_lens[:, None] + torch.arange(int(n_groups.max()) + 1, device=text_lens.device)[None, :]
        self.logits: torch.Tensor | None = None

    def __call__(self, i: int, block: Block, x: torch.Tensor) -> None:
        if i != self.layer:
            return
        read = block.attn(block.attn_norm(x))                                      # (B, S, D)
        read = read.gather(1, self.index[..., None].expand(-1, -1, read.shape[-1]))
        cfg = self.talker.cfg
        self.logits = self.talker.text_aux(read).unflatten(-1, (cfg.frames_per_step, cfg.codebook_size))

    def ce(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, G+1, r, n_q) -> the CE of the base codes (mean over real targets)."""
        K = self.logits.shape[-1]
        return F.cross_entropy(self.logits.float().reshape(-1, K), targets[..., 0].reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def self_fed(model: nn.Module, text: torch.Tensor, text_lens: torch.Tensor, groups: torch.Tensor,
             share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Parallel scheduled sampling (Duckworth et al. 2019): one gradient-free teacher-forced pass,
    then each input group is replaced, with probability ``share``, by the argmax the Talker predicted
    for it from the real groups before it. The targets stay the real codes, so the Talker learns
    to continue from a history like the one it makes when it speaks on its own."""
    predicted = unwrap(model).predict_groups(text, text_lens, groups)  # not through DDP: no gradient
    swap = torch.rand(groups.shape[:2], generator=generator, device=groups.device) < share
    return torch.where(swap[..., None, None], predicted, groups)


def code_ce(code_logits: torch.Tensor, tgt: torch.Tensor, cfg: TalkerLossConfig
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """code logits (..., n_q, K), targets (..., n_q) (IGNORE allowed) -> the code loss (the mean over
    codebooks of each one's CE, weighted by ``cfg.codebook_weights``) and logs: ce (unweighted,
    so that runs with other weights compare), ce_q<i> per codebook, acc (top-1 over codes)."""
    K = code_logits.shape[-1]
    ce_all = F.cross_entropy(code_logits.float().reshape(-1, K), tgt.reshape(-1), ignore_index=IGNORE,
                             reduction="none").view(tgt.shape)
    valid = tgt != IGNORE
    dims = tuple(range(tgt.dim() - 1))
    per_q = (ce_all * valid).sum(dim=dims) / valid.sum(dim=dims).clamp(min=1)  # (n_q,)
    w = per_q.new_tensor(cfg.code_weights(per_q.numel()))
    with torch.no_grad():
        acc = ((code_logits.argmax(-1) == tgt) & valid).sum() / valid.sum().clamp(min=1)
    return (per_q * w).sum() / w.sum(), {"ce": per_q.mean().item(), "acc": acc.item(),
                                         **{f"ce_q{i}": v for i, v in enumerate(per_q.tolist())}}


def talker_loss(model: nn.Module, batch: dict[str, torch.Tensor], cfg: TalkerLossConfig,
                r: int, feed: float | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """batch: text (B, L), text_lens (B,), codes (B, T, n_q), code_lens (B,) -> (loss, logs).
    In training, ``cfg.self_feed`` > 0 feeds the Talker a share of its own predictions (``self_fed``);
    ``feed`` overrides that share (validation measures the self-fed CE with a seeded ``generator``).

    logs: ce (mean over codebooks), ce_q<i> per codebook, acc (top-1 over codes), stop_bce,
    stop_acc (at each row's true end), guided (the attention penalty, also when its weight is 0)."""
    t = make_targets(batch["codes"], batch["code_lens"], r)
    groups, text, text_lens = t["groups"], batch["text"], batch["text_lens"]
    feed = (cfg.self_feed if model.training else 0.0) if feed is None else feed
    if feed > 0:
        groups = self_fed(model, text, text_lens, groups, feed, generator)
    probe = GuidedAttention(text_lens, t["n_groups"], cfg.guided_layers, cfg.guided_sigma)
    talker = unwrap(model)
    readout = TextReadout(talker, text_lens, t["n_groups"]) if talker.text_aux is not None else None
    tgt = t["targets"]
    code_logits, stop_logits = model(text, text_lens, groups, next_groups=tgt,
                                     probe=probe if readout is None else lambda *a: (probe(*a), readout(*a)))
    code_loss, code_logs = code_ce(code_logits, tgt, cfg)
    stop_ok = t["stop"] >= 0
    stop_bce = F.binary_cross_entropy_with_logits(
        stop_logits.float()[stop_ok], t["stop"][stop_ok],
        pos_weight=torch.tensor(cfg.stop_pos_weight, device=stop_logits.device))
    guided = probe.loss() if probe.losses else torch.zeros((), device=code_loss.device)
    loss = code_loss + cfg.stop_weight * stop_bce + cfg.guided_weight * guided
    if readout is not None:
        text_aux = readout.ce(tgt)
        loss = loss + cfg.text_aux_weight * text_aux
    with torch.no_grad():
        at_end = stop_logits.gather(1, t["n_groups"][:, None])[:, 0] > 0
    logs = {**code_logs, "stop_bce": stop_bce.item(), "guided": guided.item(),
            "stop_acc": at_end.float().mean().item()}
    if readout is not None:
        logs["text_aux_ce"] = text_aux.item()
    return loss, logs
