"""Fine-tuning: the HyperRule schedule, the wrapper's settings and gradient accumulation, checked in NumPy."""

import dataclasses

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras.data import from_arrays
from bit_keras.finetune import build_finetuner, shorten
from bit_keras.hyperrule import hyperrule
from bit_keras.learning_rates import WarmupStepDecay


def _tiny_backbone():
    return bit_keras.BiTBackbone((1, 1, 1, 1), width=1)


@pytest.mark.parametrize("rule", [
    hyperrule(10_000, (32, 32)),
    hyperrule(100_000, (224, 224), batch_size=128),
    hyperrule(1_000_000, (500, 400), schedule="public"),
    shorten(hyperrule(1437, (8, 8), batch_size=64), 100),
], ids=["small", "medium-batch128", "large-public", "shortened"])
def test_schedule_equals_the_rule_at_every_boundary(rule):
    schedule = WarmupStepDecay.from_rule(rule)
    steps = {0, 1, rule.total_steps - 1}
    for boundary in (rule.warmup_steps, *rule.decay_boundaries):
        steps |= {boundary - 1, boundary, boundary + 1}
    for step in sorted(s for s in steps if s >= 0):
        assert float(schedule(step)) == pytest.approx(rule.learning_rate(step), rel=1e-6), step
    assert float(schedule(0)) > 0  # the public code's warm-up starts at exactly 0


def test_schedule_values_from_the_spec():
    # The paper, N < 20k at batch 512: 500 steps, warm-up 100, /10 at 150, 300, 450.
    schedule = WarmupStepDecay.from_rule(hyperrule(10_000, (32, 32)))
    expected = {0: 0.003 / 100, 49: 0.003 * 50 / 100, 99: 0.003, 149: 0.003, 150: 3e-4, 299: 3e-4,
                300: 3e-5, 450: 3e-6, 499: 3e-6}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6), step


def test_wrapper_has_a_zero_head_and_the_hyperrule_optimizer():
    ft = build_finetuner(_tiny_backbone(), num_classes=5, train_size=30_000, image_size=(64, 64), batch_size=128)
    head = ft.model.get_layer("head-conv2d")
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    optimizer = ft.model.optimizer
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.9) and not optimizer.nesterov
    assert not optimizer.weight_decay and optimizer.accumulation_steps == 1
    assert isinstance(optimizer._learning_rate, WarmupStepDecay) and optimizer._learning_rate.steps_per_update == 1
    assert ft.rule == hyperrule(30_000, (64, 64), batch_size=128)
    assert ft.rule.base_learning_rate == pytest.approx(0.003 * 128 / 512)
    assert ft.rule.mixup_alpha == pytest.approx(0.1) and (ft.rule.resize, ft.rule.crop) == (160, 128)
    assert isinstance(ft.model.loss, keras.losses.CategoricalCrossentropy) and ft.model.loss.from_logits
    assert ft.model.output_shape == (None, 5)
    images, labels = next(iter(ft.train_dataset(from_arrays(
        np.zeros((8, 20, 20, 3), np.uint8), np.arange(8) % 5)[0])))
    # Zero head: every class starts equally likely.
    np.testing.assert_allclose(ft.model(images[:2]).numpy(), 0.0)

    multi = build_finetuner(_tiny_backbone(), num_classes=3, train_size=100, image_size=(32, 32), batch_size=64,
                            micro_batch_size=16, multi_label=True)
    assert isinstance(multi.model.loss, keras.losses.BinaryCrossentropy) and multi.model.loss.from_logits
    assert multi.model.optimizer.accumulation_steps == 4 == multi.accumulation_steps
    assert multi.fit_steps == 4 * multi.rule.total_steps
    with pytest.raises(ValueError, match="must divide"):
        build_finetuner(_tiny_backbone(), num_classes=3, train_size=100, image_size=(32, 32), batch_size=64,
                        micro_batch_size=24)
    with pytest.raises(ValueError, match="train_size and image_size"):
        build_finetuner(_tiny_backbone(), num_classes=3)


