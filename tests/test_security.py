"""What `bit_keras evaluate` trusts in a run directory: weights, never code (issue 10)."""

import json
import math
import os

import keras
import pytest

import bit_keras
from bit_keras.cli import main as cli_main
from bit_keras.finetune.runner import evaluate, finetune


def _hostile_model(path, marker):
    """A .keras file holding a Lambda that writes `marker` when deserialized."""
    payload = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # noqa: S307  (the attacker's code)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Lambda(payload), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.save(path, overwrite=True)
    os.remove(marker)  # building it ran the payload once; only loading may not run it again


def _hostile_run(directory, marker, source):
    """A run directory with a hostile model.keras and a run.json naming `source`."""
    os.makedirs(directory)
    _hostile_model(os.path.join(directory, "model.keras"), marker)
    with open(os.path.join(directory, "run.json"), "w") as stream:
        json.dump({"source": str(source), "num_classes": 10, "hyperrule": {"crop": 16}}, stream)


@pytest.mark.parametrize("source", ["existing directory", "model name"])
def test_evaluate_never_runs_code_stored_in_a_run_directory(tmp_path, capsys, source):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    _hostile_run(run, marker, tmp_path if source == "existing directory" else "r14x1")
    with pytest.raises(bit_keras.BiTError):
        evaluate(run, dataset="digits", split="test[:8]")
    assert not marker.exists()
    args = cli_main.build_parser().parse_args(["evaluate", "--model", str(run), "--dataset", "digits"])
    assert cli_main._main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bit_keras evaluate: error:"), err
    assert not marker.exists()


def test_a_run_from_a_savedmodel_export_evaluates_from_any_directory(tmp_path, monkeypatch):
    from bit_keras.export import export_model

    export_model(bit_keras.BiTBackbone((1, 1, 1, 1), 1, name="tiny"), tmp_path / "export")
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    metrics = finetune("export", dataset="digits", output="run", batch_size=16, steps=6, resolution=16,
                       base_learning_rate=0.05, eval_split="test[:64]", verbose=0)  # a relative export path
    assert json.loads((tmp_path / "run" / "run.json").read_text())["source"] == str(tmp_path / "export")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scores = evaluate(tmp_path / "run", dataset="digits", split="test[:64]")
    # The fine-tuned head came back (a zero head would give exactly ln 10).
    assert metrics["eval_loss"] != pytest.approx(math.log(10), abs=1e-4)
    assert scores["loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert scores["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    # Rebuilt on the export, only weights are read: a hostile model.keras runs nothing.
    _hostile_model(tmp_path / "run" / "model.keras", tmp_path / "pwned")
    with pytest.raises(bit_keras.BiTError, match="cannot be loaded as a bit_keras run"):
        evaluate(tmp_path / "run", dataset="digits", split="test[:64]")
    assert not (tmp_path / "pwned").exists()
    os.rename(tmp_path / "export", tmp_path / "moved")
    with pytest.raises(bit_keras.BiTError, match="export .* is not there any more"):
        evaluate(tmp_path / "run", dataset="digits", split="test[:64]")
