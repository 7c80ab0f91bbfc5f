"""Dataset specs of `bit_keras finetune --task detection|segmentation`, as tf.data pipelines.

- `shapes` (the offline default): `shapes.synthetic_shapes`, 2048 training images (seed 0) and
  64 test images (seed 1) at the run's resolution; 3 shape classes (4 mask labels).
- `tfds:NAME[/CONFIG]`: detection from `objects/bbox` + `objects/label` (`tfds:coco/2017`,
  `tfds:voc/2012`); segmentation from a `segmentation_mask` feature (needs `num_classes`).
- `coco:IMAGES_DIR,ANNOTATIONS.json`: COCO-format boxes (detection only; bad annotations
  dropped and counted, or refused with `on_bad="refuse"`).
- `masks:IMAGES_DIR,MASKS_DIR`: image/mask folder pairs (segmentation only; needs `num_classes`).

`open_dataset` returns the examples (`bit_keras.dense` conventions); `train_batches` and
`eval_batches` resize them to the run's square resolution (boxes scaled, masks nearest),
flip training images at random (boxes and masks follow), and batch them as keras-hub's
tasks train on: float images in [0, 1] (BiT rescales to [-1, 1] itself).
"""

from __future__ import annotations

import dataclasses

from bit_keras.dense import augment, shapes
from bit_keras.errors import ConfigError

TASKS = ("detection", "segmentation")
SHAPES_SIZES = {"train": 2048, "test": 64}  # synthetic examples per split (2048: a detector from scratch overfits 256)
SHAPES_SEEDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class DenseData:
    examples: object          # a finite tf.data.Dataset of example dicts
    num_classes: int          # detection classes, or mask labels (background included)
    class_names: tuple
    origin: str
    dropped: dict             # reason -> count, for annotations left out
    dropped_named: dict = dataclasses.field(default_factory=dict)  # reason -> the first few, with their file


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"Unknown task {task!r}: choose detection or segmentation (classification is the default "
                          "task of `bit_keras finetune`).")
    return task


def _pair(spec: str, kind: str, example: str):
    body = spec.split(":", 1)[1]
    if body.count(",") != 1 or not all(body.split(",")):
        raise ConfigError(f"A {kind} dataset is named {example}. Received: {spec!r}.")
    return body.split(",")


def open_dataset(spec: str, task: str, split: str = "train", *, num_classes=None, resolution: int = 64,
                 data_dir=None, download: bool = True, on_bad: str = "drop") -> DenseData:
    """The examples of `spec`'s `split` for `task` (see the module docstring)."""
    check_task(task)
    if spec == "shapes":
        size = SHAPES_SIZES.get(split.split("[")[0], SHAPES_SIZES["test"])
        seed = SHAPES_SEEDS.get(split.split("[")[0], 2)
        examples = shapes.synthetic_shapes(size, max(resolution, 2 * shapes.MIN_SIDE), seed=seed)
        keys = ("image", "boxes", "classes") if task == "detection" else ("image", "mask")
        names = shapes.SHAPE_CLASSES if task == "detection" else ("background", *shapes.SHAPE_CLASSES)
        return DenseData(shapes.as_dataset(examples, keys), len(names), names, f"shapes[{split}]", {})
    if spec.startswith("coco:"):
        if task == "segmentation":
            raise ConfigError(f"{spec} holds box annotations, no masks: segmentation needs masks:IMAGES,MASKS "
                              "(image/mask folder pairs) or a tfds dataset with segmentation_mask.")
        from bit_keras.dense.sources import load_coco

        images, annotations = _pair(spec, "COCO", "coco:IMAGES_DIR,ANNOTATIONS.json")
        source = load_coco(images, annotations, on_bad=on_bad)
        return DenseData(source.dataset(), len(source.class_names), source.class_names, spec, source.report,
                         source.named)
    if spec.startswith("masks:"):
        if task == "detection":
            raise ConfigError(f"{spec} holds masks, no boxes: detection needs coco:IMAGES,ANNOTATIONS.json or "
                              "a tfds detection dataset (objects/bbox).")
        if not num_classes:
            raise ConfigError(f"{spec}: mask folders do not say how many labels there are; pass "
                              "num_classes= (background included).")
        from bit_keras.dense.sources import load_mask_folders

        images, masks = _pair(spec, "segmentation", "masks:IMAGES_DIR,MASKS_DIR")
        source = load_mask_folders(images, masks, int(num_classes), on_bad=on_bad)
        return DenseData(source.dataset(), int(num_classes), source.class_names, spec, source.report,
                         source.named)
    if spec.startswith("tfds:"):
        return _tfds(spec, task, split, num_classes=num_classes, data_dir=data_dir, download=download, on_bad=on_bad)
    raise ConfigError(f"Unknown dataset {spec!r} for {task}: use shapes, tfds:NAME (e.g. tfds:coco/2017, "
                      "tfds:voc/2012), coco:IMAGES_DIR,ANNOTATIONS.json or masks:IMAGES_DIR,MASKS_DIR.")


