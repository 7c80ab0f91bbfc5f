"""Research switches: normalization, weight standardization, groups, stochastic depth, dropout.

Checked against NumPy (BatchNorm with its moving statistics, plain vs standardized 1x1
convolutions, GroupNorm with other group counts, drop-path rates and statistics), every
{group, batch, none} x {WS on, off} network trained a step and round-tripped through
`.keras` and `.npz`, and release weights refused by any other network.
"""

import json
import os

import numpy as np
import pytest
import keras

from bit_keras import checkpoint, inference, layout
from bit_keras.backbone import BiTBackbone
from bit_keras.classifier import BiTImageClassifier
from bit_keras.errors import CheckpointError, ConfigError
from bit_keras.layers import GroupNormalization, StandardizedConv2D
from bit_keras.regularization import DropPath

UNITS, WIDTH, SIZE = (1, 1, 1, 1), 1, 32
COMBOS = [(norm, ws) for norm in ("group", "batch", "none") for ws in (True, False)]


def tiny(**kwargs):
    return BiTBackbone(UNITS, WIDTH, **kwargs)


def images(n=4, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype("float32")


def probe(model, layer_name):
    """(input, output) of a named layer for some images, through a sub-model."""
    layer = model.get_layer(layer_name)
    return keras.Model(model.input, [layer.input, layer.output])


def randomize(model, seed=1):
    """Every weight random (positive variances), so nothing is checked at an identity."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(0, 0.5, weight.shape)
        if "variance" in weight.path:
            value = rng.uniform(0.5, 2.0, weight.shape)
        weight.assign(value.astype("float32"))


# --- defaults are BiT ---------------------------------------------------------------------

def test_defaults_are_bits_network():
    backbone = tiny()
    config = backbone.get_config()
    assert (config["normalization"], config["weight_standardization"], config["groups"],
            config["stochastic_depth"], config["sync_batch_norm"]) == ("group", True, 32, 0.0, False)
    kinds = {type(layer) for layer in backbone.layers}
    assert GroupNormalization in kinds and StandardizedConv2D in kinds
    assert not kinds & {keras.layers.BatchNormalization, DropPath, keras.layers.Conv2D}
    assert all(layer.groups == 32 for layer in backbone.layers if isinstance(layer, GroupNormalization))
    assert BiTImageClassifier(backbone, 3).get_config()["dropout"] == 0.0
    assert not any(isinstance(l, keras.layers.Dropout) for l in BiTImageClassifier(backbone, 3).layers)


def test_config_without_the_new_keys_builds_bits_network():
    config = tiny().get_config()
    for key in ("normalization", "weight_standardization", "groups", "stochastic_depth", "sync_batch_norm"):
        config.pop(key)
    assert BiTBackbone.from_config(config).network == layout.BIT_NETWORK


@pytest.mark.parametrize("kwargs, word", [
    (dict(normalization="layer"), "normalization"),
    (dict(weight_standardization="no"), "weight_standardization"),
    (dict(groups=0), "groups"),
    (dict(normalization="batch", groups=16), "groups"),
    (dict(sync_batch_norm=True), "sync_batch_norm"),
    (dict(stochastic_depth=1.0), "stochastic_depth"),
    (dict(stochastic_depth=-0.1), "stochastic_depth"),
])
def test_bad_switches_are_one_line_config_errors(kwargs, word):
    with pytest.raises(ConfigError, match=word) as error:
        tiny(**kwargs)
    assert "\n" not in str(error.value)


def test_bad_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match="dropout"):
        BiTImageClassifier(tiny(), 3, dropout=1.5)


# --- the switches against NumPy ---------------------------------------------------------

def test_batch_norm_uses_moving_statistics_at_inference_and_batch_statistics_in_training():
    backbone = tiny(normalization="batch")
    randomize(backbone)
    layer = backbone.get_layer("block2-unit01-b-batch_norm")
    assert isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in
                                   (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))
    model = probe(backbone, layer.name)
    x, y = (np.asarray(t, np.float64) for t in model(images(), training=False))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta, rtol=1e-4, atol=1e-4)
    x, y = (np.asarray(t, np.float64) for t in model(images(), training=True))
    batch_mean, batch_var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - batch_mean) / np.sqrt(batch_var + 1e-5) * gamma + beta, rtol=1e-3, atol=1e-3)
    # ... and the moving statistics moved towards the batch's with momentum 0.9.
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.9 * mean + 0.1 * batch_mean, rtol=1e-4, atol=1e-4)


def test_sync_batch_norm_reaches_every_batch_norm():
    backbone = tiny(normalization="batch", sync_batch_norm=True)
    norms = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == 3 * sum(UNITS) + 1 and all(l.synchronized for l in norms)
    assert BiTBackbone.from_config(backbone.get_config()).get_layer("batch_norm").synchronized


@pytest.mark.parametrize("ws", [True, False])
def test_convolutions_standardize_only_with_weight_standardization(ws):
    backbone = tiny(weight_standardization=ws)
    randomize(backbone)
    name = "block3-unit01-a-standardized_conv2d"  # a 1x1 convolution, same name either way
    conv = backbone.get_layer(name)
    assert isinstance(conv, StandardizedConv2D) == ws and not conv.use_bias
    x, y = (np.asarray(t, np.float64) for t in probe(backbone, name)(images()))
    kernel = np.asarray(conv.kernel, np.float64)[0, 0]
    if ws:
        kernel = (kernel - kernel.mean(axis=0)) / np.sqrt(kernel.var(axis=0) + 1e-10)
    expected = np.einsum("nhwc,co->nhwo", x, kernel)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_groups_reach_every_group_norm():
    backbone = tiny(groups=16)
    norms = [l for l in backbone.layers if isinstance(l, GroupNormalization)]
    assert len(norms) == 3 * sum(UNITS) + 1 and all(l.groups == 16 for l in norms)
    randomize(backbone)
    layer = backbone.get_layer("block1-unit01-b-group_norm")
    x, y = (np.asarray(t, np.float64) for t in probe(backbone, layer.name)(images()))
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, 16, c // 16)
    normed = ((g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5))
    expected = normed.reshape(x.shape) * np.asarray(layer.gamma) + np.asarray(layer.beta)
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3)


def test_no_normalization_feeds_convolutions_straight_into_relus():
    backbone = tiny(normalization="none")
    assert not any(isinstance(l, (GroupNormalization, keras.layers.BatchNormalization)) for l in backbone.layers)
    randomize(backbone)
    x, y = (np.asarray(t) for t in probe(backbone, "block1-unit01-b-relu")(images()))
    conv_out = probe(backbone, "block1-unit01-a-standardized_conv2d")(images())[1]
    np.testing.assert_array_equal(x, np.asarray(conv_out))
    np.testing.assert_array_equal(y, np.maximum(x, 0))


# --- stochastic depth and dropout --------------------------------------------------------

def test_drop_path_rates_grow_linearly_to_the_rate_at_the_last_unit():
    backbone = BiTBackbone((1, 2, 1, 1), WIDTH, stochastic_depth=0.5)
    layers = [l for l in backbone.layers if isinstance(l, DropPath)]
    names = ["block1-unit01", "block2-unit01", "block2-unit02", "block3-unit01", "block4-unit01"]
    assert [l.name for l in layers] == [f"{n}-drop_path" for n in names]
    np.testing.assert_allclose([l.rate for l in layers], [0.1, 0.2, 0.3, 0.4, 0.5])  # 0.5 * (i + 1) / 5
    # On the residual branch: the Add takes the dropped branch and the shortcut.
    add = backbone.get_layer("block2-unit02-add")
    assert layers[2].output in add.input


def test_drop_path_is_identity_at_inference():
    plain, dropped = tiny(), tiny(stochastic_depth=0.9)
    randomize(plain)
    dropped.set_weights(plain.get_weights())
    x = images()
    np.testing.assert_array_equal(np.asarray(dropped(x, training=False)), np.asarray(plain(x, training=False)))
    np.testing.assert_array_equal(np.asarray(dropped.predict(x, verbose=0)), np.asarray(plain(x)))
    assert not np.allclose(np.asarray(dropped(x, training=True)), np.asarray(plain(x, training=True)))


def test_drop_path_drops_whole_examples_at_its_rate_and_keeps_the_mean():
    layer = DropPath(0.3, seed=0)
    x = np.ones((4000, 2, 2, 3), "float32")
    y = np.asarray(layer(x, training=True))
    per_example = y.reshape(4000, -1)
    assert (per_example == per_example[:, :1]).all()  # one decision per example
    kept = per_example[:, 0] != 0
    np.testing.assert_allclose(per_example[kept, 0], 1 / 0.7, rtol=1e-6)
    assert abs((~kept).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_classifier_dropout_before_the_head():
    model = BiTImageClassifier(tiny(), 5, dropout=0.25)
    dropout = model.get_layer("head_dropout")
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.25
    assert dropout.output is model.get_layer("head-conv2d").input
    restored = BiTImageClassifier.from_config(model.get_config())
    assert restored.dropout == 0.25 and restored.get_layer("head_dropout").rate == 0.25


# --- every combination: trains, .keras and .npz round trips -------------------------------

@pytest.mark.parametrize("normalization, ws", COMBOS)
def test_every_combination_trains_and_round_trips(normalization, ws, tmp_path):
    keras.utils.set_random_seed(0)
    backbone = tiny(normalization=normalization, weight_standardization=ws, stochastic_depth=0.2)
    model = BiTImageClassifier(backbone, 3, dropout=0.1)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.array(w) for w in model.trainable_weights]
    x, labels = images(8), np.arange(8) % 3
    history = model.fit(x, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights))
    expected = np.asarray(model.predict(x, verbose=0))

    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)  # safe_mode stays on
    assert restored.backbone.get_config() == backbone.get_config()
    np.testing.assert_array_equal(np.asarray(restored.predict(x, verbose=0)), expected)

    npz = str(tmp_path / "model.npz")
    checkpoint.save_weights(model, npz)
    fresh = BiTImageClassifier(tiny(normalization=normalization, weight_standardization=ws), 3)
    checkpoint.load_weights(fresh, npz)
    np.testing.assert_array_equal(np.asarray(fresh.predict(x, verbose=0)), expected)
    report = checkpoint.inspect_checkpoint(npz)
    assert report["loads"] and report["unexpected_keys"] == []

    arrays = np.load(npz)
    if normalization == "batch":
        bn = backbone.get_layer("block1-unit01-a-batch_norm")
        for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(arrays[f"resnet/block1/unit01/a/batch_norm/{weight}"],
                                          np.asarray(getattr(bn, weight)))
        assert not np.allclose(arrays["resnet/block1/unit01/a/batch_norm/moving_mean"], 0)  # training moved them
    norm_keys = [k for k in arrays if "_norm/" in k]
    assert (normalization == "none") == (not norm_keys)
    held = json.loads(str(arrays[layout.NETWORK_KEY])) if layout.NETWORK_KEY in arrays else layout.BIT_NETWORK
    assert held == {"normalization": normalization, "weight_standardization": ws,
                    "groups": 32 if normalization == "group" else None}
    # An inference copy keeps the outputs whatever the switches.
    folded = inference.fold_standardization(model)
    np.testing.assert_allclose(np.asarray(folded.predict(x, verbose=0)), expected, rtol=1e-4, atol=1e-5)


def test_bit_network_checkpoint_has_only_release_keys(tmp_path):
    path = str(tmp_path / "bit.npz")
    checkpoint.save_weights(tiny(), path)
    expected = {e.key for e in layout.checkpoint_layout(tiny().architecture, None)}
    assert set(np.load(path).keys()) == expected


# --- release weights only into BiT's network ---------------------------------------------

@pytest.fixture(scope="module")
def release_like(tmp_path_factory):
    """A checkpoint in the release layout (no network key), as every released file is."""
    path = str(tmp_path_factory.mktemp("release") / "release.npz")
    checkpoint.save_weights(tiny(), path)
    return path


@pytest.mark.parametrize("kwargs, switch", [
    (dict(normalization="batch"), "normalization='group'"),
    (dict(normalization="none"), "normalization='group'"),
    (dict(weight_standardization=False), "weight_standardization=True"),
    (dict(groups=16), "groups=32"),
])
def test_release_layout_refused_by_other_networks(release_like, kwargs, switch):
    with pytest.raises(CheckpointError, match=switch) as error:
        checkpoint.load_weights(tiny(**kwargs), release_like)
    assert "\n" not in str(error.value)
    checkpoint.load_weights(tiny(stochastic_depth=0.3), release_like)  # drop-path changes no weights


def test_research_checkpoint_refused_by_bits_network(tmp_path):
    path = str(tmp_path / "bn.npz")
    checkpoint.save_weights(tiny(normalization="batch", weight_standardization=False), path)
    with pytest.raises(CheckpointError, match="normalization='batch'.*weight_standardization=False"):
        checkpoint.load_weights(tiny(), path)


def test_corrupt_network_key_is_a_checkpoint_error(tmp_path, release_like):
    arrays = dict(np.load(release_like))
    arrays[layout.NETWORK_KEY] = np.array('{"normalization": "layer"}')
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=layout.NETWORK_KEY):
        checkpoint.load_weights(tiny(), path)


@pytest.mark.parametrize("kwargs, switch", [
    (dict(normalization="batch"), "normalization='batch'"),
    (dict(weight_standardization=False), "weight_standardization=False"),
    (dict(groups=8), "groups=8"),
])
def test_release_preset_refused_before_any_download(tmp_path, kwargs, switch):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=switch):
        BiTBackbone.from_preset("m-r50x1", cache_dir=str(cache), **kwargs)
    with pytest.raises(ConfigError, match=switch):
        BiTImageClassifier.from_preset("s-r50x1", cache_dir=str(cache), **kwargs)
    with pytest.raises(ConfigError, match=switch):
        BiTBackbone.from_preset("r50x1", weights="BiT-M-R50x1", cache_dir=str(cache), **kwargs)
    assert not cache.exists() or not os.listdir(cache)


def test_architecture_presets_take_the_switches():
    backbone = BiTBackbone.from_preset("r14x1", normalization="batch", stochastic_depth=0.1)
    assert backbone.normalization == "batch" and backbone.stochastic_depth == 0.1
    model = BiTImageClassifier.from_preset("r14x1", num_classes=4, weight_standardization=False, dropout=0.3)
    assert not model.backbone.weight_standardization and model.dropout == 0.3


def test_research_file_loads_through_weights_rule(tmp_path):
    path = str(tmp_path / "gn16.npz")
    source = tiny(groups=16)
    randomize(source)
    checkpoint.save_weights(source, path)
    loaded = BiTBackbone.from_preset("r14x1", weights=path, groups=16)
    x = images(2)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(source(x)))


def test_every_new_layer_gets_the_dtype_policy():
    backbone = tiny(normalization="batch", weight_standardization=False, stochastic_depth=0.2,
                    dtype="mixed_bfloat16")
    model = BiTImageClassifier(backbone, 3, dropout=0.1)
    new = [l for l in backbone.layers if isinstance(l, (keras.layers.BatchNormalization, keras.layers.Conv2D,
                                                        DropPath))] + [model.get_layer("head_dropout")]
    assert new and all(l.dtype_policy.name == "mixed_bfloat16" for l in new)
    assert keras.backend.standardize_dtype(backbone(images(2), training=True).dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in backbone.weights)
