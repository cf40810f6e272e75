"""The argument parser every program uses (argparse only, so the torch-free ONNX runtime shares it):
defaults shown in --help, and the old spellings of renamed options stop with a hint."""
from __future__ import annotations

import argparse
import sys

# Options renamed when every program took one convention (--ckpt for a checkpoint folder, --n for a
# row limit, --vocoder for the vocoder). A saved command line with an old spelling stops with the
# new one, rather than argparse's bare "unrecognized arguments".
RENAMED = {"--ckpt_dir": "--ckpt", "--ckpt-dir": "--ckpt", "--max-items": "--n", "--max-samples": "--n",
           "--n-items": "--n", "--vocoder-dir": "--vocoder"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Docstring descriptions and epilogs as written; a default shown after each help text, unless
    it is an empty one (None, False, "": the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if any(action.default is empty for empty in (None, False, argparse.SUPPRESS)) or action.default == "":
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """The argument parser of every program: defaults in --help (subcommands too: add_subparsers
    makes them of this class), and an old spelling of a renamed option (RENAMED, plus this
    program's ``renamed``) is a usage error naming the new one."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.renamed = {**RENAMED, **(renamed or {})}

    def parse_known_args(self, args=None, namespace=None):
        tokens = sys.argv[1:] if args is None else list(args)
        for token in tokens[:tokens.index("--")] if "--" in tokens else tokens:
            old = token.split("=", 1)[0]
            new = self.renamed.get(old)
            # only where the new spelling exists and the old one is gone: another program may have
            # neither (a plain unknown option), and a subcommand checks its own arguments itself
            if new and new in self._option_string_actions and old not in self._option_string_actions:
                self.error(f"{old} is now {new}")
        return super().parse_known_args(tokens, namespace)
