"""A/B in one process: `predict` standardizing kernels once per call (now) against once per batch (before).

Both sides are the same model and the same Keras `predict` over the same images; "before"
calls Keras' own `keras.Model.predict` past `BiTImageClassifier.predict`. Rounds alternate the order.
The explicit inference copy (`fold_standardization`) is timed beside them: the most that
not standardizing at all can give.

    python benchmarks/predict_once_ab.py --size 224 --batch 8 --batches 4 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time


from bit_keras.bench.machine import pin_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="r50x1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches per predict call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    pin_threads(args.threads)

    import keras
    import numpy as np

    from bit_keras.backbone import BiTBackbone
    from bit_keras.bench import parse_variant
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.inference import fold_standardization
    architecture = parse_variant(args.variant)
    model = BiTImageClassifier(BiTBackbone(architecture.block_units, architecture.width), 1000)
    folded = fold_standardization(model)
    images = np.random.default_rng(0).uniform(0, 1, (args.batch * args.batches, args.size, args.size, 3))
    images = images.astype("float32")
    rows = {
        "once per batch (before)": lambda: keras.Model.predict(model, images, batch_size=args.batch, verbose=0),
        "once per predict call (now)": lambda: model.predict(images, batch_size=args.batch, verbose=0),
        "folded copy (fold_standardization)": lambda: folded.predict(images, batch_size=args.batch, verbose=0),
    }
    outputs = {name: run() for name, run in rows.items()}  # warm-up: traces every function
    for name, out in outputs.items():
        np.testing.assert_allclose(out, outputs["once per batch (before)"], rtol=1e-4, atol=1e-4, err_msg=name)
    times = {name: [] for name in rows}
    for index in range(args.rounds):
        for name in (list(rows) if index % 2 == 0 else list(reversed(rows))):
            start = time.perf_counter()
            rows[name]()
            times[name].append(time.perf_counter() - start)
    before = times["once per batch (before)"]
    print(f"{args.variant} predict of {args.batches} batches of {args.batch} at {args.size} px, "
          f"{args.threads} thread(s), backend {keras.backend.backend()}, {args.rounds} alternating rounds")
    for name, values in times.items():
        ratios = sorted(b / v for b, v in zip(before, values))
        print(f"  {name:<36} {statistics.median(values):7.3f} s/call  {statistics.median(ratios):5.2f}x before "
              f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
