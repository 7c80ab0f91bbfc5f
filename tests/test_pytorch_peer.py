"""The PyTorch peer that `bench --baseline pytorch` races computes BiT: same weights, same logits.

Checked against the independent NumPy BiT (tests/reference.py) and against our Keras model from
the same release-layout file, so the benchmark compares one function on both sides.
"""

import numpy as np
import pytest

from tests import reference

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("units,width", [((1, 1, 1, 1), 1), ((2, 1, 2, 1), 1)])
def test_the_pytorch_peer_computes_the_reference_logits(units, width):
    from bit_keras.peers.pytorch_bit import ResNetV2, load_release

    params = reference.random_checkpoint(units, width, num_classes=7, seed=3)
    images = np.random.default_rng(0).uniform(0, 1, (2, 45, 38, 3)).astype("float32")
    _, expected = reference.forward(params, images)
    model = load_release(ResNetV2(units, width, 7), params).eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4)


def test_the_pytorch_peer_and_our_model_agree_from_one_file(tmp_path):
    import bit_keras
    from bit_keras.peers.pytorch_bit import ResNetV2, load_release

    params = reference.write_checkpoint(tmp_path / "tiny.npz", (1, 1, 1, 1), 1, num_classes=5, seed=1)
    images = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    ours = bit_keras.BiTImageClassifier.from_preset("r14x1", weights=str(tmp_path / "tiny.npz"))
    peer = load_release(ResNetV2((1, 1, 1, 1), 1, 5), params).eval()
    with torch.inference_mode():
        theirs = peer(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours(images)), rtol=1e-4, atol=1e-4)
