"""Training parameters from the data and the model: the rules of scripts/update_configs_from_data.py.

Every rule is a small pure function of counted numbers, so each can be tested at its bucket edges:

- effective batch = batch_size x gradient_accumulation_steps, kept from the config;
  tokens per step = effective batch x ctx_len (packed-text stages);
- steps per epoch = training tokens // tokens per step (packed text), or training samples //
  effective batch (sample stages: ASR, TTS, images, OCR, SFT);
- epochs by corpus size in tokens (``epochs_for_tokens``), max_steps = steps per epoch x epochs;
- warmup 4% of max_steps, at most 10,000;
- validation every 10% of an epoch, at most every 1,000 steps; checkpoints once per epoch, at most
  every 10,000 steps; neither more often than every 10 steps nor less often than once per run;
- early-stopping patience (a config's ``patience`` > 0, counted in validations) rescaled to the new
  validation interval so that it waits as many steps as the config's did (``patience_for``): 4
  validations every 500 steps are 14 every 150, not 4;
- per-device batch: the largest divisor of the effective batch within the model-size cap
  (``batch_cap_for_params``) whose memory estimate fits the budget; for a model without a memory
  estimate (the convolutional vocoder) never above the config's own batch; accumulation makes up
  the effective batch exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1 << 30

# (tokens, epochs) anchors, log-linear between them: inside each bucket of the spec the epochs stay
# in its range (> 100M: 1-3, 50-100M: 2-4, 10-50M: 3-6, < 10M: 5-10) and never rise with more data
EPOCH_ANCHORS = ((1e6, 10), (10e6, 6), (50e6, 4), (100e6, 3), (1e9, 1))
# (lower bound inclusive, per-device batch cap); > 100M is strictly above 100M
BATCH_CAPS = ((100e6, 8), (50e6, 16), (10e6, 32), (0, 64))
WARMUP_PERCENT, WARMUP_CAP = 4, 10_000
VAL_FRACTION_OF_EPOCH, VAL_CAP = 0.1, 1_000
CKPT_CAP = 10_000
MIN_FREQ = 10


def epochs_for_tokens(tokens: int) -> int:
    """Epochs for a corpus of ``tokens``: 10 at <= 1M, 6 at 10M, 4 at 50M, 3 at 100M, 1 at >= 1B."""
    if tokens <= EPOCH_ANCHORS[0][0]:
        return EPOCH_ANCHORS[0][1]
    for (t0, e0), (t1, e1) in zip(EPOCH_ANCHORS, EPOCH_ANCHORS[1:]):
        if tokens <= t1:
            frac = math.log(tokens / t0) / math.log(t1 / t0)
            return int(math.floor(e0 + (e1 - e0) * frac + 0.5))
    return EPOCH_ANCHORS[-1][1]


def batch_cap_for_params(n_params: int) -> int:
    """Largest per-device batch: > 100M params 8, 50-100M 16, 10-50M 32, < 10M 64 (then the
    memory budget may lower it further)."""
    if n_params > BATCH_CAPS[0][0]:
        return BATCH_CAPS[0][1]
    for lower, cap in BATCH_CAPS[1:]:
        if n_params >= lower:
            return cap
    raise ValueError(f"n_params must be >= 0, got {n_params}")


def batch_options(effective: int, cap: int) -> list[int]:
    """Per-device batches that divide the effective batch exactly, largest first, all <= cap."""
    return [b for b in range(min(effective, cap), 0, -1) if effective % b == 0]


def warmup_for(max_steps: int) -> int:
    """4% of max_steps (integer arithmetic: exact at every boundary), at most 10,000."""
    return min(WARMUP_CAP, max_steps * WARMUP_PERCENT // 100)


def val_freq_for(steps_per_epoch: int, max_steps: int) -> int:
    """10% of an epoch, at most 1,000 steps (so 500-1,000 once an epoch passes 5,000 steps)."""
    return _clamp_freq(min(int(steps_per_epoch * VAL_FRACTION_OF_EPOCH), VAL_CAP), max_steps)


def patience_for(patience: int, old_val_freq: int, new_val_freq: int) -> int:
    """The validations to wait for an improvement at ``new_val_freq`` that span at least as many steps
    as ``patience`` did at ``old_val_freq``; 0 (no early stopping) stays 0."""
    if patience <= 0:
        return 0
    return -(-patience * old_val_freq // new_val_freq)


def checkpoint_freq_for(steps_per_epoch: int, max_steps: int) -> int:
    """Once per epoch, at most every 10,000 steps (5,000-10,000 once an epoch passes 5,000 steps)."""
    return _clamp_freq(min(steps_per_epoch, CKPT_CAP), max_steps)


def _clamp_freq(freq: int, max_steps: int) -> int:
    return max(1, min(max(freq, MIN_FREQ), max_steps))


@dataclass
class MemoryModel:
    """What the memory estimate needs to know about a model and its inputs.

    ``seq_len``: positions per sample inside the transformer blocks; ``head_width``: output classes
    per position (the vocabulary); ``chunked_head``: the loss never materialises (B, T, V) logits
    (omni/losses.py); ``front_bytes_per_sample``: activations before the blocks (mel, convs).
    """
    n_params: int
    d_model: int
    n_layers: int
    d_ff: int
    seq_len: int
    head_width: int = 0
    chunked_head: bool = False
    front_bytes_per_sample: float = 0.0
    amp: bool = True


# activations saved per position per block, in elements of the compute dtype (bf16 under AMP):
# residual/norm inputs, fused qkv + RoPE copies, attention output + log-sum-exp, SwiGLU gate/up/product,
# dropout masks. Counted from omni/layers.py; --measure compares the total with a real peak.
ACT_PER_D, ACT_PER_FF = 16, 5
CE_CHUNK = 256  # omni/losses.py linear_cross_entropy rows per chunk
ALLOCATOR_SLACK, CONTEXT_BYTES = 1.10, GIB  # fragmentation; CUDA context (not in max_memory_allocated)


def estimate_parts(m: MemoryModel, batch: int, seq_len: int | None = None) -> dict[str, int]:
    """The estimate by part (bytes): ``static`` fp32 weights + grads + AdamW moments (16 B/param,
    + 2 B/param of bf16 weight copies under AMP); ``blocks`` activations saved by the transformer
    blocks (one extra block's worth for the backward's temporaries); ``stream`` embedding output,
    final norm and its gradient; ``head`` the output layer; ``front`` the input front end."""
    T = m.seq_len if seq_len is None else seq_len
    e = 2 if m.amp else 4
    per_pos_block = (ACT_PER_D * m.d_model + ACT_PER_FF * m.d_ff) * e
    if m.chunked_head:  # grad_w (fp32) + its saved copy + the compute-dtype weight, two chunk buffers
        head = m.head_width * m.d_model * (4 + 4 + e) + CE_CHUNK * m.head_width * 4 * 2
    else:
        head = batch * T * m.head_width * 4 * 3  # logits, log-softmax, gradient (fp32)
    return {"static": m.n_params * (16 + (2 if m.amp else 0)),
            "blocks": batch * T * per_pos_block * (m.n_layers + 1),
            "stream": batch * T * m.d_model * 4 * 4,
            "head": head,
            "front": int(batch * m.front_bytes_per_sample)}


def estimate_bytes(m: MemoryModel, batch: int, seq_len: int | None = None) -> int:
    """Peak training memory for one micro-batch: the sum of ``estimate_parts``."""
    return sum(estimate_parts(m, batch, seq_len).values())


def fits(m: MemoryModel, batch: int, vram_gb: float) -> bool:
    return estimate_bytes(m, batch) * ALLOCATOR_SLACK + CONTEXT_BYTES <= vram_gb * GIB


@dataclass
class DataSize:
    tokens: int        # training tokens (packed text: with one EOS per document)
    samples: int       # training samples (documents, utterances, images, rows)
    token_based: bool  # packed text: steps come from tokens; otherwise from samples


@dataclass
class Plan:
    updates: dict[str, int]          # new train-section values
    effective_batch: int
    steps_per_epoch: int
    epochs: int
    tokens_per_step: int | None = None
    est_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def plan_training(train: dict, data: DataSize, seq_len: int, n_params: int | None,
                  memory: MemoryModel | None, vram_gb: float) -> Plan:
    """Apply every rule to one train section (a TrainConfig-shaped dict); nothing is written here."""
    effective = int(train["batch_size"]) * int(train["gradient_accumulation_steps"])
    notes: list[str] = []
    batch = int(train["batch_size"])
    if n_params is None:
        notes.append("model size unknown: batch_size and accumulation kept")
    else:
        options = batch_options(effective, batch_cap_for_params(n_params))
        batch = options[0]
        if memory is not None:
            fitting = [b for b in options if fits(memory, b, vram_gb)]
            if not fitting:
                notes.append(f"estimate exceeds {vram_gb:g} GB even at batch 1")
            batch = fitting[0] if fitting else 1
        elif batch > int(train["batch_size"]):  # no estimate: the config's batch is the memory budget
            batch = next(b for b in options if b <= int(train["batch_size"]))
            notes.append(f"no memory model for this model: per-device batch kept at {batch}")
    accum = effective // batch
    tokens_per_step = effective * seq_len if data.token_based else None
    unit = tokens_per_step if data.token_based else effective
    spe = max(1, (data.tokens if data.token_based else data.samples) // unit)
    epochs = epochs_for_tokens(data.tokens)
    max_steps = spe * epochs
    updates = {"batch_size": batch, "gradient_accumulation_steps": accum, "max_steps": max_steps,
               "max_epochs": epochs, "warmup_steps": warmup_for(max_steps),
               "val_freq": val_freq_for(spe, max_steps), "checkpoint_freq": checkpoint_freq_for(spe, max_steps)}
    if int(train.get("patience", 0)) > 0:
        updates["patience"] = patience_for(int(train["patience"]), int(train["val_freq"]), updates["val_freq"])
    est = estimate_bytes(memory, batch) if memory is not None else None
    return Plan(updates, effective, spe, epochs, tokens_per_step, est, notes)
