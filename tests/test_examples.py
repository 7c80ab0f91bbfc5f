"""The example scripts use the library's rules (weights, HyperRule schedule), not copies of them."""

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(name):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_the_wrapper_example_never_takes_a_release_name_for_random_weights(tmp_path, monkeypatch):
    from bit_keras.errors import BiTError
    from tests import reference

    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "empty_cache"))
    example = _example("finetune_with_wrapper")
    assert example.choose_weights("r14x1")[1] is True  # an architecture: random weights
    path = tmp_path / "tiny.npz"
    reference.write_checkpoint(path, (1, 1, 1, 1), 1, 10, seed=0)
    assert example.choose_weights("r14x1", str(path))[1] is False
    # A release name means the release: offline with an empty cache that is an error naming it,
    # never a silent fall-back to random weights (and the random-weights learning rate).
    with pytest.raises(BiTError, match="BiT-M-R50x1"):
        example.choose_weights("m-r50x1")
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    assert example.choose_weights(str(export_dir)) == (str(export_dir), False)


def test_the_hub_layer_example_schedules_the_hyperrule_learning_rate():
    import tf_keras
    from bit_keras.hyperrule import hyperrule, shorten

    rule = shorten(hyperrule(1437, (32, 32), batch_size=64), 100)
    schedule = _example("finetune_hub_layer").hyperrule_schedule(tf_keras, rule)
    warmup, boundaries, peak = rule.warmup_steps, rule.decay_boundaries, rule.base_learning_rate
    expected = [peak * min(1.0, (s + 1) / warmup) * 0.1 ** sum(s >= b for b in boundaries) for s in range(100)]
    got = [float(schedule(s)) for s in range(100)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (warmup, boundaries) == (20, (30, 60, 90))  # the demo's shortened rule, as the README says
