"""BiT as a keras-hub model: the classes, labels, preprocessing, presets both ways, keras-hub's tasks."""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

import bit_keras
from bit_keras.errors import BiTError, ConfigError, TargetExistsError
from bit_keras.export.keras_hub import export_preset, read_metadata

# No logs from TensorFlow in the subprocesses' output we parse.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.05, weight.shape).astype(keras.backend.standardize_dtype(weight.dtype)))
    return model


@pytest.fixture(scope="module")
def classifier():
    return _randomize(bit_keras.BiTImageClassifier.from_preset("r14x1", num_classes=3, preprocessor=True))


def test_the_classes_are_keras_hub_classes_with_its_pyramid_and_dtype():
    model = bit_keras.BiTImageClassifier.from_preset("r14x1", num_classes=3, dtype="mixed_bfloat16")
    assert isinstance(model, keras_hub.models.ImageClassifier)
    assert isinstance(model.backbone, keras_hub.models.FeaturePyramidBackbone)
    # The model's own policy, not only its layers' (it reported float32 before).
    assert model.dtype_policy.name == model.backbone.dtype_policy.name == "mixed_bfloat16"
    pyramid = model.backbone.pyramid_outputs
    assert list(pyramid) == ["P2", "P3", "P4", "P5"]
    maps = keras.Model(model.backbone.input, pyramid)(np.zeros((1, 64, 64, 3), "float32"))
    # Level n is 2**n smaller than the image (keras-hub's convention); the maps are block sums.
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "P2": (1, 16, 16, 256), "P3": (1, 8, 8, 512), "P4": (1, 4, 4, 1024), "P5": (1, 2, 2, 2048)}
    assert pyramid["P5"] is model.backbone.get_layer("block4-unit01-add").output
    assert keras.saving.get_registered_object("bit_keras>BiTImageClassifier") is bit_keras.BiTImageClassifier


def test_dir_lists_the_public_classes():
    listed = dir(bit_keras)
    for name in ("BiTBackbone", "BiTImageClassifier", "BiTImageConverter", "BiTImageClassifierPreprocessor",
                 "feature_maps", "freeze_up_to"):
        assert name in listed


def _numpy_cross_entropy(logits, ids):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(len(ids)), ids].mean()


def test_integer_one_hot_and_column_labels_train_after_compile_hyperrule():
    model = _randomize(bit_keras.BiTImageClassifier.from_preset("r14x1", num_classes=3))
    images = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    ids = np.array([0, 2, 1, 2])
    model.compile_hyperrule(train_size=100, image_size=(32, 32), batch_size=4, steps=2)
    expected = _numpy_cross_entropy(np.asarray(model(images), "float64"), ids)
    for labels in (ids, ids[:, None], np.eye(3, dtype="float32")[ids]):
        loss = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
    weights = [np.asarray(w).copy() for w in model.trainable_weights]
    model.fit(images, ids, batch_size=4, epochs=1, verbose=0)  # "must have the same rank" before
    assert any(not np.array_equal(np.asarray(w), b) for w, b in zip(model.trainable_weights, weights))


def test_mixup_mixes_class_ids_one_hot_and_multi_hot_labels_for_fit():
    from bit_keras.data.mixup import mixup, mixup_params
    from bit_keras.labels import one_hot_labels

    images = np.random.default_rng(2).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    ids = np.array([0, 2, 1, 2])
    one_hot = np.eye(3, dtype="float32")[ids]
    for multi_label, labels in ((False, ids), (False, one_hot), (True, np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0],
                                                                                 [0, 0, 1]], "float32"))):
        model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1)), 3, multi_label=multi_label)
        model.compile_hyperrule(train_size=100, image_size=(32, 32), batch_size=4, steps=2)
        rows = np.asarray(one_hot_labels(keras.ops.convert_to_tensor(labels), keras.ops.zeros((4, 3))))
        mixed_images, mixed = mixup(images, rows, 0.1, [0, 1])
        lam, permutation = (np.asarray(v) for v in mixup_params(4, 0.1, [0, 1]))
        np.testing.assert_allclose(np.asarray(mixed), lam * rows + (1 - lam) * rows[permutation], rtol=1e-5, atol=1e-6)
        history = model.fit(np.asarray(mixed_images), np.asarray(mixed), batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_predict_takes_uint8_images_of_any_size_and_float_images_unscaled(classifier):
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (2, 50, 70, 3), dtype="uint8")
    large = rng.integers(0, 256, (3, 300, 200, 3), dtype="uint8")
    assert classifier.predict(small, verbose=0).shape == (2, 3)
    assert classifier.predict(large, verbose=0).shape == (3, 3)
    # At the converter's own size nothing is resized: uint8 / 255 is exactly what the model gets,
    # and float images in [0, 1] are not divided by 255 again.
    exact = rng.integers(0, 256, (2, 224, 224, 3), dtype="uint8")
    direct = np.asarray(classifier(exact.astype("float32") / 255))
    np.testing.assert_allclose(classifier.predict(exact, verbose=0), direct, atol=1e-5)
    np.testing.assert_allclose(classifier.predict(exact.astype("float32") / 255, verbose=0), direct, atol=1e-5)



