"""Entry point of `bit_keras` and `python -m bit_keras`.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`handler` on them. Modules import TensorFlow/Keras inside their handlers, never at import
time, so `bit_keras list` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
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
    "bit_keras.cli.vtab",       # vtab
)


def build_parser():
    parser = argparse_flags.ArgumentParser(
        prog="bit_keras", description="Big Transfer (BiT) models for Keras 3.")
    parser.add_argument("--verbose", action="store_true",
                        help="Also show TensorFlow's own log lines and full tracebacks (anywhere on the line).")
    for action in parser._actions:  # absl's --helpfull lists absl's own flags, none of which are ours
        if "--helpfull" in action.option_strings:
            action.help = argparse.SUPPRESS
    # Plain argparse below the top level: no absl --helpfull/--flagfile noise in each command's help.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():
        flags = {action.dest: action.option_strings[-1] for action in command._actions
                 if action.option_strings and action.option_strings[-1].startswith("--")}
        # A switch's flag stands for the value it sets: --random-weights for load_weights=False.
        switches = {action.dest: str(action.const) for action in command._actions
                    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))}
        command.set_defaults(flag_names=flags, flag_switches=switches)
    return parser


def _main(args):
    from bit_keras.errors import BiTError

    if not getattr(args, "verbose", False):
        from bit_keras.cli.quiet import quiet_python_logs

        quiet_python_logs()
    from bit_keras import files
    from bit_keras.runs import sigterm_stops

    try:
        if hasattr(args, "strategy"):
            from bit_keras.cli.common import check_hardware_flags

            check_hardware_flags(args)   # before anything is loaded or built
        with sigterm_stops():  # SIGTERM: one line and exit status 143, after what can be resumed is saved
            return args.handler(args) or 0
    except Exception as error:
        # Our own errors (and the system's: disk full, permissions) name the problem; a
        # traceback would bury it. Anything else is a bug and keeps its traceback.
        full = not isinstance(error, BiTError) and files.is_disk_full(error)  # a write outside staged files
        if getattr(args, "verbose", False) or not (full or isinstance(error, (BiTError, OSError))):
            raise
        if full:
            error = files.disk_full_error(getattr(error, "filename", None) or os.getcwd(), error)
        logging.debug("Failed", exc_info=True)
        print(f"bit_keras {args.command}: error: {_as_flags(str(error), args)}", file=sys.stderr)
        return getattr(error, "exit_code", 2)


def _as_flags(message: str, args) -> str:
    """Library messages name arguments (`weights=`); on the command line they are flags (`--weights `).

    A switch set to the value its flag sets (`load_weights=False`, `download=False`) is the bare
    flag (`--random-weights`, `--no-download`)."""
    flags, switches = getattr(args, "flag_names", {}), getattr(args, "flag_switches", {})

    def as_flag(match):
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        if value is not None and switches.get(name) == value:
            return flags[name]
        return f"{flags[name]} {value or ''}"

    return re.sub(r"\b([a-z_]+)=(?:(True|False)\b)?", as_flag, message)


def run(argv=None):
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if not verbose:
        from bit_keras.cli.quiet import quiet_tensorflow

        quiet_tensorflow()  # before anything imports TensorFlow
    argv = [arg for arg in argv if arg != "--verbose"] + (["--verbose"] if verbose else [])
    app.run(_main, argv=["bit_keras", *argv], flags_parser=lambda full: _parse(build_parser(), full[1:]))


def _parse(parser, argv):
    """`--verbose` may stand anywhere on the line; argparse wants it before the command."""
    verbose = "--verbose" in argv
    args = parser.parse_args([arg for arg in argv if arg != "--verbose"])
    args.verbose = verbose
    return args


if __name__ == "__main__":
    run()
