"""Synthetic JPEGs of ImageNet-like size, for measuring an input pipeline without a dataset."""

from __future__ import annotations

import os


def make_jpegs(directory: str, *, count: int = 64, image_size=(375, 500), classes: int = 2, seed: int = 0) -> str:
    """Writes `count` JPEGs (quality 90, smooth random content plus noise, ImageNet-like sizes) as
    `directory/<class>/*.jpg`; returns `directory`. Needs TensorFlow (its JPEG encoder)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    height, width = image_size
    for index in range(count):
        folder = os.path.join(directory, f"class{index % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform(0, 255, (1, height // 16 + 1, width // 16 + 1, 3)).astype("float32")
        image = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")
        with open(os.path.join(folder, f"{index:05d}.jpg"), "wb") as stream:
            stream.write(tf.io.encode_jpeg(image, quality=90).numpy())
    return directory
