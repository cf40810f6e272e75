"""Streaming speech: the text chunker, chunked codec/vocoder decoding, block Griffin-Lim, and the
Synthesizer's streamed audio against its offline audio of the same codes."""
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omni.audio.features import SPEECH_OUT_MEL, LogMel, load_audio
from omni.codec.model import CodecConfig, MelCodec
from omni.speech.chunks import LocalStream, TextPieces
from omni.speech.griffinlim import BlockGriffinLim, GriffinLim, spectral_convergence
from omni.speech.streaming import probe_radius
from omni.speech.synthesis import Synthesizer
from omni.vocoder.model import vocode
from omni.vocoder.stage import load_generator
from tests.conftest import ROOT


def error_db(got: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    got, ref = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    assert got.shape == ref.shape
    return float(10 * torch.log10(((got - ref) ** 2).sum().clamp(min=1e-30) / (ref ** 2).sum()))


# ---------------------------------------------------------------- TextPieces
def pieces_of(text: str, deltas: list[int], max_chars: int = 40) -> list[str]:
    tp, out, i = TextPieces(max_chars), [], 0
    for n in deltas:
        out += tp.feed(text[i:i + n])
        i += n
    return out + tp.feed(text[i:]) + tp.flush()


def test_pieces_cut_at_sentence_then_clause_ends():
    text = "Hello there. I can see a red ball, a blue box and a cat! What else?"
    assert pieces_of(text, [1] * len(text)) == ["Hello there.", "I can see a red ball,", "a blue box and a cat!",
                                                "What else?"]


def test_a_piece_is_out_as_soon_as_its_end_is_seen():
    tp = TextPieces(60)
    assert tp.feed("Yes, it is") == []          # a clause shorter than min_clause waits
    assert tp.feed(" red. And") == ["Yes, it is red."]
    assert tp.flush() == ["And"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc ,.!?", max_size=200), st.lists(st.integers(1, 9), max_size=40),
       st.integers(5, 50))
def test_every_character_comes_out_once_in_order_and_pieces_fit(text, deltas, max_chars):
    got = pieces_of(text, deltas, max_chars)
    assert "".join(got).replace(" ", "") == text.replace(" ", "")
    assert all(p and len(p) <= max_chars for p in got)


# ---------------------------------------------------------------- LocalStream / probe_radius
def test_probe_radius_finds_a_conv_stacks_reach():
    torch.manual_seed(0)
    convs = torch.nn.Sequential(torch.nn.Conv1d(3, 3, 5, padding=2), torch.nn.Conv1d(3, 3, 3, padding=3, dilation=3))
    fn = lambda x: convs(x.transpose(1, 2)).transpose(1, 2)
    # reach 2 + 3 = 5 frames; one more for safety
    assert probe_radius(fn, torch.randn(1, 40, 3), 1, lambda f: f + 1) == 6


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    c = MelCodec(CodecConfig(n_codebooks=3, codebook_size=32, codebook_dim=16, d_model=32, n_layers=2)).eval()
    for vq in c.rvq.layers:
        vq.codebook.normal_()
        vq.initialised.fill_(True)
    return c


@pytest.mark.parametrize("step", [1, 2, 7])
def test_chunked_codec_decoding_equals_the_whole_decode(codec, step):
    codes = torch.randint(0, 32, (1, 45, 3), generator=torch.Generator().manual_seed(1))
    radius = probe_radius(codec.decode, torch.randint(0, 32, (1, 80, 3)), 2, lambda c: (c + 1) % 32)
    stream = LocalStream(codec.decode, radius, 2, torch.cat)
    with torch.no_grad():
        parts = [stream.push(codes[0, i:i + step]) for i in range(0, 45, step)] + [stream.finish()]
        whole = codec.decode(codes)[0]
    got = torch.cat([p for p in parts if p is not None])
    assert error_db(got, whole) < -80


def test_too_little_context_is_caught_by_the_comparison(codec):
    """The equality above is not automatic: a radius below the receptive field changes the output."""
    codes = torch.randint(0, 32, (1, 45, 3), generator=torch.Generator().manual_seed(1))
    stream = LocalStream(codec.decode, 1, 2, torch.cat)
    with torch.no_grad():
        parts = [stream.push(codes[0, i:i + 2]) for i in range(0, 45, 2)] + [stream.finish()]
        whole = codec.decode(codes)[0]
    assert error_db(torch.cat([p for p in parts if p is not None]), whole) > -40


# ---------------------------------------------------------------- BlockGriffinLim
@pytest.fixture(scope="module")
def real_mel():
    return LogMel(SPEECH_OUT_MEL)(torch.from_numpy(load_audio(ROOT / "assets/audio/arctic_a0007.wav"))[None])


def run_blocks(gl, mel, pushes, **kw):
    b = BlockGriffinLim(gl, **kw)
    out, i = [], 0
    for n in pushes:
        out.append(b.push(mel[i:i + n]))
        i += n
    out.append(b.push(mel[i:]))
    return torch.cat(out + [b.finish()])


def test_one_block_over_everything_is_griffin_lim():
    gl = GriffinLim()
    mel = torch.randn(1, 40, 128) - 5
    assert torch.equal(run_blocks(gl, mel[0], [], block=1000), gl(mel)[0])


def test_block_griffin_lim_does_not_depend_on_how_frames_arrive(real_mel):
    gl = GriffinLim()
    mel = real_mel[0, :120]
    a = run_blocks(gl, mel, [], n_iter=8)
    b = run_blocks(gl, mel, [1, 3, 4, 17, 2, 30], n_iter=8)
    # the same up to float rounding (the mel -> magnitude matmuls differ in shape)
    assert a.shape == ((120 - 1) * 256,) and error_db(b, a) < -80


def test_block_griffin_lim_is_as_consistent_as_whole_griffin_lim(real_mel):
    """Spectral convergence on a real recording's mel: block-wise phases are no worse than whole-signal
    ones (RTISI-LA's finding; measured in docs/results.md)."""
    gl = GriffinLim()
    mag = gl.mel_to_magnitude(real_mel)
    whole = float(spectral_convergence(gl(real_mel), mag)[0])
    block = float(spectral_convergence(run_blocks(gl, real_mel[0], [5] * 60)[None], mag)[0])
    assert block <= whole + 0.01, (block, whole)


# ---------------------------------------------------------------- the Synthesizer
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from export.tiny_checkpoints import build_talker, build_vocoder
    root = tmp_path_factory.mktemp("voice")
    build_talker(root / "tts")
    build_vocoder(root / "vocoder")
    return root


TEXT = "The cat sat on the mat, by the door. Then it slept."


def talkative(voice: Synthesizer) -> Synthesizer:
    """The untrained Talker may stop after a group or two: never stop before its length limit, of
    3 frames a character, so a piece is long enough to come out in several blocks."""
    voice.talker.cfg.max_frames_per_char = 3.0
    voice.talker.stop_logit = lambda h: torch.full(h.shape[:-1], -30.0)
    return voice


@pytest.mark.parametrize("vocoder", ["griffinlim", "hifigan"])
def test_streamed_audio_is_the_offline_audio(tiny, vocoder):
    voice = talkative(Synthesizer.load(tiny / "tts", "cpu", vocoder=vocoder, vocoder_dir=tiny / "vocoder",
                                       gl_iters=4))
    chunks = list(voice.stream(TEXT, seed=3))
    assert len(chunks) > 6                      # it streamed within each of the 2 pieces
    offline = voice.synthesize(TEXT, seed=3)
    assert error_db(np.concatenate(chunks), offline) < -40
    assert voice.last_stats["first_audio_s"] <= voice.last_stats["synth_s"]


def test_hifigan_chunks_equal_the_whole_mel_vocoded(tiny):
    gen = load_generator(tiny / "vocoder", torch.device("cpu"))
    mel = torch.randn(1, 70, 128, generator=torch.Generator().manual_seed(0)) - 4
    radius = probe_radius(lambda m: vocode(gen, m), torch.randn(1, 128, 128) - 4, 256, lambda f: f + 1)
    stream = LocalStream(lambda m: vocode(gen, m), radius, 256, torch.cat)
    with torch.no_grad():
        parts = [stream.push(mel[0, i:i + 3]) for i in range(0, 70, 3)] + [stream.finish()]
        whole = vocode(gen, mel)[0]
    assert error_db(torch.cat([p for p in parts if p is not None]), whole) < -40


def test_pieces_said_one_by_one_equal_the_pieces_said_at_once(tiny):
    voice = Synthesizer.load(tiny / "tts", "cpu", gl_iters=4)
    utt = voice.start(seed=5)
    live = np.concatenate([w for piece in ("The cat sat.", "Then it slept.") for w in utt.say(piece)])
    offline = voice.synthesize("The cat sat. Then it slept.", seed=5)
    assert error_db(live, offline) < -40
    assert utt.stats()["chunks"] == 2


def test_live_turn_speaks_before_the_reply_is_written(tiny, monkeypatch):
    """The first audio chunk is handed out while the Thinker is still writing."""
    from export.tiny_checkpoints import build_sft

    import omni.multimodal.chat as chat_lib
    from omni.multimodal.chat import ChatSession
    from omni.multimodal.live import live_turn
    from omni.multimodal.stage import load_omni
    from omni.thinker.tokenizer import train_bpe
    from tests.conftest import SONNETS

    tok = train_bpe(iter([ln for ln in SONNETS.read_text().splitlines() if ln.strip()]), 400)
    build_sft(tiny / "sft", tok)
    model, tok, _ = load_omni(tiny / "sft", torch.device("cpu"))
    reply_ids = tok.encode("Yes, I see it. It is a red ball on a green mat, and a cat is near it.")
    events = []

    def generate(model, x, max_new, stop, temperature, top_k, top_p, generator, on_token):
        for t in reply_ids:
            time.sleep(0.005)
            events.append("token")
            on_token(t)
        return list(reply_ids)

    monkeypatch.setattr(chat_lib, "generate_reply", generate)
    voice = talkative(Synthesizer.load(tiny / "tts", "cpu", gl_iters=4))
    turn = live_turn(ChatSession(model, tok), "hi", voice, on_audio=lambda w: events.append("audio"))
    assert "audio" in events and events.index("audio") < len(events) - 1 - events[::-1].index("token")
    assert turn.first_audio_s < turn.stats.total_s
    assert len(turn.audio) == round(turn.speech["audio_s"] * 16000)
