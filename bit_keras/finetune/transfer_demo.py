"""`bit_keras demo --transfer`: BiT's transfer, shown offline at the scale of a CPU.

No released checkpoint can be fetched offline, so this demo makes its own upstream: it
pre-trains a small BiT (r14x1) with the upstream trainer on one task (digits 0-4, every
training example), exports it as a TF-Hub SavedModel, loads the export back, and
fine-tunes few-shot on a different task (digits 5-9, k examples per class) next to the
same fine-tune from random weights. The table is the point: what pre-training buys at
each k.

Both fine-tunes of a pair are identical but for the backbone's weights: the HyperRule for
k x 5 images at `finetune_batch`, shortened to `finetune_steps` updates, with the rule's own
learning rate (0.003 x batch/512, tuned for pre-trained features: from random weights it
barely moves in that many updates, which is BiT's point) or one `learning_rate` for both.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bit_keras.errors import StoppedError

UPSTREAM_CLASSES = (0, 1, 2, 3, 4)
DOWNSTREAM_CLASSES = (5, 6, 7, 8, 9)
ARCHITECTURE = "r14x1"


def _arrays(split):
    from bit_keras.data import load_source

    ds, _ = load_source("digits", split)
    images, labels = zip(*ds.as_numpy_iterator())
    return np.stack(images), np.asarray(labels)


def _task(images, labels, classes):
    """The examples of `classes`, relabelled 0..len(classes)-1."""
    keep = np.isin(labels, classes)
    return images[keep], np.searchsorted(np.asarray(classes), labels[keep])


def _accuracy(model, images, labels, resolution) -> float:
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(images, tf.float32) / 255.0, [resolution, resolution]).numpy()
    logits = np.asarray(model.predict(resized, batch_size=128, verbose=0))
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _every(steps) -> int:
    """Updates between progress lines: about 12 per run, so a slow machine still shows it working."""
    return max(1, steps // 12)


def run_transfer_demo(output="demo_output/transfer", *, upstream_steps=240, upstream_batch=64, resolution=32,
                      shots=(1, 5, 10), finetune_steps=60, finetune_batch=32, learning_rate=None, seed=0,
                      check_hub=True, print_fn=print) -> dict:
    """Pre-trains, exports, reloads and fine-tunes few-shot; returns the table (also OUTPUT/transfer_metrics.json)."""
    import keras

    from bit_keras import files
    from bit_keras.data import from_arrays, few_shot
    from bit_keras.export import export_model, load_backbone
    from bit_keras.finetune.demo import _hub_difference
    from bit_keras.finetune.fine_tuner import build_finetuner
    from bit_keras.presets import resolve
    from bit_keras.train.loop import TrainConfig, train
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    started = time.time()
    train_images, train_labels = _arrays("train")
    test_images, test_labels = _arrays("test")
    up_x, up_y = _task(train_images, train_labels, UPSTREAM_CLASSES)
    down_x, down_y = _task(train_images, train_labels, DOWNSTREAM_CLASSES)
    up_test = _task(test_images, test_labels, UPSTREAM_CLASSES)
    down_test = _task(test_images, test_labels, DOWNSTREAM_CLASSES)
    architecture, _ = resolve(ARCHITECTURE)
    print_fn(f"BiT transfer demo: pre-train {ARCHITECTURE} on digits 0-4, fine-tune few-shot on digits 5-9, "
             f"against the same fine-tune from random weights. Offline, a few minutes on 2 CPU cores.")

    # 1. Upstream: the paper's schedule shape (warm-up, /10 at 1/3, 2/3 and 8/9 of the run) in fewer updates.
    epochs = upstream_steps * upstream_batch / len(up_y)
    schedule = UPSTREAM_SCHEDULES["bit-s"].replace(
        batch_size=upstream_batch, image_size=resolution, epochs=epochs, warmup_steps=max(1, upstream_steps // 10),
        decay_epochs=tuple(epochs * f for f in (30 / 90, 60 / 90, 80 / 90)), base_learning_rate=0.1)
    upstream_dir = os.path.join(output, "upstream")
    files.remove(upstream_dir)  # a demo always starts fresh
    tick = time.time()
    keras.utils.set_random_seed(seed)
    print_fn(f"[1/3] Upstream: pre-training {ARCHITECTURE} for {upstream_steps} updates at batch {upstream_batch} "
             f"on {len(up_y)} digits 0-4 (a line every {_every(upstream_steps)} updates) ...")
    result = train(TrainConfig(model_dir=upstream_dir, dataset="digits 0-4", schedule=schedule,
                               block_units=architecture.block_units, width=architecture.width, seed=seed,
                               log_every=_every(upstream_steps), checkpoint_every=upstream_steps,
                               crop_area_min=0.5, shuffle_buffer=len(up_y)),
                   source=from_arrays(up_x, up_y, num_classes=len(UPSTREAM_CLASSES), name="digits 0-4"),
                   log=lambda line: print_fn(f"      {line}") if line.startswith(("step", "warning")) else None)
    done = result.step - result.start_step  # what ran, which a SIGTERM may have cut short
    if result.preempted:
        raise StoppedError(f"Stopped by SIGTERM during pre-training after {done} of {upstream_steps} updates; "
                           "the demo starts afresh when run again.")
    upstream_accuracy = _accuracy(result.model, *up_test, resolution)
    print_fn(f"[1/3] Upstream: {done} updates on {len(up_y)} digits 0-4 in {time.time() - tick:.0f} s; "
             f"held-out accuracy {upstream_accuracy:.1%} (chance 20%)")

    # 2. Export the pre-trained backbone and load it back, as a user of the export would.
    export_dir = os.path.join(output, "export")
    export_model(result.model.backbone, export_dir, overwrite=True,
                 metadata={"variant": ARCHITECTURE, "upstream": "digits 0-4 (bit_keras demo --transfer)"})
    probe = np.random.default_rng(seed).random((2, resolution, resolution, 3), dtype=np.float32)
    expected = np.asarray(result.model.backbone(probe))
    hub_note = _hub_difference(export_dir, probe, expected) if check_hub else "skipped"
    print_fn(f"[2/3] Exported to {export_dir}; hub.KerasLayer {hub_note}")

    # 3. Downstream few-shot: pre-trained export vs random weights, same everything else.
    rows = []
    downstream, _ = from_arrays(down_x, down_y, num_classes=len(DOWNSTREAM_CLASSES), name="digits 5-9")
    for k in shots:
        row = {"examples_per_class": k}
        for label, source in (("pretrained", None), ("random", ARCHITECTURE)):
            print_fn(f"[3/3] {k:>2} per class: fine-tuning from {'the export' if source is None else 'random weights'} "
                     f"({finetune_steps} updates) ...")
            keras.utils.set_random_seed(seed)
            backbone = load_backbone(export_dir, trainable=True) if source is None else source
            ft = build_finetuner(backbone, num_classes=len(DOWNSTREAM_CLASSES), train_size=k * len(DOWNSTREAM_CLASSES),
                                 image_size=(8, 8), batch_size=finetune_batch, steps=finetune_steps,
                                 resolution=resolution, base_learning_rate=learning_rate)
            ft.fit(few_shot(downstream, k, num_classes=len(DOWNSTREAM_CLASSES), seed=seed), verbose=0, seed=seed)
            row[label] = _accuracy(ft.model, *down_test, resolution)  # a SIGTERM in fit raised StoppedError
            row[f"{label}_updates"] = int(np.asarray(ft.model.optimizer.iterations))
        rows.append(row)
        print_fn(f"[3/3] {k:>2} per class: pre-trained {row['pretrained']:.1%}, random {row['random']:.1%}")

    table = {"architecture": ARCHITECTURE, "upstream_task": "digits 0-4", "downstream_task": "digits 5-9",
             "upstream_updates": done, "upstream_accuracy": upstream_accuracy,
             "finetune_updates": finetune_steps, "finetune_batch": finetune_batch, "learning_rate": learning_rate,
             "resolution": resolution, "downstream_test_examples": int(len(down_test[1])), "rows": rows,
             "hub_check": hub_note, "total_seconds": round(time.time() - started, 1)}
    files.write_json(os.path.join(output, "transfer_metrics.json"), table)
    print_fn("")
    print_fn(f"{'k per class':>12} | {'pre-trained':>11} | {'random':>7} | gain")
    for row in rows:
        print_fn(f"{row['examples_per_class']:>12} | {row['pretrained']:>11.1%} | {row['random']:>7.1%} | "
                 f"{100 * (row['pretrained'] - row['random']):+.1f} points")
    print_fn(f"Upstream accuracy on held-out digits 0-4: {upstream_accuracy:.1%}. Downstream: "
             f"{len(down_test[1])} held-out digits 5-9 (chance 20%). Whole demo {table['total_seconds']:.0f} s; "
             f"details in {output}/transfer_metrics.json")
    return table
