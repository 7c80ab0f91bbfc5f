"""What every data source returns beside its examples: `DatasetInfo`."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from bit_keras.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a pipeline and the HyperRule need to know about one split of a dataset."""

    name: str
    num_classes: int
    train_size: int          # examples in the selected split
    image_size: tuple        # typical (height, width): picks the HyperRule's resolution
    class_names: tuple = ()
    skipped: tuple = ()      # (path, reason) of folder files left out: empty, not an image, cut short, a link out
    lost_by_class: tuple = ()  # (class name, files left out, files listed) of each class that lost some


def typical_size(ds, samples=32):
    """Median (height, width) of the first few images: enough to pick the HyperRule's resolution."""
    shapes = np.array([tf.shape(image)[:2].numpy() for image, _ in ds.take(samples)])
    if len(shapes) == 0:
        raise ConfigError("The dataset split is empty.")
    return tuple(int(s) for s in np.median(shapes, axis=0))
