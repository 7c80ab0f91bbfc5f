"""`create_model`: a BiT variant by name, with released or local weights."""

from __future__ import annotations

import os

from bit_keras import checkpoint, download, variants
from bit_keras.resnet_v2 import BiTResNetV2


def resolve_weights(variant, weights, *, cache_dir=None) -> str | None:
    """Turns `weights` (None, "default", a release name, a URL or a path) into a local path."""
    if weights is None:
        return None
    if weights == "default":
        release = variants.resolve_checkpoint(variant)
        return download.fetch(release.url, release.filename, directory=cache_dir)
    if download.is_url(weights):
        return download.fetch(weights, directory=cache_dir)
    if os.path.exists(os.fspath(weights)):
        return os.fspath(weights)
    release = variants.resolve_checkpoint(str(weights), required=False)
    if release is not None:
        return download.fetch(release.url, release.filename, directory=cache_dir)
    raise FileNotFoundError(f"weights={weights!r} is neither a file, a URL, 'default' nor a released "
                            "checkpoint name (see `bit_keras list`).")


def default_num_classes(variant) -> int:
    release = variants.resolve_checkpoint(variant, required=False)
    return release.num_classes if release else 1000


def create_model(variant, *, weights=None, num_classes=None, include_top=True, cache_dir=None,
                 name=None, dtype=None) -> BiTResNetV2:
    """Builds a BiT model, optionally with weights.

    Args:
        variant: "BiT-M-R50x1", "m-r50x1", "r50x1", ... (case-insensitive), or an
            `Architecture`; custom shapes go through `BiTResNetV2(block_units, width)`.
        weights: None (random init), "default" (the variant's released checkpoint,
            downloaded once into the cache), a released name, a URL or a local `.npz`.
        num_classes: head size. Defaults to the checkpoint's head, else the variant's
            upstream head (1000 for BiT-S, 21843 for BiT-M). A different count gets a
            zero-initialised head, as fine-tuning needs.
        include_top: False returns the 2048*width feature vector instead of logits.
        cache_dir: where downloads go (default $BIT_KERAS_CACHE or ~/.cache/bit_keras).
        dtype: a Keras dtype policy name such as "mixed_bfloat16".
    """
    architecture = variants.resolve_architecture(variant)
    path = resolve_weights(variant, weights, cache_dir=cache_dir)
    info = None
    if path is not None:
        info = checkpoint.identify(checkpoint.read_headers(path))
        if (tuple(info.block_units), info.width) != (architecture.block_units, architecture.width):
            raise checkpoint.CheckpointError(
                f"{path} holds {info.describe()}, but variant {variant!r} is {architecture.name}. "
                "Pick the matching variant or another file."
            )
    if num_classes is None:
        num_classes = (info.num_classes if info and info.num_classes else default_num_classes(variant))
    model = BiTResNetV2(architecture.block_units, architecture.width, num_classes=num_classes,
                        include_top=include_top, initializer="zeros" if path else "he_normal",
                        name=name, dtype=dtype)
    if path is not None:
        checkpoint.load_weights(model, path)
    return model
