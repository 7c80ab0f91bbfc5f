"""An independent NumPy BiT: a release-layout checkpoint writer and a forward pass.

Written from the paper and the release layout alone (it does not import bit_keras), so the tests compare the
Keras model against a second implementation rather than against itself.
"""

from __future__ import annotations

import numpy as np


def release_shapes(block_units, width, num_classes=None):
    """Key -> shape of every array in a release checkpoint, (the release layout)."""
    shapes = {}

    def conv(key, shape):
        shapes[f"resnet/{key}/standardized_conv2d/kernel"] = shape

    def norm(key, channels):
        shapes[f"resnet/{key}/group_norm/gamma"] = shapes[f"resnet/{key}/group_norm/beta"] = (channels,)

    conv("root_block", (7, 7, 3, 64 * width))
    cin = 64 * width
    for b, units in enumerate(block_units, start=1):
        mid = 64 * width * 2 ** (b - 1)
        for u in range(1, units + 1):
            p = f"block{b}/unit{u:02d}"
            norm(f"{p}/a", cin)
            conv(f"{p}/a", (1, 1, cin, mid))
            norm(f"{p}/b", mid)
            conv(f"{p}/b", (3, 3, mid, mid))
            norm(f"{p}/c", mid)
            conv(f"{p}/c", (1, 1, mid, 4 * mid))
            if u == 1:
                conv(f"{p}/a/proj", (1, 1, cin, 4 * mid))
            cin = 4 * mid
    norm("", cin)
    shapes["resnet/group_norm/gamma"] = shapes.pop("resnet//group_norm/gamma")
    shapes["resnet/group_norm/beta"] = shapes.pop("resnet//group_norm/beta")
    if num_classes:
        shapes["resnet/head/conv2d/kernel"] = (1, 1, cin, num_classes)
        shapes["resnet/head/conv2d/bias"] = (num_classes,)
    return shapes


def random_checkpoint(block_units, width, num_classes=None, seed=0):
    """A dict of arrays in the release's key layout, with non-trivial random values."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in release_shapes(block_units, width, num_classes).items():
        if key.endswith("/kernel") and "standardized_conv2d" in key:
            # Non-zero mean per output channel so that standardization matters.
            value = rng.normal(0.3, 1.0, size=shape) + rng.normal(0, 1, size=shape[-1])
        elif key.endswith("/gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("/beta"):
            value = rng.normal(0, 0.2, shape)
        elif key.endswith("head/conv2d/kernel"):
            value = rng.normal(0, 0.05, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        params[key] = value.astype(np.float32)
    return params


def write_checkpoint(path, block_units, width, num_classes=None, seed=0):
    params = random_checkpoint(block_units, width, num_classes, seed)
    np.savez(path, **params)
    return params


def _standardize(w):
    w = w.astype(np.float64)
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    return (w - mean) / np.sqrt(var + 1e-10)


def _conv(x, w, stride=1):
    """VALID convolution, NHWC x HWIO, float64."""
    kh, kw = w.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N,H',W',C,kh,kw
    windows = windows[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", windows, _standardize(w), optimize=True)


def _pad(x, p):
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def _group_norm(x, gamma, beta, groups=32, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * gamma + beta


def _relu(x):
    return np.maximum(x, 0)


def forward(params, images, *, head=True):
    """Features (and logits) for float images in [0, 1], shape [N, H, W, 3]."""
    P = lambda k: params["resnet/" + k].astype(np.float64)
    x = (images.astype(np.float64) * 255.0 - 127.5) / 127.5
    x = _conv(_pad(x, 3), P("root_block/standardized_conv2d/kernel"), 2)
    x = _pad(x, 1)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2]
    x = windows.max(axis=(-2, -1))
    b = 1
    while f"resnet/block{b}/unit01/a/standardized_conv2d/kernel" in params:
        u = 1
        while f"resnet/block{b}/unit{u:02d}/a/standardized_conv2d/kernel" in params:
            p = f"block{b}/unit{u:02d}"
            stride = 2 if (u == 1 and b > 1) else 1
            h = _relu(_group_norm(x, P(f"{p}/a/group_norm/gamma"), P(f"{p}/a/group_norm/beta")))
            proj = f"{p}/a/proj/standardized_conv2d/kernel"
            shortcut = _conv(h, P(proj), stride) if "resnet/" + proj in params else x
            h = _conv(h, P(f"{p}/a/standardized_conv2d/kernel"))
            h = _relu(_group_norm(h, P(f"{p}/b/group_norm/gamma"), P(f"{p}/b/group_norm/beta")))
            h = _conv(_pad(h, 1), P(f"{p}/b/standardized_conv2d/kernel"), stride)
            h = _relu(_group_norm(h, P(f"{p}/c/group_norm/gamma"), P(f"{p}/c/group_norm/beta")))
            h = _conv(h, P(f"{p}/c/standardized_conv2d/kernel"))
            x = h + shortcut
            u += 1
        b += 1
    x = _relu(_group_norm(x, P("group_norm/gamma"), P("group_norm/beta")))
    features = x.mean(axis=(1, 2))
    if not head:
        return features
    kernel = P("head/conv2d/kernel")[0, 0]
    return features, features @ kernel + P("head/conv2d/bias")
