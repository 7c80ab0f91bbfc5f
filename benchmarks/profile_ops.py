"""Which TensorFlow ops take an R50x1 step's time: a profiler trace, summed per op type.

Builds the network (random weights), runs the step a few times, traces `--steps` more with
`tf.profiler` and sums the executed ops' durations per op type (and per layer kind: GroupNorm,
weight standardization, convolutions, the rest) from the trace's XPlane. On 1 thread the op
times add up to the step; with more, ops overlap and the shares are of the summed op time.

    python benchmarks/profile_ops.py --mode infer --size 224 --batch 8 --threads 1
    python benchmarks/profile_ops.py --mode train --size 128 --batch 32 --precision bfloat16 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import tempfile


def _kind(name: str, op_type: str) -> str:
    lowered = name.lower()
    if "group_norm" in lowered:
        return "GroupNorm (+ its grad)"
    if "standardized_conv2d" in lowered and "Conv2D" not in op_type:
        return "weight standardization (+ its grad)"
    if "Conv2D" in op_type:
        return "convolutions (+ their grads)"
    if "relu" in lowered:
        return "ReLU (+ its grad)"
    if op_type == "Cast":
        return "casts outside GN/WS"
    return "the rest"


def aggregate(logdir: str) -> tuple:
    """{op type: picoseconds}, {layer kind: picoseconds} over the traced TensorFlow ops."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as handle:
        space.ParseFromString(handle.read())
    by_type, by_kind = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "scope/op_name:OpType"
                if ":" not in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                by_type[op_type] += event.duration_ps
                by_kind[_kind(op_name, op_type)] += event.duration_ps
    return by_type, by_kind


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--variant", default="r50x1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fold", action="store_true", help="the folded model (inference)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = "tensorflow"

    import keras
    import numpy as np
    import tensorflow as tf

    from bit_keras.backbone import BiTBackbone
    from bit_keras.bench import parse_variant
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.inference import fold_standardization

    if args.precision == "bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    architecture = parse_variant(args.variant)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (args.batch,))
    keras.utils.set_random_seed(0)
    model = BiTImageClassifier(BiTBackbone(architecture.block_units, architecture.width), 1000)
    if args.fold:
        model = fold_standardization(model)
    if args.mode == "train":
        model.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        step = lambda: model.train_on_batch(images, labels)  # noqa: E731
    else:
        model.compile()
        step = lambda: model.predict_on_batch(images)  # noqa: E731
    for _ in range(3):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            step()
        tf.profiler.experimental.stop()
        by_type, by_kind = aggregate(logdir)
    total = sum(by_type.values()) or 1
    print(f"{args.variant} {args.mode} {args.size} px batch {args.batch} {args.precision}, {args.threads} thread(s);"
          f" summed op time per step {total / 1e12 / args.steps:.3f} s")
    for kind, ps in by_kind.most_common():
        print(f"  {kind:<40} {100 * ps / total:5.1f}%")
    for op_type, ps in by_type.most_common(args.top):
        print(f"    {op_type:<38} {100 * ps / total:5.1f}%  {ps / 1e12 / args.steps:7.3f} s/step")


if __name__ == "__main__":
    main()
