"""`export_model`: a Keras model as a TF2 SavedModel that follows TF Hub's Reusable API.

The root object is what `hub.KerasLayer(DIR, trainable=True)` and `tf.saved_model.load`
expect: a callable `obj(images, training=...)` traced for both values of `training`,
`obj.variables`, `obj.trainable_variables` and `obj.regularization_losses`. It also has
`serve` / `serve_training` (one `inputs` argument each, for Keras 3's `TFSMLayer`) and a
`serving_default` signature for TF Serving.
"""

from __future__ import annotations

import contextlib

from bit_keras import files
from bit_keras.export.metadata import check_export_target, describe_model, write_metadata
from bit_keras.errors import ConfigError, SetupError

SERVE_ENDPOINT = "serve"
TRAINING_ENDPOINT = "serve_training"


def _image_spec():
    import tensorflow as tf

    return tf.TensorSpec([None, None, None, 3], tf.float32, name="images")


def build_reusable_module(model, *, serving_model=None, output_name="features"):
    """The object `tf.saved_model.save` writes: the Reusable SavedModel API around `model`."""
    import tensorflow as tf

    serving_model = model if serving_model is None else serving_model
    root = tf.train.Checkpoint()
    # Keras 3 variables are trackable on the TensorFlow backend; listing them saves them.
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    # BiT fine-tunes without weight decay: no regularization losses, but the attribute
    # must exist (hub.KerasLayer reads it).
    root.regularization_losses = []

    # Outputs are float32 whatever the model's dtype policy (TF Hub's convention).
    def run(network, images, training):
        return tf.cast(network(images, training=training), tf.float32)

    @tf.function(autograph=False)
    def call(images, training=False):
        return run(model, images, training)

    for training in (False, True):
        call.get_concrete_function(_image_spec(), training=training)
    root.__call__ = call

    @tf.function(input_signature=[_image_spec()], autograph=False)
    def serve(inputs):
        return run(model, inputs, False)

    @tf.function(input_signature=[_image_spec()], autograph=False)
    def serve_training(inputs):
        return run(model, inputs, True)

    root.serve, root.serve_training = serve, serve_training
    if serving_model is not model:
        root.serving_variables = list(serving_model.variables)

    # TF Serving sends empty batches; TF's oneDNN CPU convolution returns those with the wrong
    # shape (StandardizedConv2D restates it, a folded model's plain Conv2D does not): skip the model.
    empty = tf.zeros([0, serving_model.output_shape[-1]], tf.float32)

    @tf.function(input_signature=[_image_spec()], autograph=False)
    def serving_default(images):
        outputs = tf.cond(tf.shape(images)[0] > 0, lambda: run(serving_model, images, False), lambda: empty)
        return {output_name: outputs}

    return root, {"serving_default": serving_default.get_concrete_function()}


@contextlib.contextmanager
def _quiet_tensorflow():
    """Hides TensorFlow's INFO lines about sharding and renamed inputs while saving."""
    from absl import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def export_model(model, directory, *, overwrite=False, metadata=None, serving_model=None) -> str:
    """Writes `model` (images in [0, 1] -> features or logits) as a Reusable SavedModel at `directory`.

    Args:
        model: a Keras 3 model on the TensorFlow backend, typically `BiTResNetV2`.
        directory: where the SavedModel goes; written atomically (hidden sibling, then rename).
        overwrite: replace an existing `directory`; without it an existing one is an error.
        metadata: extra fields for `assets/bit_keras.json` (variant, checkpoint, upstream, ...),
            merged over what follows from the model itself. `outputs` ("features" or
            "logits") also names the `serving_default` output; by default it is "logits"
            for a BiT model with its head and "features" otherwise.
        serving_model: an inference-only model with the same outputs (e.g. with
            pre-standardized kernels) used for the `serving_default` signature only; the
            fine-tunable `__call__` always uses `model`.

    Returns the absolute path of the export.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise SetupError(f"Exporting SavedModels needs the TensorFlow backend; KERAS_BACKEND is "
                           f"{keras.backend.backend()!r}. Run with KERAS_BACKEND=tensorflow.")
    directory = check_export_target(directory, overwrite=overwrite)
    outputs = (metadata or {}).get("outputs") or ("logits" if getattr(model, "num_classes", None) else "features")
    if outputs not in ("features", "logits"):
        raise ConfigError(f"metadata['outputs'] must be 'features' or 'logits'. Received: {outputs!r}")
    info = describe_model(model, serving_outputs=outputs)
    if serving_model is not None and serving_model is not model:
        info["signatures"]["serving_default"]["serving_model"] = serving_model.name
    info.update(metadata or {})
    root, signatures = build_reusable_module(model, serving_model=serving_model, output_name=outputs)
    with files.locked(directory), files.staged_directory(directory, overwrite=overwrite) as staging, \
            _quiet_tensorflow():
        try:
            tf.saved_model.save(root, staging, signatures=signatures)
        except tf.errors.OpError as error:  # TensorFlow's own file I/O: a full disk, a quota, permissions
            raise OSError(f"Writing {directory} failed: {error.message.split('}}')[-1].strip()}") from None
        # Written last: a directory with metadata is a finished export.
        write_metadata(staging, info)
    return directory