def _tfds(spec, task, split, *, num_classes, data_dir, download, on_bad="drop"):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from bit_keras.dense.sources import (from_tfds, tfds_box_problems, tfds_mask_flags, tfds_mask_problems,
                                         tfds_segmentation_example)

    name = spec[len("tfds:"):]
    try:
        dataset, info = tfds.load(name, split=split, with_info=True, data_dir=data_dir, download=download)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError, ValueError) as error:
        raise ConfigError(f"{spec} [{split}] cannot be loaded: {' '.join(str(error).split())[:200]}") from None
    features = info.features
    if task == "detection":
        objects = features["objects"] if "objects" in features else None
        if objects is None or "bbox" not in objects or "label" not in objects:
            raise ConfigError(f"{spec} has no objects/bbox and objects/label features: not a detection dataset.")
        names = tuple(objects["label"].names)
        origin = f"{spec}[{split}]"
        # One pass over the annotations (images left encoded) names and counts the bad boxes before training.
        annotations = tfds.load(name, split=split, data_dir=data_dir, download=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        problems = tfds_box_problems(annotations, len(names), on_bad=on_bad, origin=origin)
        return DenseData(dataset.map(lambda e: from_tfds(e, num_classes=len(names))), len(names), names, origin,
                         problems.report(), problems.examples())
    if "segmentation_mask" not in features:
        raise ConfigError(f"{spec} has no segmentation_mask feature (it has {', '.join(sorted(features))}): "
                          "segmentation needs masks; use masks:IMAGES_DIR,MASKS_DIR or another dataset.")
    if not num_classes:
        raise ConfigError(f"{spec}: pass num_classes= (mask labels, background included) for its masks.")

    classes = int(num_classes)
    origin = f"{spec}[{split}]"
    # One decoding pass names and counts masks of another size or with unknown labels before training.
    problems = tfds_mask_problems(dataset, classes, on_bad=on_bad, origin=origin)
    good = dataset.map(tfds_segmentation_example).filter(
        lambda e: ~tf.reduce_any(tf.stack(tfds_mask_flags(e, classes))))
    return DenseData(good, classes, tuple(str(i) for i in range(classes)), origin, problems.report(),
                     problems.examples())


def _resized(example, resolution):
    original = _size(example["image"])
    example = augment.resize({k: v for k, v in example.items() if k != "dropped_boxes"}, resolution)
    example["original_size"] = original
    return example


def _size(image):
    import tensorflow as tf

    return tf.cast(tf.shape(image)[:2], tf.float32)


def _inputs(example, task, max_boxes):
    from bit_keras.dense.tasks import detection_inputs, segmentation_inputs

    if task == "detection":
        return detection_inputs(example, max_boxes)
    return segmentation_inputs(example)


def train_batches(data: DenseData, task: str, *, resolution: int, batch_size: int, max_boxes: int = 100,
                  flip: bool = True, seed: int = 0, shuffle: int = 256):
    """Endless batches of (images, targets): resized, flipped at random (seeded), shuffled."""
    import tensorflow as tf

    dataset = data.examples.map(lambda e: _resized(e, resolution), num_parallel_calls=tf.data.AUTOTUNE)
    if data.origin.startswith("shapes"):  # small and generated in Python: kept in memory after one pass
        dataset = dataset.cache()
    dataset = dataset.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True).repeat()
    if flip:
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.random(seed).batch(2)).map(
            lambda e, s: augment.random_horizontal_flip(e, s), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(lambda e: _inputs(e, task, max_boxes), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(data: DenseData, task: str, *, resolution: int, batch_size: int, max_boxes: int = 100):
    """Batches of (images, targets, original [height, width]) in order, each image once."""
    import tensorflow as tf

    def inputs(example):
        size = example["original_size"]
        x, y = _inputs(example, task, max_boxes)
        return x, y, size

    dataset = data.examples.map(lambda e: _resized(e, resolution), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(inputs, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
