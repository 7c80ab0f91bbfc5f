"""`export_variant`: from a variant name and a checkpoint to an export, in one call."""

from __future__ import annotations

import os

from bit_keras import checkpoint, download, variants
from bit_keras.export import atomic

FORMATS = ("savedmodel", "keras")


def resolve_export_weights(variant, weights=None, *, random_weights=False, cache_dir=None):
    """(local checkpoint path or None, source description) for an export.

    Without `weights`, a released variant ("m-r50x1") fetches its checkpoint (cached;
    offline this raises `DownloadError` saying where to put the file). A bare architecture
    ("r50x1") names no checkpoint: it is refused unless `random_weights=True`, so untrained
    weights are never exported by accident.
    """
    variants.resolve_architecture(variant)  # unknown names fail here, with the list of names
    if weights is None:
        release = variants.resolve_checkpoint(variant, required=False)
        if release is None:
            if random_weights:
                return None, "random initialisation (untrained)"
            raise ValueError(
                f"{variant!r} names an architecture but no released checkpoint, so there are no weights "
                f"to export. Pass weights (--weights FILE.npz or URL), a released name such as "
                f"'m-{variants.resolve_architecture(variant).name}', or --random-weights "
                f"(random_weights=True) to export untrained weights on purpose.")
        # download.fetch directly: offline, this fails before Keras is even imported.
        return download.fetch(release.url, release.filename, directory=cache_dir), release.url
    if random_weights:
        raise ValueError("Pass either weights or random_weights=True (--random-weights), not both.")
    from bit_keras import zoo

    path = zoo.resolve_weights(variant, weights, cache_dir=cache_dir)
    return path, weights if download.is_url(weights) else os.path.abspath(path)


def export_variant(variant, directory, *, weights=None, classifier=False, overwrite=False,
                   random_weights=False, format="savedmodel", cache_dir=None, serving_model_fn=None) -> str:
    """Builds `variant` with its weights and exports it; returns the export's path.

    Args:
        variant: a released name ("m-r50x1", "BiT-S-R101x3", ...) or, with `weights` or
            `random_weights`, a bare architecture ("r50x1"). None: whatever architecture
            the `weights` file holds (any depth and width).
        directory: the SavedModel directory (or `.keras` file for `format="keras"`).
        weights: None (the variant's released checkpoint), a local `.npz`, a URL or a release name.
        classifier: export the logits of the checkpoint's head instead of the features.
        overwrite: replace an existing export.
        random_weights: allow exporting untrained weights when no checkpoint is named.
        format: "savedmodel" (TF Hub Reusable SavedModel) or "keras" (a `.keras` file with named blocks).
        serving_model_fn: optional `fn(model) -> model` giving an inference-only model with the
            same outputs for the `serving_default` signature.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}. Received: format={format!r}")
    atomic.check_target(directory, overwrite=overwrite)  # fail before any download or build
    if variant is None and isinstance(weights, str) and not os.path.exists(weights) and \
            variants.resolve_checkpoint(weights, required=False) is not None:
        variant = weights  # weights="BiT-M-R50x1": the release names the variant too
    if variant is None:
        if weights is None:
            raise ValueError("Name a variant (--variant m-r50x1) or a checkpoint (--weights FILE.npz) to export.")
        path, source = resolve_export_weights("r50x1", weights, cache_dir=cache_dir)
        architecture, release = None, None
    else:
        architecture = variants.resolve_architecture(variant)
        path, source = resolve_export_weights(variant, weights, random_weights=random_weights, cache_dir=cache_dir)
        release = variants.resolve_checkpoint(variant, required=False)
    # Keras is imported only now, once the weights are at hand (offline fails at once).
    from bit_keras import zoo
    from bit_keras.export.keras_file import export_keras
    from bit_keras.export.savedmodel import export_model

    num_classes = None
    if path is not None:
        info = checkpoint.identify(checkpoint.read_headers(path))
        if architecture is None:  # the checkpoint decides: any depth and width
            architecture = variants.architecture_for(info.block_units, info.width) or variants.Architecture(
                f"custom-{'-'.join(map(str, info.block_units))}x{info.width}", tuple(info.block_units), info.width)
        if classifier and not info.num_classes:
            raise ValueError(f"{path} has no classification head, so there are no logits to export; "
                             "drop --classifier to export the feature extractor.")
        if info.num_classes and release is not None and info.num_classes != release.num_classes:
            release = None  # a checkpoint with another head: the release's facts do not apply
        num_classes = info.num_classes or None
    model = zoo.create_model(architecture, weights=path, include_top=classifier,
                             num_classes=(num_classes or zoo.default_num_classes(str(variant))) if classifier else None,
                             cache_dir=cache_dir)
    if format == "keras":
        if serving_model_fn is not None:
            raise ValueError("A serving model applies to SavedModels only, not to format='keras'.")
        return export_keras(model, directory, overwrite=overwrite)
    name = release.name if release is not None else architecture.name
    metadata = {
        "variant": name,
        "upstream": release.upstream if release else None,
        "multi_label": release.multi_label if release else None,
        "resolution": release.resolution if release else None,
        "checkpoint": {"source": source, "release": release.name if release else None,
                       "random_weights": path is None},
    }
    serving_model = serving_model_fn(model) if serving_model_fn is not None else None
    return export_model(model, directory, overwrite=overwrite, metadata=metadata, serving_model=serving_model)
