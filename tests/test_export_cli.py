"""`bit_keras export` and the exporter's guarantees: no silent overwrite, no half exports,
no untrained weights by accident, a one-line error when offline, a `.keras` round trip."""

import os
import signal
import subprocess
import sys
import textwrap
import urllib.error

import numpy as np
import pytest

from tests import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS, WIDTH, CLASSES, SEED = (1, 1, 1, 1), 1, 4, 7  # read by conftest's checkpoint_file


def run_cli(*argv):
    """Runs `bit_keras ...` in this process; returns the exit status (errors: 2, one line)."""
    from bit_keras.cli import main

    return main._main(main.build_parser().parse_args(list(argv)))


def test_cli_exports_the_classifier(checkpoint_file, tmp_path, capsys):
    import tensorflow as tf

    from bit_keras.export import read_metadata

    path, params = checkpoint_file
    output = str(tmp_path / "classifier")
    assert run_cli("export", "--weights", path, "--output", output, "--classifier") == 0
    assert "logits [batch, 4]" in capsys.readouterr().out
    meta = read_metadata(output)
    assert meta["outputs"] == "logits" and meta["num_classes"] == CLASSES
    images = np.random.default_rng(8).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    _, expected = reference.forward(params, images)
    logits = tf.saved_model.load(output).signatures["serving_default"](images=tf.constant(images))["logits"]
    assert np.abs(logits.numpy() - expected).max() / np.abs(expected).max() < 1e-4
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]

    # An existing export is refused before anything is built, and left as it was.
    mtime = os.path.getmtime(os.path.join(output, "saved_model.pb"))
    assert run_cli("export", "--weights", path, "--output", output) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(output, "saved_model.pb")) == mtime
    # --overwrite replaces it; --fold-standardization serves from pre-standardized kernels.
    assert run_cli("export", "--weights", path, "--output", output, "--overwrite", "--fold-standardization") == 0
    assert read_metadata(output)["outputs"] == "features"
    assert sorted(os.listdir(tmp_path)) == ["classifier"]
    obj = tf.saved_model.load(output)
    assert len(obj.serving_variables) == len(obj.variables)  # the folded copy's own weights
    served = obj.signatures["serving_default"](images=tf.constant(images))["features"].numpy()
    assert np.abs(served - reference.forward(params, images, head=False)).max() < 1e-4 * np.abs(served).max()
    # Folding changes the rounding only: float32 with another summation order reaches ~2e-5 on this random net.
    assert np.abs(served - obj(images, training=False).numpy()).max() < 5e-5 * np.abs(served).max()


