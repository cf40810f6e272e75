"""Chat latency with spoken replies: time to first token, time to first audio, streaming RTF, and
the old full-reply wait, over a set of turns (scripts/bench_latency.py).

With trained checkpoints (--ckpt, --talker) the turns are real: the model answers each prompt and
the Talker speaks until its stop flag. Without them (--untrained-default) the models are built at
the default configs' sizes with untrained weights; an untrained Thinker never says <|end|> and an
untrained Talker never stops on time, so the reply's tokens are scripted (REPLIES, taken through
the Thinker's full forward pass one token at a time, exactly the work of sampling them) and the
Talker stops after SPEECH_CHARS_PER_S of its text. The compute per token and per codec frame is
then that of the trained models of the same size; only what is said is fixed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from omni.config import config_from_dict

# typical short chat replies (the SFT data's answers are of this length)
REPLIES = [
    "It is a red ball on a green mat.", "Yes, I can see two cats near the door.",
    "The sky is blue, and the sun is out.", "I heard you say good morning.",
    "There is a small boat on the lake, and a man is in it.", "That is a yellow square.",
    "The picture shows a city street at night.", "No, the box is empty.",
    "You asked about the weather. It looks cold and wet today.", "A dog is running in the park.",
    "The word on the sign is stop.", "Three birds sit on the wire.",
    "It sounds like a door closing.", "The cup is on the table, next to the book.",
    "I think it is a photo of a mountain.", "Sure. The answer is seven.",
    "The woman is holding an umbrella.", "It is a circle, and it is green.",
    "The train is leaving the station.", "Hello! How can I help you today?",
]
SPEECH_CHARS_PER_S = 14.0   # the production voices' speaking rate (scripted Talker length)


def build_untrained_default(root: Path, configs: Path) -> tuple[Path, Path]:
    """Stage E and Stage D folders at the default configs' sizes, untrained -> (sft dir, talker dir)."""
    from omni.audio.encoder import AudioEncConfig
    from omni.codec.model import CodecConfig, MelCodec
    from omni.engine.checkpoint import save_weights
    from omni.files import file_sha1
    from omni.multimodal.model import Components, OmniConfig, OmniModel
    from omni.talker.model import TalkerConfig, build_talker
    from omni.talker.text import TextVocab
    from omni.thinker.model import ThinkerConfig
    from omni.thinker.tokenizer import train_bpe
    from omni.vision.encoder import VisionConfig

    def section(name: str, *keys: str) -> dict:
        d = json.loads((configs / name).read_text())
        for k in keys:
            d = d[k]
        return d

    sft_cfg = section("omni_sft_tiny.json")
    comp = Components(config_from_dict(section("thinker_tiny.json", "model"), ThinkerConfig),
                      config_from_dict(section("audio_enc_tiny.json", "model"), AudioEncConfig),
                      config_from_dict(section("vision_tiny.json", "model"), VisionConfig))
    torch.manual_seed(0)
    model = OmniModel(comp, config_from_dict(sft_cfg["model"], OmniConfig))
    sft = root / "sft"
    sft.mkdir(parents=True, exist_ok=True)
    (sft / "config.json").write_text(json.dumps(sft_cfg))
    (sft / "components.json").write_text(json.dumps(dataclasses.asdict(comp)))
    words = " ".join(REPLIES).split()
    train_bpe(iter([" ".join(words[i:i + 12]) for i in range(0, len(words), 12)] * 20), 400).save(sft / "tokenizer.json")
    save_weights(model, sft)

    talker_raw = section("talker_tiny.json")
    ccfg = config_from_dict(talker_raw["codec"]["model"], CodecConfig)
    codec = MelCodec(ccfg)
    for vq in codec.rvq.layers:
        vq.codebook.normal_()
        vq.initialised.fill_(True)
    vocab = TextVocab.default()
    tcfg = dict(talker_raw["talker"], n_codebooks=talker_raw["talker"]["n_codebooks"] or ccfg.n_codebooks,
                codebook_size=ccfg.codebook_size, text_vocab_size=len(vocab))
    if tcfg.get("alignment") == "durations":
        tcfg["latent_dim"] = ccfg.codebook_dim
    talker = build_talker(config_from_dict(tcfg, TalkerConfig))
    tdir = root / "tts" / "talker"
    (tdir / "codec").mkdir(parents=True, exist_ok=True)
    (tdir / "codec" / "config.json").write_text(json.dumps(talker_raw["codec"]))
    save_weights(codec, tdir / "codec")
    (tdir / "config.json").write_text(json.dumps(dict(talker_raw, talker=tcfg)))
    vocab.save(tdir / "text_vocab.json")
    (tdir / "codec.json").write_text(json.dumps({"codec_dir": "codec",
                                                 "codec_sha1": file_sha1(tdir / "codec" / "model.safetensors")}))
    save_weights(talker, tdir)
    return sft, root / "tts"


