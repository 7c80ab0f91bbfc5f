"""Deployment exports (`bit_keras export --format onnx|litert|openvino`): each file is run in its own
runtime in a fresh process (ONNX Runtime, the LiteRT interpreter, OpenVINO; no TensorFlow there) and
compared with the plain NumPy reference of the checkpoint and with the Keras model; quantized files
keep the float model's top-1 on a fixed set; a truncated or corrupt file is refused in one line; a
file that misses the tolerance is never written."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS, WIDTH, CLASSES, SEED = (1, 1, 1, 1), 1, 4, 7  # r14x1, read by conftest's checkpoint_file
RESOLUTION = 32
OUTPUTS = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model_openvino"}
# Fixed set for quantized exports: the first 32 images of scikit-learn's digits test split, at 32 px.
# The float model's top-1 must survive on >= 90% of them with int8 weights or float16, on >= 85% with
# int8 activations too (this untrained head's 4 logits lie close together: ONNX int8 keeps 28/32). LiteRT
# int8 runs at 64 px: at 32 px the last block's map is 1x1, which LiteRT's int8 GroupNorm aborts on.
QUANTIZED_SET = ("digits", "test", 32)
TOP1_AGREEMENT = {"dynamic-int8": 0.9, "float16": 0.9, "int8": 0.85}

# Runs a file with its runtime library alone and prints the outputs and the stored metadata as JSON.
RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np
    fmt, path, inputs = sys.argv[1:]
    images = np.load(inputs)
    if fmt == "onnx":
        import onnx, onnxruntime
        meta = {p.key: p.value for p in onnx.load(path).metadata_props}["bit_keras"]
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: images})[0]
    elif fmt == "litert":
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter
        content = open(path, "rb").read()
        model = schema.Model.GetRootAs(content, 0)
        entry = [model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"bit_keras"][0]
        meta = bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode()
        interpreter = Interpreter(model_content=content)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, images.shape, strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, images)
        interpreter.invoke()
        outputs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    else:
        import openvino
        core = openvino.Core()
        model = core.read_model(path + "/model.xml")
        meta = model.get_rt_info(["bit_keras"]).astype(str)
        outputs = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(images)[0]
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    print(json.dumps({"outputs": np.asarray(outputs).tolist(), "metadata": json.loads(meta)}))
""")


def run_cli(*argv):
    from bit_keras.cli import main

    return main._main(main.build_parser().parse_args(list(argv)))