@pytest.mark.parametrize("argv, message", [
    (["--variant", "r77x9"], "Unknown BiT model 'r77x9'"),
    (["--variant", "r50x1"], "--random-weights"),
    (["--variant", "r50x1", "--weights", "missing.npz"], "neither a file"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert run_cli("export", *argv, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("bit_keras export: error:")
    assert not os.path.exists(tmp_path / "out")


def test_cli_classifier_needs_a_head(tmp_path, capsys):
    path = tmp_path / "headless.npz"
    reference.write_checkpoint(path, UNITS, WIDTH, None, seed=1)
    assert run_cli("export", "--weights", str(path), "--classifier", "--output", str(tmp_path / "out")) == 2
    assert "no classification head" in capsys.readouterr().err


def test_cli_offline_download_says_where_to_put_the_file(tmp_path, capsys, monkeypatch):
    from bit_keras import download, presets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    cache = tmp_path / "cache"
    assert run_cli("export", "--variant", "m-r50x1", "--cache-dir", str(cache),
                   "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    release = presets.PRESETS["BiT-M-R50x1"]
    assert f"put it at {download.cache_path(release.url, release.filename, directory=cache)}" in err
    assert not os.path.exists(tmp_path / "out") and os.listdir(cache) == []


def test_failure_mid_export_leaves_nothing(checkpoint_file, tmp_path, monkeypatch):
    import bit_keras
    from bit_keras.export import export_model, savedmodel

    model = bit_keras.BiTBackbone(UNITS, WIDTH)

    def fail(directory, metadata):
        assert os.path.exists(os.path.join(directory, "saved_model.pb"))  # the SavedModel was written
        raise OSError("disk full")

    monkeypatch.setattr(savedmodel, "write_metadata", fail)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_killed_export_leaves_no_directory_that_looks_complete(checkpoint_file, tmp_path):
    """SIGKILL right after the SavedModel is written, before metadata and rename."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import tensorflow as tf
        save = tf.saved_model.save
        def save_then_die(*args, **kwargs):
            save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        tf.saved_model.save = save_then_die
        from bit_keras.export import export_variant
        export_variant(None, {str(tmp_path / 'out')!r}, weights={checkpoint_file[0]!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out")
    leftovers = os.listdir(tmp_path)  # the staging folder, and the dead process's lock file
    partial = [name for name in leftovers if name.startswith(".out.") and name.endswith(".partial")]
    assert len(leftovers) == 2 and len(partial) == 1 and ".out.lock" in leftovers
    assert (tmp_path / ".out.lock").read_text().strip().isdigit()
    assert os.path.exists(tmp_path / partial[0] / "saved_model.pb")  # it got that far
    assert not os.path.exists(tmp_path / partial[0] / "assets" / "bit_keras.json")
    # The kernel dropped the dead process's lock: the next export of `out` succeeds and clears its leftovers.
    from bit_keras.export import export_variant

    export_variant(None, tmp_path / "out", weights=checkpoint_file[0])
    assert os.listdir(tmp_path) == ["out"]


def test_serving_model_drives_only_the_serving_signature(tmp_path):
    import keras
    import tensorflow as tf

    import bit_keras
    from bit_keras.export import export_model

    model = bit_keras.BiTBackbone(UNITS, WIDTH)
    images = np.random.default_rng(9).uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    expected = np.asarray(model(images))
    # A distinguishable serving model shows which function each endpoint runs (an equal one,
    # fold_standardization's, is checked through the CLI above).
    inputs = keras.Input((None, None, 3))
    doubled = keras.Model(inputs, keras.layers.Rescaling(2.0)(model(inputs)))
    export_model(model, tmp_path / "doubled", serving_model=doubled)
    obj = tf.saved_model.load(str(tmp_path / "doubled"))
    served = obj.signatures["serving_default"](images=tf.constant(images))["features"].numpy()
    assert np.abs(served - 2 * expected).max() < 2e-5
    assert np.abs(obj(images, training=False).numpy() - expected).max() < 1e-5


def test_a_fine_tuned_classifier_exports_its_logits(tmp_path):
    """backbone + new head, as fine-tuning builds it: metadata names the backbone and the head."""
    import keras
    import tensorflow as tf

    import bit_keras
    from bit_keras.export import export_model, load_backbone, read_metadata

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(bit_keras.BiTBackbone(UNITS, WIDTH)(inputs)))
    export_model(model, tmp_path / "classifier", metadata={"outputs": "logits", "fine_tuned_on": "digits"})
    meta = read_metadata(tmp_path / "classifier")
    assert (meta["outputs"], meta["num_classes"], meta["block_units"], meta["num_features"]) == (
        "logits", 3, list(UNITS), 2048)
    assert meta["fine_tuned_on"] == "digits"
    images = np.random.default_rng(11).uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    served = tf.saved_model.load(str(tmp_path / "classifier")).signatures["serving_default"](images=tf.constant(images))
    assert np.abs(served["logits"].numpy() - np.asarray(model(images))).max() < 1e-5
    assert load_backbone(tmp_path / "classifier").block_units == UNITS
    with pytest.raises(ValueError, match="'features' or 'logits'"):
        export_model(model, tmp_path / "bad", metadata={"outputs": "probabilities"})


def test_random_weights_only_on_request(tmp_path):
    from bit_keras.export.variant import export_variant

    with pytest.raises(ValueError, match="load_weights=False"):
        export_variant("r50x1", tmp_path / "a")
    with pytest.raises(ValueError, match="not both"):
        export_variant("r50x1", tmp_path / "b", weights="x.npz", load_weights=False)
    assert not any(tmp_path.iterdir())


def test_keras_format_keeps_named_blocks_for_partial_fine_tuning(checkpoint_file, tmp_path, capsys):
    import keras

    import bit_keras
    from bit_keras.export import export_keras, load_backbone

    path, params = checkpoint_file
    output = str(tmp_path / "new" / "folder" / "tiny.keras")  # missing parents are created
    assert run_cli("export", "--weights", path, "--classifier", "--format", "keras", "--output", output) == 0
    images = np.random.default_rng(10).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    features, logits = reference.forward(params, images)
    reloaded = keras.saving.load_model(output)
    assert isinstance(reloaded, bit_keras.BiTImageClassifier) and reloaded.num_classes == CLASSES
    assert np.abs(np.asarray(reloaded(images)) - logits).max() / np.abs(logits).max() < 1e-4

    backbone = load_backbone(output)  # cut at the pooled features, blocks still named
    assert np.abs(np.asarray(backbone(images)) - features).max() / np.abs(features).max() < 1e-4
    frozen = bit_keras.freeze_up_to(backbone, "block2")
    assert "block2-unit01-b-standardized_conv2d" in frozen and "block3-unit01-a-group_norm" not in frozen
    assert backbone.get_layer("block3-unit01-b-standardized_conv2d").trainable
    assert not backbone.get_layer("block1-unit01-b-standardized_conv2d").trainable

    with pytest.raises(ValueError, match="ending in .keras"):
        export_keras(reloaded, tmp_path / "model.h5")
