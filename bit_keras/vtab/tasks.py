"""The 19 VTAB-1k tasks as data, following google-research/task_adaptation (`task_adaptation/data/*.py`).

Split slices are VTAB's: train800 / val200 / train800val200 (the 1000 training examples) /
trainval (the full training set) / test. Where VTAB carves its validation split out of
`train` by a percentage of the split's size, the offset is written out here from the tfds
split sizes, so no metadata (and no prepared data) is needed to know the slices. Structured
tasks derive their label from other features with VTAB's own definitions (`label` below).
Versions are VTAB's major ones where this tfds still builds them (Pets: only 4.x, same
splits; KITTI: VTAB pinned 3.1.0, this tfds has 3.3.0). RESISC45 and Diabetic Retinopathy
are manual downloads in tfds.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

GROUPS = ("natural", "specialized", "structured")
PROTOCOLS = {"1k": ("train800val200", "test"),   # VTAB-1k: the 1000 training examples, scored on test
             "val": ("train800", "val200"),       # hyper-parameter work, test untouched
             "full": ("trainval", "test")}        # the whole training set
# The BiT paper's VTAB-1k means over the 19 tasks (Kolesnikov et al. 2020, Table 1); per-task
# and group numbers are left None where we do not have them verbatim, rather than invented.
PUBLISHED_MEAN = {"BiT-S": 66.9, "BiT-M": 70.6, "BiT-L": 76.3}
PUBLISHED_GROUP_MEANS = {group: {name: None for name in PUBLISHED_MEAN} for group in GROUPS}
_FIXED = re.compile(r"^\w+\[(\d*):(\d+)\]$")  # "train[:800]", "train[45000:45200]": a size known without data


@dataclasses.dataclass(frozen=True)
class Task:
    """One VTAB task: where its images come from, how its labels are made, how it is split."""

    name: str
    title: str                # the paper's column name
    group: str
    tfds_name: str            # NAME[/CONFIG]:VERSION as tfds.builder takes it
    num_classes: int
    image_size: tuple         # typical (height, width): what the HyperRule sees
    splits: dict              # VTAB split name -> tfds split expression
    label: Optional[Callable] = None   # example dict -> int label; None: the "label" feature
    image_scale: int = 1      # dSprites stores 0/1 pixels
    published: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(PUBLISHED_MEAN))

    def size(self, split: str):
        """Examples in a VTAB split known from its slices alone (1000 for train800val200); None if data must tell."""
        parts = [fixed_size(part) for part in self.splits[split].split("+")]
        return None if None in parts else sum(parts)


def fixed_size(part: str):
    """Examples a tfds split expression names by absolute bounds ("train[2754:2954]": 200); else None."""
    match = _FIXED.match(part)
    return int(match[2]) - int(match[1] or 0) if match else None


def _validation_split(test="test"):
    """Datasets with their own validation split."""
    return {"train800": "train[:800]", "val200": "validation[:200]",
            "train800val200": "train[:800]+validation[:200]", "trainval": "train+validation", "test": test}


def _carved(train_count, test="test", trainval="train"):
    """Datasets whose validation split starts at `train_count` (VTAB's percentage of `train`)."""
    val200 = f"train[{train_count}:{train_count + 200}]"
    return {"train800": "train[:800]", "val200": val200, "train800val200": f"train[:800]+{val200}",
            "trainval": trainval, "test": test}


def _train_val_test(total, train_pct, val_pct):
    """Datasets with only a train split, cut train / val / test by percentages (EuroSAT, RESISC45, dSprites)."""
    train, val = total * train_pct // 100, total * val_pct // 100
    return _carved(train, test=f"train[{train + val}:]", trainval=f"train[:{train + val}]")


# SmallNORB: VTAB's validation is the first half of test, scored on the second half.
_SMALLNORB = {"train800": "train[:800]", "val200": "test[:200]", "train800val200": "train[:800]+test[:200]",
              "trainval": "train+test[:50%]", "test": "test[50%:]"}


# ------------------------------------------------------------------ label functions (VTAB's)

def clevr_count(example):
    """Objects in the scene minus 3 (CLEVR has 3 to 10): 8 classes."""
    import tensorflow as tf
    return tf.size(example["objects"]["size"]) - 3


def clevr_distance(example):
    """Depth of the closest object, binned at 8, 8.5, 9, 9.5, 10: 6 classes."""
    import tensorflow as tf
    return _bin(tf.reduce_min(example["objects"]["pixel_coords"][:, 2]), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_distance(example):
    """Depth of the closest car, van or truck, binned at 8 m and 20 m; none in view is class 3: 4 classes."""
    import tensorflow as tf
    objects = example["objects"]
    n = tf.minimum(tf.size(objects["type"]), tf.shape(objects["location"])[0])  # equal, except in mock data
    depth = tf.boolean_mask(tf.cast(objects["location"][:n, 2], tf.float32), objects["type"][:n] < 3)
    return _bin(tf.reduce_min(tf.concat([depth, [1000.0]], 0)), [-100.0, 8.0, 20.0, 999.0])


def dsprites_location(example):
    """x position, 32 values grouped in pairs: 16 classes."""
    return _group(example["label_x_position"], 32, 16)


def dsprites_orientation(example):
    """Orientation, 40 values grouped 2.5 at a time: 16 classes."""
    return _group(example["label_orientation"], 40, 16)


def smallnorb_azimuth(example):
    """Camera azimuth: 18 classes."""
    return example["label_azimuth"]


def smallnorb_elevation(example):
    """Camera elevation: 9 classes."""
    return example["label_elevation"]


def _bin(value, edges):
    """Index of the last edge strictly below `value` (VTAB: max(where(edges - value < 0)))."""
    import tensorflow as tf
    return tf.reduce_max(tf.where(tf.constant(np.array(edges, np.float32)) - tf.cast(value, tf.float32) < 0)[:, 0])


def _group(label, original, classes):
    import tensorflow as tf
    return tf.cast(tf.math.floordiv(tf.cast(label, tf.float32), original / classes), tf.int64)


TASKS = (
    Task("caltech101", "Caltech101", "natural", "caltech101:3.*.*", 102, (300, 200), _carved(2754)),
    Task("cifar100", "CIFAR-100", "natural", "cifar100:3.*.*", 100, (32, 32), _carved(45000)),
    Task("dtd", "DTD", "natural", "dtd:3.*.*", 47, (480, 640), _validation_split()),
    Task("oxford_flowers102", "Flowers102", "natural", "oxford_flowers102:2.*.*", 102, (500, 600),
          _validation_split()),
    Task("oxford_iiit_pet", "Pets", "natural", "oxford_iiit_pet:4.*.*", 37, (400, 500), _carved(2944)),
    Task("sun397", "Sun397", "natural", "sun397/tfds:4.*.*", 397, (400, 500), _validation_split()),
    Task("svhn", "SVHN", "natural", "svhn_cropped:3.*.*", 10, (32, 32), _carved(65931)),
    Task("patch_camelyon", "Camelyon", "specialized", "patch_camelyon:2.*.*", 2, (96, 96), _validation_split()),
    Task("eurosat", "EuroSAT", "specialized", "eurosat/rgb:2.*.*", 10, (64, 64), _train_val_test(27000, 60, 20)),
    Task("resisc45", "Resisc45", "specialized", "resisc45:3.*.*", 45, (256, 256), _train_val_test(31500, 60, 20)),
    Task("diabetic_retinopathy", "Retinopathy", "specialized", "diabetic_retinopathy_detection/btgraham-300:3.*.*",
          5, (300, 300), _validation_split()),
    Task("clevr_count", "Clevr-Count", "structured", "clevr:3.*.*", 8, (320, 480),
          _carved(63000, test="validation"), label=clevr_count),
    Task("clevr_distance", "Clevr-Dist", "structured", "clevr:3.*.*", 6, (320, 480),
          _carved(63000, test="validation"), label=clevr_distance),
    Task("dmlab", "DMLab", "structured", "dmlab:2.0.1", 6, (360, 480), _validation_split()),
    Task("kitti_distance", "KITTI-Dist", "structured", "kitti:3.*.*", 4, (375, 1242), _validation_split(),
          label=kitti_distance),
    Task("dsprites_location", "dSpr-Loc", "structured", "dsprites:2.*.*", 16, (64, 64),
          _train_val_test(737280, 80, 10), label=dsprites_location, image_scale=255),
    Task("dsprites_orientation", "dSpr-Ori", "structured", "dsprites:2.*.*", 16, (64, 64),
          _train_val_test(737280, 80, 10), label=dsprites_orientation, image_scale=255),
    Task("smallnorb_azimuth", "sNORB-Azim", "structured", "smallnorb:2.*.*", 18, (96, 96),
          _SMALLNORB, label=smallnorb_azimuth),
    Task("smallnorb_elevation", "sNORB-Elev", "structured", "smallnorb:2.*.*", 9, (96, 96),
          _SMALLNORB, label=smallnorb_elevation),
)
BY_NAME = {task.name: task for task in TASKS}


def select(spec: str = "all") -> tuple:
    """Tasks named by "all", a group, or comma-separated task names, in the paper's order."""
    from bit_keras.errors import ConfigError

    wanted = set()
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        if part == "all":
            wanted.update(BY_NAME)
        elif part in GROUPS:
            wanted.update(t.name for t in TASKS if t.group == part)
        elif part in BY_NAME:
            wanted.add(part)
        else:
            raise ConfigError(f"Unknown VTAB task {part!r}: use all, {', '.join(GROUPS)} or names from "
                              "`bit_keras vtab --list`.")
    if not wanted:
        raise ConfigError("No VTAB tasks selected: use all, a group or task names.")
    return tuple(t for t in TASKS if t.name in wanted)
