"""Where an R50x1 step's time goes, by ablation, in one process on the current Keras backend.

The same network is timed, interleaved round by round, with parts taken out: weight
standardization (plain convolutions), then GroupNorm as well (convolutions, ReLU, padding,
pooling and additions only). The differences are what WS and GN cost; what is left is the
convolutions' share. Inference also times the folded copy (`fold_standardization`), which
is what caching the standardized kernels can give at most.

    KERAS_BACKEND=tensorflow python benchmarks/profile_step.py --mode infer --size 224 --batch 8 --threads 1
    KERAS_BACKEND=tensorflow python benchmarks/profile_step.py --mode train --size 128 --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


from bit_keras.bench.machine import pin_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", default="r50x1")
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (XLA) for every row.")
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import keras
    import numpy as np

    from bit_keras.backbone import BiTBackbone
    from bit_keras.bench import parse_variant
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.inference import fold_standardization
    architecture = parse_variant(args.variant)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (args.batch,))

    def model(**switches):
        keras.utils.set_random_seed(0)
        return BiTImageClassifier(BiTBackbone(architecture.block_units, architecture.width, **switches), 1000)

    rows = {"BiT (WS + GN)": model(), "no WS": model(weight_standardization=False),
            "no WS, no GN": model(weight_standardization=False, normalization="none")}
    if args.mode == "infer":
        rows["BiT folded (fold_standardization)"] = fold_standardization(rows["BiT (WS + GN)"])
    steps = {}
    for name, net in rows.items():
        if args.mode == "train":
            net.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=args.jit)
            steps[name] = lambda net=net: net.train_on_batch(images, labels)
        else:
            net.compile(jit_compile=args.jit)
            steps[name] = lambda net=net: net.predict_on_batch(images)
        for _ in range(2):
            steps[name]()
    times = {name: [] for name in steps}
    for index in range(args.rounds):
        order = list(steps) if index % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    full = statistics.median(times["BiT (WS + GN)"])
    print(f"{args.variant} {args.mode}, {args.size} px, batch {args.batch}, {args.threads} thread(s), "
          f"backend {keras.backend.backend()}{' + XLA' if args.jit else ''}; median of {args.rounds} interleaved rounds")
    report = {}
    for name, values in times.items():
        median = statistics.median(values)
        report[name] = median
        print(f"  {name:<36} {median:7.3f} s/step  {100 * median / full:5.1f}% of BiT")
    parts = {"weight standardization": report["BiT (WS + GN)"] - report["no WS"],
             "GroupNorm": report["no WS"] - report["no WS, no GN"],
             "convolutions and the rest": report["no WS, no GN"]}
    print("  where the time goes: " + ", ".join(f"{k} {100 * v / full:.0f}%" for k, v in parts.items()))
    json.dump({"args": vars(args), "backend": keras.backend.backend(), "step_seconds": report,
               "rounds": times}, sys.stderr)
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
