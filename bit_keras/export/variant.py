"""`export_variant`: from a model name and its weights to an export, in one call."""

from __future__ import annotations

from bit_keras import download, presets, weights as weights_rule
from bit_keras.errors import ConfigError
from bit_keras.export.metadata import check_export_target

FORMATS = ("savedmodel", "keras", "keras-hub")


def export_variant(variant, directory, *, weights=None, classifier=False, overwrite=False,
                   load_weights=True, format="savedmodel", cache_dir=None, serving_model_fn=None) -> str:
    """Builds `variant` with its weights (`bit_keras.weights`' rule) and exports it; returns the export's path.

    Args:
        variant: a released name ("m-r50x1", "BiT-S-R101x3", ...) or, with `weights` or
            `load_weights=False`, an architecture ("r50x1", "r2-3-4-1x2"). None: whatever
            architecture the `weights` file holds.
        directory: the SavedModel directory (or `.keras` file for `format="keras"`).
        weights: a local `.npz`, a URL or a release name instead of the name's own weights.
        classifier: export the logits of the checkpoint's head instead of the features.
        overwrite: replace an existing export.
        load_weights: False exports untrained weights on purpose (an architecture alone is
            refused, so untrained weights are never exported by accident).
        format: "savedmodel" (TF Hub Reusable SavedModel), "keras" (a `.keras` file with named blocks)
            or "keras-hub" (a keras-hub preset directory, with the preprocessor for uint8 images).
        serving_model_fn: optional `fn(model) -> model` giving an inference-only model with the
            same outputs for the `serving_default` signature.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}. Received: format={format!r}")
    # Fail before any download or build.
    if format == "keras-hub":
        from bit_keras.export.keras_hub import check_preset_target

        check_preset_target(directory, overwrite=overwrite)
    else:
        check_export_target(directory, overwrite=overwrite)
    choice = weights_rule.resolve(variant, weights, load_weights=load_weights, cache_dir=cache_dir)
    refuse_untrained(choice, variant, load_weights=load_weights)
    if format == "keras-hub":
        from bit_keras.export.keras_hub import export_preset
        from bit_keras.preprocessing import for_preset

        if serving_model_fn is not None:
            raise ConfigError("A serving model applies to SavedModels only, not to format='keras-hub'.")
        _check_head(choice, classifier)
        preprocessor = for_preset(choice.preset or choice.architecture)
        model = _build(choice, classifier, preprocessor=preprocessor)
        return export_preset(model, directory, overwrite=overwrite)
    model, metadata = build_for_export(choice, classifier=classifier)
    if format == "keras":
        if serving_model_fn is not None:
            raise ConfigError("A serving model applies to SavedModels only, not to format='keras'.")
        from bit_keras.export.keras_file import export_keras

        return export_keras(model, directory, overwrite=overwrite)
    from bit_keras.export.savedmodel import export_model

    serving_model = serving_model_fn(model) if serving_model_fn is not None else None
    return export_model(model, directory, overwrite=overwrite, metadata=metadata, serving_model=serving_model)


def refuse_untrained(choice, variant, *, load_weights) -> None:
    """Untrained weights are exported only on purpose: an architecture alone (`r50x1`) is refused,
    naming a real release of it where BiT has one."""
    if choice.random and load_weights:
        releases = presets.presets_for(choice.architecture)
        named = f", a released name such as {releases[0].short_name!r}" if releases else ""
        raise ConfigError(
            f"{variant!r} names an architecture, not a released checkpoint, so there are no weights to export. "
            f"Pass weights=FILE.npz (or a URL){named}, or load_weights=False to export untrained weights on "
            f"purpose.")


def build_for_export(choice, *, classifier=False):
    """(model, metadata) for a `weights.resolve` choice: the backbone, or the classifier with the
    checkpoint's head, and what an export says about its weights (variant, checkpoint SHA-256, ...)."""
    _check_head(choice, classifier)
    model = _build(choice, classifier)
    release = None if choice.random else choice.preset  # a release's facts describe its weights only
    metadata = {
        "variant": release.name if release else choice.architecture.name,
        "upstream": release.upstream if release else None,
        "multi_label": release.multi_label if release else None,
        "resolution": release.resolution if release else None,
        "checkpoint": {"source": choice.source if not choice.random else "random initialisation (untrained)",
                       "release": release.name if release else None, "random_weights": choice.random,
                       "sha256": download.sha256_of(choice.path) if choice.path else None},
    }
    return model, metadata


def _build(choice, classifier, **kwargs):
    """The classifier (with the checkpoint's head) or the backbone of a `weights.resolve` choice."""
    if classifier:
        from bit_keras.classifier import BiTImageClassifier

        return BiTImageClassifier.from_weights(choice, **kwargs)
    from bit_keras.backbone import BiTBackbone

    return BiTBackbone.from_weights(choice)


def _check_head(choice, classifier) -> None:
    if classifier and not (choice.random or choice.checkpoint_classes):
        raise ConfigError(f"{choice.path} has no classification head, so there are no logits to export; "
                          "drop --classifier to export the feature extractor.")
