"""The chat console's helpers: readline line editing, the input history file, and audio players
(a whole WAV after the reply, or raw PCM streamed to the player while the reply is spoken)."""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

DEFAULT_HISTORY = "~/.omni_chat_history"
HISTORY_LINES = 1000  # the newest lines kept in the history file
# command lines that play a WAV to its end, most common first; the WAV's path is appended
PLAYERS = (("aplay", "-q"), ("paplay",), ("afplay",), ("ffplay", "-nodisp", "-autoexit", "-loglevel", "error"),
           ("play", "-q"))


class PlaybackError(RuntimeError):
    pass


def find_player() -> tuple[str, ...] | None:
    """The first of PLAYERS installed on PATH, or None."""
    return next((cmd for cmd in PLAYERS if shutil.which(cmd[0])), None)


def play_wav(path: Path, player: tuple[str, ...]) -> None:
    """Play a WAV with ``player`` (from find_player) and wait until it ends. Raises PlaybackError with
    the player's own complaint when it fails. Ctrl-C stops it (the player gets the terminal's SIGINT;
    subprocess.run kills it otherwise) and propagates as KeyboardInterrupt."""
    try:
        # stdin from /dev/null: a player that reads keys must not eat the lines typed at the prompt
        done = subprocess.run([*player, str(path)], check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:
        raise PlaybackError(f"could not run {player[0]}: {e}") from e
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PlaybackError(f"{player[0]} could not play {path} (exit status {done.returncode}): {why}")


def line_editing() -> ModuleType | None:
    """readline, imported, when stdin is a terminal: importing it is what gives input() line editing
    and arrow-key history. None when stdin is not a terminal (a pipe, a test) or there is no readline."""
    if not sys.stdin.isatty():
        return None
    if importlib.util.find_spec("readline") is None:  # e.g. Windows' CPython
        print("[this Python has no readline module: no line editing or history recall at the prompt]")
        return None
    return importlib.import_module("readline")


class LineHistory:
    """The lines typed at the prompt, kept in a plain text file (one line each, so GNU readline,
    macOS's libedit and no readline at all read it alike): loaded at start, saved at exit, the newest
    HISTORY_LINES only. ``path`` None keeps nothing."""

    def __init__(self, path: Path | None, readline: ModuleType | None) -> None:
        self.path, self.new = path, []
        try:
            lines = self._read()
        except OSError as e:
            # not saving either: a file we cannot read is not ours to overwrite
            print(f"[input history off: cannot read {path}: {e}]", flush=True)
            self.path, lines = None, []
        if readline is not None:
            for line in lines:
                readline.add_history(line)

    def _read(self) -> list[str]:
        if self.path is None or not self.path.exists():
            return []
        return self.path.read_text(encoding="utf-8", errors="replace").splitlines()[-HISTORY_LINES:]

    def add(self, line: str) -> None:
        # input() adds the line to readline's own list (skipping repeats); this list is the file's
        if not self.new or self.new[-1] != line:
            self.new.append(line)

    def save(self) -> None:
        if self.path is None or not self.new:
            return
        try:
            # read again: another chat may have saved its lines since this one started
            lines = (self._read() + self.new)[-HISTORY_LINES:]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            tmp.replace(self.path)
        except OSError as e:
            print(f"[could not save the input history to {self.path}: {e}]", flush=True)


# players that read 16 kHz mono 16-bit PCM from stdin, so speech plays while it is synthesised
STREAM_PLAYERS = {"aplay": ("aplay", "-q", "-t", "raw", "-f", "S16_LE", "-r", "16000", "-c", "1", "-"),
                  "paplay": ("paplay", "--raw", "--format=s16le", "--rate=16000", "--channels=1"),
                  "play": ("play", "-q", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-")}


class PcmStream:
    """A player process fed 16 kHz float chunks as they are synthesised (``write``); ``close`` waits
    for it to play the rest. Raises PlaybackError when the player fails."""

    def __init__(self, cmd: tuple[str, ...]) -> None:
        self.cmd = cmd
        try:
            self.proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        except OSError as e:
            raise PlaybackError(f"could not run {cmd[0]}: {e}") from e

    def write(self, chunk: np.ndarray) -> None:
        pcm = (np.clip(chunk, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        try:
            self.proc.stdin.write(pcm)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise PlaybackError(f"{self.cmd[0]} stopped taking audio: {self._why()}") from e

    def _why(self) -> str:
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        return (err.splitlines() or ["no message"])[-1]

    def close(self, wait: bool = True) -> None:
        """Let the player finish (``wait``) or stop it now (Ctrl-C)."""
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        if not wait:
            self.proc.kill()
            self.proc.wait()
            return
        code = self.proc.wait()
        if code != 0:
            raise PlaybackError(f"{self.cmd[0]} failed (exit status {code}): {self._why()}")


class Playback:
    """--play: each spoken reply through the first audio player found (looked up once; said once when
    there is none). A player that reads raw PCM from stdin gets the reply while it is spoken (``sink``);
    any other plays the reply's WAV afterwards (``play``). Ctrl-C stops the playback, not the chat."""

    def __init__(self, on: bool) -> None:
        self.player: tuple[str, ...] | None = None if on else ()   # () once looked up and none found

    def _found(self) -> tuple[str, ...]:
        if self.player is None:
            self.player = find_player() or ()
            if not self.player:
                print(f"[--play: no audio player found ({', '.join(cmd[0] for cmd in PLAYERS)}); spoken replies "
                      "are only written to their WAV files]", flush=True)
        return self.player

    def off(self) -> None:
        self.player = ()

    def sink(self) -> PcmStream | None:
        """A player streaming the reply as it is spoken, or None (no --play, no player, or one that cannot)."""
        player = self._found()
        if not player or player[0] not in STREAM_PLAYERS:
            return None
        try:
            return PcmStream(STREAM_PLAYERS[player[0]])
        except PlaybackError as e:
            print(f"[{e}]", flush=True)
            return None

    def finish(self, sink: PcmStream) -> None:
        """Wait for the player to play what is left; Ctrl-C stops it."""
        try:
            sink.close()
        except KeyboardInterrupt:
            sink.close(wait=False)
            print("\n[playback stopped]", flush=True)
        except PlaybackError as e:
            print(f"[{e}]", flush=True)

    def play(self, wav: Path) -> None:
        """The reply's WAV through the player, after the reply."""
        if not self._found():
            return
        try:
            play_wav(wav, self.player)
        except KeyboardInterrupt:
            print("\n[playback stopped]", flush=True)
        except PlaybackError as e:
            print(f"[{e}]", flush=True)
