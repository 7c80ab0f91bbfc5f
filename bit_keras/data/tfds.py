"""tensorflow-datasets as a source: the builder, preparing it (failing fast offline) and its examples.

`bit_keras.data.sources` (`tfds:NAME`) and `bit_keras.vtab.data` (VTAB's tfds splits) both read
tfds through this module.
"""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request

import numpy as np
import tensorflow as tf
from absl import logging

from bit_keras.data.info import DatasetInfo, typical_size
from bit_keras.errors import ConfigError, MissingFileError, SetupError

PROBE_TIMEOUT = 3.0          # seconds to reach a download host before calling a tfds dataset offline
GENERIC_HOST = ("storage.googleapis.com", 443)  # probed for a tfds dataset that lists no download URL


def tfds_builder(name, data_dir):
    """tfds's builder for `name`; it reads metadata only (no network, no folders made)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own not-found types, with every dataset name listed
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"tensorflow-datasets cannot build {name!r}: {first_line} See tfds.list_builders() "
                         "for names; a config goes after a slash: tfds:NAME/CONFIG.") from None


def not_prepared(name, builder, why):
    return MissingFileError(f"tfds:{name} is not prepared in {builder.data_dir} ({why}). Run `tfds build {name} "
                            "--data_dir DIR` where the network is reachable and pass that data_dir, or use "
                            "folder:PATH or digits.")


def bad_split(name, split, error):
    return ConfigError(f"tfds:{name}: bad split {split!r}: {' '.join(str(error).split())}")


def download_hosts(builder):
    """(host, port) pairs a download needs: the HTTPS proxy if one is set, else the hosts of the dataset's URLs."""
    proxy = urllib.request.getproxies().get("https")
    try:
        urls = [proxy] if proxy else list(builder.url_infos or ())
    except Exception:  # a dataset without a checksums file: tfds cannot list its URLs
        urls = []
    hosts = {(u.hostname, u.port or (443 if u.scheme == "https" else 80))
             for u in map(urllib.parse.urlsplit, urls) if u.hostname}
    return sorted(hosts) or [GENERIC_HOST]


def unreachable(hosts):
    """"host:port" of the first host that takes no connection within PROBE_TIMEOUT, else None.

    Offline, tfds retries its downloads for minutes before failing; this takes seconds.
    """
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
        except OSError:
            return f"{host}:{port}"
    return None


def prepared_builder(name, data_dir, download):
    """tfds's builder for `name`, downloaded and prepared first if asked and needed (fails fast offline)."""
    builder = tfds_builder(name, data_dir)
    if download and not builder.is_prepared():
        # A manual download (imagenet2012) is read from disk: nothing to reach.
        host = None if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else unreachable(download_hosts(builder))
        if host:
            raise not_prepared(name, builder, f"{host} cannot be reached to download it")
        logging.info("tfds:%s is not in %s: downloading and preparing it (needs the network).", name,
                     builder.data_dir)
        try:
            builder.download_and_prepare()
        except Exception as error:
            raise SetupError(f"Could not download and prepare tfds:{name} into {builder.data_dir} ({error}). "
                               "Offline? Prepare it elsewhere and pass data_dir, or use folder:PATH or digits.") from None
    return builder


def load(name, split, data_dir, download):
    """`(dataset, DatasetInfo)` of a tfds split: RGB uint8 images and int64 labels."""
    builder = prepared_builder(name, data_dir, download)
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    if image_key not in info.features or label_key not in info.features:
        raise ConfigError(f"tfds:{name} has no (image, label) pair of features; found {list(info.features)}.")
    label_feature = info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    if not num_classes:
        raise ConfigError(f"tfds:{name} feature {label_key!r} is not a class label; cannot classify.")
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError:  # tfds signals "not prepared" with an assertion
        raise not_prepared(name, builder, "downloads are off: download=False, --no-download") from None
    except ValueError as error:  # an unknown split name, a slice past the split's end
        raise bad_split(name, split, error) from None
    ds = ds.map(lambda example: (to_rgb(example[image_key]), tf.cast(example[label_key], tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE)
    try:
        size = info.splits[split].num_examples
    except (KeyError, ValueError):
        size = None  # metadata without split sizes (e.g. under tfds.testing.mock_data): count
    if not size:
        size = count_examples(ds)
    shape = info.features[image_key].shape
    image_size = tuple(shape[:2]) if None not in shape[:2] else typical_size(ds)
    return ds, DatasetInfo(name=f"tfds:{name}", num_classes=int(num_classes), train_size=int(size),
                           image_size=tuple(int(s) for s in image_size),
                           class_names=tuple(getattr(label_feature, "names", None) or ()))


def to_rgb(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return image if image.dtype == tf.uint8 else tf.image.convert_image_dtype(image, tf.uint8)


def count_examples(ds):
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))
