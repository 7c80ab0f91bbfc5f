"""The zoo on the other Keras backends: the same parity with the NumPy BiT as on TensorFlow,
and the same model features (saving, mixed precision, feature maps, freezing, training)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.processes import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARITY_SCRIPT = """
import numpy as np, keras, bit_keras
from tests import reference
assert keras.backend.backend() == "{backend}", keras.backend.backend()
params = reference.write_checkpoint("{path}", (1, 2, 1, 1), 1, num_classes=5, seed=7)
model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 2, 1, 1), 1), 5)
bit_keras.load_weights(model, "{path}")
features = bit_keras.BiTBackbone((1, 2, 1, 1), 1)
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

FEATURES_SCRIPT = """
import numpy as np, keras, pytest, bit_keras
from bit_keras.layers import GroupNormalization, StandardizedConv2D
assert keras.backend.backend() == "{backend}", keras.backend.backend()
rng = np.random.default_rng(0)
x = rng.uniform(size=(2, 40, 40, 3)).astype("float32")
model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 5)
head = model.get_layer("head-conv2d")
head.kernel.assign(rng.normal(size=head.kernel.shape).astype("float32"))
want = keras.ops.convert_to_numpy(model(x))

# .keras round trip and the release-layout .npz round trip.
model.save("{tmp}/tiny.keras")
restored = keras.saving.load_model("{tmp}/tiny.keras")
assert isinstance(restored.get_layer("block1-unit01-a-standardized_conv2d"), StandardizedConv2D)
np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), want, rtol=1e-5, atol=1e-5)
bit_keras.save_weights(model, "{tmp}/tiny.npz")
again = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 5)
bit_keras.load_weights(again, "{tmp}/tiny.npz")
np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), want, rtol=1e-6, atol=1e-6)

# Folded weight standardization (the inference copy) computes the same logits.
from bit_keras.inference import fold_standardization
np.testing.assert_allclose(keras.ops.convert_to_numpy(fold_standardization(model)(x)), want, rtol=1e-5, atol=1e-5)

# Feature maps and partial freezing.
maps = bit_keras.feature_maps(model, blocks=(1, 4))(x)
assert {{k: tuple(v.shape) for k, v in maps.items()}} == {{"block1": (2, 10, 10, 256), "block4": (2, 2, 2, 2048)}}
frozen = bit_keras.freeze_up_to(model, "block2")
assert "block2-unit01-c-standardized_conv2d" in frozen and "block3-unit01-a-group_norm" not in frozen

# One SGD step through model.fit changes the trainable layers and leaves the frozen ones.
before = {{w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}}
model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, np.array([1, 3]), epochs=1, batch_size=2, verbose=0)
changed = {{w.path for w in model.weights if not np.array_equal(before[w.path], keras.ops.convert_to_numpy(w))}}
# predict standardizes once per call (kernels swapped in and back): the same logits after training,
# the raw kernels back bit for bit, and the next call after another change sees that change.
trained = {{w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}}
np.testing.assert_allclose(model.predict(x, batch_size=1, verbose=0), keras.ops.convert_to_numpy(model(x)),
                           rtol=1e-5, atol=1e-5)
assert all(np.array_equal(trained[w.path], keras.ops.convert_to_numpy(w)) for w in model.weights)
conv = model.get_layer("block4-unit01-c-standardized_conv2d")
conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))  # not affine: WS would undo that
np.testing.assert_allclose(model.predict(x, batch_size=1, verbose=0), keras.ops.convert_to_numpy(model(x)),
                           rtol=1e-5, atol=1e-5)
assert any(p.startswith("block4-unit01-c-standardized_conv2d") for p in changed), sorted(changed)
assert not any(p.startswith(("root_block", "block1", "block2")) for p in changed), sorted(changed)

# Mixed precision: float32 variables and logits, bfloat16 math.
keras.config.set_dtype_policy("mixed_bfloat16")
mixed = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 5)
keras.config.set_dtype_policy("float32")
assert keras.backend.standardize_dtype(mixed(x).dtype) == "float32"
assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)

# An empty batch gives an empty output (GroupNorm reshaped with -1 failed on every backend).
assert tuple(GroupNormalization()(np.zeros((0, 4, 4, 64), "float32")).shape) == (0, 4, 4, 64)
assert tuple(model(np.zeros((0, 32, 32, 3), "float32")).shape) == (0, 5)

# Bad input is refused by our check, not deep inside the backend.
with pytest.raises(ValueError, match="float images in \\[0, 1\\]; received dtype uint8"):
    model(np.zeros((1, 32, 32, 3), "uint8"))

# keras-hub: integer class ids after compile_hyperrule, and a preset loaded back bit for bit.
import keras_hub
assert list(model.backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
model.compile_hyperrule(train_size=100, image_size=(40, 40), batch_size=2, steps=2)
model.fit(x, np.array([1, 3]), epochs=1, batch_size=2, verbose=0)
want = keras.ops.convert_to_numpy(model(x))
model.save_to_preset("{tmp}/preset")
for loaded in (keras_hub.models.ImageClassifier.from_preset("{tmp}/preset"),
               bit_keras.BiTImageClassifier.from_preset("{tmp}/preset")):
    assert type(loaded) is bit_keras.BiTImageClassifier
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), want)
print("features ok")
"""


# Users of the JAX and PyTorch backends may not have TensorFlow: the zoo must not import it.
NO_TENSORFLOW = "import sys; sys.modules['tensorflow'] = None  # any import of it fails\n"


def _run_on(backend, script):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (requirements.txt installs both jax and torch)")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
           # XLA's LLVM optimisation off: the same operations, compiled cheaper (JAX compiles each shape once).
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    return subprocess.run([sys.executable, "-c", NO_TENSORFLOW + script], env=env, capture_output=True, text=True,
                          timeout=HANG_SECONDS)


BENCH_SCRIPT = """
import contextlib, io, json, sys
from bit_keras.cli.main import run
sys.argv = ["bit_keras", "bench", "--variant", "r1-1-1-1x1", "--resolution", "32", "--batch", "2", "--steps", "1",
            "--mode", "train", "--json"]
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    try:
        run()
    except SystemExit as stop:
        assert not stop.code, stop.code
print("bench " + json.dumps(json.loads(printed.getvalue()[printed.getvalue().index("{"):])))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_zoo_on_backend(backend, tmp_path):
    """One process per backend (each start imports the backend afresh): parity, model features, and
    `bit_keras bench`, which is how the JAX/PyTorch zoo is timed on a GPU machine without TensorFlow."""
    script = "\n".join([PARITY_SCRIPT.format(backend=backend, path=tmp_path / "ckpt.npz"),
                        FEATURES_SCRIPT.format(backend=backend, tmp=tmp_path), BENCH_SCRIPT])
    result = _run_on(backend, script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity ok" in result.stdout and "features ok" in result.stdout
    report = json.loads(result.stdout.split("bench ", 1)[1])
    assert report["backend"] == backend and report["results"][0]["images_per_second"] > 0
