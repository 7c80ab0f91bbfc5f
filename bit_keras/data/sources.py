"""Where training images come from: TFDS names, image folders, scikit-learn's digits, arrays.

Every source yields single `(image uint8 [h, w, 3], label int64)` examples plus a
`DatasetInfo` carrying what the HyperRule needs (training-set size, typical image size).
"""

from __future__ import annotations

import concurrent.futures
import os
import re

import numpy as np
import tensorflow as tf

from bit_keras.data import tfds
from bit_keras.data.info import DatasetInfo, typical_size
from bit_keras.errors import ConfigError, MissingFileError, SetupError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM")  # first bytes of those formats
NOT_CLASSES = ("__MACOSX",)  # macOS zip metadata; hidden folders are skipped too
ACCEPTED_SPECS = ("tfds:NAME", "tfds:NAME/CONFIG", "folder:PATH", "digits", "vtab:TASK")
DIGITS_TEST_SIZE = 360
DIGITS_SPLITS = ("train", "test", "all")
SPLIT_SEED = 0  # fixed order for folder/digits splits, so "train[:90%]" and "train[90%:]" are disjoint


def load_source(spec: str, split: str = "train", *, data_dir=None, download=True):
    """`(tf.data.Dataset, DatasetInfo)` for a dataset spec.

    Specs: `tfds:NAME[/CONFIG]` (tensorflow-datasets; `split` may slice, e.g. "train[:90%]"),
    `folder:PATH` (PATH/<class>/*.png, or PATH/<split>/<class>/*), `digits` (scikit-learn's
    bundled 8x8 digits: "train" 1437 images, "test" 360). Folder and digits splits accept
    the same slicing: "train[:90%]", "train[90%:]", "train[:100]"; a slice past the split's
    end, reversed or empty is an error. A TFDS dataset not yet in `data_dir` is downloaded and
    prepared first unless `download=False`; an unreachable download host fails within seconds.
    Folder files that are empty, not images by their first bytes, cut short (they do not end
    as their format does, and do not decode) or links out of PATH are left out, listed in
    `info.skipped` and counted per class in `info.lost_by_class`; a class that loses every
    file is refused. One damaged inside that still fails to decode is dropped while reading,
    with TensorFlow's warning, instead of ending a run.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"A dataset spec must be a non-empty string, one of {', '.join(ACCEPTED_SPECS)}. "
                         f"Received: {spec!r}")
    scheme, _, rest = spec.partition(":")
    if scheme == "tfds" and rest:
        return tfds.load(rest, split, data_dir, download)
    if scheme == "vtab" and rest:  # a VTAB task: its own splits (train800val200, test, ...) and labels
        from bit_keras.vtab.data import load_split

        return load_split(rest, split, data_dir=data_dir, download=download)
    if scheme == "folder" and rest:
        return _load_folder(rest, split)
    if spec == "digits":
        return _load_digits(split)
    raise ConfigError(f"Unknown dataset spec {spec!r}. Accepted forms: {', '.join(ACCEPTED_SPECS)} "
                     "(e.g. tfds:cifar10, tfds:oxford_iiit_pet, folder:/data/flowers, digits).")


def check_split(spec: str, split: str = "train", *, data_dir=None) -> None:
    """Raises what `load_source(spec, split)` would about the spec and the split's name, reading no image.

    Commands call it for every split they will use before building a model or fetching
    weights, so a missing split is refused in seconds. A tfds split is checked only when the
    dataset is prepared (its split names are known only then); vtab tasks check their own.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"A dataset spec must be a non-empty string, one of {', '.join(ACCEPTED_SPECS)}. "
                          f"Received: {spec!r}")
    scheme, _, rest = spec.partition(":")
    base = _parse_split(split)[0] if scheme != "tfds" else None
    if scheme == "folder" and rest:
        _folder_layout(os.path.expanduser(rest), split)
    elif spec == "digits":
        if base not in DIGITS_SPLITS:
            raise ConfigError(f"digits has splits 'train' (1437), 'test' (360) and 'all'. Received: split={split!r}")
    elif scheme == "tfds" and rest:
        builder = tfds.tfds_builder(rest, data_dir)
        name = split.partition("[")[0].strip() if isinstance(split, str) else split
        if builder.is_prepared() and name not in builder.info.splits:
            raise ConfigError(f"tfds:{rest} has no split {name!r}; it has {', '.join(sorted(builder.info.splits))}.")
    elif scheme != "vtab" or not rest:
        raise ConfigError(f"Unknown dataset spec {spec!r}. Accepted forms: {', '.join(ACCEPTED_SPECS)} "
                          "(e.g. tfds:cifar10, tfds:oxford_iiit_pet, folder:/data/flowers, digits).")


