"""A fine-tuned detector or segmenter as a TF SavedModel for serving.

`serving_default` takes `images`: float32 [batch, R, R, 3] in [0, 1] (R: the run's resolution;
BiT rescales to [-1, 1] inside) and returns
- detection: `boxes` [batch, max_detections, 4] (yxyx pixels of the R x R input), `scores`,
  `classes` (int32, -1 past the detections) and `num_detections`, after keras-hub's
  non-max suppression (image by image), what the Keras model's `predict` gives;
- segmentation: `masks` (int32 [batch, R, R], the arg-max class) and `logits`.

`bit_keras_dense.json` beside it records the task, resolution and class names.
"""

from __future__ import annotations

import json
import os

from bit_keras import files, runs
from bit_keras.errors import ConfigError

METADATA_FILE = "bit_keras_dense.json"


def serving_function(model, task: str, resolution: int):
    """A tf.function from float images to the outputs above (traced for [None, R, R, 3])."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, resolution, resolution, 3], tf.float32, name="images")

    if task == "detection":
        def one(image):  # keras-hub's non-max suppression needs a batch size known when traced: one image
            image = image[None]
            decoded = model.decode_predictions(model(image, training=False), image)
            return {"boxes": tf.cast(decoded["boxes"], tf.float32)[0],
                    "scores": tf.cast(decoded["confidence"], tf.float32)[0],
                    "classes": tf.cast(decoded["labels"], tf.int32)[0],
                    "num_detections": tf.cast(decoded["num_detections"], tf.int32)[0]}

        @tf.function(input_signature=[spec])
        def serve(images):
            signature = {"boxes": tf.TensorSpec([None, 4], tf.float32), "scores": tf.TensorSpec([None], tf.float32),
                         "classes": tf.TensorSpec([None], tf.int32), "num_detections": tf.TensorSpec([], tf.int32)}
            return tf.map_fn(one, images, fn_output_signature=signature)
    else:
        @tf.function(input_signature=[spec])
        def serve(images):
            logits = tf.cast(model(images, training=False), tf.float32)
            return {"masks": tf.argmax(logits, axis=-1, output_type=tf.int32), "logits": logits}
    return serve


def export_run(run_dir, output, *, overwrite: bool = False) -> str:
    """Writes the SavedModel of a finished `finetune --task detection|segmentation` run; returns `output`."""
    import tensorflow as tf

    from bit_keras.dense.run import load_task

    record = runs.read_run(run_dir) if os.path.isdir(run_dir) else None
    if not record or record.get("task") not in ("detection", "segmentation"):
        raise ConfigError(f"{run_dir} is not a detection or segmentation run (no run.json with a task).")
    if os.path.exists(output) and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite to replace it.")
    model = load_task(run_dir)
    task, resolution = record["task"], int(record["resolution"])
    module = tf.Module()
    # The variables only, not the Keras model: saving a Keras layer traces its own default
    # signature at [None, None, None, 3], which DeepLab's fixed-factor upsampling cannot take.
    module.model_variables = [getattr(v, "value", v) for v in model.weights]
    module.serve = serving_function(model, task, resolution)
    with files.staged_directory(output, overwrite=overwrite) as staging:
        tf.saved_model.save(module, staging, signatures={"serving_default": module.serve})
        with open(os.path.join(staging, METADATA_FILE), "w") as f:
            json.dump({"task": task, "resolution": resolution, "class_names": record.get("class_names"),
                       "num_classes": record["num_classes"], "run": os.path.abspath(run_dir),
                       "inputs": "images: float32 [batch, resolution, resolution, 3] in [0, 1]",
                       "outputs": ["boxes", "scores", "classes", "num_detections"] if task == "detection"
                       else ["masks", "logits"]}, f, indent=2)
    return output
