"""The command-line convention every program follows (omni/cli/common.py's Parser): help on every
option, defaults in --help, and old spellings of renamed options stopped with the new one."""
import ast
from pathlib import Path

import pytest

from omni.cli import chat, evaluate, tts
from omni.cli.common import Parser
from tests.conftest import ROOT


def program_files() -> list[Path]:
    """Every Python file that may define command-line options: the package, scripts/, lab/, the shells."""
    files = [*ROOT.glob("*.py")]
    for folder in ("omni", "scripts", "lab"):
        files += (ROOT / folder).rglob("*.py")
    return sorted(files)


def calls(tree: ast.AST, name: str):
    """The calls of ``<anything>.name(...)`` or ``name(...)`` in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == name) or (isinstance(f, ast.Name) and f.id == name):
                yield node


def missing_help(source: str) -> list[int]:
    """Lines of the add_argument calls without a non-empty help=."""
    lines = []
    for call in calls(ast.parse(source), "add_argument"):
        help_ = next((k.value for k in call.keywords if k.arg == "help"), None)
        if help_ is None or (isinstance(help_, ast.Constant) and not str(help_.value).strip()):
            lines.append(call.lineno)
    return lines


def test_the_check_finds_an_option_without_help():
    src = 'p.add_argument("--a", help="fine")\np.add_argument("--b")\np.add_argument("--c", help="")\n'
    assert missing_help(src) == [2, 3]


def test_every_option_has_help():
    files = program_files()
    assert len(files) > 30 and ROOT / "omni" / "cli" / "chat.py" in files
    bad = [f"{f.relative_to(ROOT)}:{line}" for f in files for line in missing_help(f.read_text(encoding="utf-8"))]
    assert not bad, "add_argument without help=: " + ", ".join(bad)


def test_every_program_uses_the_shared_parser():
    common = ROOT / "omni" / "cli" / "common.py"
    bad = [f"{f.relative_to(ROOT)}:{c.lineno}" for f in program_files() if f != common
           for c in calls(ast.parse(f.read_text(encoding="utf-8")), "ArgumentParser")]
    assert not bad, "argparse.ArgumentParser instead of omni.cli.common.Parser: " + ", ".join(bad)


@pytest.mark.parametrize("main, argv, message", [
    (chat.main, ["--ckpt_dir", "x"], "--ckpt_dir is now --ckpt"),
    (chat.main, ["--ckpt-dir=x"], "--ckpt-dir is now --ckpt"),
    (evaluate.main, ["asr", "--csv", "x.csv", "--max-items", "3"], "--max-items is now --n"),
    (evaluate.main, ["omni", "--ckpt_dir", "x"], "--ckpt_dir is now --ckpt"),
    (tts.main, ["--text", "hi", "--out", "x.wav", "--vocoder-dir", "v"], "--vocoder-dir is now --vocoder"),
    (tts.main, ["--text", "hi", "--out", "x.wav", "--ckpt", "t"], "--ckpt is now --talker"),
])
def test_old_spellings_name_the_new_option(main, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: {message}") and sum("error" in line for line in err) == 1


def test_an_old_spelling_is_a_hint_only_where_the_new_one_exists(capsys):
    """evaluate talker never had a vocoder: --vocoder-dir there is a plain unknown option."""
    with pytest.raises(SystemExit):
        evaluate.main(["talker", "--talker", "t", "--vocoder-dir", "v"])
    assert "unrecognized arguments: --vocoder-dir v" in capsys.readouterr().err


def test_a_program_adds_its_own_renames(capsys):
    p = Parser(renamed={"--old": "--new"})
    p.add_argument("--new", help="the new spelling")
    p.add_argument("rest", nargs="*", help="anything")
    assert p.parse_args(["--new", "1", "--", "--old"]).rest == ["--old"]  # after --, a value, not an option
    with pytest.raises(SystemExit):
        p.parse_args(["--old", "1"])
    assert capsys.readouterr().err.strip().endswith("error: --old is now --new")


def test_the_old_hifigan_choice_names_the_folder_option(capsys):
    with pytest.raises(SystemExit) as e:
        tts.main(["--text", "hi", "--out", "x.wav", "--vocoder", "hifigan"])
    assert e.value.code == 2
    assert "--vocoder checkpoints/vocoder_tiny" in capsys.readouterr().err


def test_a_vocoder_folder_must_exist(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tts.main(["--text", "hi", "--out", "x.wav", "--vocoder", str(tmp_path / "none")])
    assert "not auto, griffinlim or a HiFi-GAN checkpoint folder" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["asr", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: checkpoints/audio_enc_tiny/best)" in out and "(default: 16)" in out
    assert "(default: None)" not in out and "(default: False)" not in out  # empty defaults: the help says why


def test_subcommands_share_the_parser():
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    p = Parser()
    sub = p.add_subparsers(dest="task")
    assert isinstance(sub.add_parser("x"), Parser)
