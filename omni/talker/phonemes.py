"""Text -> IPA phonemes with espeak-ng's library (libespeak-ng, in-process through ctypes).

English spelling says little about sound ("though", "through", "tough"), so a small Talker reading
letters must also learn letter-to-sound. A phonemizer hands it the sounds instead, as VITS and Piper
do (in μOmni it lowers the code CE a little but not the recogniser's CER; docs/experiments.md): espeak-ng (already what the ASR builder speaks with) turns
each clause into IPA with stress marks and word boundaries. Clause punctuation, which espeak-ng
turns into clause breaks and drops, is kept between the clauses, so the Talker still sees where to
pause. Well under a millisecond a sentence; one espeak-ng instance per process, behind a lock.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading

from omni.errors import DataError

VOICE = "en-us"
_CLAUSE_PUNCT = re.compile(r"([.,?!:;]+)")
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000   # return an error instead of exiting the process
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02


class PhonemizerError(DataError):
    """espeak-ng's library is missing or refused the voice (a DataError: the stage scripts report it
    as one line and exit 2)."""


class _Espeak:
    def __init__(self, voice: str) -> None:
        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            raise PhonemizerError("the Talker reads phonemes (talker.text_input=phonemes) but libespeak-ng "
                                  "was not found: install espeak-ng (`bash scripts/setup.sh`, or "
                                  "`apt-get install espeak-ng`)")
        lib = ctypes.cdll.LoadLibrary(name)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT) <= 0:
            raise PhonemizerError(f"{name}: espeak_Initialize failed (is espeak-ng-data installed?)")
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise PhonemizerError(f"{name}: espeak-ng has no voice '{voice}'")
        self.lib, self.lock = lib, threading.Lock()

    def clauses(self, text: str) -> list[str]:
        """text -> the IPA of each clause espeak-ng finds in it."""
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        out = []
        with self.lock:
            while ptr.value:  # espeak-ng advances ptr clause by clause, to NULL at the end
                out.append(self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA).decode("utf-8"))
        return out


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def phonemize(text: str) -> str:
    """Text (already normalised: lowercase, single spaces) -> IPA, clause punctuation kept:
    ``"the night was cold, and dark."`` -> ``"ðə nˈaɪt wʌz kˈoʊld, ænd dˈɑːɹk."``."""
    global _ENGINE
    with _ENGINE_LOCK:  # espeak_Initialize once per process
        if _ENGINE is None:
            _ENGINE = _Espeak(VOICE)
    out = []
    for k, piece in enumerate(_CLAUSE_PUNCT.split(text)):
        if k % 2:  # the separators: punctuation, attached to the clause before it
            out.append(piece)
        elif piece.strip():
            out.append(" " + " ".join(c for c in _ENGINE.clauses(piece) if c))
    return " ".join("".join(out).split())