def from_arrays(images, labels, *, num_classes=None, name="arrays"):
    """`(tf.data.Dataset, DatasetInfo)` for in-memory uint8 images [N, h, w(, 1|3)] and integer labels [N]."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError("images must have shape [N, height, width], [N, height, width, 1] or "
                         f"[N, height, width, 3]. Received: shape {images.shape}")
    if images.dtype != np.uint8:
        raise ConfigError(f"images must be uint8 in [0, 255]. Received: dtype {images.dtype}; convert floats "
                         "in [0, 1] with (images * 255).round().astype('uint8')")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ConfigError(f"labels must have shape [N] with N = {images.shape[0]} (one per image). "
                         f"Received: shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be integer class indices. Received: dtype {labels.dtype}")
    if images.shape[0] == 0:
        raise ConfigError("images is empty: need at least one example.")
    if labels.min() < 0:
        raise ConfigError(f"labels must be >= 0. Received: min label {labels.min()}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ConfigError(f"labels must be < num_classes={num_classes}. Received: max label {labels.max()}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64)))
    info = DatasetInfo(name=name, num_classes=num_classes, train_size=int(images.shape[0]),
                       image_size=tuple(int(s) for s in images.shape[1:3]),
                       class_names=tuple(str(i) for i in range(num_classes)))
    return ds, info


# ---------------------------------------------------------------------------- splits

_SLICE = re.compile(r"^(?P<base>[\w-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def _parse_split(split: str):
    """(name, start, stop) for "train", "train[:90%]", "train[100:]"... (the subset of tfds slicing we need)."""
    match = _SLICE.match(split.replace(" ", "")) if isinstance(split, str) else None
    if not match:
        raise ConfigError(f"Bad split {split!r}: use a name with an optional slice, e.g. 'train', "
                         "'train[:90%]', 'train[90%:]', 'test[:100]'.")
    return match["base"], match["start"], match["stop"]


def _bound(text, n):
    if text is None:
        return None
    if text.endswith("%"):
        return round(int(text[:-1]) * n / 100)
    return int(text)


def _slice_items(items, start, stop, split, where):
    """items[start:stop]; like tfds, a slice that is reversed, empty or reaches past the split is an error."""
    n = len(items)
    lo, hi = _bound(start, n), _bound(stop, n)
    lo = 0 if lo is None else lo + n if lo < 0 else lo
    hi = n if hi is None else hi + n if hi < 0 else hi
    if not 0 <= lo < hi <= n:
        base = split.partition("[")[0]
        raise ConfigError(f"Split {split!r} does not fit {where}: {base!r} has {n} examples; slice within them, "
                         f"start before stop (e.g. '{base}[:90%]', '{base}[:{max(n // 2, 1)}]').")
    return items[lo:hi]


def split_size(spec: str, split: str = "train", *, data_dir=None):
    """Examples in `split` without downloading or preparing anything (a schedule's dry run).

    None for a tfds dataset that is not prepared in `data_dir`: tfds knows split sizes only
    from prepared data. Folder and digits sources are listed as `load_source` lists them.
    """
    scheme, _, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if scheme != "tfds" or not name:
        return load_source(spec, split)[1].train_size
    builder = tfds.tfds_builder(name, data_dir)
    if not builder.is_prepared():
        return None
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as error:
        raise tfds.bad_split(name, split, error) from None


# ---------------------------------------------------------------------------- folders

def _inside(path, root):
    """Whether `path`, links resolved, stays in the dataset folder `root` (resolved): links out are not followed."""
    return os.path.realpath(path).startswith(os.path.join(root, ""))


def _subdirs(directory, root):
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith(".")
                  and entry.name not in NOT_CLASSES and _inside(entry.path, root))


def _images_in(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _classes(directory, root):
    """Sub-folders holding image files: an empty folder is not a class."""
    return [d for d in _subdirs(directory, root) if _images_in(os.path.join(directory, d))]


def _problem(path, root):
    """Why a listed file cannot be an image, from its first bytes (cheap, unlike decoding); None if it may be."""
    if not _inside(path, root):
        return "a link out of the dataset folder"
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError as error:
        return f"unreadable: {error.strerror}"
    if not head:
        return "empty"
    if not head.startswith(IMAGE_MAGIC):
        return "not a JPEG, PNG, GIF or BMP image"
    if _ends_whole(path, head):
        return None
    try:  # an odd ending is not proof (a JPEG may carry trailing bytes): only a failed decode is
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError):
        return "cut short or damaged: it does not decode"
    return None


def _ends_whole(path, head) -> bool:
    """Whether the file ends as a complete image of its format does (cheap: its last bytes, or its stated size)."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        stream.seek(max(0, size - 16))
        tail = stream.read()
    if head.startswith(b"\x89PNG"):
        return tail.endswith(b"IEND\xaeB`\x82")
    if head.startswith(b"\xff\xd8\xff"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith(b"GIF"):
        return tail.endswith(b";")
    return size >= int.from_bytes(head[2:6], "little")  # BMP: its header states the file size


def _load_folder(path, split):
    path = os.path.expanduser(path)
    base, start, stop = _parse_split(split)
    class_names, root, real = _folder_layout(path, split)
    present = set(_subdirs(root, real))
    listed = [(file, label) for label, name in enumerate(class_names) if name in present
              for file in _images_in(os.path.join(root, name))]
    if not listed:
        raise MissingFileError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r} in "
                                "one sub-folder per class.")
    if len(class_names) < 2:
        raise ConfigError(f"{path!r} has one class folder ({class_names[0]!r}); classification needs two or more: "
                         "PATH/<class>/*.jpg.")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # opening files is latency-bound on network disks
        problems = list(pool.map(lambda item: _problem(item[0], real), listed))
    skipped = tuple((file, why) for (file, _), why in zip(listed, problems) if why)
    items = [item for item, why in zip(listed, problems) if not why]
    if not items:
        raise MissingFileError(f"None of the {len(listed)} image files under {root!r} can be read as an image "
                                f"({skipped[0][0]}: {skipped[0][1]}).")
    lost = _lost_by_class(listed, problems, class_names)
    emptied = [(name, count) for name, count, of in lost if count == of]
    if emptied:
        example = next((file, why) for file, why in skipped if os.path.basename(os.path.dirname(file)) == emptied[0][0])
        raise ConfigError(f"Class folder(s) under {root!r} with no readable image left: "
                          + ", ".join(f"{name!r} (all {count} files)" for name, count in emptied)
                          + f"; e.g. {example[0]}: {example[1]}. Replace the files, or remove the class "
                          "folder from every split.")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(items))
    items = _slice_items([items[i] for i in order], start, stop, split, f"folder:{path}")
    files, labels = zip(*items)
    ds = tf.data.Dataset.from_tensor_slices((list(files), np.array(labels, np.int64)))
    ds = ds.map(lambda file, label: (_decode(file), label), num_parallel_calls=tf.data.AUTOTUNE)
    # A file damaged inside while it ends whole can still fail to decode: drop it, with
    # TensorFlow's warning, rather than end a run hours in.
    ds = ds.ignore_errors(log_warning=True)
    return ds, DatasetInfo(name=f"folder:{path}", num_classes=len(class_names), train_size=len(items),
                           image_size=typical_size(ds, samples=16), class_names=tuple(class_names),
                           skipped=skipped, lost_by_class=tuple(entry for entry in lost if entry[1]))


