"""Quantization settings per format, and the images they calibrate on.

LiteRT: float16 (weights stored as float16), dynamic-int8 (int8 weights, float activations) and
int8 (int8 weights and activations, every op an int8 builtin, calibrated on a representative
dataset; the input and output stay float32). ONNX: dynamic-int8 and int8 through
ONNX Runtime's quantizer (int8: int8 weights and activations in QDQ format,
calibrated on a representative dataset; the input and output stay float32, so the [0, 1]
image contract holds).
"""

from __future__ import annotations

import numpy as np

from bit_keras.errors import ConfigError

MODES = {"litert": ("float16", "dynamic-int8", "int8"), "onnx": ("dynamic-int8", "int8")}
CALIBRATED = ("int8",)
# BiT's feature maps shrink 32-fold; at 32 px or less the last block's map is 1x1, every channel's
# variance over it is exactly 0, and the LiteRT 2.3 interpreter aborts the process running the int8
# GroupNorm of such a map (a 64 px input, whose last map is 2x2, runs).
LITERT_INT8_MIN_RESOLUTION = 33
CALIBRATION_EXAMPLES = 200


def check_mode(fmt, mode, resolution=None, *, calibrated=None):
    """Refuses a mode the format lacks, LiteRT int8 at a resolution it aborts on, and (`calibrated`
    False) a calibrated mode without calibration data; None: not known yet, not checked."""
    if mode is None:
        return
    allowed = MODES.get(fmt, ())
    if mode in CALIBRATED and calibrated is False:
        raise ConfigError(f"--quantize {mode} needs --calibration-data SPEC (digits, folder:PATH, tfds:NAME).")
    if (fmt, mode) == ("litert", "int8") and resolution is not None and resolution < LITERT_INT8_MIN_RESOLUTION:
        raise ConfigError(f"--quantize int8 for --format litert needs --resolution {LITERT_INT8_MIN_RESOLUTION} or "
                          f"more (got {resolution}): the last block's feature map would be 1x1, whose int8 GroupNorm "
                          "the LiteRT interpreter aborts on; use a larger --resolution or --quantize dynamic-int8.")
    if mode not in allowed:
        raise ConfigError(f"--quantize {mode} is not available for --format {fmt}; " + (
            f"choose one of {', '.join(allowed)}." if allowed else "only litert and onnx exports are quantized."))


def load_images(spec, resolution, *, split="train", limit=CALIBRATION_EXAMPLES, with_labels=False):
    """Up to `limit` images of a dataset spec (bit_keras.data.load_source), resized to `resolution`
    and scaled to [0, 1] as the model's input wants; with `with_labels`, also the labels."""
    import types

    from bit_keras.data import eval_pipeline, load_source

    dataset, info = load_source(spec, split)
    batches = eval_pipeline(dataset.take(limit), types.SimpleNamespace(crop=int(resolution)), batch_size=64,
                            num_classes=info.num_classes)
    pairs = [(np.asarray(images), np.argmax(np.asarray(labels), axis=-1)) for images, labels in batches]
    if not pairs:
        raise ConfigError(f"{spec} ({split}) holds no images.")
    images = np.concatenate([p[0] for p in pairs]).astype(np.float32)
    labels = np.concatenate([p[1] for p in pairs])
    return (images, labels, info) if with_labels else images


def litert_converter_options(mode, calibration=None) -> dict:
    """Keras' LiteRT exporter passes these to the TFLite converter."""
    import tensorflow as tf

    # Builtin ops only: the file runs in the LiteRT interpreter alone (no Flex delegate on a phone).
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if mode is None:
        return options
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        options["target_spec"]["supported_types"] = [tf.float16]
    if mode == "int8":  # (check_mode made sure there is calibration data)
        # Every op an int8 builtin (conversion fails rather than fall back to float); the
        # interface stays float32, so the [0, 1] image contract holds.
        options["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        options["representative_dataset"] = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
    return options


def quantize_onnx(source, target, mode, calibration=None):
    """Writes the quantized copy of the ONNX file `source` to `target`."""
    import logging

    logging.disable(logging.WARNING)  # ONNX Runtime's quantizer logs advice on the root logger; the CLI prints ours
    try:
        _quantize_onnx(source, target, mode, calibration)
    finally:
        logging.disable(logging.NOTSET)


def _quantize_onnx(source, target, mode, calibration):
    from onnxruntime import quantization as q

    if mode == "dynamic-int8":
        q.quantize_dynamic(source, target, weight_type=q.QuantType.QInt8)
        return
    import onnx

    name = onnx.load(source, load_external_data=False).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    q.quantize_static(source, target, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8)
