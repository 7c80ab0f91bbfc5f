"""What `finetune` says and checks before it trains: its plan, files it left out, missing splits, seeded weights."""

import json
import os
import signal
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from bit_keras.cli import main as cli_main
from bit_keras.finetune.runner import finetune


def _cli(capsys, *argv):
    """(exit status, stdout, stderr) of `bit_keras ...` run in this process."""
    capsys.readouterr()
    status = cli_main._main(cli_main.build_parser().parse_args([str(arg) for arg in argv]))
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def _folder(root, splits=("train", "test"), per_class=6):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in ("a", "b", "c"):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(per_class if split != "test" else 2):
                tf.io.write_file(str(folder / f"{i}.png"),
                                 tf.io.encode_png(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)))
    return root


def test_a_folder_fine_tune_names_what_it_left_out_prints_its_plan_and_never_runs_out_of_data(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    png = (data / "train" / "b" / "0.png").read_bytes()
    (data / "train" / "b" / "0.png").write_bytes(png[: len(png) // 2])  # valid PNG magic, truncated body
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = _cli(capsys, "finetune", "--variant", "r14x1", "--dataset", f"folder:{data}", "--output",
                                tmp_path / "run", "--batch", "4", "--steps", "2", "--resolution", "16", "--quiet")
    assert status == 0, err
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    lines = out.splitlines()
    plan = next(line for line in lines if line.startswith("plan: "))
    assert ("plan: 2 updates at batch 4; peak learning rate 2.34e-05 (HyperRule 0.003 x 4/512), linear warm-up "
            in plan and "random crops of 16 px; MixUp off" in plan), plan
    assert any("random weights: the HyperRule's learning rate (2.3e-05) is tuned for pre-trained features" in line
               and "--learning-rate" in line for line in lines), out
    left_out = next(i for i, line in enumerate(lines) if "cannot be read as images" in line)
    assert "(by class: b 1 of 6); it trains on the 17 readable ones: 0.png (cut short" in lines[left_out]
    assert left_out < next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/"))  # before training
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_size"] == 17 and run["left_out_by_class"] == {"b": 1}


def test_a_missing_split_or_bad_spec_is_refused_before_weights_or_a_model(tmp_path, capsys, monkeypatch):
    from bit_keras.cli import finetune as finetune_cli
    from bit_keras.finetune import runner

    def never(*args, **kwargs):
        raise AssertionError("weights were resolved or a model loaded before the data was checked")

    monkeypatch.setattr(finetune_cli, "resolve_source", never)
    monkeypatch.setattr(runner, "_load_classifier", never)
    flat = _folder(tmp_path / "flat", splits=(None,))
    common = ["--output", tmp_path / "run", "--batch", "4", "--steps", "2"]
    for argv, message in [
        (["finetune", "--variant", "m-r50x1", "--dataset", f"folder:{flat}", *common], "its only split is 'train'"),
        (["finetune", "--variant", "m-r50x1", "--dataset", "digits", "--train-split", "tset", *common],
         "digits has splits"),
        (["finetune", "--variant", "m-r50x1", "--dataset", f"folder:{tmp_path}/nowhere", *common], "does not exist"),
        (["evaluate", "--model", tmp_path / "run", "--dataset", f"folder:{flat}"], "its only split is 'train'"),
    ]:
        status, _, err = _cli(capsys, *argv)
        assert status == 2 and len(err.splitlines()) == 1 and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["flat"]


class _InitialWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]


def test_seed_fixes_the_random_initial_weights_of_an_architecture(tmp_path):
    options = dict(dataset="digits", batch_size=8, steps=1, resolution=16, eval_split=None, verbose=0)
    starts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        start = _InitialWeights()
        finetune("r14x1", output=tmp_path / name, seed=seed, callbacks=[start], **options)
        starts.append(start.weights)
    kernels = [i for i, w in enumerate(starts[0]) if w.ndim == 4]
    assert all(np.array_equal(x, y) for x, y in zip(starts[0], starts[1]))
    assert not any(np.array_equal(starts[0][i], starts[2][i]) for i in kernels)


class _FinalWeights(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.weights = [(w.path, np.array(w)) for w in self.model.weights]


def test_evaluating_a_run_fine_tuned_from_a_savedmodel_loads_every_trained_weight(tmp_path):
    import bit_keras
    from bit_keras import runs
    from bit_keras.export import export_model
    from bit_keras.finetune.runner import _load_classifier, evaluate

    export_model(bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny"), tmp_path / "export")
    final = _FinalWeights()
    finetune(str(tmp_path / "export"), dataset="digits", output=tmp_path / "run", batch_size=16, steps=3,
             resolution=16, base_learning_rate=0.05, eval_split=None, verbose=0, callbacks=[final])
    exported = {w.path: np.array(w) for w in bit_keras.export.load_backbone(str(tmp_path / "export")).weights}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _load_classifier(str(tmp_path / "run" / "model.keras"), runs.read_run(tmp_path / "run"))
    assert not [w for w in caught if "Skipping nested container" in str(w.message)]
    loaded = [(w.path, np.array(w)) for w in model.weights]
    assert [path for path, _ in loaded] == [path for path, _ in final.weights] and len(loaded) > 40
    for (path, value), (_, trained) in zip(loaded, final.weights):
        np.testing.assert_array_equal(value, trained, err_msg=path)
    moved = [path for path, value in loaded if path in exported and not np.array_equal(value, exported[path])]
    assert len(moved) > 30  # the backbone's trained weights, not the export's it started from
    assert evaluate(tmp_path / "run", dataset="digits", split="test[:64]")["examples"] == 64


class _Sigterm(keras.callbacks.Callback):
    """Sends this process SIGTERM during update `update` (1-based), or during the evaluation after it."""

    def __init__(self, update, during="train"):
        super().__init__()
        self.update, self.during = update, during

    def _maybe(self):
        if int(self.model.optimizer.iterations) == self.update - (self.during == "train"):
            os.kill(os.getpid(), signal.SIGTERM)
            self.update = -10

    def on_train_batch_begin(self, batch, logs=None):
        if self.during == "train":
            self._maybe()

    def on_test_batch_begin(self, batch, logs=None):
        if self.during == "eval":
            self._maybe()


def test_sigterm_stops_a_fine_tune_at_the_next_step_keeps_its_checkpoint_and_the_run_resumes(tmp_path):
    from bit_keras import runs
    from bit_keras.errors import StoppedError
    from bit_keras.resume import list_checkpoints

    options = dict(dataset="digits", batch_size=8, steps=6, eval_every=2, resolution=16, eval_split="test[:16]",
                   verbose=0)
    with runs.sigterm_stops(), pytest.raises(StoppedError) as stopped:
        finetune("r14x1", output=tmp_path, callbacks=[_Sigterm(3)], **options)
    assert str(stopped.value).startswith("Stopped by SIGTERM after update 3 of 6. ")
    assert f"{tmp_path / 'checkpoint'} keeps update 2: run the same command again" in str(stopped.value)
    assert [u for u, _ in list_checkpoints(tmp_path / "checkpoint")] == [2]
    # SIGTERM while a period's evaluation runs: its training was whole, so its checkpoint is written.
    with runs.sigterm_stops(), pytest.raises(StoppedError, match="after update 4 of 6. .* keeps update 4"):
        finetune("r14x1", output=tmp_path, callbacks=[_Sigterm(4, during="eval")], **options)
    rows = (tmp_path / "logs" / "metrics.csv").read_text().strip().splitlines()
    assert rows[-1].split(",")[0] == "1" and ",NA" in rows[-1]  # the cut evaluation is not logged as a score
    assert finetune("r14x1", output=tmp_path, **options)["updates"] == 6


def test_sigterm_ends_demo_transfer_in_pre_training_without_claiming_the_planned_run(tmp_path):
    from bit_keras import runs
    from bit_keras.errors import StoppedError
    from bit_keras.finetune.transfer_demo import run_transfer_demo

    lines = []

    def print_fn(line):
        lines.append(line)
        if line.strip().startswith("step 1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    with runs.sigterm_stops(), pytest.raises(StoppedError, match="during pre-training after 1 of 12 updates"):
        run_transfer_demo(str(tmp_path), upstream_steps=12, upstream_batch=16, resolution=16, shots=(1,),
                          finetune_steps=2, finetune_batch=8, check_hub=False, print_fn=print_fn)
    assert lines[1].startswith("[1/3] Upstream: pre-training r14x1 for 12 updates") and "a line every 1" in lines[1]
    assert not any("[1/3] Upstream: 12 updates" in line or line.startswith("[3/3]") for line in lines), lines


def test_the_cli_exits_143_with_one_line_on_sigterm(capsys, monkeypatch):
    from bit_keras.cli import finetune as finetune_cli

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(finetune_cli, "run_finetune", terminated)
    parser = cli_main.build_parser()
    args = parser.parse_args(["finetune", "--variant", "r14x1", "--dataset", "digits", "--output", "x"])
    args.handler = terminated
    assert cli_main._main(args) == 143
    err = capsys.readouterr().err.strip()
    assert err.startswith("bit_keras finetune: error: Stopped by SIGTERM") and len(err.splitlines()) == 1
