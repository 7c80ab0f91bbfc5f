"""The zoo on the other Keras backends: same parity with the NumPy BiT as on TensorFlow."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARITY_SCRIPT = """
import numpy as np, keras, bit_keras
from tests import reference
assert keras.backend.backend() == "{backend}", keras.backend.backend()
params = reference.write_checkpoint("{path}", (1, 2, 1, 1), 1, num_classes=5, seed=7)
model = bit_keras.BiTResNetV2((1, 2, 1, 1), 1, num_classes=5)
bit_keras.load_weights(model, "{path}")
features = bit_keras.BiTResNetV2((1, 2, 1, 1), 1, include_top=False)
bit_keras.load_weights(features, "{path}")
for size in [(64, 64), (45, 71)]:
    images = np.random.default_rng(0).uniform(size=(2, *size, 3)).astype("float32")
    want_features, want_logits = reference.forward(params, images)
    for got, want in [(model(images), want_logits), (features(images), want_features)]:
        got = keras.ops.convert_to_numpy(got).astype(np.float64)
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error < 1e-4, error
print("parity ok")
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_parity_on_backend(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (CI installs jax; torch is optional)")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    script = PARITY_SCRIPT.format(backend=backend, path=tmp_path / "ckpt.npz")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "parity ok" in result.stdout, result.stderr[-3000:]