@contextmanager
def scripted(reply_ids: list[int], stop_id: int, voice, n_chars: list[int]):
    """Force the Thinker's choices to ``reply_ids`` then ``stop_id`` (its forward pass still runs for
    every token), and make the Talker speak each chunk's text at SPEECH_CHARS_PER_S (an attention
    Talker is stopped after that long, a duration Talker is given those durations)."""
    import omni.multimodal.model as mm

    todo = list(reply_ids) + [stop_id]
    talker = voice.talker
    real_sample, real_stop, real_iter = mm.sample_next, talker.stop_logit, talker.generate_iter
    frames_per_s = 62.5 / voice.codec.frames_per_code / talker.cfg.frames_per_step  # groups per second
    left = [0]
    durations = talker.cfg.alignment == "durations"
    real_durations = talker.log_frames if durations else None
    frames_per_char = 62.5 / voice.codec.frames_per_code / SPEECH_CHARS_PER_S

    def sample(logits, *a, **k):
        real_sample(logits, *a, **k)  # the sampling work itself
        return torch.tensor([todo.pop(0)], device=logits.device)

    def gen_iter(ids, *a, **k):
        left[0] = max(1, round(len(ids) / SPEECH_CHARS_PER_S * frames_per_s))
        n_chars.append(len(ids))
        yield from real_iter(ids, *a, **k)

    def stop(h):
        real_stop(h)
        left[0] -= 1
        return torch.full(h.shape[:-1], 30.0 if left[0] < 0 else -30.0, device=h.device)

    def log_frames(enc):
        # a duration Talker speaks for the durations it predicts: the speaking rate's, every character
        return torch.full_like(real_durations(enc), math.log(frames_per_char))

    mm.sample_next, talker.generate_iter = sample, gen_iter
    if durations:
        talker.log_frames = log_frames
    else:
        talker.stop_logit = stop
    try:
        yield
    finally:
        mm.sample_next = real_sample
        del talker.generate_iter
        del talker.__dict__["log_frames" if durations else "stop_logit"]


def summary(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"median": statistics.median(v), "p90": v[min(len(v) - 1, round(0.9 * (len(v) - 1)))],
            "min": v[0], "max": v[-1], "mean": statistics.fmean(v)}


def run(sft_dir: Path, talker_dir: Path, n_turns: int, scripted_replies: bool, vocoder: dict,
        max_new_tokens: int = 64) -> dict:
    from omni.multimodal.chat import ChatSession, Sampling
    from omni.multimodal.live import live_turn
    from omni.multimodal.stage import load_omni
    from omni.speech.synthesis import Synthesizer

    cpu = torch.device("cpu")
    model, tok, _ = load_omni(sft_dir, cpu)
    voice = Synthesizer.load(talker_dir, cpu, **vocoder)  # vocoder: omni.cli.common.vocoder_kwargs
    stop_id = tok.special["<|end|>"]
    rows = []
    prompts = ["What do you see?", "Tell me about it.", "What is that sound?", "Hello!"]
    # The first turns after loading are slower (torch and oneDNN set up kernels per new shape): the
    # first one is reported as "cold", and three turns warm up before the measured ones.
    cold = None
    for k in range(3):
        warm = ChatSession(model, tok, Sampling(max_new_tokens=max_new_tokens))
        with scripted(tok.encode(REPLIES[-1 - k]), stop_id, voice, []) if scripted_replies else _null():
            turn = live_turn(warm, prompts[k % len(prompts)], voice)
        if cold is None:
            cold = {"ttft_s": turn.stats.ttft_s, "first_audio_s": turn.first_audio_s, "total_s": turn.total_s,
                    "audio_s": turn.speech["audio_s"]}
    for k in range(n_turns):
        reply_text = REPLIES[k % len(REPLIES)]
        ids = tok.encode(reply_text)
        row = {"turn": k}
        for mode in ("streaming", "full_reply"):
            session = ChatSession(model, tok, Sampling(max_new_tokens=max_new_tokens))
            chars: list[int] = []
            with scripted(ids, stop_id, voice, chars) if scripted_replies else _null():
                if mode == "streaming":
                    turn = live_turn(session, prompts[k % len(prompts)], voice)
                    row.update(reply=turn.reply, ttft_s=turn.stats.ttft_s, first_audio_s=turn.first_audio_s,
                               streaming_total_s=turn.total_s, audio_s=turn.speech["audio_s"],
                               rtf=turn.speech["rtf"], tokens=turn.stats.new_tokens)
                else:
                    # what chat did before streaming: the whole reply, then the whole waveform
                    t0 = time.perf_counter()
                    reply, _ = session.ask(prompts[k % len(prompts)])
                    wav = voice.synthesize(reply)
                    row.update(full_reply_wait_s=time.perf_counter() - t0, full_audio_s=len(wav) / 16000)
        rows.append(row)
    out = {"turns": len(rows), "scripted": scripted_replies, "vocoder": voice.vocoder_name, "cold_first_turn": cold,
           "threads": torch.get_num_threads(), "rows": rows}
    for key in ("ttft_s", "first_audio_s", "rtf", "full_reply_wait_s", "audio_s"):
        out[key] = summary([r[key] for r in rows if r.get(key) is not None])
    return out


@contextmanager
def _null():
    yield


def codec_chunk_error_db(talker_dir: Path, n_frames: int = 200) -> float:
    """The streamed codec decode (LocalStream, 2 code frames at a time) against the whole decode of
    the same random codes, in dB of error energy over signal energy."""
    from omni.codec.stage import load_codec
    from omni.speech.chunks import LocalStream
    from omni.speech.streaming import probe_radius

    codec, _ = load_codec(Path(talker_dir) / "talker" / "codec", torch.device("cpu"))
    K, n_q = codec.codebook_size, codec.n_codebooks
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K, (1, n_frames, n_q), generator=gen)
    with torch.no_grad():
        radius = probe_radius(codec.decode, torch.randint(0, K, (1, 96, n_q), generator=gen),
                              codec.frames_per_code, lambda c: (c + 1) % K)
        stream = LocalStream(codec.decode, radius, codec.frames_per_code, torch.cat)
        parts = [stream.push(codes[0, i:i + 2]) for i in range(0, n_frames, 2)] + [stream.finish()]
        got = torch.cat([p for p in parts if p is not None]).double()
        whole = codec.decode(codes)[0].double()
    return float(10 * np.log10(float(((got - whole) ** 2).sum()) / float((whole ** 2).sum()) + 1e-30))
