"""The torch-free runtime's ports (omni/export/runtime.py, dsp.py) against the PyTorch code they copy."""
import numpy as np
import pytest
import torch
from PIL import Image

from omni.audio.features import ENCODER_MEL, SPEECH_OUT_MEL, LogMel
from omni.export import dsp
from omni.export import runtime as R
from omni.export.ports import sample_codes
from omni.images import MEAN, STD, load_image_tensor
from omni.multimodal.template import AUDIO, IMAGE, Turn, build_sequence
from omni.speech.griffinlim import GriffinLim, block_mel_to_wav
from omni.thinker.model import sample_next
from omni.thinker.tokenizer import train_bpe
from tests.conftest import SONNETS


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one torch thread is faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_torch_rand_is_reproduced_exactly():
    for shapes, seed in ((((7, 513), (256, 513)), 0), (((3, 5), (2, 2), (9,)), 123)):
        gen, draws = torch.Generator().manual_seed(seed), np.random.RandomState(seed)
        for shape in shapes:  # successive draws continue one stream, as the generator's do
            assert np.array_equal(dsp.torch_rand(draws, shape), torch.rand(shape, generator=gen).numpy())


def test_log_mel_matches_torch():
    wav = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    m = LogMel(ENCODER_MEL)
    ref = m(torch.from_numpy(wav)[None])[0].numpy()
    got = dsp.log_mel(wav, m.filterbank.numpy(), m.window.numpy(), ENCODER_MEL.n_fft, ENCODER_MEL.hop_length)
    assert got.shape == ref.shape == (12345 // 160 + 1, 128)
    assert np.abs(got - ref).max() < 1e-3


def test_block_griffin_lim_matches_torch_to_rounding():
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(1, 300, 128, generator=gen) * 0.5 - 6  # past 256 frames: a second phase draw
    gl = GriffinLim()
    ours = dsp.GriffinLim(gl.filterbank.numpy(), gl.fb_pinv.numpy(), gl.window.numpy(), SPEECH_OUT_MEL.n_fft,
                          SPEECH_OUT_MEL.hop_length)
    np.testing.assert_allclose(ours.magnitude(mel[0, :20].numpy()), gl.mel_to_magnitude(mel[:, :20])[0].T.numpy(),
                               rtol=1e-4, atol=1e-6)
    ref = block_mel_to_wav(mel, n_iter=8).numpy()
    blocks = dsp.BlockGriffinLim(ours, 16, 4, 4, n_iter=8)
    got = np.concatenate([blocks.push(mel[0, i:i + 13].numpy()) for i in range(0, 300, 13)] + [blocks.finish()])
    assert got.shape == ref.shape == ((300 - 1) * 256,)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


def test_sampling_follows_torch_semantics():
    rng = np.random.default_rng(0)
    logits = np.array([3.0, 2.9, 1.0, 0.5, -1.0, -5.0], dtype=np.float32)
    assert R.sample_next(logits, 0.0, 0, 1.0, rng) == int(sample_next(torch.from_numpy(logits)[None], 0.0, 0, 1.0)[0]) == 0
    seen_k = {R.sample_next(logits, 1.0, 2, 1.0, rng) for _ in range(300)}
    assert seen_k == {0, 1}
    # top-p: torch keeps a token when the tokens ranked above it cover less than p
    g = torch.Generator().manual_seed(0)
    torch_p = {int(sample_next(torch.from_numpy(logits)[None], 1.0, 0, 0.9, g)[0]) for _ in range(400)}
    ours_p = {R.sample_next(logits, 1.0, 0, 0.9, rng) for _ in range(400)}
    assert ours_p == torch_p
    codes = sample_codes(np.stack([logits, logits[::-1]]), 0.0, 0, rng)
    assert codes.tolist() == [0, 5]


def test_chat_template_is_ported_token_for_token():
    tok = train_bpe(iter([ln for ln in SONNETS.read_text().splitlines() if ln.strip()]), 300)
    turns = [Turn("user", "What is it?", [(IMAGE, 5), (AUDIO, 3)]), Turn("assistant", "a cat"), Turn("user", "<|eos|> hi")]
    seq = build_sequence(tok, turns, generation_prompt=True)
    ids, kinds = R.build_sequence(tok.encode, tok.special, [R.Turn(t.role, t.text, t.media) for t in turns],
                                  "You are μOmni, a small assistant that sees, hears and speaks.")
    assert ids == seq.ids and kinds == seq.kinds


@pytest.mark.parametrize("size, mode", [((50, 30), "RGB"), ((300, 120), "RGBA"), ((64, 64), "L"), ((40, 90), "P")])
def test_image_preprocessing_is_identical(tmp_path, size, mode):
    arr = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    ours = R.load_image(path, 32, MEAN.flatten().tolist(), STD.flatten().tolist())
    assert np.array_equal(ours, load_image_tensor(path, 32).numpy())


def test_the_runtime_reads_a_phoneme_talker_as_pytorch_synthesis_does():
    from types import SimpleNamespace

    from omni.export.voice import OnnxVoice
    from omni.speech.synthesis import Synthesizer
    from omni.talker.phonemes import phonemize
    from omni.talker.text import TextVocab
    vocab = TextVocab.default("phonemes")
    text = "The night was cold, and dark. Mr Smith read 42 books in the garden of his house, far from town!"
    torch_pieces = Synthesizer.pieces(SimpleNamespace(vocab=vocab, chunk_chars=60, last_stats={}), text)
    ours = OnnxVoice(SimpleNamespace(cfg={"speech": {"chunk_chars": 60}}, vocab=vocab)).speech_chunks(text)
    assert ours == torch_pieces and len(ours) > 1
    assert "".join(vocab.chars[i - 3] for i in ours[0]) == phonemize(vocab.normalize(text)[0][:len("the night was cold, and dark.")])
