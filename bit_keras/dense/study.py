"""The pieces of the dense normalization study (`benchmarks/dense_normalization.py`).

Five backbones that differ only in normalization -- BiT's GroupNorm + weight
standardization (GN+WS), GN, BatchNorm (BN), BN+WS and frozen BN -- are pre-trained on a
classification task at a large batch (as on ImageNet), then fine-tuned as a RetinaNet
detector and a DeepLabV3 segmenter on `shapes.synthetic_shapes` at 1, 2 or 8 images per
micro-batch. Every setting makes the same updates of `update_batch` images (Keras'
`gradient_accumulation_steps`), so the only thing the micro-batch changes is the batch
that BatchNorm takes its statistics from -- what a replica holding that many images sees.

- "frozen BN" is the BN-pre-trained backbone with every BatchNormalization layer frozen
  for fine-tuning (`trainable=False`: Keras then runs it in inference mode with its fixed
  moving statistics, and gamma/beta do not train): the per-channel affine layer detection
  codebases make of BatchNorm.
- keras-hub's DeepLabV3 head has BatchNorm layers of its own (ASPP, decoder, head); they are
  frozen at their initial identity for every backbone (`freeze_head_batch_norm`), so that
  only the backbone's normalization sees the micro-batch. keras-hub's RetinaNet head and
  FPN have no normalization (`use_prediction_head_norm=False`, no FPN BatchNorm).
"""

from __future__ import annotations

import time

import numpy as np

from bit_keras.errors import ConfigError

# name -> (normalization, weight_standardization, BatchNorm frozen while fine-tuning)
VARIANTS = {
    "GN+WS": ("group", True, False),
    "GN": ("group", False, False),
    "BN": ("batch", False, False),
    "BN+WS": ("batch", True, False),
    "frozen BN": ("batch", False, True),
}
NUM_CLASSES = 3          # rectangle, ellipse, triangle (detection); +1 background for segmentation
MAX_BOXES = 3


