"""Fine-tune BiT on digits, ship it as a quantized LiteRT file, classify as a phone app would.

    python examples/deploy_litert.py train --output /tmp/bit_digits        # offline, a few minutes
    python examples/deploy_litert.py classify /tmp/bit_digits/digits.tflite

`train` fine-tunes with the BiT-HyperRule (`bit_keras finetune`, 64 px) and exports the run
in full int8, weights and activations calibrated on 200 training digits (`bit_keras export
--from-run ... --format litert --quantize int8 --calibration-data digits --eval-data digits`),
which reports top-1 of the float and the quantized model. (`--quantize dynamic-int8` keeps float
activations and needs no calibration data; full int8 wants 33 px or more, so the last block's
feature map is not 1x1.) `classify`
imports the LiteRT interpreter (`ai-edge-litert`) and NumPy only, never TensorFlow: it reads the
class names and input size from the file's own metadata and scores the digits test split.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np


def train(output, *, variant="r14x1", steps=300):
    run = os.path.join(output, "run")
    model = os.path.join(output, "digits.tflite")
    command = [sys.executable, "-m", "bit_keras"]
    subprocess.run([*command, "finetune", "--variant", variant, "--random-weights", "--dataset", "digits",
                    "--output", run, "--steps", str(steps), "--batch", "64", "--resolution", "64"], check=True)
    subprocess.run([*command, "export", "--from-run", run, "--format", "litert", "--quantize", "int8",
                    "--calibration-data", "digits", "--eval-data", "digits", "--output", model, "--overwrite"],
                   check=True)
    return model


def load(path):
    """(interpreter, metadata) from the file alone: the metadata is JSON in the flatbuffer's metadata table."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    with open(path, "rb") as stream:
        content = stream.read()
    model = schema.Model.GetRootAs(content, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    entry = next(e for e in entries if e.Name() == b"bit_keras")
    metadata = json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8"))
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return interpreter, metadata


def resize(images, size):
    """Bilinear resize of uint8 [N, h, w, 3] to float32 [N, size, size, 3] in [0, 1] (what the app's camera code does)."""
    n, h, w, _ = images.shape
    ys = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    xs = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    f = images.astype(np.float32) / 255.0
    top = f[:, y0][:, :, x0] * (1 - wx) + f[:, y0][:, :, x1] * wx
    bottom = f[:, y1][:, :, x0] * (1 - wx) + f[:, y1][:, :, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def classify(path, images):
    """Class names for uint8 RGB images [N, h, w, 3], one image at a time (batch 1, as on a phone)."""
    interpreter, metadata = load(path)
    size = metadata["resolution"]
    names = metadata.get("class_names") or [str(i) for i in range(metadata["num_classes"])]
    inputs, outputs = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    predictions = []
    for image in resize(images, size):
        interpreter.set_tensor(inputs, image[None])
        interpreter.invoke()
        predictions.append(names[int(np.argmax(interpreter.get_tensor(outputs)[0]))])
    return predictions


def digits_test_split():
    """The digits test split as bit_keras splits it (360 images), without importing bit_keras or TensorFlow."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:360]
    gray = np.round(digits.images[order] * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), digits.target[order]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("--output", required=True)
    train_parser.add_argument("--steps", type=int, default=300)
    classify_parser = commands.add_parser("classify")
    classify_parser.add_argument("model")
    classify_parser.add_argument("--limit", type=int, default=360)
    args = parser.parse_args(argv)
    if args.command == "train":
        print(f"Wrote {train(args.output, steps=args.steps)}")
        return 0
    images, labels = digits_test_split()
    predicted = classify(args.model, images[:args.limit])
    accuracy = np.mean([p == str(label) for p, label in zip(predicted, labels[:args.limit])])
    assert "tensorflow" not in sys.modules, "the LiteRT interpreter alone should be enough"
    print(f"{len(predicted)} digits classified by the LiteRT interpreter alone (no TensorFlow): "
          f"top-1 {accuracy:.4f}; first five: {predicted[:5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