def run_fresh(fmt, path, images, tmp_path):
    """(outputs, metadata) of `path` run in a new Python process by its runtime library alone."""
    inputs = str(tmp_path / f"inputs_{fmt}.npy")
    np.save(inputs, images.astype(np.float32))
    done = subprocess.run([sys.executable, "-c", RUNNER, fmt, path, inputs], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return np.asarray(result["outputs"], np.float32), result["metadata"]


def keras_outputs(model, images):
    """The Keras model's outputs summed as exports sum (`plain_reductions`; the exporter's own check
    does the same): the live model's products with a row of ones round differently, by ~2e-5 here."""
    from bit_keras.layers import plain_reductions

    with plain_reductions():
        return np.asarray(model(images))


def relative_difference(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def keras_model(checkpoint_file):
    from bit_keras import weights
    from bit_keras.classifier import BiTImageClassifier

    return BiTImageClassifier.from_weights(weights.resolve(None, checkpoint_file[0]))


@pytest.fixture(scope="module")
def exports(checkpoint_file, tmp_path_factory):
    """The tiny checkpoint's classifier exported by the command line to each float32 format."""
    import contextlib
    import io

    directory = tmp_path_factory.mktemp("deploy")
    paths = {}
    for fmt, name in OUTPUTS.items():
        paths[fmt] = str(directory / name)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert run_cli("export", "--weights", checkpoint_file[0], "--classifier", "--format", fmt,
                           "--resolution", str(RESOLUTION), "--output", paths[fmt]) == 0
        paths[fmt + " output"] = printed.getvalue()
    return paths


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_float_export_matches_numpy_and_keras_in_a_fresh_process(fmt, exports, checkpoint_file, keras_model,
                                                                 tmp_path):
    from bit_keras import download

    path, params = checkpoint_file
    images = np.random.default_rng(3).uniform(0, 1, (5, RESOLUTION, RESOLUTION, 3)).astype("float32")
    outputs, meta = run_fresh(fmt, exports[fmt], images, tmp_path)  # batch 5: the batch dimension is dynamic
    _, expected = reference.forward(params, images)
    assert outputs.shape == (5, CLASSES)
    assert relative_difference(outputs, expected) < 1e-5
    assert relative_difference(outputs, keras_outputs(keras_model, images)) < 1e-5
    assert meta["variant"] == "r14x1" and meta["num_classes"] == CLASSES and meta["resolution"] == RESOLUTION
    assert meta["checkpoint"]["sha256"] == download.sha256_of(path)
    assert meta["quantization"] == "float32" and meta["input"]["shape"] == [None, RESOLUTION, RESOLUTION, 3]


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_command_prints_the_check_last(fmt, exports, checkpoint_file, capsys):
    last = exports[fmt + " output"].strip().splitlines()[-1]
    assert "(a fresh process)" in last and "max relative difference" in last
    assert float(last.split("max relative difference ")[1].split()[0]) < 1e-5
    # An existing output is refused without --overwrite, before anything is built.
    assert run_cli("export", "--weights", checkpoint_file[0], "--format", fmt, "--output", exports[fmt]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,mode,resolution", [("litert", "dynamic-int8", RESOLUTION),
                                                 ("litert", "float16", RESOLUTION), ("onnx", "int8", RESOLUTION),
                                                 ("litert", "int8", 64)])
def test_quantized_export_keeps_top1_on_a_fixed_set(fmt, mode, resolution, checkpoint_file, keras_model, tmp_path,
                                                    capsys):
    from bit_keras.export.quantize import load_images

    output = str(tmp_path / ("q.tflite" if fmt == "litert" else "q.onnx"))
    spec, split, count = QUANTIZED_SET
    flags = ["--calibration-data", "digits"] if mode == "int8" else []
    assert run_cli("export", "--weights", checkpoint_file[0], "--classifier", "--format", fmt, "--quantize", mode,
                   "--resolution", str(resolution), "--output", output, *flags,
                   "--eval-data", spec, "--eval-examples", str(count)) == 0
    out = capsys.readouterr().out
    assert f"Top-1 on {count} examples of digits (test)" in out
    images = load_images(spec, resolution, split=split, limit=count)
    outputs, meta = run_fresh(fmt, output, images, tmp_path)
    assert meta["quantization"] == mode
    agreement = np.mean(np.argmax(outputs, -1) == np.argmax(np.asarray(keras_model(images)), -1))
    assert agreement >= TOP1_AGREEMENT[mode], agreement
    if mode != "float16":
        assert os.path.getsize(output) < 0.5 * 4 * sum(v.size for v in checkpoint_file[1].values())
    if (fmt, mode) == ("litert", "int8"):  # activations are int8 too: every convolution reads an int8 tensor
        from ai_edge_litert import schema_py_generated as schema

        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(open(output, "rb").read(), 0))
        graph = model.subgraphs[0]
        conv = [op for op in graph.operators
                if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D]
        assert conv and all(graph.tensors[op.inputs[0]].type == schema.TensorType.INT8 for op in conv)


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_int8_without_calibration_data_is_refused_before_anything_is_built(fmt, checkpoint_file, keras_model,
                                                                           tmp_path, capsys):
    from bit_keras.errors import ConfigError
    from bit_keras.export import formats

    output = str(tmp_path / ("q.tflite" if fmt == "litert" else "q.onnx"))
    assert run_cli("export", "--weights", checkpoint_file[0], "--classifier", "--format", fmt, "--quantize", "int8",
                   "--resolution", "64", "--output", output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --calibration-data" in err[0] and not os.path.exists(output)
    with pytest.raises(ConfigError, match="needs --calibration-data"):  # the library refuses it too
        formats.export_deployable(keras_model, output, format=fmt, resolution=64, quantize="int8",
                                  log=lambda _: None)
    assert not os.path.exists(output)


def test_litert_int8_of_a_1x1_last_map_is_refused_with_the_reason(checkpoint_file, tmp_path, capsys):
    output = str(tmp_path / "q.tflite")
    assert run_cli("export", "--weights", checkpoint_file[0], "--classifier", "--format", "litert", "--quantize",
                   "int8", "--calibration-data", "digits", "--resolution", "32", "--output", output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resolution 33" in err[0] and "dynamic-int8" in err[0] and not os.path.exists(output)


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_truncated_or_corrupt_export_is_refused_in_one_line(fmt, exports, tmp_path, capsys):
    import shutil

    source = exports[fmt]
    broken = str(tmp_path / os.path.basename(source))
    if fmt == "openvino":
        shutil.copytree(source, broken)
        target = os.path.join(broken, "model.bin")
    else:
        shutil.copy(source, broken)
        target = broken
    content = open(target, "rb").read()
    assert run_cli("inspect", broken) == 0
    assert "runs: yes" in capsys.readouterr().out
    for damaged in (content[: len(content) // 2], b"\x00" * 64 + content[64:]):
        with open(target, "wb") as stream:
            stream.write(damaged)
        if fmt == "openvino" and len(damaged) == len(content):  # weights of the right size are not checked:
            with open(os.path.join(broken, "model.xml"), "wb") as stream:  # damage the graph instead
                stream.write(b"<net><layers><layer")
        assert run_cli("inspect", broken) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and broken in err[0], err


def test_an_export_that_misses_the_tolerance_is_not_written(checkpoint_file, tmp_path, monkeypatch):
    from bit_keras import weights
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.errors import VerificationError
    from bit_keras.export import formats, verify

    monkeypatch.setattr(verify, "FLOAT_TOLERANCE", -1.0)  # no file can pass
    model = BiTImageClassifier.from_weights(weights.resolve(None, checkpoint_file[0]))
    output = tmp_path / "model.tflite"
    with pytest.raises(VerificationError, match="nothing was written"):
        formats.export_deployable(model, output, format="litert", resolution=RESOLUTION, log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_run_directory_exports_its_classifier_and_class_names(checkpoint_file, keras_model, tmp_path, capsys):
    from bit_keras.export.keras_file import export_keras

    run = tmp_path / "run"
    run.mkdir()
    export_keras(keras_model, str(run / "model.keras"))
    names = ["cat", "dog", "fish", "bird"]
    (run / "run.json").write_text(json.dumps({"source": "r14x1", "dataset": "folder:pets", "class_names": names,
                                              "num_classes": CLASSES, "hyperrule": {"crop": RESOLUTION}}))
    output = str(tmp_path / "pets.tflite")
    assert run_cli("export", "--from-run", str(run), "--format", "litert", "--output", output) == 0
    assert "max relative difference" in capsys.readouterr().out.strip().splitlines()[-1]
    images = np.random.default_rng(5).uniform(0, 1, (2, RESOLUTION, RESOLUTION, 3)).astype("float32")
    outputs, meta = run_fresh("litert", output, images, tmp_path)
    assert meta["class_names"] == names and meta["fine_tuned_on"] == "folder:pets"
    assert relative_difference(outputs, keras_outputs(keras_model, images)) < 1e-5


def test_the_litert_example_classifies_without_tensorflow(exports):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "deploy_litert.py"), "classify",
                           exports["litert"], "--limit", "8"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "8 digits classified by the LiteRT interpreter alone (no TensorFlow)" in done.stdout


def test_serve_bench_times_each_runtime_after_checking_it():
    from bit_keras.export import serve_bench

    rows = tuple(row for row in serve_bench.ROWS if row[0] in ("keras", "onnxruntime"))
    report = serve_bench.serve_benchmark("r14x1", 32, steps=1, latency_calls=2, threads=1, rows=rows,
                                         log=lambda _: None)
    assert [row["runtime"] for row in report["rows"]] == ["keras", "onnxruntime"]
    for row in report["rows"]:
        assert row["images_per_second_batch8"] > 0 and row["latency_ms_p99_batch1"] >= row["latency_ms_p50_batch1"]
    table = serve_bench.format_table(report)
    assert table[1].startswith("| runtime | images/s (batch 8)") and len(table) == 5


def test_outputs_are_checked_before_anything_is_built(tmp_path):
    from bit_keras.errors import ConfigError, TargetExistsError
    from bit_keras.export import formats

    with pytest.raises(ConfigError, match="ending in .tflite"):
        formats.check_target(tmp_path / "model.onnx", "litert", overwrite=False)
    with pytest.raises(ConfigError, match="directory"):
        formats.check_target(tmp_path / "model.xml", "openvino", overwrite=False)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(TargetExistsError, match="Refusing to replace"):  # --overwrite replaces only an export
        formats.check_target(other, "openvino", overwrite=True)
    (other / "model.xml").write_bytes(b"x")
    formats.check_target(other, "openvino", overwrite=True)
