"""The fine-tuning runner end to end: a tiny BiT learns digits, a killed run resumes exactly, the CLI."""

import json
import os

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras.cli import main as cli_main
from bit_keras.finetune.runner import evaluate, finetune
from tests.tensorboard_events import read_scalars


def _tiny_backbone():
    return bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny")


def test_a_short_finetune_of_a_tiny_bit_learns_digits(digits_run):
    # Random weights: the HyperRule's peak rate (0.003 x 64/512) is meant for BiT features, so it is raised.
    tmp_path, metrics = digits_run
    assert metrics["updates"] == 80 and metrics["num_classes"] == 10
    assert metrics["eval_accuracy"] > 0.4, metrics  # chance is 0.1
    assert metrics["final_learning_rate"] == pytest.approx(0.01 * 0.001, rel=1e-5)
    for name in ("model.keras", "metrics.json", "run.json", "logs/metrics.csv"):
        assert os.path.exists(tmp_path / name), name
    assert not os.path.exists(tmp_path / "checkpoint")  # a finished run leaves no backup behind
    # TensorBoard scalars after each evaluation, stepped by updates (no tensorboard package needed).
    train_scalars, val_scalars = read_scalars(tmp_path / "logs" / "train"), read_scalars(tmp_path / "logs" / "validation")
    assert set(train_scalars["loss"]) == set(train_scalars["learning_rate"]) == {40, 80}
    assert train_scalars["learning_rate"][80] == pytest.approx(0.01 * 0.001, rel=1e-5)
    assert val_scalars["accuracy"][80] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]
    # The saved model scores the same on its own (independent accuracy computed from predictions).
    scores = evaluate(tmp_path, dataset="digits", split="test")
    assert scores["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="finished run"):
        finetune(_tiny_backbone(), dataset="digits", output=tmp_path, batch_size=32, steps=80, verbose=0)


def test_the_cli_fine_tunes_in_bfloat16_and_records_it(tmp_path, capsys, monkeypatch):
    from bit_keras import precision

    monkeypatch.setattr(precision, "cpu_bfloat16", lambda: [])  # a CPU that only emulates bfloat16
    monkeypatch.setattr(precision, "_has_accelerator", lambda: False)
    output = tmp_path / "run"
    capsys.readouterr()
    assert _cli("finetune", "--variant", "r14x1", "--dataset", "digits", "--output", str(output), "--batch", "16",
                "--micro-batch", "8", "--steps", "2", "--resolution", "16", "--eval-split", "none", "--quiet",
                "--precision", "bfloat16") == 0
    printed = capsys.readouterr()
    # An architecture's name says "random weights" first (the weights rule on the command line).
    first = printed.out.splitlines()[0]
    assert first.startswith("Model r14x1: random weights"), first
    header = [line for line in printed.out.splitlines() if "no bfloat16 instructions" in line]
    assert len(header) == 1 and header[0].startswith("warning: "), printed.out
    assert "no bfloat16 instructions" not in printed.err  # said once, in the header
    assert json.loads((output / "run.json").read_text())["precision"] == "mixed_bfloat16"
    model = keras.saving.load_model(output / "model.keras", compile=False)
    conv = model.get_layer("block1-unit01-a-standardized_conv2d")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    # (A float32 run records no precision, so older runs still resume: test_cli_finetune_and_evaluate.)


class _Interrupt(keras.callbacks.Callback):
    """Kills the run (an exception, as a crash would) after `epoch` evaluation periods, recording the state."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.state = epoch, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.state = [w.copy() for w in self.model.get_weights()]
            raise KeyboardInterrupt("simulated interruption")


class _Observe(keras.callbacks.Callback):
    """Records where a (resumed) run starts: update count, learning rate, weights, first epoch."""

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self.updates = int(optimizer.iterations)
        self.learning_rate = float(optimizer.learning_rate)
        self.weights = [w.copy() for w in self.model.get_weights()]
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_a_killed_run_resumes_at_the_right_step_and_learning_rate(tmp_path):
    options = dict(dataset="digits", output=tmp_path, batch_size=16, steps=15, eval_every=5, resolution=16,
                   base_learning_rate=0.02, eval_split=None, verbose=0)
    interrupt = _Interrupt(epoch=2)
    with pytest.raises(KeyboardInterrupt):
        finetune(_tiny_backbone(), callbacks=[interrupt], **options)
    assert not os.path.exists(tmp_path / "metrics.json")
    run = json.loads((tmp_path / "run.json").read_text())

    observe = _Observe()
    metrics = finetune(_tiny_backbone(), callbacks=[observe], **options)
    assert observe.updates == 10 and observe.epochs == [2]
    # Rule for 15 updates: warm-up 3, /10 at round(4.5)=4 (banker's rounding), 9, 14 -> update 10 is base/100.
    assert observe.learning_rate == pytest.approx(run["hyperrule"]["base_learning_rate"] * 0.01, rel=1e-5)
    for restored, saved in zip(observe.weights, interrupt.state):
        np.testing.assert_array_equal(restored, saved)
    assert metrics["updates"] == 15
    assert metrics["final_learning_rate"] == pytest.approx(0.02 * 0.001, rel=1e-5)
    rows = (tmp_path / "logs" / "metrics.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]
    # TensorBoard curves continue at the resumed update (one point per evaluation period).
    learning_rates = read_scalars(tmp_path / "logs" / "train")["learning_rate"]
    assert sorted(learning_rates) == [5, 10, 15]
    assert learning_rates[15] == pytest.approx(0.02 * 0.001, rel=1e-5)

    # A checkpoint of another configuration is not silently mixed in, and its run.json stays.
    (tmp_path / "metrics.json").unlink()
    os.makedirs(tmp_path / "checkpoint")
    (tmp_path / "checkpoint" / "update-000000005.weights.h5").write_text("not read: the run differs")
    recorded = (tmp_path / "run.json").read_text()
    with pytest.raises(ValueError, match=r"different run \(.*hyperrule\.total_steps: 15 -> 20.*--overwrite"):
        finetune(_tiny_backbone(), **{**options, "steps": 20})
    assert (tmp_path / "run.json").read_text() == recorded


def _cli(*argv):
    return cli_main._main(cli_main.build_parser().parse_args(list(argv)))


def test_cli_finetune_and_evaluate(tmp_path, capsys, tiny_export):
    backbone = str(tiny_export)  # an export in Keras format
    output = str(tmp_path / "run")
    assert _cli("finetune", "--variant", backbone, "--dataset", "digits", "--output", output, "--batch", "8",
                "--micro-batch", "4", "--steps", "2", "--resolution", "16", "--eval-split", "test[:16]",
                "--examples-per-class", "5", "--quiet") == 0
    printed = capsys.readouterr().out
    metrics = json.loads(open(os.path.join(output, "metrics.json")).read())
    assert metrics["updates"] == 2 and metrics["hyperrule"]["crop"] == 16
    # Under accumulation (2 micro-batches per update) the TensorBoard step counts updates (not 2, 4).
    assert set(read_scalars(os.path.join(output, "logs", "train"))["loss"]) == {1, 2}
    assert metrics["train_size"] == 50 == metrics["hyperrule"]["train_size"]  # few-shot: 5 per class
    # A float32 run records no precision (as runs did before --precision), so older runs still resume.
    assert "precision" not in json.loads(open(os.path.join(output, "run.json")).read())
    assert '"eval_accuracy"' in printed
    assert _cli("evaluate", "--model", output, "--dataset", "digits", "--split", "test[:16]", "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6) and scores["examples"] == 16
    # Mistakes get one line and exit status 2.
    assert _cli("finetune", "--variant", backbone, "--dataset", "digits", "--output", output, "--steps", "2") == 2
    assert "finished run" in capsys.readouterr().err
    assert _cli("finetune", "--variant", backbone, "--dataset", "digits", "--output", str(tmp_path / "x"),
                "--batch", "8", "--micro-batch", "3") == 2
    assert "must divide" in capsys.readouterr().err
    assert _cli("evaluate", "--model", str(tmp_path / "missing.keras"), "--dataset", "digits") == 2


def test_the_weights_rule_on_the_command_line(tmp_path, capsys, monkeypatch):
    """A released name offline fails at once, before data or folders."""
    import time

    from bit_keras import download, presets

    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(presets, "RELEASE_URL", "http://127.0.0.1:9")  # nothing listens there: offline
    output = tmp_path / "run"
    started = time.monotonic()
    # The data is fine (it is checked first, in a moment): the weights are what fails, before any model.
    assert _cli("finetune", "--variant", "m-r50x1", "--dataset", "digits", "--output", str(output)) == 2
    error = capsys.readouterr().err
    assert time.monotonic() - started < 10 and len(error.strip().splitlines()) == 1
    release = presets.PRESETS["BiT-M-R50x1"]
    assert f"put it at {download.cache_path(release.url, release.filename)}" in error
    assert "http://127.0.0.1:9/BiT-M-R50x1.npz" in error
    assert "--weights" in error and "weights=" not in error     # the CLI speaks in flags
    assert not output.exists() and not any((tmp_path / "cache").glob("*"))
    # (An architecture says "random weights" first: test_the_cli_fine_tunes_in_bfloat16_and_records_it.)
