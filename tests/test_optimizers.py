"""AccumulatingSGD against SGD with momentum on averaged gradients, written in NumPy.

The check runs on TensorFlow in this process and on JAX and PyTorch in subprocesses (the
optimizer is written with keras.ops for all three).
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r'''
import numpy as np, keras
from bit_keras.optimizers import AccumulatingSGD
from bit_keras.learning_rates import WarmupStepDecay


def check(steps=3, updates=4, momentum=0.9):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(steps * updates)]
    schedule = WarmupStepDecay(0.5, warmup_steps=2, boundaries=(3,), steps_per_update=steps)
    variables = [keras.Variable(w) for w in start]
    optimizer = AccumulatingSGD(schedule, momentum=momentum, accumulation_steps=steps)
    optimizer.build(variables)
    # No accumulator: one weight-sized optimizer variable per weight (the momentum).
    sized = [v for v in optimizer.variables if tuple(v.shape) in shapes]
    assert len(sized) == len(shapes), [v.path for v in optimizer.variables]

    # The reference: the HyperRule's warm-up then step decay, by hand, per update.
    def rate(update):
        return 0.5 * (update + 1) / 2 if update < 2 else (0.5 if update < 3 else 0.05)

    weights = [w.astype("float64") for w in start]
    velocity = [np.zeros(s) for s in shapes]
    for update in range(updates):
        before = [keras.ops.convert_to_numpy(v) for v in variables]
        for micro in range(steps):
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads[update * steps + micro]], variables)
            if micro < steps - 1:  # between micro-steps the weights do not move
                for w, v in zip(before, variables):
                    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), w)
        mean = [np.mean([grads[update * steps + i][j] for i in range(steps)], axis=0) for j in range(len(shapes))]
        velocity = [momentum * m - rate(update) * g for m, g in zip(velocity, mean)]
        weights = [w + m for w, m in zip(weights, velocity)]
        for w, v in zip(weights, variables):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w, rtol=1e-5, atol=1e-6)
        assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == update + 1
    return "ok"


print(check())
'''


def test_accumulating_sgd_matches_numpy_on_tensorflow():
    namespace = {}
    exec(CHECK.replace("print(check())", ""), namespace)
    assert namespace["check"]() == "ok"
    assert namespace["check"](steps=1, updates=3) == "ok"  # no accumulation: Keras' own SGD path


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_accumulating_sgd_matches_numpy_on_other_backends(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_the_optimizer_round_trips_through_its_config():
    import keras

    from bit_keras.optimizers import AccumulatingSGD

    optimizer = AccumulatingSGD(0.1, momentum=0.9, accumulation_steps=4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is AccumulatingSGD and restored.accumulation_steps == 4 and restored.momentum == 0.9


@pytest.mark.parametrize("kwargs, message", [
    ({"momentum": 0.0}, "momentum > 0"),
    ({"nesterov": True}, "nesterov"),
    ({"clipnorm": 1.0}, "clipnorm"),
    ({"gradient_accumulation_steps": 2}, "give accumulation_steps"),
])
def test_unsupported_combinations_are_refused(kwargs, message):
    from bit_keras.errors import ConfigError
    from bit_keras.optimizers import AccumulatingSGD

    with pytest.raises(ConfigError, match=message):
        AccumulatingSGD(0.1, **{"momentum": 0.9, **kwargs}, accumulation_steps=2)


def test_accumulation_steps_must_be_a_positive_integer():
    from bit_keras.errors import ConfigError
    from bit_keras.optimizers import AccumulatingSGD

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            AccumulatingSGD(0.1, accumulation_steps=bad)


def test_a_fine_tuned_keras_file_loads_with_its_optimizer_in_a_fresh_process(tmp_path):
    import bit_keras

    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 3)
    model.compile_hyperrule(train_size=100, image_size=(32, 32), batch_size=8, micro_batch_size=2)
    path = str(tmp_path / "model.keras")
    model.save(path)
    code = ("import keras, bit_keras.classifier\n"
            f"model = keras.saving.load_model({path!r})\n"
            "print(type(model.optimizer).__name__, model.optimizer.accumulation_steps)")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["AccumulatingSGD", "4"]
