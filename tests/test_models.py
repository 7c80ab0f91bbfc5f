"""BiTBackbone / BiTImageClassifier through the shared harness, for the preset shapes and custom ones."""

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras.architecture import Architecture
from tests.conftest import run_backbone_test, run_precision_test

# Every released depth (widths only multiply channels; width 3 is checked once below), the
# demo's r14x1 and a custom shape. Building R152x4 itself would take minutes and 4 GB here.
SHAPES = ["r50x1", "r101x1", "r152x1", "r14x1", "r2-3-4-1x2"]


@pytest.mark.parametrize("name", SHAPES)
def test_backbone_harness(name, tmp_path):
    architecture = Architecture.parse(name)
    backbone = bit_keras.BiTBackbone.from_preset(name)
    assert backbone.architecture == architecture and backbone.count_params() == architecture.num_params(None)
    # With a 1000-class head, the count the paper's table gives (Architecture.num_params is checked against the
    # spec's table in test_variants.py); R50x1's to the parameter.
    classifier = bit_keras.BiTImageClassifier(backbone, 1000)
    assert classifier.count_params() == architecture.num_params(1000)
    if name == "r50x1":
        assert classifier.count_params() == 25_549_352
    run_backbone_test(backbone, tmp_path)


# Every Keras policy a user may set, the pure low-precision ones included.
POLICIES = ["float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16"]


@pytest.mark.parametrize("policy", POLICIES)
def test_precision_harness(policy, tmp_path):
    """The dtype policy reaches every layer, through the classifier and a `.keras` round trip.

    On r2-1-1-1x2: every kind of layer r14x1 has (root, units with a projection shortcut) plus a unit
    without one, at width 2 (r14x1 under the global policy: test_the_global_policy_is_honoured...)."""
    backbone = bit_keras.BiTBackbone.from_preset("r2-1-1-1x2", dtype=policy)
    run_precision_test(backbone, policy)
    classifier = bit_keras.BiTImageClassifier(backbone, 3)
    run_precision_test(classifier, policy)
    classifier.save(tmp_path / "m.keras")
    run_precision_test(keras.saving.load_model(tmp_path / "m.keras"), policy)


def test_the_global_policy_is_honoured_when_no_dtype_is_given():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        run_precision_test(bit_keras.BiTBackbone.from_preset("r14x1"))
    finally:
        keras.config.set_dtype_policy(previous)


def test_width_3_parameter_count_and_call():
    backbone = bit_keras.BiTBackbone.from_preset("r1-1-1-1x3")
    assert backbone(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 6144)
    assert backbone.count_params() == Architecture((1, 1, 1, 1), 3).num_params(None)


def test_classifier_head_is_zero_and_loads_a_matching_release_head(tmp_path):
    from tests import reference

    path = tmp_path / "r14.npz"
    params = reference.write_checkpoint(path, (1, 1, 1, 1), 1, num_classes=7)
    same = bit_keras.BiTImageClassifier.from_preset("r14x1", weights=path)
    assert same.num_classes == 7
    np.testing.assert_array_equal(same.get_layer("head-conv2d").kernel, params["resnet/head/conv2d/kernel"][0, 0])
    other = bit_keras.BiTImageClassifier.from_preset("r14x1", weights=path, num_classes=4)
    assert not np.any(np.asarray(other.get_layer("head-conv2d").kernel))
    np.testing.assert_array_equal(other.get_layer("block1-unit01-a-standardized_conv2d").kernel,
                                  params["resnet/block1/unit01/a/standardized_conv2d/kernel"])


def test_compile_hyperrule_sets_the_rules_optimizer_and_loss():
    model = bit_keras.BiTImageClassifier.from_preset("r14x1", num_classes=10)
    rule = model.compile_hyperrule(train_size=1437, image_size=(8, 8), batch_size=64, micro_batch_size=32)
    assert model.hyperrule is rule and (rule.resize, rule.crop) == (160, 128)
    assert rule.total_steps == 4000 and rule.batch_size == 64   # 500 updates at 512 -> x8 at 64
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert optimizer.accumulation_steps == 2 and not optimizer.gradient_accumulation_steps  # no accumulator copy
    assert float(optimizer.learning_rate) == pytest.approx(0.003 * 64 / 512 / rule.warmup_steps, rel=1e-5)
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)


def test_a_released_name_means_released_weights_and_fails_offline_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "cache"))
    from bit_keras import download, presets

    monkeypatch.setattr(presets, "RELEASE_URL", "http://127.0.0.1:9")  # nothing listens: offline
    release = presets.PRESETS["BiT-M-R50x1"]
    with pytest.raises(bit_keras.DownloadError, match=f"put it at {download.cache_path(release.url, release.filename)}"):
        bit_keras.BiTBackbone.from_preset("m-r50x1")
    # load_weights=False is the way to ask for random weights on a released name.
    assert bit_keras.BiTBackbone.from_preset("m-r50x1", load_weights=False).num_features == 2048
