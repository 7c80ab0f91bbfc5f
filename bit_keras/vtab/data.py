"""A VTAB task's examples: tfds splits sliced as VTAB slices them, labels made by the task's label function.

`load_split("clevr_count", "train800val200")` is what `load_source("vtab:clevr_count", ...)`
returns, so `finetune(dataset="vtab:NAME", train_split=..., eval_split=...)` runs a task.
Each `+` part of a split is cut to the size its slice names with `take`: a no-op on prepared
data, and what keeps the counts exact under `tfds.testing.mock_data`, which ignores slices.
"""

from __future__ import annotations

import os

import tensorflow as tf

from bit_keras.data.info import DatasetInfo
from bit_keras.data.tfds import bad_split, count_examples, not_prepared, prepared_builder, tfds_builder, to_rgb
from bit_keras.errors import ConfigError, MissingFileError
from bit_keras.vtab.tasks import BY_NAME, PROTOCOLS, Task, fixed_size


def task_data(task, protocol="1k", *, data_dir=None, download=True):
    """(train_ds, eval_ds, train info) for a task under a protocol ("1k", "val" or "full")."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown VTAB protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}.")
    train_split, eval_split = PROTOCOLS[protocol]
    train_ds, info = load_split(task, train_split, data_dir=data_dir, download=download)
    return train_ds, load_split(task, eval_split, data_dir=data_dir, download=download)[0], info


def load_split(task, split, *, data_dir=None, download=True):
    """(dataset of (RGB uint8 image, int64 label), DatasetInfo) for one VTAB split of a task."""
    task = _task(task)
    if split not in task.splits:
        raise ConfigError(f"vtab:{task.name} has splits {', '.join(task.splits)}. Received: split={split!r}")
    name = task.tfds_name
    _check_manual_download(name, data_dir, download)
    builder = prepared_builder(name, data_dir, download)
    parts, size = [], 0
    for part in task.splits[split].split("+"):
        try:
            ds = builder.as_dataset(split=part, shuffle_files=False)
        except AssertionError:  # tfds signals "not prepared" with an assertion
            raise not_prepared(name, builder, "downloads are off: download=False, --no-download") from None
        except ValueError as error:
            raise bad_split(name, part, error) from None
        count = fixed_size(part)
        if count is not None:
            ds = ds.take(count)
        else:
            count = _known_size(builder, part)
        parts.append(ds)
        size += count if count is not None else count_examples(ds)
    ds = parts[0]
    for more in parts[1:]:
        ds = ds.concatenate(more)
    ds = ds.map(lambda example: _example(task, example), num_parallel_calls=tf.data.AUTOTUNE)
    return ds, DatasetInfo(name=f"vtab:{task.name}", num_classes=task.num_classes, train_size=size,
                           image_size=task.image_size, class_names=tuple(str(i) for i in range(task.num_classes)))


def _task(task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in BY_NAME:
        raise ConfigError(f"Unknown VTAB task {task!r}; `bit_keras vtab --list` names the 19.")
    return BY_NAME[task]


def _example(task, example):
    image = example["image"]
    if task.image_scale != 1:  # dSprites' 0/1 pixels (min: stays a picture under mock data too)
        image = tf.minimum(image, 1) * task.image_scale
    label = task.label(example) if task.label else example["label"]
    return to_rgb(image), tf.cast(label, tf.int64)


def _known_size(builder, part):
    """Examples in a split expression from tfds' metadata; None where it has none (mock data)."""
    try:
        return int(builder.info.splits[part].num_examples) or None
    except (KeyError, ValueError, TypeError):
        return None


def _check_manual_download(name, data_dir, download):
    """One line naming the folder for a dataset tfds cannot download (Diabetic Retinopathy)."""
    builder = tfds_builder(name, data_dir)
    if not download or not builder.MANUAL_DOWNLOAD_INSTRUCTIONS or builder.is_prepared():
        return
    import tensorflow_datasets as tfds

    root = data_dir or tfds.core.constants.DATA_DIR
    manual = os.path.join(os.path.expanduser(root), "downloads", "manual")
    if not os.path.isdir(manual) or not os.listdir(manual):
        raise MissingFileError(f"tfds:{name} cannot be downloaded by tfds: put its files (see "
                               f"tfds' page for {name.split(':')[0]}) in {manual}, then run again.")
