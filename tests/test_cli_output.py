"""The command line prints our lines only: no TensorFlow banner or log lines on stderr by default.

Each command runs as a user would run it (a fresh process, no TF_CPP_MIN_LOG_LEVEL set).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TensorFlow, absl and CUDA probing print when nobody silences them.
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|.*(cuInit|oneDNN|cuda_|cpu_feature_guard|"
                   r"Sharding callback|Collective all_reduce|Constructing tf\.data))", re.M)


def _run(*args, cwd, log_level=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if log_level is not None:  # as set in many Keras users' shell profiles
        env["TF_CPP_MIN_LOG_LEVEL"] = log_level
    env["BIT_KERAS_CACHE"] = os.path.join(cwd, "cache")
    return subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    reference.write_checkpoint(path / "tiny.npz", (1, 1, 1, 1), 1, num_classes=3)
    return str(path)


@pytest.mark.parametrize("command", [
    ["inspect", "tiny.npz"],
    ["export", "--weights", "tiny.npz", "--output", "export"],
    ["finetune", "--variant", "r14x1", "--dataset", "digits", "--output", "run", "--batch", "8", "--steps", "1",
     "--resolution", "16", "--eval-split", "test[:8]", "--quiet"],
    ["train", "--variant", "r14x1", "--dataset", "digits", "--model-dir", "upstream", "--batch", "8",
     "--resolution", "32", "--epochs", "0.01", "--warmup-steps", "1", "--strategy", "default"],
    ["demo", "--output", "demo", "--steps", "2", "--batch", "8", "--resolution", "16"],
], ids=lambda command: command[0])
def test_commands_print_no_tensorflow_log_lines(command, workdir):
    done = _run(*command, cwd=workdir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not NOISE.search(done.stderr), done.stderr[:2000]
    assert not NOISE.search(done.stdout), done.stdout[:2000]
    if command[0] == "demo":  # the README's main command, end to end offline with an empty cache
        _check_demo(done.stdout, os.path.join(workdir, "demo"))


def _check_demo(printed, output):
    assert "NO released BiT checkpoint" in printed and "RANDOM weights" in printed
    assert "hub.KerasLayer max |diff|" in printed and "Result: test accuracy" in printed
    with open(os.path.join(output, "demo_metrics.json")) as handle:
        result = json.load(handle)
    assert result["variant"] == "r14x1" and result["weights"] == "random" and result["steps"] == 2
    assert result["test_examples"] == 360 and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["load_backbone_max_abs_diff"] < 1e-5
    assert os.path.exists(os.path.join(output, "export", "saved_model.pb"))


def test_a_users_own_log_level_keeps_the_start_up_lines_out(workdir):
    done = _run("export", "--weights", "tiny.npz", "--output", "export_level3", cwd=workdir, log_level="3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not NOISE.search(done.stderr), done.stderr[:2000]


def test_verbose_brings_tensorflow_lines_back_and_errors_stay_one_line(workdir):
    done = _run("export", "--weights", "tiny.npz", "--output", "export_verbose", "--verbose", cwd=workdir)
    assert done.returncode == 0 and NOISE.search(done.stderr)
    done = _run("export", "--weights", "missing.npz", "--output", "x", cwd=workdir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--weights 'missing.npz'" in done.stderr


def test_every_flag_has_help_and_commands_show_no_absl_flags():
    from bit_keras.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    missing = [f"{name} {action.option_strings[0]}" for name, command in commands.items()
               for action in command._actions if action.option_strings and not action.help]
    assert not missing
    for command in commands.values():
        assert "--helpfull" not in command.format_help() and "--flagfile" not in command.format_help()
    assert "--helpfull" not in parser.format_help()  # `bit_keras --help` too


def test_export_infers_the_format_from_the_output_name(workdir):
    from bit_keras.cli.main import _main, build_parser

    output = os.path.join(workdir, "inferred.keras")
    assert _main(build_parser().parse_args(["export", "--weights", os.path.join(workdir, "tiny.npz"),
                                            "--output", output])) == 0
    assert os.path.isfile(output)
    args = build_parser().parse_args(["export", "--weights", "x.npz", "--output", "y.keras", "--format", "savedmodel"])
    assert _main(args) == 2
