"""BN vs GN, with and without weight standardization, at per-replica batch 2 and 64, on a CPU.

Usage: python benchmarks/ablate_normalization.py [--seeds 3] [--epochs 3] [--out benchmarks]

BiT's architecture claim (Kolesnikov et al. 2020, ILSVRC-2012, R50x1, batch 4096): GroupNorm
plus weight standardization (GN+WS) matches or beats BatchNorm, and unlike BatchNorm does
not depend on the per-device batch. This study asks the same question at a size two CPU
cores train in minutes: a small BiT ResNet-v2 (`BiTBackbone`, default r14x1) trained from
scratch on scikit-learn's digits (offline; 1437 train / 360 test images, 8x8 upscaled to
32x32), for {BN, BN+WS, GN, GN+WS} x {per-replica batch 2, 64} x seeds.

Both batch settings make the same updates of 64 images with the same schedule; "per-replica
batch 2" computes them from 32 micro-batches of 2 with Keras' `gradient_accumulation_steps`,
so every BatchNorm normalizes with the statistics of 2 images (and its moving statistics
average those), exactly what a replica holding 2 images sees. GroupNorm is per image, so
only the floating-point summation order differs for it between the two settings.

Writes OUT/ablate_normalization.{md,png,json}: a Markdown table of test top-1 (mean ±
sample standard deviation over seeds, and the min-max range) and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NORMS = {"BN": ("batch", False), "BN+WS": ("batch", True), "GN": ("group", False), "GN+WS": ("group", True)}
PAPER = {"BN": 75.6, "BN+WS": 75.8, "GN": 70.2, "GN+WS": 76.0}  # BiT-S R50x1, ILSVRC-2012 top-1, batch 4096
UPDATE_BATCH = 64


def load_digits(size):
    import numpy as np
    import tensorflow as tf

    from bit_keras.data import load_source

    def arrays(split):
        ds, _ = load_source("digits", split)
        images, labels = zip(*ds.as_numpy_iterator())
        images = tf.image.resize(np.stack(images).astype("float32") / 255.0, (size, size), method="bilinear")
        return np.clip(images.numpy(), 0.0, 1.0), np.asarray(labels, "int64")

    return arrays("train"), arrays("test")


def per_update_schedule():
    import keras

    class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
        """`base` read per update: Keras hands a schedule the micro-step count under gradient
        accumulation (optimizer._iterations, not optimizer.iterations), so both batch settings
        would otherwise see different rates for the same update."""

        def __init__(self, base, accumulation):
            self.base, self.accumulation = base, accumulation

        def __call__(self, step):
            return self.base(keras.ops.floor_divide(step, self.accumulation))

    return PerUpdate


def run_one(train, test, *, norm, batch, seed, args):
    import keras
    import numpy as np
    import tensorflow as tf

    from bit_keras.backbone import BiTBackbone
    from bit_keras.classifier import BiTImageClassifier

    PerUpdate = per_update_schedule()
    normalization, ws = NORMS[norm]
    keras.utils.set_random_seed(seed)
    backbone = BiTBackbone(args.units, args.width, normalization=normalization, weight_standardization=ws)
    model = BiTImageClassifier(backbone, 10)
    (x, y), (x_test, y_test) = train, test
    updates_per_epoch = len(x) // UPDATE_BATCH
    total = updates_per_epoch * args.epochs
    warmup = min(updates_per_epoch, total // 4)  # linear warm-up (one epoch at most), then cosine to zero
    accumulation = UPDATE_BATCH // batch
    schedule = PerUpdate(keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=args.lr,
                                                                warmup_steps=warmup), accumulation)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay,
                                     gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=args.jit,
                  steps_per_execution=accumulation)  # one update per call: ~2x faster at batch 2
    data = (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(UPDATE_BATCH, drop_remainder=True).unbatch()   # whole updates of 64 only
            .batch(batch).prefetch(4))
    start = time.perf_counter()
    history = model.fit(data, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    assert int(optimizer.iterations.numpy()) == total, (int(optimizer.iterations.numpy()), total)
    logits = model.predict(x_test, batch_size=120, verbose=0)   # inference: BN uses its moving statistics
    top1 = float(np.mean(np.argmax(logits, -1) == y_test)) * 100
    return {"norm": norm, "batch": batch, "seed": seed, "test_top1": round(top1, 2),
            "train_loss": round(float(history.history["loss"][-1]), 4),
            "train_accuracy": round(float(history.history["accuracy"][-1]) * 100, 2),
            "seconds": round(seconds, 1)}


def summarize(results, seeds):
    rows = []
    for norm in NORMS:
        row = {"norm": norm, "paper": PAPER[norm]}
        for batch in sorted({r["batch"] for r in results}):
            values = [r["test_top1"] for r in results if r["norm"] == norm and r["batch"] == batch]
            if values:
                row[batch] = {"mean": statistics.mean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                              "min": min(values), "max": max(values), "n": len(values),
                              "train_loss": statistics.mean(r["train_loss"] for r in results
                                                            if r["norm"] == norm and r["batch"] == batch)}
        rows.append(row)
    return rows


def markdown(rows, batches, meta) -> str:
    head = " | ".join(f"per-replica batch {b}: test top-1 % (mean ± sd [min, max])" for b in batches)
    lines = [f"| network | {head} | BiT paper, ILSVRC-2012 R50x1, batch 4096 |",
             "|---|" + "---|" * len(batches) + "---|"]
    for row in rows:
        cells = []
        for b in batches:
            s = row.get(b)
            cells.append(f"{s['mean']:.1f} ± {s['std']:.1f} [{s['min']:.1f}, {s['max']:.1f}]" if s else "-")
        lines.append(f"| {row['norm']} | " + " | ".join(cells) + f" | {row['paper']:.1f} |")
    lines.append("")
    lines.append(f"{meta['model']} from scratch on digits ({meta['train']} train / {meta['test']} test images, "
                 f"{meta['size']}x{meta['size']}), {meta['epochs']} epochs of updates of {UPDATE_BATCH} images, "
                 f"SGD momentum 0.9, peak lr {meta['lr']}, cosine, weight decay {meta['weight_decay']}; "
                 f"{meta['seeds']} seeds; {meta['minutes']:.1f} minutes on {meta['machine']}.")
    return "\n".join(lines) + "\n"


def plot(rows, batches, path, title):
    from bit_keras import plots

    figure, ax = plots._figure((9, 4.5))
    width = 0.8 / len(batches)
    for index, batch in enumerate(batches):
        xs = [i + (index - (len(batches) - 1) / 2) * width for i in range(len(rows))]
        means = [row[batch]["mean"] if batch in row else float("nan") for row in rows]
        low = [row[batch]["mean"] - row[batch]["min"] if batch in row else 0 for row in rows]
        high = [row[batch]["max"] - row[batch]["mean"] if batch in row else 0 for row in rows]
        ax.bar(xs, means, width, yerr=[low, high], capsize=4, color=f"C{index}",
               label=f"per-replica batch {batch} (bar: mean, whisker: min-max over seeds)")
        for x, m in zip(xs, means):
            ax.text(x, 1, f"{m:.1f}", ha="center", va="bottom", fontsize="small", color="white")
    ax.set_xticks(range(len(rows)), [row["norm"] for row in rows])
    ax.set(ylabel="digits test top-1 (%)", ylim=(0, 118))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", ncol=len(batches))
    figure.suptitle(title, fontsize="medium")
    return plots._save(figure, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", default="2,64", help="per-replica batches; each divides 64")
    parser.add_argument("--norms", default=",".join(NORMS))
    parser.add_argument("--units", default="1,1,1,1", help="units per block of the BiTBackbone")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--size", type=int, default=32, help="image side after upscaling the 8x8 digits")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled (Keras: x lr), not on gamma/beta")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jit", action="store_true", help="compile with XLA (slower to start on this CPU)")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--from-json", help="only redraw the table and plot from a study's .json")
    args = parser.parse_args(argv)
    args.units = tuple(int(u) for u in args.units.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    norms = args.norms.split(",")
    if any(UPDATE_BATCH % b for b in batches) or not set(norms) <= set(NORMS):
        parser.error(f"--batches must divide {UPDATE_BATCH}; --norms from {','.join(NORMS)}")

    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        meta, results = saved["meta"], saved["results"]
        for key in ("epochs", "lr", "weight_decay", "size", "threads"):
            setattr(args, key, meta[key])
        sizes = (range(meta["train"]),), (range(meta["test"]),)
        seeds = len({r["seed"] for r in results})
        return write(results, seeds, batches, norms, args, *sizes, meta["minutes"])

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    train, test = load_digits(args.size)
    start = time.perf_counter()
    results = []
    for seed in range(args.seeds):          # seeds outermost: a cut-short study still covers every cell
        for batch in batches:
            for norm in norms:
                result = run_one(train, test, norm=norm, batch=batch, seed=seed, args=args)
                results.append(result)
                print(json.dumps(result), flush=True)
        write(results, seed + 1, batches, norms, args, train, test, (time.perf_counter() - start) / 60)


def write(results, seeds, batches, norms, args, train, test, minutes):
    """Table, JSON and plot of the seeds done so far (rewritten after each seed)."""
    import tensorflow as tf

    from bit_keras.architecture import Architecture

    rows = [row for row in summarize(results, seeds) if row["norm"] in norms]
    name = Architecture(args.units, args.width).name
    meta = {"model": f"BiTBackbone {name}", "train": len(train[0]), "test": len(test[0]), "size": args.size,
            "epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "seeds": seeds,
            "minutes": minutes, "threads": args.threads,
            "machine": f"{args.threads} CPU threads ({platform.processor() or platform.machine()}), "
                       f"TensorFlow {tf.__version__}"}
    table = markdown(rows, batches, meta)
    print(table, flush=True)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "ablate_normalization")
    with open(base + ".md", "w") as f:
        f.write(table)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "results": results, "summary": rows}, f, indent=1, default=str)
    plot(rows, batches, base + ".png",
         f"{name} from scratch on digits {args.size}px, {args.epochs} epochs, {seeds} seed(s): "
         f"test top-1 by normalization and per-replica batch")
    print(f"wrote {base}.md, .json, .png", flush=True)

if __name__ == "__main__":
    main()
