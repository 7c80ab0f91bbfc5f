"""Shared test setup and the model harness that every architecture goes through.

`run_backbone_test` and `run_precision_test` play the part of keras-hub's
`run_vision_backbone_test` / `run_precision_test`: build, call at two sizes, serialize
round trip, and mixed precision checked where it matters (each sublayer's policy and the
dtype the convolutions really compute in), not only at the float32 logits.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("BIT_KERAS_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "bit_keras_test_cache_unused"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


# The files that take longest (child processes, multi-process jobs, fits), longest first. With
# `--dist loadfile --no-loadscope-reorder` (pyproject.toml) the two test processes take whole files
# in this order: the long ones start first and the short ones fill in at the end. Only the suite's
# wall time depends on this list; a file missing from it runs after these.
LONGEST_FIRST = [
    "test_distributed.py", "test_models.py", "test_multi_worker.py", "test_distributed_resume.py",
    "test_distributed_jax.py", "test_multi_worker_resume.py", "test_multi_worker_train.py", "test_dense_run.py",
    "test_vtab.py", "test_train_run.py", "test_finetune_run.py", "test_backends.py", "test_gpu_vs_timm.py",
    "test_cli_output.py", "test_security.py", "test_demo.py", "test_bf16_accuracy.py", "test_train_options.py",
    "test_keras_hub.py", "test_deploy.py", "test_dense_study.py", "test_dense_tasks.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the order inside a file stays


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """One exported backbone of one unit per block, width 1 (seeded), shared by every test that fine-tunes a file."""
    import keras

    import bit_keras
    from bit_keras.export import export_keras

    keras.utils.set_random_seed(0)
    return export_keras(bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny"),
                        tmp_path_factory.mktemp("tiny_export") / "tiny.keras")


def finetune_digits(output, dtype="float32"):
    """A tiny BiT (random weights, seeded) fine-tuned on digits for 80 updates at 24 px; returns its metrics.

    Random weights: the HyperRule's peak rate (0.003 x 64/512) is meant for BiT features, so it is raised."""
    import keras

    import bit_keras
    from bit_keras.finetune.runner import finetune

    keras.utils.set_random_seed(0)
    backbone = bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny", dtype=dtype)
    return finetune(backbone, dataset="digits", output=output, batch_size=32, steps=80, eval_every=40,
                    resolution=24, base_learning_rate=0.01, verbose=0)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """(output folder, metrics) of `finetune_digits` in float32, shared by the tests that need a learned model."""
    output = tmp_path_factory.mktemp("digits_run")
    return output, finetune_digits(output)


@pytest.fixture(scope="module")
def checkpoint_file(request, tmp_path_factory):
    """(path, arrays) of a release-layout checkpoint with the test module's UNITS, WIDTH,
    CLASSES and SEED, written once per module by the independent NumPy reference."""
    from tests import reference

    module = request.module
    path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
    params = reference.write_checkpoint(path, module.UNITS, module.WIDTH, module.CLASSES, seed=module.SEED)
    return str(path), params


def _dtype(tensor) -> str:
    import keras

    return keras.backend.standardize_dtype(tensor.dtype)


def run_backbone_test(backbone, tmp_path, sizes=((64, 64), (45, 71))):
    """Build, call at two sizes, `.keras` round trip with equal outputs, pyramid shapes."""
    import keras

    rng = np.random.default_rng(0)
    for height, width in sizes:
        images = rng.uniform(0, 1, (2, height, width, 3)).astype("float32")
        features = backbone(images)
        assert tuple(features.shape) == (2, backbone.num_features)
    pyramid = keras.Model(backbone.input, backbone.pyramid_outputs)(images)
    assert [tuple(pyramid[f"P{b + 1}"].shape)[-1] for b in (1, 2, 3, 4)] == [
        256 * backbone.width * 2 ** b for b in range(4)]
    path = tmp_path / "backbone.keras"
    backbone.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(backbone) and restored.get_config() == backbone.get_config()
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(backbone(images)), rtol=1e-5, atol=1e-5)


def run_precision_test(model, policy="mixed_bfloat16"):
    """Every conv and GroupNorm of `model` (backbone or classifier) is under `policy`: its variables are of the
    policy's variable dtype, its convolutions really emit the compute dtype, a classifier's logits are float32,
    and a training step updates the weights."""
    import keras

    from bit_keras.layers import GroupNormalization, StandardizedConv2D

    policy = keras.dtype_policies.get(policy)
    backbone = getattr(model, "backbone", model)
    layers = [layer for layer in backbone.layers if isinstance(layer, (StandardizedConv2D, GroupNormalization))]
    assert layers
    wrong = [layer.name for layer in layers if layer.dtype_policy.name != policy.name]
    assert not wrong, f"layers not under {policy.name}: {wrong[:5]}"
    assert {_dtype(v) for v in model.weights} == {policy.variable_dtype}
    # What the layers emit, not what they are configured for.
    probe = keras.Model(backbone.input, [layer.output for layer in layers])
    images = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    assert {_dtype(out) for out in probe(images, training=True)} == {policy.compute_dtype}
    if getattr(model, "num_classes", None):
        logits = model(images)
        assert _dtype(logits) == "float32"
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=None)
        kernel = model.get_layer("block1-unit01-a-standardized_conv2d").kernel
        before = np.asarray(kernel).copy()
        head = model.get_layer("head-conv2d").kernel
        head.assign(np.random.default_rng(2).normal(0, 0.01, size=head.shape))
        # The least likely class as the label: a loss that is surely not 0 in bfloat16.
        labels = np.argmin(np.asarray(model(images)), axis=1)
        # mixed_float16's dynamic loss scale (Keras adds it at compile) starts at 2**15 and skips the steps whose
        # scaled gradients overflow, halving the scale: the weights move within a few steps, the others at once.
        for _ in range(20):
            loss = model.train_on_batch(images, labels)
            if not np.array_equal(np.asarray(kernel), before):
                break
        assert np.isfinite(loss) and _dtype(kernel) == policy.variable_dtype
        assert not np.array_equal(np.asarray(kernel), before)


def _rss_mib():
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def pytest_runtest_logfinish(nodeid, location):
    """With BIT_KERAS_RSS_LOG=PATH, appends each test's resident memory (MiB, now and peak) to PATH.WORKER."""
    log = os.environ.get("BIT_KERAS_RSS_LOG")
    if log:
        with open(f"{log}.{os.environ.get('PYTEST_XDIST_WORKER', 'main')}", "a") as out:
            out.write("%s\t%d\t%d\n" % (nodeid, *_rss_mib()))


@pytest.fixture(scope="module", autouse=True)
def _free_traced_gradients_between_files():
    """Drops TensorFlow's registered custom gradients of the finished file's graphs.

    In a traced function every `custom_gradient` call (GroupNorm and weight standardization,
    per layer) registers its backward function in TF's global gradient registry, which is never
    cleaned and keeps the whole traced graph alive: ~50 MB per tiny model that is fit or predicted.
    Over a test process's files that grew each xdist worker to 11-13 GB, and the 24 GiB machine
    thrashed. Between files no graph still needs them (gradients were traced with their functions).
    """
    yield
    import sys

    if "tensorflow" not in sys.modules:
        return
    from tensorflow.python.framework import ops as tf_ops

    registry = tf_ops._gradient_registry._registry
    for name in [name for name in registry if name.startswith("CustomGradient-")]:
        del registry[name]