def _folder_layout(path, split):
    """(class names, folder of the split, resolved PATH): listing folders only, no image is opened."""
    if not os.path.isdir(path):
        raise MissingFileError(f"Image folder {path!r} does not exist. Expected PATH/<class>/*.jpg "
                                "or PATH/<split>/<class>/*.jpg.")
    base = _parse_split(split)[0]
    real = os.path.realpath(path)
    top = _subdirs(path, real)
    splits = [d for d in top if _subdirs(os.path.join(path, d), real)]
    if splits and not any(_images_in(os.path.join(path, d)) for d in top):
        # PATH/<split>/<class>/...: labels are the union of class folders over all splits,
        # so train and test agree on every class index.
        if base not in splits:
            raise MissingFileError(f"{path!r} has split folders {splits} but no {base!r}.")
        class_names = sorted({c for d in splits for c in _classes(os.path.join(path, d), real)})
        root = os.path.join(path, base)
    else:
        if base != "train":
            raise ConfigError(f"{path!r} has no split sub-folders, so its only split is 'train' (all images); "
                             f"slice it for evaluation, e.g. 'train[90%:]'. Received: split={split!r}")
        class_names = _classes(path, real)
        root = path
    return class_names, root, real


def _lost_by_class(listed, problems, class_names):
    """(class name, files left out, files listed) for every class with files in this split."""
    counts = {}
    for (_, label), why in zip(listed, problems):
        lost, of = counts.get(label, (0, 0))
        counts[label] = (lost + bool(why), of + 1)
    return [(class_names[label], lost, of) for label, (lost, of) in sorted(counts.items())]


def _decode(file):
    image = tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# ---------------------------------------------------------------------------- digits

def _load_digits(split):
    """scikit-learn's 8x8 digits (inside its wheel, so offline): a fixed 1437/360 train/test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SetupError("The 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    base, start, stop = _parse_split(split)
    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
    parts = {"train": order[DIGITS_TEST_SIZE:], "test": order[:DIGITS_TEST_SIZE], "all": order}
    if base not in parts:
        raise ConfigError(f"digits has splits 'train' (1437), 'test' (360) and 'all'. Received: split={split!r}")
    index = _slice_items(parts[base], start, stop, split, "digits")
    gray = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    ds, _ = from_arrays(images, digits.target[index], num_classes=10)
    return ds, DatasetInfo(name="digits", num_classes=10, train_size=len(index), image_size=(8, 8),
                           class_names=tuple(str(i) for i in range(10)))
