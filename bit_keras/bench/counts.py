"""What an architecture implies, counted analytically: multiply-accumulates and activation bytes.

Both walk `Architecture.units()`, as the builder does, so they cannot disagree with the
network; the parameter count is `Architecture.num_params`.
"""

from __future__ import annotations


def _out(n, kernel, stride, pad):
    return (n + 2 * pad - kernel) // stride + 1


def count_macs(architecture, image_size, num_classes: int | None = 1000) -> int:
    """Multiply-accumulates of one forward pass: every convolution plus the head.

    Walks `Architecture.units()`, as the builder does (7x7/2 root with padding 3, 3x3/2 max
    pool, stride in the 3x3 convolution of each block's first unit, projection on the
    pre-activation). Normalisation, ReLU and additions are not counted. R50x1 at 224 gives
    4.09 G (the 4.23 G quoted for timm's `resnetv2_50x1_bit` also counts those layers).
    """
    height, wide = (image_size, image_size) if isinstance(image_size, int) else image_size
    out = _out
    h, w = out(height, 7, 2, 3), out(wide, 7, 2, 3)
    macs = h * w * 49 * 3 * architecture.root_channels
    h, w = out(h, 3, 2, 1), out(w, 3, 2, 1)
    for unit in architecture.units():
        cin, mid, cout, stride = unit.in_channels, unit.mid_channels, unit.out_channels, unit.stride
        macs += h * w * cin * mid  # a: 1x1
        ho, wo = out(h, 3, stride, 1), out(w, 3, stride, 1)
        if unit.projection:
            macs += out(h, 1, stride, 0) * out(w, 1, stride, 0) * cin * cout
        macs += ho * wo * 9 * mid * mid + ho * wo * mid * cout  # b: 3x3, c: 1x1
        h, w = ho, wo
    if num_classes:
        macs += architecture.num_features * num_classes
    return macs


def activation_bytes(architecture, image_size: int, batch: int = 1, bytes_per_value: int = 4,
                     num_classes: int = 1000) -> int:
    """Estimate of the activations a training step keeps for its backward pass.

    Every intermediate tensor of the forward pass counted once (the input, each
    convolution's output, each GroupNorm's and ReLU's output, the projections and the
    residual sums) at `bytes_per_value`. Frameworks keep some of these twice (a cast, a
    float32 statistic copy) and free others early, so this is an order of magnitude, not a
    prediction; `bench --mode memory` puts the measured figure next to it.
    """
    out = _out
    h = out(image_size, 7, 2, 3)
    values = image_size * image_size * 3 + h * h * architecture.root_channels  # input, root conv
    h = out(h, 3, 2, 1)
    values += h * h * architecture.root_channels  # max pool
    for unit in architecture.units():
        cin, mid, cout, stride = unit.in_channels, unit.mid_channels, unit.out_channels, unit.stride
        ho = out(h, 3, stride, 1)
        values += 2 * h * h * cin          # pre-activation GN + ReLU
        values += 3 * h * h * mid          # conv a, GN, ReLU
        values += 3 * ho * ho * mid        # conv b, GN, ReLU
        values += 2 * ho * ho * cout       # conv c, residual sum
        if unit.projection:
            values += ho * ho * cout
        h = ho
    values += 2 * h * h * architecture.num_features + architecture.num_features + num_classes  # final GN+ReLU, pool, head
    return values * batch * bytes_per_value
