"""Deployment exports: ONNX, LiteRT (TFLite) and OpenVINO files of a BiT model, each run in its
own runtime and compared with the Keras model before it is kept.

`export_deployable(model, path, format=...)` writes the model with weight standardization
folded into plain convolutions (exact at inference), input float32 [batch, resolution,
resolution, 3] in [0, 1] with a dynamic batch, and bit_keras's metadata (JSON) in the
format's own slot (see `runtimes`). The file is written under a hidden temporary name, run
in ONNX Runtime / the LiteRT interpreter / OpenVINO on probe images, and renamed into place
only if it matches (`verify`); otherwise nothing is written and `VerificationError` says by
how much it missed. Keras' own `model.export` does the conversion (tf2onnx for ONNX on the
TensorFlow backend).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import numpy as np

from bit_keras import files
from bit_keras.errors import CheckpointError, ConfigError, SetupError, VerificationError
from bit_keras.export import quantize as quant
from bit_keras.export import runtimes, verify

FORMATS = ("onnx", "litert", "openvino")


def check_target(path, fmt, *, overwrite) -> str:
    """Refuses a wrong suffix or an existing output (unless `overwrite`, which replaces only an earlier export)."""
    path = os.fspath(path)
    if fmt in runtimes.SUFFIXES:
        suffix = runtimes.SUFFIXES[fmt]
        if not path.endswith(suffix):
            raise ConfigError(f"A {fmt} export is one file ending in {suffix}. Received: --output {path}")
        return files.check_target(path, overwrite=overwrite, markers=(), suffixes=(suffix,),
                                  kind=f"an earlier {fmt} export")
    if os.path.splitext(path)[1]:
        raise ConfigError(f"An OpenVINO export is a directory ({runtimes.OPENVINO_XML} + {runtimes.OPENVINO_BIN}); "
                          f"name one without a file extension. Received: --output {path}")
    return files.check_target(path, overwrite=overwrite, markers=(runtimes.OPENVINO_XML,),
                              kind="an earlier OpenVINO export")


def export_deployable(model, path, *, format, metadata=None, resolution=224, quantize=None, calibration=None,
                      overwrite=False, eval_data=None, log=print) -> dict:
    """Writes `model` as `format` at `path` after checking it in its runtime; returns the report.

    Args:
        model: a float32 BiT Keras model (backbone or classifier), images in [0, 1] in.
        format: "onnx" (a .onnx file), "litert" (a .tflite file) or "openvino" (a directory).
        metadata: fields stored with the file (variant, class_names, checkpoint sha256, ...).
        resolution: the fixed height and width of the input.
        quantize: None (float32) or a mode of `quantize.MODES[format]`.
        calibration: float32 images [N, resolution, resolution, 3] for int8 calibration.
        eval_data: optional (images, labels): top-1 of the export next to the Keras model's.
    """
    import keras

    from bit_keras.export.metadata import describe_model
    from bit_keras.inference import fold_standardization
    from bit_keras.layers import plain_reductions

    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}. Received: format={format!r}")
    if keras.backend.backend() != "tensorflow":
        raise SetupError(f"Deployment exports convert through TensorFlow; KERAS_BACKEND is "
                         f"{keras.backend.backend()!r}. Run with KERAS_BACKEND=tensorflow.")
    quant.check_mode(format, quantize, int(resolution), calibrated=calibration is not None)
    path = check_target(path, format, overwrite=overwrite)
    resolution = int(resolution)
    probe = verify.probe_images(resolution)
    if quantize and calibration is not None:  # a quantized model is judged on images like those it serves
        probe = np.concatenate([calibration[:16], probe])
    # A graph that leaves TensorFlow is computed with plain reductions end to end: the kernels folded,
    # the converted graph and the Keras outputs it is checked against (`layers.plain_reductions`).
    with plain_reductions():
        expected = _predict(model, probe)
        folded = fold_standardization(model)
    outputs = "logits" if getattr(model, "num_classes", None) else "features"
    info = describe_model(model, serving_outputs=outputs)
    info.pop("signatures", None)
    info.update(metadata or {})
    info.update({"format": f"bit_keras.{format}", "quantization": quantize or "float32",
                 "weight_standardization": "folded into the kernels",
                 "input": {**info["input"], "shape": [None, resolution, resolution, 3]}, "resolution": resolution})
    staged = files.staged_file if format in runtimes.SUFFIXES else files.staged_directory
    with files.locked(path), staged(path, overwrite=overwrite) as staging:
        target = staging if format in runtimes.SUFFIXES else os.path.join(staging, runtimes.OPENVINO_XML)
        log(f"Converting to {format}" + (f" ({quantize})" if quantize else "") + " ...")
        with plain_reductions():
            _WRITERS[format](folded, target, resolution, quantize, calibration, json.dumps(info, sort_keys=True))
        images = probe if eval_data is None else np.concatenate([probe, eval_data[0]])
        try:
            actual, stored = runtimes.run_in_fresh_process(target, images)
        except CheckpointError as error:
            raise VerificationError(f"The {format} export could not be run in its runtime ({error}); nothing "
                                    "was written.") from None
        report = verify.compare(expected, actual[:len(probe)], quantized=bool(quantize))
        report.update(path=path, format=format, quantization=quantize or "float32", probe_images=len(probe),
                      size_bytes=_size(staging))
        if not report["passed"]:
            raise VerificationError(
                f"The {format} export does not match the Keras model on {len(probe)} probe images "
                f"(max relative difference {report['max_relative_difference']:.3g}, top-1 agreement "
                f"{report['top1_agreement']:.2f}; needed {report['criterion']}); nothing was written.")
        if stored != json.loads(json.dumps(info, sort_keys=True)):
            raise VerificationError(f"The {format} export's metadata did not read back as written; nothing was written.")
        if eval_data is not None:
            report.update(_evaluate(model, actual[len(probe):], *eval_data))
    return report


def _predict(model, images, batch=32):
    return np.concatenate([np.asarray(model(images[i:i + batch], training=False), np.float32)
                           for i in range(0, len(images), batch)])


def _evaluate(model, exported, images, labels):
    keras_top1 = np.argmax(_predict(model, images), -1)
    export_top1 = np.argmax(exported, -1)
    return {"eval_examples": int(len(labels)), "keras_top1": float(np.mean(keras_top1 == labels)),
            "export_top1": float(np.mean(export_top1 == labels)),
            "eval_top1_agreement": float(np.mean(keras_top1 == export_top1))}


def _size(path) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _signature(resolution):
    import keras

    return [keras.InputSpec(shape=(None, resolution, resolution, 3), dtype="float32")]


def _write_onnx(model, target, resolution, quantize, calibration, metadata):
    import onnx

    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as scratch:
        source = os.path.join(scratch, "float.onnx")
        with warnings.catch_warnings():  # Keras' tf2onnx shim probes np.object, which NumPy warns about
            warnings.simplefilter("ignore", FutureWarning)
            model.export(source, format="onnx", input_signature=_signature(resolution), verbose=False)
        if quantize:
            quantized = os.path.join(scratch, "quantized.onnx")
            quant.quantize_onnx(source, quantized, quantize, calibration)
            source = quantized
        proto = onnx.load(source)
    entry = proto.metadata_props.add()
    entry.key, entry.value = runtimes.METADATA_KEY, metadata
    proto.doc_string = "BiT (bit_keras): float32 NHWC images in [0, 1]; metadata_props['bit_keras'] describes it."
    onnx.save(proto, target)


def _write_litert(model, target, resolution, quantize, calibration, metadata):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from bit_keras.cli.quiet import descriptor_2_silenced

    options = quant.litert_converter_options(quantize, calibration)
    with descriptor_2_silenced():  # the calibrator's C++ prints its settings on standard error
        model.export(target, format="litert", input_signature=_signature(resolution), verbose=False, **options)
    with open(target, "rb") as stream:
        flat = flatbuffer_utils.read_model_from_bytearray(bytearray(stream.read()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata.encode("utf-8"), dtype=np.uint8)
    flat.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = runtimes.METADATA_KEY, len(flat.buffers) - 1
    flat.metadata = (flat.metadata or []) + [entry]
    with open(target, "wb") as stream:
        stream.write(flatbuffer_utils.convert_object_to_bytearray(flat))


def _write_openvino(model, target, resolution, quantize, calibration, metadata):
    import openvino as ov

    directory = os.path.dirname(target)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        converted = os.path.join(scratch, "converted.xml")
        model.export(converted, format="openvino", input_signature=_signature(resolution), verbose=False)
        network = ov.Core().read_model(converted)
        network.set_rt_info(metadata, [runtimes.METADATA_KEY])
        # save_model's default stores float16 weights; a float32 export keeps float32.
        ov.save_model(network, target, compress_to_fp16=False)


_WRITERS = {"onnx": _write_onnx, "litert": _write_litert, "openvino": _write_openvino}
