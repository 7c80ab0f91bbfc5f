"""The TF Hub exporter: one export from a test-made checkpoint, reloaded three ways.

Outputs are checked against the Keras model (to 1e-5) and the Keras model against the
independent NumPy BiT (tests/reference.py), so the exported function computes BiT, not
merely whatever the exporter saw.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from tests import reference

UNITS, WIDTH, CLASSES, SEED = (1, 1, 1, 1), 1, 5, 3  # read by conftest's checkpoint_file


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).uniform(0, 1, (2, 40, 48, 3)).astype("float32")


@pytest.fixture(scope="module")
def exported(checkpoint_file, tmp_path_factory, images):
    """(export directory, Keras model outputs) for the feature-vector export."""
    import bit_keras
    from bit_keras.export import export_variant

    path, params = checkpoint_file
    directory = str(tmp_path_factory.mktemp("exports") / "features")
    export_variant(None, directory, weights=path)
    model = bit_keras.BiTBackbone(UNITS, WIDTH)
    bit_keras.load_weights(model, path)
    keras_features = np.asarray(model(images))
    expected = reference.forward(params, images, head=False)
    assert np.abs(keras_features - expected).max() / np.abs(expected).max() < 1e-4
    return directory, keras_features


def _max_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_saved_model_implements_the_reusable_api(exported, images):
    import tensorflow as tf

    directory, expected = exported
    obj = tf.saved_model.load(directory)
    for training in (False, True):
        assert _max_abs(obj(images, training=training), expected) < 1e-5
    num_weights = len(reference.release_shapes(UNITS, WIDTH))
    assert len(obj.variables) == len(obj.trainable_variables) == num_weights
    assert list(obj.regularization_losses) == []
    serving = obj.signatures["serving_default"]
    assert list(serving.structured_outputs) == ["features"]
    assert _max_abs(serving(images=tf.constant(images))["features"], expected) < 1e-5
    # Any image size, as TF Hub's image convention asks.
    other = np.random.default_rng(5).uniform(0, 1, (1, 33, 71, 3)).astype("float32")
    assert obj(other, training=False).shape == (1, 2048)


def test_hub_keras_layer_fine_tunes_the_backbone(exported, images):
    import tensorflow_hub as hub
    import tf_keras

    directory, expected = exported
    layer = hub.KerasLayer(directory, trainable=True)
    model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), layer, tf_keras.layers.Dense(3)])
    assert _max_abs(layer(images), expected) < 1e-5
    backbone = {v.name: v.numpy().copy() for v in layer.trainable_variables}
    assert len(backbone) == len(reference.release_shapes(UNITS, WIDTH))
    model.compile(optimizer=tf_keras.optimizers.SGD(0.05), loss="mse")
    model.fit(images, np.ones((2, 3), "float32"), epochs=2, batch_size=2, verbose=0)
    changed = [v.name for v in layer.trainable_variables if not np.array_equal(v.numpy(), backbone[v.name])]
    assert len(changed) == len(backbone)  # every backbone variable took the optimizer's steps


def test_hub_keras_layer_frozen_is_a_fixed_feature_extractor(exported, images):
    import tensorflow_hub as hub
    import tf_keras

    directory, expected = exported
    layer = hub.KerasLayer(directory, trainable=False)
    model = tf_keras.Sequential([tf_keras.Input((None, None, 3)), layer, tf_keras.layers.Dense(3)])
    assert len(model.trainable_variables) == 2  # the head only
    before = [v.numpy().copy() for v in layer.variables]
    model.compile(optimizer=tf_keras.optimizers.SGD(0.05), loss="mse")
    model.fit(images, np.ones((2, 3), "float32"), epochs=1, verbose=0)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, layer.variables))
    assert _max_abs(layer(images), expected) < 1e-5


def test_keras3_tfsm_layer_and_load_backbone_fine_tune(exported, images):
    import keras

    from bit_keras.export import load_backbone

    directory, expected = exported
    plain = keras.layers.TFSMLayer(directory, call_endpoint="serve")
    assert _max_abs(plain(images), expected) < 1e-5

    backbone = load_backbone(directory, trainable=True)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs)))
    assert _max_abs(backbone(images), expected) < 1e-5
    assert backbone.variant == "r14x1" and backbone.compute_output_shape((None, 8, 8, 3)) == (None, 2048)
    before = [w.numpy().copy() for w in backbone.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(images, np.ones((2, 3), "float32"), epochs=1, verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, backbone.trainable_weights))

    frozen = load_backbone(directory, trainable=False)
    assert frozen.trainable_weights == [] and len(frozen.weights) == len(before)


def test_metadata_describes_the_export(exported, checkpoint_file):
    from bit_keras.export import read_metadata

    directory, _ = exported
    meta = read_metadata(directory)
    with open(os.path.join(directory, "assets", "bit_keras.json")) as stream:
        assert json.load(stream) == meta  # plain JSON: readable without bit_keras
    assert meta["block_units"] == list(UNITS) and meta["width"] == WIDTH
    assert meta["num_features"] == 2048 and meta["outputs"] == "features" and meta["num_classes"] is None
    assert meta["checkpoint"]["source"] == os.path.abspath(checkpoint_file[0])
    assert meta["checkpoint"]["random_weights"] is False
    with open(checkpoint_file[0], "rb") as stream:
        assert meta["checkpoint"]["sha256"] == hashlib.sha256(stream.read()).hexdigest()
    assert meta["input"]["range"] == [0.0, 1.0] and meta["input"]["dtype"] == "float32"
    rule = meta["hyperrule"]
    assert (rule["base_learning_rate"], rule["base_batch_size"], rule["momentum"], rule["weight_decay"]) == (
        0.003, 512, 0.9, 0.0)
    assert rule["decay_fractions"] == [0.3, 0.6, 0.9] and rule["dataset_thresholds"]["small_below"] == 20_000
    assert meta["bit_keras_version"]


def test_serving_default_answers_an_empty_batch(exported, tmp_path):
    """TF Serving sends empty batches; a folded serving model (plain Conv2D) must answer them too."""
    import tensorflow as tf

    import bit_keras
    from bit_keras.export import export_model
    from bit_keras.inference import fold_standardization

    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, WIDTH), CLASSES)
    folded = export_model(model, str(tmp_path / "folded"), serving_model=fold_standardization(model))
    for directory, output, width in ((exported[0], "features", 2048), (folded, "logits", CLASSES)):
        serving = tf.saved_model.load(directory).signatures["serving_default"]
        for batch in (0, 1):
            assert serving(images=tf.zeros((batch, 32, 40, 3)))[output].shape == (batch, width)


def test_read_metadata_names_what_is_wrong(tmp_path):
    from bit_keras.export import read_metadata

    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_metadata(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a SavedModel directory"):
        read_metadata(tmp_path)
