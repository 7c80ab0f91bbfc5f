"""Keras core's GroupNormalization against bit_keras's, the layer alone at R50x1's activation shapes."""

from __future__ import annotations

import statistics
import time

GROUP_NORM_SHAPES = ((16, 56, 56, 256), (16, 56, 56, 64), (16, 28, 28, 512), (16, 14, 14, 1024))


def compare_group_norm(shapes=GROUP_NORM_SHAPES, *, rounds: int = 9, jit: bool = False, log=None) -> list:
    """Keras core's GroupNormalization vs bit_keras's at R50x1's activation shapes.

    Both layers run in compiled graphs (`jit` adds XLA), interleaved round by round. Returns
    one dict per shape with the median times and the median per-round speed-up; prints it.
    """
    import keras
    import numpy as np

    from bit_keras.layers import GroupNormalization

    rows = []
    for shape in shapes:
        x = keras.random.normal(shape, seed=0) * 3.0 + 1.0
        ours = GroupNormalization()
        core = keras.layers.GroupNormalization(groups=32, epsilon=1e-5)
        steps = []
        for layer in (core, ours):
            model = keras.Sequential([keras.Input(shape[1:]), layer])
            model.compile(jit_compile=jit)
            model.predict_on_batch(x)
            steps.append(lambda m=model: m.predict_on_batch(x))
        np.testing.assert_allclose(steps[1](), steps[0](), atol=1e-4)  # the same function
        times = [[], []]
        for _ in range(rounds):
            for index, step in enumerate(steps):
                start = time.perf_counter()
                step()
                times[index].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(*times)]
        row = {"shape": list(shape), "keras_core_ms": 1e3 * statistics.median(times[0]),
               "bit_keras_ms": 1e3 * statistics.median(times[1]), "speedup": statistics.median(ratios),
               "speedup_range": [min(ratios), max(ratios)]}
        if log is not None:
            log(f"{shape}: Keras core {row['keras_core_ms']:.1f} ms, bit_keras {row['bit_keras_ms']:.1f} ms, "
                f"{row['speedup']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})")
        rows.append(row)
    return rows