def check_variants(names) -> list:
    names = list(names)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise ConfigError(f"Unknown backbone variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
    return names


def pretraining_family(variant: str) -> str:
    """The backbone a variant starts from: frozen BN fine-tunes the BN-pre-trained one."""
    normalization, standardized, _ = VARIANTS[variant]
    return {"group": "GN", "batch": "BN"}[normalization] + ("+WS" if standardized else "")


def batch_norm_layers(model) -> list:
    """Every keras BatchNormalization layer inside `model`, nested ones included."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def freeze_batch_norm(layers) -> list:
    """Inference mode with fixed moving statistics and fixed gamma/beta; returns the names."""
    for layer in layers:
        layer.trainable = False
    return [layer.name for layer in layers]


def build_backbone(variant: str, block_units=(1, 1, 1, 1), width: int = 1):
    from bit_keras.backbone import BiTBackbone

    normalization, standardized, _ = VARIANTS[variant]
    return BiTBackbone(tuple(block_units), width, normalization=normalization,
                       weight_standardization=standardized)


def detection_arrays(examples):
    """images float32 [n, h, w, 3] in [0, 1]; {"boxes": [n, MAX_BOXES, 4], "labels": [n, MAX_BOXES]}
    padded with -1 (as `tasks.detection_inputs`, without tf.data)."""
    images = np.stack([e["image"] for e in examples]).astype("float32") / 255.0
    boxes = np.full((len(examples), MAX_BOXES, 4), -1.0, "float32")
    labels = np.full((len(examples), MAX_BOXES), -1.0, "float32")
    for i, example in enumerate(examples):
        count = min(len(example["classes"]), MAX_BOXES)
        boxes[i, :count] = example["boxes"][:count]
        labels[i, :count] = example["classes"][:count]
    return images, {"boxes": boxes, "labels": labels}


def presence(examples) -> np.ndarray:
    """Multi-hot [n, NUM_CLASSES]: which shape classes an image holds (the pre-training target)."""
    targets = np.zeros((len(examples), NUM_CLASSES), "float32")
    for i, example in enumerate(examples):
        targets[i, np.asarray(example["classes"], int)] = 1.0
    return targets


def image_order(count: int, images: int, seed: int) -> np.ndarray:
    """`images` indices into `count` examples: seeded permutations one after another."""
    rng = np.random.default_rng(seed)
    epochs = -(-images // count)
    return np.concatenate([rng.permutation(count) for _ in range(epochs)])[:images]


def pretrain(family: str, examples, test_examples, *, updates: int, batch: int, seed: int, lr: float,
             block_units=(1, 1, 1, 1), width: int = 1) -> dict:
    """Pre-trains a backbone of `family` (a VARIANTS key without frozen BN) on which shapes an
    image holds (multi-label), at `batch` images per step; returns its weights and scores."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = build_backbone(family, block_units, width)
    model = keras.Model(backbone.input, keras.layers.Dense(NUM_CLASSES, name="presence")(backbone.output))
    # No XLA anywhere: compiling each model would cost more than these short runs.
    model.compile(keras.optimizers.Adam(lr), keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=False)
    order = image_order(len(examples), updates * batch, seed)
    images = np.stack([e["image"] for e in examples]).astype("float32") / 255.0
    start = time.perf_counter()
    history = model.fit(images[order], presence(examples)[order], batch_size=batch, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    test_images = np.stack([e["image"] for e in test_examples]).astype("float32") / 255.0
    logits = model.predict(test_images, batch_size=32, verbose=0)
    exact = float(np.mean(np.all((logits > 0) == (presence(test_examples) > 0), axis=-1)))
    return {"family": family, "weights": backbone.get_weights(), "loss": float(history.history["loss"][-1]),
            "test_exact_match": exact, "seconds": seconds}


def build_task(task: str, backbone, *, head_conv_layers: int = 1):
    """keras-hub's RetinaNet (P3-P5, anchors of 8-50 px for the 6-32 px shapes; keras-hub's
    label encoder, IoU >= 0.5 positive) or DeepLabV3 (ASPP on P5, low-level P2, head
    BatchNorm frozen)."""
    from bit_keras.dense.tasks import build_detector, build_segmenter

    if task == "detection":  # anchors of 8-32 px for 6-32 px shapes
        return build_detector(backbone, NUM_CLASSES, min_level=3, max_level=5, head_conv_layers=head_conv_layers,
                              anchor_size=1, max_detections=20)
    if task == "segmentation":
        segmenter = build_segmenter(backbone, NUM_CLASSES + 1, output_level=5, low_level=2, dilation_rates=(1,))
        freeze_head_batch_norm(segmenter, backbone)
        return segmenter
    raise ConfigError(f"Unknown task {task!r}; choose detection or segmentation.")


def freeze_head_batch_norm(model, backbone) -> list:
    """Freezes the BatchNorm layers of `model` outside `backbone` (keras-hub's DeepLabV3 head)."""
    own = {id(layer) for layer in batch_norm_layers(backbone)}
    return freeze_batch_norm([layer for layer in batch_norm_layers(model) if id(layer) not in own])


def finetune(task: str, variant: str, pretrained: dict, train_examples, test_examples, *, batch: int,
             update_batch: int, updates: int, seed: int, lr: float, block_units=(1, 1, 1, 1), width: int = 1,
             head_conv_layers: int = 1, keep_model: bool = False) -> dict:
    """Fine-tunes `variant` from its family's pre-trained weights for `task` with `updates`
    updates of `update_batch` images in micro-batches of `batch`; scores it on `test_examples`
    (detection: pycocotools AP; segmentation: mean IoU) with the inference network."""
    import keras
    import tensorflow as tf

    from bit_keras.dense.metrics import SegmentationScores, coco_map
    from bit_keras.dense.tasks import compile_segmenter, detections_per_image

    if update_batch % batch:
        raise ConfigError(f"The micro-batch ({batch}) must divide the update batch ({update_batch}).")
    if pretrained["family"] != pretraining_family(variant):
        raise ConfigError(f"{variant} fine-tunes the {pretraining_family(variant)} backbone, "
                          f"not {pretrained['family']}.")
    keras.utils.set_random_seed(seed)
    backbone = build_backbone(variant, block_units, width)
    backbone.set_weights(pretrained["weights"])
    model = build_task(task, backbone, head_conv_layers=head_conv_layers)
    if VARIANTS[variant][2]:
        freeze_batch_norm(batch_norm_layers(backbone))
    accumulation = update_batch // batch
    optimizer = keras.optimizers.Adam(lr, gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    order = image_order(len(train_examples), updates * update_batch, seed)
    if task == "detection":
        model.compile(optimizer=optimizer, steps_per_execution=accumulation, jit_compile=False)
        x, y = detection_arrays(train_examples)
        y = {key: value[order] for key, value in y.items()}
    else:
        compile_segmenter(model, optimizer, steps_per_execution=accumulation, jit_compile=False)
        x = np.stack([e["image"] for e in train_examples]).astype("float32") / 255.0
        y = np.stack([e["mask"] for e in train_examples]).astype("int32")[order][..., None]
    data = tf.data.Dataset.from_tensor_slices((x[order], y)).batch(batch)
    start = time.perf_counter()
    history = model.fit(data, verbose=0)
    seconds = time.perf_counter() - start
    if int(optimizer.iterations.numpy()) != updates:
        raise RuntimeError(f"{int(optimizer.iterations.numpy())} updates made, {updates} planned.")
    test_images = np.stack([e["image"] for e in test_examples]).astype("float32") / 255.0
    losses = [float(v) for v in history.history["loss"]]
    result = {"task": task, "variant": variant, "batch": batch, "seed": seed, "updates": updates,
              "train_loss": losses[-1], "seconds": round(seconds, 2)}
    if task == "detection":
        predictions = detections_per_image(model.predict(test_images, batch_size=32, verbose=0))
        result["score"] = coco_map(test_examples, predictions, num_classes=NUM_CLASSES)["AP"]
    else:
        scores = SegmentationScores(NUM_CLASSES + 1)
        logits = model.predict(test_images, batch_size=32, verbose=0)
        scores.update(np.stack([e["mask"] for e in test_examples]), np.argmax(logits, -1))
        result["score"] = scores.result()["mean_iou"]
    if not np.isfinite(result["score"]):
        result["score"] = 0.0  # a diverged network detects nothing
    if keep_model:
        result["model"], result["backbone"] = model, backbone
    return result
