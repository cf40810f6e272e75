"""Tiny checkpoint folders for tests/export (build_all), written in a second, in the layout the stages write: a Stage E folder,
a Talker folder (with its codec copy; a depth chain; a codec with one more codebook than the Talker
reads) and a HiFi-GAN folder; plus a small held-out data set (clips, images, texts)."""
import dataclasses
import json

import numpy as np
import torch
from PIL import Image

from omni.audio.encoder import AudioEncConfig
from omni.audio.features import save_wav
from omni.codec.model import CodecConfig, MelCodec
from omni.engine.checkpoint import save_weights
from omni.files import file_sha1
from omni.multimodal.model import Components, OmniConfig, OmniModel
from omni.talker.model import Talker, TalkerConfig
from omni.talker.model import build_talker as build_talker_model
from omni.talker.text import TextVocab
from omni.thinker.model import ThinkerConfig
from omni.thinker.tokenizer import train_bpe
from omni.vision.encoder import VisionConfig
from omni.vocoder.model import GanConfig, HifiGan, VocoderConfig
from tests.conftest import ROOT, SONNETS

TEXTS = ["The cat sat on the warm mat.", "Please open the window, then close the door.", "Red ball.",
         "We meet at noon by the old bridge."]


def _jitter(model: torch.nn.Module, seed: int) -> None:
    """Trained-looking weights: every tensor moved off its init (norms off 1, biases off 0), so equal
    init values cannot hide a swapped or de-duplicated tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def build_sft(folder, tok) -> OmniModel:
    torch.manual_seed(0)
    comp = Components(ThinkerConfig(tok.vocab_size, 32, 2, 2, 1, 64, 256, 0.0),
                      AudioEncConfig(24, 1, 2, 48, 0.0, 256), VisionConfig(32, 8, 16, 1, 2, 32, 0.0))
    model = OmniModel(comp, OmniConfig("t", "a", "v", image_pool=2, projector_hidden=16)).eval()
    _jitter(model, 1)
    model.audio_encoder.mel_mean.copy_(torch.randn(128) - 5)
    model.audio_encoder.mel_std.copy_(torch.rand(128) + 1)
    folder.mkdir(parents=True)
    cfg = json.loads((ROOT / "configs/omni_sft_demo.json").read_text())
    cfg["model"].update(image_pool=2, projector_hidden=16)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "components.json").write_text(json.dumps(dataclasses.asdict(comp)))
    tok.save(folder / "tokenizer.json")
    save_weights(model, folder)
    return model


def build_talker(root, alignment: str = "attention") -> Talker:
    torch.manual_seed(1)
    vocab = TextVocab.default()
    ccfg = CodecConfig(n_codebooks=3, codebook_size=16, codebook_dim=8, d_model=16, n_layers=1)
    codec = MelCodec(ccfg)
    _jitter(codec, 2)
    for vq in codec.rvq.layers:
        vq.codebook.copy_(torch.randn_like(vq.codebook))
        vq.initialised.fill_(True)
    durations = {"alignment": "durations", "encoder_layers": 1, "latent_dim": 8, "text_aux_layer": -1}
    tcfg = TalkerConfig(d_model=24, n_layers=2, n_heads=3, n_kv_heads=1, d_ff=48, ctx_len=256, dropout=0.0,
                        frames_per_step=2, n_codebooks=2, codebook_size=16, text_vocab_size=len(vocab),
                        max_frames_per_char=1.0, depth_layers=1,
                        **(durations if alignment == "durations" else {"text_aux_layer": 0}))
    talker = build_talker_model(tcfg).eval()
    _jitter(talker, 3)
    if alignment == "durations":
        talker.set_latent(torch.stack([vq.codebook for vq in codec.rvq.layers[:2]]), torch.randint(0, 16, (50, 2)))
    demo = json.loads((ROOT / "configs/talker_demo.json").read_text())
    demo["codec"]["model"] = dataclasses.asdict(ccfg)
    demo["talker"] = dataclasses.asdict(tcfg)
    tdir, cdir = root / "talker", root / "talker" / "codec"
    cdir.mkdir(parents=True)
    (cdir / "config.json").write_text(json.dumps(demo["codec"]))
    save_weights(codec, cdir)
    (tdir / "config.json").write_text(json.dumps(demo))
    vocab.save(tdir / "text_vocab.json")
    (tdir / "codec.json").write_text(json.dumps({"codec_dir": "codec", "codec_sha1": file_sha1(cdir / "model.safetensors")}))
    save_weights(talker, tdir)
    return talker


def build_vocoder(folder) -> None:
    torch.manual_seed(2)
    vcfg = VocoderConfig([8, 8, 4], [16, 16, 8], 16, [3], [[1, 3]], mpd_periods=[2], msd_scales=1, disc_channels=4)
    gan = GanConfig(2e-4, 2e-4)
    model = HifiGan(vcfg, gan)
    raw = json.loads((ROOT / "configs/vocoder_tiny.json").read_text())
    raw["model"] = dataclasses.asdict(vcfg)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(raw))
    save_weights(model, folder)


def build_data(folder) -> dict[str, str]:
    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True)
    (folder / "images").mkdir()
    rows = []
    for i, secs in enumerate((0.7, 1.6)):
        t = np.arange(int(secs * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (220 + 100 * i) * t * (1 + t)) + rng.standard_normal(t.size) * 0.02
        save_wav(folder / "audio" / f"c{i}.wav", wav.astype(np.float32))
        rows.append(f"c{i}.wav,{TEXTS[i].lower().rstrip('.')}")
    (folder / "audio/asr_val.csv").write_text("wav,text\n" + "\n".join(rows) + "\n")
    (folder / "audio/tts_val.csv").write_text("text,wav\n" + "".join(f"\"{t}\",c0.wav\n" for t in TEXTS))
    ann = []
    for i, (w, h) in enumerate(((40, 40), (70, 50))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"i{i}.png")
        ann.append({"image": f"i{i}.png", "caption": "noise", "qa": [["What colour is it?", "grey"]]})
    (folder / "images/annotations_val.json").write_text(json.dumps(ann))
    return {"asr_csv": str(folder / "audio/asr_val.csv"), "image_manifest": str(folder / "images/annotations_val.json"),
            "tts_csv": str(folder / "audio/tts_val.csv"), "text_file": None}


def build_all(root, alignment: str = "attention", vocoder: bool = True) -> dict:
    """-> dict of folders: sft, talker, vocoder (None without one), data (paths) and the models themselves."""
    lines = [ln for ln in SONNETS.read_text().splitlines() if ln.strip()]
    tok = train_bpe(iter(lines), 400)
    sft = build_sft(root / "sft", tok)
    talker = build_talker(root / "tts", alignment=alignment)
    if vocoder:
        build_vocoder(root / "vocoder")
    data = build_data(root / "data")
    return {"root": root, "sft": root / "sft", "talker": root / "tts", "vocoder": root / "vocoder" if vocoder else None,
            "data": data, "model": sft, "talker_model": talker}


# a parity report small enough for a test: few prompts, short generations, no recogniser
SMALL = {"prompts": 4, "new_tokens": 24, "asr_clips": 2, "vqa_questions": 2, "tts_texts": 2, "sphinx": False}


def export_small(tiny: dict, out):
    """Export build_all's folders to out with the SMALL parity report -> (sources, report)."""
    from omni.export import exporter as E
    src = E.load_sources(tiny["sft"], tiny["talker"], tiny["vocoder"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny models: one thread is faster, and immune to a busy machine
    try:
        return src, E.export(src, out, E.ExportOptions(**SMALL, data=tiny["data"]))
    finally:
        torch.set_num_threads(threads)
