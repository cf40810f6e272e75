"""What each ONNX graph is: its wrapper module, example inputs, names and dynamic axes; the
Talker's graphs for each kind of Talker (attention: prefill + decode; durations: plan + condition
+ start + step), with the depth chain's graph for either."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omni.export import graphs as G


@dataclass
class GraphSpec:
    name: str
    source: str                          # which checkpoint its weights come from
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    group: str | None = None             # shared external weights file


def _kv(n_layers: int, batch: int, heads: int, length: int, head_dim: int) -> torch.Tensor:
    return torch.randn(n_layers, batch, heads, length, head_dim) * 0.1


def talker_specs(tk: nn.Module, B: int, P: int, kv_in: dict, kv_out: dict) -> list[GraphSpec]:
    c = tk.cfg
    tdh = c.d_model // c.n_heads
    past = (_kv(c.n_layers, B, c.n_kv_heads, P, tdh), _kv(c.n_layers, B, c.n_kv_heads, P, tdh))
    groups = torch.randint(0, c.codebook_size, (B, 2, c.frames_per_step, c.n_codebooks))
    if c.alignment == "durations":
        heads = ["hidden"] + (["code_logits"] if tk.depth is None else [])
        out_axes = {"hidden": {0: "batch"}, "code_logits": {0: "batch"}}
        L, Tr = 7, 6 * c.frames_per_step
        sym = torch.randint(0, L - 1, (B, Tr)).sort(1).values
        places = (torch.randint(0, 8, (B, Tr)), torch.randint(0, 8, (B, Tr)))
        cond = torch.randn(B, 2, c.d_model)
        specs = [
            GraphSpec("talker_plan", "talker", G.DurTalkerPlan(tk), (torch.randint(3, c.text_vocab_size, (B, L)),),
                      ["text"], ["enc", "log_frames"],
                      {"text": {0: "batch", 1: "chars"}, "enc": {0: "batch", 1: "chars"},
                       "log_frames": {0: "batch", 1: "symbols"}}, "talker.weights"),
            GraphSpec("talker_cond", "talker", G.DurTalkerCond(tk), (torch.randn(B, L, c.d_model), sym, *places),
                      ["enc", "sym", "since", "to_end"], ["cond"],
                      {"enc": {0: "batch", 1: "chars"}, **{k: {0: "batch", 1: "frames"} for k in ("sym", "since", "to_end")},
                       "cond": {0: "batch", 1: "groups"}}, "talker.weights"),
            GraphSpec("talker_start", "talker", G.DurTalkerStart(tk), (cond[:, :1],), ["cond"],
                      heads + ["present_k", "present_v"],
                      {"cond": {0: "batch"}, **out_axes, "present_k": {1: "batch"}, "present_v": {1: "batch"}},
                      "talker.weights"),
            GraphSpec("talker_step", "talker", G.DurTalkerStep(tk), (groups, cond, *past),
                      ["groups", "cond", "past_k", "past_v"], heads + ["present_k", "present_v"],
                      {"groups": {0: "batch", 1: "steps"}, "cond": {0: "batch", 1: "steps"}, **kv_in, **out_axes,
                       **kv_out}, "talker.weights"),
        ]
    else:
        heads = ["hidden", "stop_logit"] + (["code_logits"] if tk.depth is None else [])
        out_axes = {"hidden": {0: "batch"}, "stop_logit": {0: "batch"}, "code_logits": {0: "batch"}}
        specs = [
            GraphSpec("talker_prefill", "talker", G.TalkerPrefill(tk), (torch.randint(3, c.text_vocab_size, (B, 7)),),
                      ["text"], heads + ["present_k", "present_v"],
                      {"text": {0: "batch", 1: "chars"}, **out_axes, "present_k": {1: "batch", 3: "seq"},
                       "present_v": {1: "batch", 3: "seq"}}, "talker.weights"),
            GraphSpec("talker_decode", "talker", G.TalkerDecode(tk), (groups, *past),
                      ["groups", "past_k", "past_v"], heads + ["present_k", "present_v"],
                      {"groups": {0: "batch", 1: "steps"}, **kv_in, **out_axes, **kv_out}, "talker.weights"),
        ]
    if tk.depth is not None:
        specs.append(GraphSpec(
            "talker_depth", "talker", G.TalkerDepth(tk),
            (torch.randn(B, c.d_model), torch.randn(B, c.d_model), torch.randint(0, c.codebook_size, (B,)),
             torch.tensor(1)), ["hidden", "prev", "code", "slot"], ["logits", "prev_out"],
            {"hidden": {0: "batch"}, "prev": {0: "batch"}, "code": {0: "batch"}, "logits": {0: "batch"},
             "prev_out": {0: "batch"}}, "talker.weights"))
    return specs
