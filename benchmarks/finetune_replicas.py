"""Fine-tuning images/s at 1 and 2 replicas on the CPU: what tf.distribute's plumbing costs.

Usage: python benchmarks/finetune_replicas.py [--variant r14x1] [--resolution 64] [--batch 32]
                                              [--updates 6] [--rounds 3]

The CPU is split into 2 logical devices (before TensorFlow starts) and the same BiT-HyperRule
fine-tune (random weights, digits, global batch `--batch`) runs with the default strategy
(1 replica) and with MirroredStrategy over both devices (2 replicas, half the batch each),
in one process, rounds interleaved so both see the same machine load. Both replicas share
the same cores, so 2 replicas cannot be faster here: the ratio shows the overhead of the
all-reduce and the split input, which is what stays when each replica has its own GPU.
Prints a Markdown table (median images/s over rounds, and the range).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="r14x1")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--updates", type=int, default=8, help="Timed updates per round.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from bit_keras.distribute import split_cpu

    split_cpu(2)
    from bit_keras.data import load_source
    from bit_keras.finetune import build_finetuner
    from bit_keras.distribute import make_strategy

    train, info = load_source("digits", "train")
    runs = {}
    for name in ("default", "mirrored"):
        ft = build_finetuner(args.variant, num_classes=info.num_classes, train_size=info.train_size,
                             image_size=info.image_size, batch_size=args.batch, resolution=args.resolution,
                             steps=10_000, strategy=make_strategy(name))
        batches = ft.train_dataset(train)
        ft.model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)  # trace and warm up
        runs[name] = (ft, batches)
    import keras

    class Clock(keras.callbacks.Callback):
        """Times the updates inside one fit, from the end of its first one (fit's own set-up left out)."""

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                self.started = time.perf_counter()
            self.ended = time.perf_counter()

    speeds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (ft, batches) in runs.items():
            clock = Clock()
            ft.model.fit(batches, steps_per_epoch=args.updates + 1, epochs=1, verbose=0, callbacks=[clock])
            speeds[name].append(args.updates * args.batch / (clock.ended - clock.started))
    base = statistics.median(speeds["default"])
    print(f"{args.variant} at {args.resolution} px, global batch {args.batch}, {args.updates} updates x "
          f"{args.rounds} rounds, os.cpu_count() = {os.cpu_count()}\n")
    print("| replicas | strategy | per-replica batch | images/s: median (range) | vs 1 replica |")
    print("|---|---|---|---|---|")
    for name, replicas in (("default", 1), ("mirrored", 2)):
        values = speeds[name]
        print(f"| {replicas} | {name} | {args.batch // replicas} | {statistics.median(values):.1f} "
              f"({min(values):.1f}-{max(values):.1f}) | {statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
