"""Flags that mean the same are defined once (cli/common.py), and messages name flags as users type them.

Parser-only and message-only: nothing here builds a model or imports TensorFlow's runtime.
"""

import re

import pytest

from bit_keras import presets
from bit_keras.cli.main import _main, build_parser


def _commands():
    parser = build_parser()
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def _action(command, flag):
    return next((a for a in command._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("flag, commands", [
    ("--dataset", ("finetune", "evaluate", "train")),
    ("--data-dir", ("finetune", "evaluate", "train", "vtab")),
    ("--no-download", ("finetune", "evaluate", "train", "vtab")),
    ("--micro-batch", ("finetune", "vtab")),
    ("--steps", ("finetune", "vtab")),
    ("--resolution", ("finetune", "vtab")),
    ("--seed", ("finetune", "vtab")),
    ("--precision", ("finetune", "train")),
    ("--strategy", ("finetune", "evaluate", "train", "vtab")),
])
def test_a_shared_flag_reads_the_same_in_every_command(flag, commands):
    every = _commands()
    actions = [_action(every[name], flag) for name in commands]
    assert all(actions), [name for name, action in zip(commands, actions) if action is None]
    if flag == "--dataset":  # finetune adds the detection/segmentation specs; evaluate also takes a dense RUN
        from bit_keras.cli.common import DATASET_HELP

        assert all(a.help.startswith(DATASET_HELP) and a.default is None for a in actions)
        return
    assert len({(a.help, a.default, a.required, tuple(a.choices or ())) for a in actions}) == 1, flag


def test_the_global_batch_reads_the_same_where_it_is_one_update():
    every = _commands()
    helps = {name: _action(every[name], "--batch").help for name in ("finetune", "vtab", "hyperrule", "train")}
    assert all(text.startswith("Global batch of one update over all replicas") for text in helps.values()), helps
    assert _action(every["hyperrule"], "--schedule").choices == ("paper", "public")


def test_vtab_says_when_it_needs_the_variant():
    help_text = _action(_commands()["vtab"], "--variant").help
    assert "Required" not in help_text and "not for --list" in help_text


def test_a_library_switch_reads_as_the_flag_users_type(tmp_path, capsys):
    args = build_parser().parse_args(["export", "--variant", "r14x1", "--output", str(tmp_path / "out")])
    assert _main(args) == 2
    error = capsys.readouterr().err
    assert "--random-weights to export untrained weights" in error and "--random-weights True" not in error
    assert "m-r14x1" not in error and "such as" not in error   # BiT released no R14x1
    args = build_parser().parse_args(["export", "--variant", "r50x1", "--output", str(tmp_path / "out")])
    assert _main(args) == 2
    suggested = re.search(r"a released name such as '([^']+)'", capsys.readouterr().err).group(1)
    assert presets.find_preset(suggested).architecture.name == "r50x1"


def test_a_switch_value_in_a_library_message_reads_as_the_switch():
    from bit_keras.cli.main import _as_flags

    args = build_parser().parse_args(["finetune", "--variant", "r14x1", "--dataset", "digits", "--output", "out"])
    assert _as_flags("load_weights=False; download=False; batch=512; seed=3", args) == \
        "--random-weights; --no-download; --batch 512; --seed 3"
