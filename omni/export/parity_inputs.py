"""The held-out inputs an export's parity report runs both sides on, and the helpers that compare them
(omni/export/parity.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni.audio.features import load_audio, save_wav
from omni.export import runtime as R
from omni.images import load_image_tensor
from omni.multimodal.template import AUDIO, IMAGE, Turn, build_sequence

CAPTION_PROMPT, ASR_PROMPT, TEXT_PROMPT = "Describe the image.", "Transcribe the audio.", "Continue the text: "
FALLBACK_TEXTS = ["The cat sat on the warm mat.", "Please open the window before you leave.",
                  "A red ball rolls under the old wooden table.", "We will meet at the station at noon.",
                  "Two birds sing in the tall green tree.", "Turn left after the bridge, then go straight on."]


class HeldOut:
    """Prompts, clips, images and texts from held-out manifests, or synthetic stand-ins."""

    def __init__(self, data: dict[str, str | None], tmp: Path, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.synthetic: list[str] = []
        self.clips = self._csv(data.get("asr_csv"), "wav", "text")
        if not self.clips:
            self.synthetic.append("audio")
            for i, secs in enumerate((1.3, 2.1)):
                t = np.arange(int(secs * 16000)) / 16000
                wav = (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t))).astype(np.float32)
                save_wav(tmp / f"clip{i}.wav", wav + rng.standard_normal(wav.size).astype(np.float32) * 0.01)
                self.clips.append((str(tmp / f"clip{i}.wav"), ""))
        self.images = self._images(data.get("image_manifest"))
        if not self.images:
            from PIL import Image
            self.synthetic.append("images")
            for i in range(2):
                arr = rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp / f"image{i}.png")
                self.images.append((str(tmp / f"image{i}.png"), [CAPTION_PROMPT], []))
        tts = [t for _, t in self._csv(data.get("tts_csv"), "wav", "text")]
        self.tts_texts = tts or list(FALLBACK_TEXTS)
        if not tts:
            self.synthetic.append("tts texts")
        lines = []
        if data.get("text_file") and Path(data["text_file"]).is_file():
            lines = [ln.strip() for ln in Path(data["text_file"]).read_text(encoding="utf-8").splitlines() if ln.strip()]
        self.texts = [TEXT_PROMPT + " ".join(ln.split()[:12]) for ln in lines] or \
                     [TEXT_PROMPT + t for t in self.tts_texts]

    @staticmethod
    def _csv(path: str | None, wav_key: str, text_key: str) -> list[tuple[str, str]]:
        if not path or not Path(path).is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        base = Path(path).parent
        return [(str(base / r[wav_key]), r[text_key]) for r in rows if (base / r[wav_key]).is_file()]

    @staticmethod
    def _images(path: str | None) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
        if not path or not Path(path).is_file():
            return []
        text = Path(path).read_text(encoding="utf-8").strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        base = Path(path).parent
        out = []
        for r in rows:
            qa = [tuple(x) for x in r.get("qa", [])] + ([(r["question"], r.get("answer", ""))] if r.get("question") else [])
            if (base / r["image"]).is_file():
                out.append((str(base / r["image"]), [CAPTION_PROMPT] + [q for q, _ in qa], qa))
        return out

    def prompts(self, n: int) -> list[dict[str, Any]]:
        """n chat prompts cycling text / image / audio ones: {"text", "images": [paths], "audio": [paths]}."""
        kinds = [[{"text": t, "images": [], "audio": []} for t in self.texts],
                 [{"text": qs[k % len(qs)], "images": [p], "audio": []} for k, (p, qs, _) in enumerate(self.images)],
                 [{"text": ASR_PROMPT, "images": [], "audio": [p]} for p, _ in self.clips]]
        kinds = [k for k in kinds if k]
        out = []
        i = 0
        while len(out) < n and any(kinds):
            pool = kinds[i % len(kinds)]
            if pool:
                out.append(pool[(i // len(kinds)) % len(pool)])
            i += 1
        return out


def err(onnx_out: np.ndarray, ref: torch.Tensor | np.ndarray) -> dict[str, float]:
    r = ref.detach().float().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float32)
    o = np.asarray(onnx_out, dtype=np.float32)
    if o.shape != r.shape:
        return {"max_abs": float("inf"), "max_ref": float(np.abs(r).max()) if r.size else 0.0, "rel": float("inf"),
                "shape_mismatch": f"{list(o.shape)} vs {list(r.shape)}"}
    max_abs = float(np.abs(o - r).max()) if r.size else 0.0
    max_ref = float(np.abs(r).max()) if r.size else 0.0
    return {"max_abs": max_abs, "max_ref": max_ref, "rel": max_abs / max(max_ref, 1e-12)}


def check_case(label: str, outputs: dict[str, dict[str, float]], tol: float) -> dict[str, Any]:
    worst = max(v["rel"] for v in outputs.values())
    return {"case": label, "outputs": outputs, "worst_rel": worst, "ok": worst <= tol}


def torch_inputs(omni, seq_ids, seq_kinds, images: list[str], clips: list[str]):
    img = torch.stack([load_image_tensor(p, omni.comp.vision.img_size) for p in images]) if images else None
    audio = lengths = None
    if clips:
        wavs = [load_audio(p) for p in clips]
        lengths = torch.tensor([len(a) for a in wavs])
        audio = torch.zeros(len(wavs), int(lengths.max()))
        for k, a in enumerate(wavs):
            audio[k, :len(a)] = torch.from_numpy(a)
    ids, kinds = torch.tensor([seq_ids]), torch.tensor([seq_kinds])
    return omni.embed(ids, kinds, img, audio, lengths), ids, kinds


def prompt_sequence(src, rt: R.OnnxOmni, p: dict[str, Any]):
    """The same chat prompt through both template implementations -> (torch Sequence, runtime ids, kinds)."""
    omni = src.omni
    media = [(IMAGE, omni.image_slots()) for _ in p["images"]]
    media += [(AUDIO, omni.audio_slots(len(load_audio(c)))) for c in p["audio"]]
    seq = build_sequence(src.tok, [Turn("user", p["text"], media)], generation_prompt=True)
    rids, rkinds = R.build_sequence(rt.encode, rt.special, [R.Turn("user", p["text"], media)], rt.cfg["system_prompt"])
    return seq, rids, rkinds


def runtime_inputs(rt: R.OnnxOmni, ids, kinds, p):
    feats_i = [rt.image_features(rt.image_tensor(x)[None])[0] for x in p["images"]]
    feats_a = [rt.audio_features(R.load_audio(x)) for x in p["audio"]]
    return rt.inputs(ids, kinds, feats_i, feats_a)
