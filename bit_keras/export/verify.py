"""Does an export compute what the Keras model computes? Numbers for one comparison.

float32 exports: the max relative difference, max|exported - keras| / max|keras| over all
outputs of the probe images, must stay within `FLOAT_TOLERANCE`. Quantized exports change
the numbers on purpose; they must keep the Keras model's top-1 class on at least
`TOP1_AGREEMENT` of the probe images.
"""

from __future__ import annotations

import numpy as np

FLOAT_TOLERANCE = 1e-5   # float32 kernels differ in summation order; measured 5e-7..8e-7 on BiT
TOP1_AGREEMENT = 0.9
PROBE_IMAGES = 4
PROBE_SEED = 0


def probe_images(resolution, count=PROBE_IMAGES) -> np.ndarray:
    """Fixed images in [0, 1]: smooth random patterns (a seed), so the check is the same every time."""
    rng = np.random.default_rng(PROBE_SEED)
    coarse = rng.random((count, 4, 4, 3))
    repeat = -(-int(resolution) // 4)
    images = np.repeat(np.repeat(coarse, repeat, axis=1), repeat, axis=2)[:, :resolution, :resolution]
    noise = 0.1 * rng.random(images.shape)
    return np.clip(images * 0.9 + noise, 0.0, 1.0).astype(np.float32)


def compare(expected, actual, *, quantized=False) -> dict:
    """{"max_relative_difference", "top1_agreement", "passed", "criterion"} for two [N, K] outputs."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        return {"max_relative_difference": float("inf"), "top1_agreement": 0.0, "passed": False,
                "criterion": f"output shape {actual.shape}, expected {expected.shape}"}
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    difference = float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0
    agreement = float(np.mean(np.argmax(actual, -1) == np.argmax(expected, -1))) if expected.size else 1.0
    if not np.all(np.isfinite(actual)):
        difference, agreement = float("inf"), 0.0
    if quantized:
        passed, criterion = agreement >= TOP1_AGREEMENT, f"top-1 agreement >= {TOP1_AGREEMENT:g}"
    else:
        passed, criterion = difference <= FLOAT_TOLERANCE, f"max relative difference <= {FLOAT_TOLERANCE:g}"
    return {"max_relative_difference": difference, "top1_agreement": agreement, "passed": bool(passed),
            "criterion": criterion}
