"""Entry point of `bit_keras` and `python -m bit_keras`.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`handler` on them. Modules import TensorFlow/Keras inside their handlers, never at import
time, so `bit_keras list` and `--help` answer at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys

from absl import app, logging
from absl.flags import argparse_flags

COMMAND_MODULES = (
    "bit_keras.cli.models",     # list, inspect
    "bit_keras.cli.hyperrule",  # hyperrule
    "bit_keras.cli.export",     # export
    "bit_keras.cli.finetune",   # finetune, evaluate, demo
    "bit_keras.cli.train",      # train
    "bit_keras.cli.bench",      # bench
)


class UsageError(Exception):
    """A problem with the flags themselves; printed as one line, exit status 2."""


def build_parser():
    parser = argparse_flags.ArgumentParser(
        prog="bit_keras", description="Big Transfer (BiT) models for Keras 3.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():
        flags = {action.dest: action.option_strings[-1] for action in command._actions
                 if action.option_strings and action.option_strings[-1].startswith("--")}
        command.set_defaults(flag_names=flags)
    return parser


def _main(args):
    from bit_keras.errors import BiTError

    try:
        return args.handler(args) or 0
    except (UsageError, BiTError, OSError) as error:
        # Our own errors (and the system's: disk full, permissions) name the problem; a
        # traceback would bury it. Anything else is a bug and keeps its traceback.
        logging.debug("Failed", exc_info=True)
        print(f"bit_keras {args.command}: error: {_as_flags(str(error), args)}", file=sys.stderr)
        return 2


def _as_flags(message: str, args) -> str:
    """Library messages name arguments (`weights=`); on the command line they are flags (`--weights `)."""
    flags = getattr(args, "flag_names", {})
    return re.sub(r"\b([a-z_]+)=", lambda m: f"{flags[m.group(1)]} " if m.group(1) in flags else m.group(0), message)


def run(argv=None):
    """Console-script entry point."""
    app.run(_main, argv=argv if argv is None else ["bit_keras", *argv],
            flags_parser=lambda argv: build_parser().parse_args(argv[1:]))


if __name__ == "__main__":
    run()
