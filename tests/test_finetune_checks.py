"""What `finetune` says and checks before it trains: its plan, files it left out, missing splits, seeded weights."""

import json
import os
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
