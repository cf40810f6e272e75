"""The duration Talker: every codec frame is told which text symbol it speaks.

An attention Talker (omni/talker/model.py) must find its place in the text on its own, and a small
one mostly continues the sound instead (docs/experiments.md, Stage D). Here the place is given:

- a bidirectional **text encoder** (``encoder_layers`` blocks over ``[<s>, symbols]``) gives one
  state per symbol, with its neighbours in view (``th``, ``ough``);
- **alignment** (training): each symbol state is also projected to a mean in the codec's latent
  space (the sum of a frame's RVQ code vectors, normalised), and monotonic alignment search
  (omni/talker/align.py) finds the most likely monotonic path of frames through the symbols under
  unit Gaussians at those means. The projection learns from the aligned frames (the *prior* loss);
  the path itself takes no gradient. This is Grad-TTS's aligner, with the codec's latent in place
  of the mel. It needs no separate aligner or recogniser, and it aligns better as the encoder learns;
- a **duration predictor** (on the encoder states, which it does not train) learns log frames per
  symbol from the path, and sets the length at synthesis (as the log-normal mean, see
  ``log_dur_var``); ``rate`` divides the durations;
- the **frame decoder** stays the attention Talker's causal decoder over groups of RVQ codes with the
  depth chain, so the Stage D codec, Griffin-Lim and the vocoder stay as they are. The input at
  each position is the last group's code embedding plus the *condition* of the group it predicts:
  the aligned symbol's state for each of its frames, with where the frame sits in its symbol
  (frames since its start, frames to its end). No text prefix, no stop flag: the length is the
  sum of the durations.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from omni.layers import Block, RMSNorm, init_weights
from omni.talker.align import monotonic_alignment, path_of, round_durations
from omni.talker.model import Talker, TalkerConfig, make_targets, sample_codes
from omni.talker.text import START

PLACES = 8  # frames since a symbol's start / to its end are told exactly up to this, then clamped


def frame_places(path: torch.Tensor, n_sym: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each frame's symbol (B, T) (-1 past a row's length), the symbol count and the group size ->
    for every frame of the groups (B, G r): its symbol, frames since that symbol's first frame and
    frames to its last (both clamped to PLACES - 1). Frames past a row's length (in a padded batch,
    or filling the last group) repeat the last real frame, so a row's conditions do not depend on
    its padding. (omni/export/voice.py ports this to numpy.)"""
    B, T = path.shape
    G = -(-T // r)
    n = (path >= 0).sum(1, keepdim=True)                                         # real frames (B, 1)
    t = torch.arange(G * r, device=path.device)[None, :]
    src = torch.minimum(t, n - 1).expand(B, -1)
    sym = path.gather(1, src)
    counts = torch.zeros(B, n_sym, dtype=torch.long, device=path.device)
    counts.scatter_add_(1, sym, (t < n).long().expand(B, -1))
    ends = counts.cumsum(1)                                                      # one past each symbol's frames
    since = (src - (ends - counts).gather(1, sym)).clamp(0, PLACES - 1)
    to_end = (ends.gather(1, sym) - 1 - src).clamp(0, PLACES - 1)
    return sym, since, to_end


class DurationTalker(Talker):
    stop_rows = 0  # the length comes from the durations

    def __init__(self, cfg: TalkerConfig) -> None:
        if cfg.alignment != "durations":
            raise ValueError(f"a DurationTalker needs talker.alignment=durations, got {cfg.alignment}")
        if cfg.latent_dim <= 0:
            raise ValueError("a duration Talker needs talker.latent_dim > 0 (filled from the codec)")
        super().__init__(cfg)
        D, r = cfg.d_model, cfg.frames_per_step
        self.encoder = nn.ModuleList(
            Block(D, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.dropout, causal=False, rope=self.rope)
            for _ in range(cfg.encoder_layers))
        self.enc_norm = RMSNorm(D)
        self.to_latent = nn.Linear(D, cfg.latent_dim)
        self.duration = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, 1))
        self.place = nn.Embedding(2 * PLACES, D)
        self.cond = nn.Linear(r * D, D, bias=False)
        # the codec's code vectors and the latent's per-dimension mean and scale (set_latent); kept in
        # the checkpoint, so that a loaded Talker aligns (teacher forcing, evaluation) as it trained
        self.register_buffer("latent_codes", torch.zeros(cfg.n_codebooks, cfg.codebook_size, cfg.latent_dim))
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))
        # the duration head's mean squared error in log frames (a running mean over training batches):
        # a head trained on log frames predicts the median, and the mean of a log-normal is
        # exp(mu + var / 2), so synthesis adds var / 2 to speak for the natural length, not a shorter one
        self.register_buffer("log_dur_var", torch.zeros(()))
        for module in (self.encoder, self.to_latent, self.duration, self.place, self.cond):
            init_weights(module, cfg.n_layers)

    @torch.no_grad()
    def set_latent(self, code_vectors: torch.Tensor, sample_codes_: torch.Tensor) -> None:
        """code_vectors (n_q, K, dim) the codec's codebooks (the first n_q); sample_codes_ (N, n_q)
        training frames, to normalise the latent per dimension."""
        self.latent_codes.copy_(code_vectors)
        self.latent_mean.zero_()
        self.latent_std.fill_(1.0)
        z = self.frame_latents(sample_codes_.to(self.latent_codes.device))
        self.latent_mean.copy_(z.mean(0))
        self.latent_std.copy_(z.std(0).clamp(min=1e-4))

    def frame_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (..., n_q) -> the normalised sum of their code vectors (..., dim)."""
        z = sum(self.latent_codes[q][codes[..., q]] for q in range(codes.shape[-1]))
        return (z - self.latent_mean) / self.latent_std

    def encode(self, text: torch.Tensor, text_lens: torch.Tensor) -> torch.Tensor:
        """text (B, L) ``[<s>, symbols, pads]``, text_lens (B,) -> symbol states (B, L, D)."""
        real = torch.arange(text.shape[1], device=text.device)[None, :] < text_lens[:, None]
        x = self.drop(self.text_emb(text))
        for block in self.encoder:
            x = block(x, key_padding_mask=real)
        return self.enc_norm(x)

    def log_durations(self, enc: torch.Tensor) -> torch.Tensor:
        """Symbol states (B, L, D) -> predicted log frames per position (B, L). The encoder is
        detached: the duration loss does not shape what the frames read (as in Grad-TTS)."""
        return self.duration(enc.detach()).squeeze(-1)

    def log_frames(self, enc: torch.Tensor) -> torch.Tensor:
        """Symbol states (B, L, D) -> the log of the expected frames per position (B, L): the
        predicted log durations plus half their error variance (the log-normal mean)."""
        return self.log_durations(enc) + 0.5 * self.log_dur_var

    def align(self, enc: torch.Tensor, text_lens: torch.Tensor, codes: torch.Tensor, code_lens: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the symbol of every frame (B, T) (0-based over the symbols after ``<s>``; -1 past a
        row's length) and the prior loss (mean squared distance of the frames to their symbols'
        means, per latent dimension)."""
        mu = self.to_latent(enc[:, 1:]).float()                                  # (B, S, dim)
        z = self.frame_latents(codes).float()                                    # (B, T, dim)
        logp = -0.5 * (mu.pow(2).sum(-1)[:, :, None] - 2 * mu @ z.transpose(1, 2) + z.pow(2).sum(-1)[:, None, :])
        path = monotonic_alignment(logp.detach(), text_lens - 1, code_lens)
        real = path >= 0
        picked = mu.gather(1, path.clamp(min=0)[..., None].expand(-1, -1, mu.shape[-1]))
        prior = ((z - picked).pow(2).mean(-1) * real).sum() / real.sum().clamp(min=1)
        return path, prior

    def conditions(self, enc: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        """Symbol states (B, L, D) and each frame's symbol (B, T) (-1 past a row's length) -> one
        condition per group (B, G, D)."""
        return self.condition_vectors(enc, *frame_places(path, enc.shape[1] - 1, self.cfg.frames_per_step))

    def condition_vectors(self, enc: torch.Tensor, sym: torch.Tensor, since: torch.Tensor, to_end: torch.Tensor
                          ) -> torch.Tensor:
        """enc (B, L, D), frame_places' (B, G r) each -> the conditions (B, G, D)."""
        x = enc.gather(1, (sym + 1)[..., None].expand(-1, -1, enc.shape[-1]))   # +1: skip <s>
        x = x + self.place(since) + self.place(to_end + PLACES)
        return self.cond(x.reshape(x.shape[0], -1, self.cfg.frames_per_step * x.shape[-1]))

    def teacher(self, text: torch.Tensor, text_lens: torch.Tensor, codes: torch.Tensor, code_lens: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Teacher forcing over the aligned text -> h (B, G, D) the hidden states that predict each
        group, targets (B, G, r, n_q) (IGNORE past a row's length), enc (B, L, D), path (B, T), prior."""
        enc = self.encode(text, text_lens)
        path, prior = self.align(enc, text_lens, codes, code_lens)
        t = make_targets(codes, code_lens, self.cfg.frames_per_step)
        groups = t["groups"]
        inputs = torch.cat([self.bos.expand(groups.shape[0], 1, -1), self.embed_groups(groups[:, :-1])], dim=1)
        h = self.hidden(inputs + self.conditions(enc, path))
        return {"h": h, "targets": t["targets"][:, :-1], "enc": enc, "path": path, "prior": prior}

    def forward(self, text: torch.Tensor, text_lens: torch.Tensor, codes: torch.Tensor, code_lens: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Teacher forcing. -> logits (B, G, r, n_q, K), targets (B, G, r, n_q), prior (scalar),
        log_dur (B, S) predicted and durations (B, S) aligned frames per symbol (0 past a row's symbols)."""
        out = self.teacher(text, text_lens, codes, code_lens)
        path = out["path"]
        durations = torch.zeros(path.shape[0], text.shape[1], dtype=torch.long, device=path.device)
        durations.scatter_add_(1, path + 1, torch.ones_like(path))  # index 0 collects the frames past the length
        return {"logits": self.split_logits(out["h"], out["targets"])[0], "targets": out["targets"],
                "prior": out["prior"], "log_dur": self.log_durations(out["enc"])[:, 1:], "durations": durations[:, 1:]}

    def plan(self, text_ids: list[int], rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One text's ids -> its symbol states (1, L, D) and the predicted symbol of every frame (1, T)."""
        if not text_ids:
            raise ValueError("generate: empty text (nothing to say)")
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        device = self.head.weight.device
        text = torch.tensor([[START] + list(text_ids)], device=device)
        enc = self.encode(text, torch.tensor([text.shape[1]], device=device))
        frames = self.log_frames(enc)[0, 1:].float().exp() / rate
        return enc, path_of(round_durations(frames))[None]

    @torch.no_grad()
    def generate_iter(self, text_ids: list[int], temperature: float = 0.0, top_k: int = 0,
                      max_groups: int | None = None, use_cache: bool = True,
                      generator: torch.Generator | None = None, rate: float = 1.0) -> Iterator[torch.Tensor]:
        """One text's ids -> its groups of codes (frames_per_step, n_q), yielded one by one; as many
        groups as the predicted durations (divided by ``rate``: 2.0 speaks twice as fast) make,
        at most ``max_groups``. Without the cache each step re-runs the whole sequence."""
        was_training = self.training
        self.eval()
        try:
            enc, path = self.plan(text_ids, rate)
            cond = self.conditions(enc, path)
            limit = min(cond.shape[1], self.cfg.ctx_len, max_groups if max_groups is not None else cond.shape[1])
            cache = self.new_cache(1, limit) if use_cache else None
            x = self.bos[None, None].to(cond.dtype)
            step_in = x + cond[:, :1]
            for j in range(limit):
                h = self.hidden(step_in if use_cache else x + cond[:, :j + 1], cache=cache)[:, -1]
                group = self.pick_groups(h[0].float(),
                                         lambda logits: sample_codes(logits, temperature, top_k, generator))
                yield group
                if j + 1 < limit:
                    emb = self.embed_groups(group[None, None])
                    step_in = emb + cond[:, j + 1:j + 2]
                    x = torch.cat([x, emb], dim=1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def teacher_forced(self, text_ids: list[int], codes: torch.Tensor) -> torch.Tensor:
        """One text's ids and its real codes (T, n_q) -> the argmax code of every frame (T, n_q),
        each predicted from the aligned text and the real codes before it (as in training)."""
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        text = torch.tensor([[START] + list(text_ids)], device=device)
        T = codes.shape[0]
        lens = torch.tensor([text.shape[1]], device=device), torch.tensor([T], device=device)
        h = self.teacher(text, lens[0], codes[None].to(device), lens[1])["h"]
        pred = self.pick_groups(h, lambda logits: logits.argmax(-1))
        self.train(was_training)
        return pred[0].flatten(0, 1)[:T]
