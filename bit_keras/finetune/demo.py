"""`bit_keras demo`: the main job end to end, offline, in a few minutes on 2 CPU cores.

Build a BiT model (released weights when a checkpoint is in the cache, otherwise random
weights, said loudly), export it as a TF-Hub SavedModel, reload it (hub.KerasLayer must give
the same features; fine-tuning goes through `bit_keras.export.load_backbone`), fine-tune it
with the BiT-HyperRule on scikit-learn's 8x8 digits (shipped inside its wheel, so no
download), and print the test accuracy against chance.

Shortened to fit a CPU: the HyperRule's schedule (500 updates at batch 512 for a dataset
this small) is compressed to `steps` updates at batch `batch_size` with warm-up and decays at
the same fractions, and images are cropped to `resolution` px instead of 128.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bit_keras import files

DEFAULT_VARIANT = "r50x1"   # used whenever one of its released checkpoints is in the cache
TINY_VARIANT = "r14x1"      # BiT's ResNet-v2 (GN + WS) with one unit per block: the random-weights default
DEFAULT_STEPS = 100
DEFAULT_BATCH = 64
DEFAULT_RESOLUTION = 32
RANDOM_WEIGHTS_LEARNING_RATE = 0.01  # the HyperRule's rate (0.003 x 64/512) is tuned for BiT features


def run_demo(output="demo_output", *, variant=None, weights=None, steps=DEFAULT_STEPS,
             batch_size=DEFAULT_BATCH, resolution=DEFAULT_RESOLUTION, check_hub=True, print_fn=print) -> dict:
    """Runs the demo and returns its results (also written to OUTPUT/demo_metrics.json).

    `variant=None` picks R50x1 when a released R50x1 checkpoint is cached (real transfer, the
    HyperRule's own learning rate) and otherwise "r14x1", BiT's architecture with one unit per
    block, from random weights: R50x1 from scratch needs ~1-2 s per update here and learns
    little in a few minutes (47.5% after 100 updates, 6 minutes, measured). A named variant
    follows the weights rule of `bit_keras.weights` (a release means its weights).
    """
    from bit_keras import download, presets
    from bit_keras import weights as weights_rule
    from bit_keras.architecture import Architecture
    from bit_keras.data import load_source
    from bit_keras.export import export_model, load_backbone
    from bit_keras.finetune.fine_tuner import build_finetuner

    started = time.time()
    if variant is None and weights is None:
        weights = weights_rule.cached_release(DEFAULT_VARIANT)
        variant = DEFAULT_VARIANT if weights else TINY_VARIANT
    choice = weights_rule.resolve(variant, weights)
    print_fn(f"BiT demo: BiT-{choice.architecture.name.upper()} fine-tuned with the BiT-HyperRule on scikit-learn's "
             f"8x8 digits, offline.")
    if not choice.random:
        print_fn(f"[1/4] Weights: {choice.source}")
    else:
        looked_for = ", ".join(os.path.basename(download.cache_path(p.url, p.filename))
                               for p in presets.presets_for(Architecture.parse(DEFAULT_VARIANT)))
        print_fn(f"[1/4] Weights: NO released BiT checkpoint in {download.cache_dir()} (looked for {looked_for}).\n"
                 f"      Falling back to RANDOM weights: this shows the pipeline working, not BiT's transfer. Put a "
                 f"release .npz there under its name (or pass --weights) for real transfer with R50x1.")
    from bit_keras.backbone import BiTBackbone

    backbone = BiTBackbone.from_weights(choice)
    if choice.random:
        print_fn(f"      Model: {choice.architecture.name}, BiT's ResNet-v2 (GroupNorm + weight standardization), "
                 f"{backbone.count_params() / 1e6:.1f}M parameters"
                 + (", fast enough to train from scratch here." if choice.architecture.name == TINY_VARIANT else
                    f"; from random weights it needs long on 2 CPU cores (without --variant the demo uses {TINY_VARIANT})."))
    path = choice.path
    name = choice.name

    os.makedirs(output, exist_ok=True)
    export_dir = os.path.join(output, "export")
    tick = time.time()
    export_model(backbone, export_dir, overwrite=True, metadata={"variant": name, "weights": path or "random"})
    print_fn(f"[2/4] Exported a Reusable SavedModel (images [B, h, w, 3] in [0, 1] -> {backbone.num_features} "
             f"features) to {export_dir} in {time.time() - tick:.0f} s")

    probe = np.random.default_rng(0).random((2, resolution, resolution, 3), dtype=np.float32)
    expected = np.asarray(backbone(probe))
    hub_note = _hub_difference(export_dir, probe, expected) if check_hub else "skipped"
    reloaded = load_backbone(export_dir, trainable=True)
    reload_diff = float(np.max(np.abs(np.asarray(reloaded(probe)) - expected)))
    print_fn(f"[3/4] Reloaded: hub.KerasLayer {hub_note}; bit_keras.export.load_backbone max |diff| "
             f"{reload_diff:.1e} (fine-tuning goes through this one)")

    train, info = load_source("digits", "train")
    test, test_info = load_source("digits", "test")
    ft = build_finetuner(export_dir, num_classes=info.num_classes, train_size=info.train_size,
                         image_size=info.image_size, batch_size=batch_size, steps=steps, resolution=resolution,
                         base_learning_rate=None if path else RANDOM_WEIGHTS_LEARNING_RATE)
    rule = ft.rule
    print_fn(f"[4/4] Fine-tuning on {info.train_size} digits: HyperRule for {info.train_size} images of "
             f"{info.image_size[0]}x{info.image_size[1]} at batch {batch_size}, shortened to {rule.total_steps} "
             f"updates (warm-up {rule.warmup_steps}, /10 at {list(rule.decay_boundaries)}), crop {rule.crop} px, "
             f"peak learning rate {rule.base_learning_rate:g}"
             + ("" if path else " (raised for random weights)") + ", SGD momentum 0.9, zero head, no weight decay")
    for warning in rule.warnings():
        print_fn(f"      warning: {warning}")
    tick = time.time()
    ft.fit(train, eval_every=max(1, rule.total_steps // 4), verbose=2)
    train_seconds = time.time() - tick
    scores = ft.model.evaluate(ft.eval_dataset(test), verbose=0, return_dict=True)

    updates = int(np.asarray(ft.model.optimizer.iterations))  # what ran (a SIGTERM raises StoppedError in fit)
    result = {"variant": name, "weights": path or "random", "steps": updates,
              "batch_size": batch_size, "resolution": rule.crop, "test_examples": test_info.train_size,
              "test_accuracy": float(scores["accuracy"]), "chance_accuracy": 1.0 / info.num_classes,
              "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
              "hub_check": hub_note, "load_backbone_max_abs_diff": reload_diff}
    files.write_json(os.path.join(output, "demo_metrics.json"), result)
    print_fn(f"Result: test accuracy {result['test_accuracy']:.1%} on {test_info.train_size} held-out digits "
             f"(chance {result['chance_accuracy']:.0%}) after {updates} updates; fine-tuning "
             f"{train_seconds:.0f} s, whole demo {result['total_seconds']:.0f} s. Details: {output}/demo_metrics.json")
    return result


def _hub_difference(export_dir, probe, expected) -> str:
    """Loads the export with tensorflow_hub in a tf-keras model and compares its features."""
    import warnings

    try:
        with warnings.catch_warnings():  # hub 0.16.1's own "pkg_resources is deprecated" notice
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import tensorflow_hub as hub
        import tf_keras
    except ImportError as error:  # tensorflow-hub needs setuptools<81 (pkg_resources)
        return f"not checked ({error})"
    model = tf_keras.Sequential([hub.KerasLayer(export_dir, trainable=False)])
    difference = float(np.max(np.abs(model(probe).numpy() - expected)))
    return f"max |diff| {difference:.1e} vs the Keras model"
