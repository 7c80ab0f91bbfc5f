"""Running a deployment export in its own runtime, without TensorFlow or Keras.

`open_export(path)` gives a `Deployed` whose `run(images)` calls ONNX Runtime, the LiteRT
interpreter (`ai_edge_litert`) or the OpenVINO runtime, and whose `metadata` is what
`bit_keras export` stored in the format's own slot:

- ONNX: the model's `metadata_props`, key "bit_keras" (JSON).
- LiteRT: the flatbuffer's `metadata` table, an entry named "bit_keras" whose buffer holds JSON
  (the slot TFLite's own metadata uses; the interpreter ignores it).
- OpenVINO: the model's `rt_info`, key "bit_keras" (JSON), in a directory holding
  `model.xml` and `model.bin`.

A file that its runtime cannot read (truncated, corrupt, not a model) is refused with one
`CheckpointError` line. Nothing in a file is executed: these are graph formats.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from bit_keras.errors import CheckpointError, ConfigError, MissingFileError, SetupError

METADATA_KEY = "bit_keras"
OPENVINO_XML = "model.xml"
OPENVINO_BIN = "model.bin"
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}  # openvino: a directory


def format_of(path) -> str:
    """"onnx", "litert" or "openvino", from the path's form."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(".xml"):
        return "openvino"
    for name, suffix in SUFFIXES.items():
        if path.endswith(suffix):
            return name
    raise ConfigError(f"{path} is not a deployment export: expected a .onnx file, a .tflite file or an "
                      f"OpenVINO directory holding {OPENVINO_XML}.")


class Deployed:
    """An export loaded in its runtime: `run(images)` (float32 NHWC in [0, 1]) -> float32 outputs."""

    def __init__(self, path, format, run, metadata, input_shape):
        self.path, self.format, self._run, self.metadata, self.input_shape = path, format, run, metadata, input_shape

    def run(self, images) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self._run(images), dtype=np.float32)

    def __call__(self, images):
        return self.run(images)


def open_export(path, *, threads=None) -> Deployed:
    """`path` loaded in its own runtime; a corrupt or truncated file is a one-line CheckpointError."""
    path = os.fspath(path)
    fmt = format_of(path)
    if fmt == "openvino" and os.path.isdir(path):
        path = os.path.join(path, OPENVINO_XML)
    if not os.path.exists(path):
        raise MissingFileError(f"{path} does not exist; write it with `bit_keras export --format {fmt}`.")
    opener = {"onnx": _open_onnx, "litert": _open_litert, "openvino": _open_openvino}[fmt]
    try:
        return opener(path, threads)
    except (CheckpointError, SetupError):
        raise
    except Exception as error:  # each runtime has its own error types; all mean "not a readable model"
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path} is not a readable {fmt} model ({reason}); it may be truncated or "
                              "corrupt: export it again.") from None


def _metadata(text, path):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} holds unreadable bit_keras metadata; export it again.") from None


def _open_onnx(path, threads):
    import onnx
    import onnxruntime as ort

    model = onnx.load(path, load_external_data=False)
    onnx.checker.check_model(model)  # a cut-short file fails here, with the file named
    props = {prop.key: prop.value for prop in model.metadata_props}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = list(session.get_inputs()[0].shape)
    return Deployed(path, "onnx", lambda images: session.run(None, {name: images})[0],
                    _metadata(props.get(METADATA_KEY), path), shape)


def read_litert_metadata(model_bytes):
    """The JSON stored under "bit_keras" in a LiteRT flatbuffer's metadata table (None if absent)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_KEY:
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8")
    return None


def _open_litert(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    with open(path, "rb") as stream:
        content = stream.read()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise CheckpointError(f"{path} is not a LiteRT (.tflite) flatbuffer (no TFL3 identifier); export it again.")
    interpreter = Interpreter(model_content=content, num_threads=threads)
    metadata = _metadata(read_litert_metadata(content), path)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    allocated = [None]

    def run(images):
        if allocated[0] != images.shape:
            interpreter.resize_tensor_input(inputs["index"], images.shape, strict=False)
            interpreter.allocate_tensors()
            allocated[0] = images.shape
        interpreter.set_tensor(inputs["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(outputs["index"]).copy()

    shape = [None if d < 0 else int(d) for d in inputs["shape_signature"]]
    return Deployed(path, "litert", run, metadata, shape)


def _open_openvino(path, threads):
    import openvino as ov

    weights = os.path.splitext(path)[0] + ".bin"
    if not os.path.exists(weights):
        raise CheckpointError(f"{path} has no {os.path.basename(weights)} beside it; export it again.")
    core = ov.Core()
    model = core.read_model(path, weights)
    metadata = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with bf16 or fp16 units would otherwise use them
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    shape = [None if d.is_dynamic else d.get_length() for d in model.inputs[0].get_partial_shape()]
    return Deployed(path, "openvino", lambda images: compiled(images)[0], _metadata(metadata, path), shape)


def run_in_fresh_process(path, images=None, *, timeout=600):
    """(outputs, metadata) of `path` run on `images` (None: `verify.probe_images` of its input size) by `python -m bit_keras.export.runtimes` in a new
    process: what a server or phone that has only the runtime would compute, and a runtime that
    aborts (a native crash) fails the check instead of the caller."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = os.path.join(scratch, "inputs.npy"), os.path.join(scratch, "outputs.npy")
        if images is not None:
            np.save(inputs, np.asarray(images, np.float32))
        done = subprocess.run([sys.executable, "-m", "bit_keras.export.runtimes", os.fspath(path), inputs, outputs],
                              capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not os.path.exists(outputs):
            errors = [line for line in done.stderr.splitlines() if line.strip()]
            reason = errors[-1] if errors else f"the runtime process ended with status {done.returncode}"
            if done.returncode < 0 or done.returncode == 134:
                reason = f"the {format_of(path)} runtime crashed (status {done.returncode}) running it"
            raise CheckpointError(reason if reason.startswith(os.fspath(path)) else f"{path}: {reason}")
        return np.load(outputs), json.loads(lines[-1]) if lines else None


def _main(argv):
    path, inputs, outputs = argv
    try:
        deployed = open_export(path)
        if os.path.exists(inputs):
            images = np.load(inputs)
        else:
            from bit_keras.export.verify import probe_images

            height = deployed.input_shape[1] if len(deployed.input_shape) == 4 else None
            images = probe_images(height if isinstance(height, int) and height > 0 else 224)
        result = deployed.run(images)
    except CheckpointError as error:
        print(error, file=sys.stderr)
        return 2
    np.save(outputs, result)
    print(json.dumps(deployed.metadata))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