def test_fit_takes_a_dataset_of_uint8_images_of_any_size_and_class_ids():
    import tensorflow as tf

    model = bit_keras.BiTImageClassifier.from_preset("r1-1-1-1x1", num_classes=3, preprocessor=True)
    model.preprocessor.image_converter.image_size = (32, 32)
    model.compile_hyperrule(train_size=100, image_size=(32, 32), batch_size=2, steps=2)
    images = np.random.default_rng(5).integers(0, 256, (4, 57, 41, 3), dtype="uint8")
    batches = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 2, 1]))).batch(2)
    history = model.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_preset_loads_bit_identically_through_keras_hub_and_ours_in_a_fresh_process(classifier, tmp_path):
    directory = tmp_path / "preset"
    export_preset(classifier, directory)
    images = np.random.default_rng(4).integers(0, 256, (2, 64, 48, 3), dtype="uint8")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "logits.npy", classifier.predict(images, verbose=0))
    meta = read_metadata(directory)
    assert meta["resolution"] == [224, 224] and meta["num_classes"] == 3 and meta["hyperrule"]["momentum"] == 0.9
    code = f"""
import numpy as np, keras_hub, bit_keras.models
images, logits = np.load({str(tmp_path / 'images.npy')!r}), np.load({str(tmp_path / 'logits.npy')!r})
loaded = [keras_hub.models.ImageClassifier.from_preset({str(directory)!r}),
          bit_keras.models.BiTImageClassifier.from_preset({str(directory)!r})]
backbone = keras_hub.models.Backbone.from_preset({str(directory)!r})
assert type(backbone).__name__ == "BiTBackbone" and all(type(m).__name__ == "BiTImageClassifier" for m in loaded)
print(max(float(np.abs(m.predict(images, verbose=0) - logits).max()) for m in loaded))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == 0.0


def test_loading_a_preset_runs_no_stored_code(classifier, tmp_path):
    directory = tmp_path / "preset"
    export_preset(classifier, directory)
    task = json.loads((directory / "task.json").read_text())
    marker = tmp_path / "ran"
    # A preprocessor that would run Python stored in the preset.
    task["config"]["preprocessor"] = keras.saving.serialize_keras_object(
        keras.layers.Lambda(eval(f"lambda x: (open({str(marker)!r}, 'w'), x)[1]")))
    (directory / "task.json").write_text(json.dumps(task))
    with pytest.raises(Exception, match="(?i)lambda|unsafe|safe_mode"):
        keras_hub.models.ImageClassifier.from_preset(str(directory))
    assert not marker.exists()


def test_export_refuses_to_replace_other_work(classifier, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TargetExistsError):
        export_preset(classifier, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_retinanet_and_deeplab_take_bit_as_their_image_encoder():
    backbone = bit_keras.BiTBackbone((1, 1, 1, 1))
    retina = keras_hub.models.RetinaNetBackbone(image_encoder=backbone, min_level=3, max_level=7, use_p5=False)
    deeplab = keras_hub.models.DeepLabV3Backbone(image_encoder=backbone, spatial_pyramid_pooling_key="P5",
                                                 upsampling_size=8, dilation_rates=[6, 12],
                                                 low_level_feature_key="P2")
    for size in (64, 96):
        images = np.zeros((1, size, size, 3), "float32")
        levels = retina(images)
        assert {k: tuple(v.shape) for k, v in levels.items()} == {
            f"P{n}": (1, -(-size // 2 ** n), -(-size // 2 ** n), 256) for n in range(3, 8)}
        assert tuple(deeplab(images).shape) == (1, size, size, 256)


@pytest.mark.parametrize("block", ["block9", 5, "block0", 0, True, "blockx", 2.0])
def test_freeze_up_to_names_the_valid_blocks(block):
    model = bit_keras.BiTBackbone((1, 1, 1, 1))
    with pytest.raises(ConfigError, match="'root', 'block1', 'block2', 'block3' and 'block4'"):
        bit_keras.freeze_up_to(model, block)
    assert all(layer.trainable for layer in model.layers)


def test_export_cli_writes_a_keras_hub_preset(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "bit_keras", "export", "--variant", "r14x1", "--random-weights",
               "--classifier", "--format", "keras-hub", "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "keras_hub.models.ImageClassifier.from_preset" in result.stdout
    assert {"config.json", "task.json", "model.weights.h5", "preprocessor.json", "bit_keras.json"} <= set(os.listdir(out))
    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr + again.stdout
    assert issubclass(TargetExistsError, BiTError)


def test_preset_metadata_has_ilsvrc_class_names_only_for_ilsvrc_heads():
    from bit_keras import presets
    from bit_keras.export.keras_hub import class_names

    names = class_names(presets.find_preset("BiT-S-R50x1"), 1000)
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet_tissue"
    assert class_names(presets.find_preset("BiT-M-R50x1-ILSVRC2012"), 1000)[1] == "goldfish"
    assert class_names(presets.find_preset("BiT-M-R50x1"), 21843) is None        # ImageNet-21k: no names in the release
    assert class_names(presets.find_preset("BiT-S-R50x1"), 10) is None          # a new head


def test_keras_files_round_trip_the_compile_state_without_optimizer_warnings(tmp_path):
    import warnings

    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1)), 3)  # keras-hub's default compile
    for step in ("default", "hyperrule"):
        if step == "hyperrule":
            model.compile_hyperrule(train_size=100, image_size=(32, 32), batch_size=2, steps=2)
        model.save(tmp_path / f"{step}.keras")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = keras.saving.load_model(tmp_path / f"{step}.keras")
        assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
        assert type(restored.optimizer) is type(model.optimizer)