def _numpy_momentum_sgd(x, y, rule, updates, batch):
    """Independent softmax regression with Keras-style momentum SGD (v = m v - lr g; w += v), zero init."""
    features = x.reshape(len(x), -1).astype(np.float64)
    kernel = np.zeros((features.shape[1], y.shape[1]))
    bias = np.zeros(y.shape[1])
    velocity_k, velocity_b = np.zeros_like(kernel), np.zeros_like(bias)
    for update in range(updates):
        xb, yb = features[update * batch:(update + 1) * batch], y[update * batch:(update + 1) * batch]
        logits = xb @ kernel + bias
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        grad_logits = (probs - yb) / batch
        lr = rule.learning_rate(update)
        velocity_k = rule.momentum * velocity_k - lr * (xb.T @ grad_logits)
        velocity_b = rule.momentum * velocity_b - lr * grad_logits.sum(0)
        kernel, bias = kernel + velocity_k, bias + velocity_b
    return kernel, bias


def test_accumulating_4_micro_batches_equals_one_batch_in_numpy():
    rng = np.random.default_rng(0)
    updates, batch = 4, 16
    x = rng.random((updates * batch, 4, 4, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, updates * batch)]
    # Warm-up over 2 updates and decays at 2 and 3: every update has a different rate.
    rule = dataclasses.replace(hyperrule(1000, (4, 4), batch_size=batch), total_steps=updates, warmup_steps=2,
                               decay_boundaries=(2, 3), base_learning_rate=0.5)
    expected_kernel, expected_bias = _numpy_momentum_sgd(x, y, rule, updates, batch)
    assert np.abs(expected_kernel).max() > 1e-2  # the updates are not trivially small
    for micro in (batch, batch // 4):
        backbone = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten()])
        ft = build_finetuner(backbone, num_classes=3, rule=rule, batch_size=batch, micro_batch_size=micro)
        ft.model.fit(x, y, batch_size=micro, shuffle=False, epochs=1, verbose=0)
        head = ft.model.get_layer("head-conv2d")
        assert int(ft.model.optimizer.iterations) == updates
        np.testing.assert_allclose(head.kernel.numpy(), expected_kernel, atol=1e-6)
        np.testing.assert_allclose(head.bias.numpy(), expected_bias, atol=1e-6)


@pytest.mark.slow  # ~30-60 s on 2 cores; the NumPy test above covers accumulation with momentum and the schedule
def test_accumulation_on_a_bit_backbone_matches_the_full_batch():
    rng = np.random.default_rng(1)
    x = rng.random((8, 32, 32, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    rule = dataclasses.replace(hyperrule(1000, (32, 32), batch_size=8), total_steps=1, warmup_steps=1,
                               decay_boundaries=(), base_learning_rate=0.1)
    weights, results = None, []
    for micro in (8, 2):
        backbone = _tiny_backbone()
        if weights is None:
            weights = backbone.get_weights()
        backbone.set_weights(weights)
        ft = build_finetuner(backbone, num_classes=4, rule=rule, batch_size=8, micro_batch_size=micro)
        # A non-zero head so the backbone gets gradients too.
        ft.model.get_layer("head-conv2d").kernel.assign(rng.normal(size=(2048, 4)).astype("float32") if not results
                                                 else results[0][1])
        start_head = ft.model.get_layer("head-conv2d").kernel.numpy().copy()
        ft.model.fit(x, y, batch_size=micro, shuffle=False, epochs=1, verbose=0)
        results.append((ft.model.get_weights(), start_head))
    (full, _), (accumulated, _) = results
    changed = [np.abs(a - b).max() for a, b in zip(full, weights + [0, 0])][:len(weights)]
    assert max(changed) > 1e-4  # the backbone moved
    for a, b in zip(full, accumulated):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_a_ready_backbone_in_another_precision_is_refused_not_silently_mixed():
    backbone = _tiny_backbone()  # float32
    with pytest.raises(ValueError, match="computes in float32, but mixed_bfloat16 was asked for"):
        build_finetuner(backbone, num_classes=3, train_size=100, image_size=(32, 32), batch_size=8,
                        dtype="mixed_bfloat16")
    ft = build_finetuner(backbone, num_classes=3, train_size=100, image_size=(32, 32), batch_size=8, dtype="float32")
    assert ft.model.get_layer("head-conv2d").dtype_policy.name == "float32"
