"""The Keras model against the independent NumPy BiT (tests/reference.py)."""

import numpy as np
import pytest

import bit_keras
from tests import reference

UNITS, WIDTH, CLASSES = (1, 2, 1, 1), 1, 7


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
    params = reference.write_checkpoint(path, UNITS, WIDTH, CLASSES, seed=1)
    return path, params


def _max_rel_error(actual, expected):
    return np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("size", [(64, 64), (75, 53)])  # the second is no multiple of 32
def test_features_and_logits_match_numpy(checkpoint_file, size):
    path, params = checkpoint_file
    images = np.random.default_rng(2).uniform(0, 1, (2, *size, 3)).astype("float32")
    expected_features, expected_logits = reference.forward(params, images)

    classifier = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, WIDTH), CLASSES)
    bit_keras.load_weights(classifier, path)
    backbone = bit_keras.BiTBackbone(UNITS, WIDTH)
    bit_keras.load_weights(backbone, path)

    assert _max_rel_error(classifier(images), expected_logits) < 1e-4
    assert _max_rel_error(backbone(images), expected_features) < 1e-4
