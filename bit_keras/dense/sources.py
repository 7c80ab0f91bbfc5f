"""Detection and segmentation data the way people have it.

- `coco:IMAGES_DIR,ANNOTATIONS.json`: a folder of images with COCO-format box annotations.
- tfds detection datasets (`objects/bbox`: normalized `[ymin, xmin, ymax, xmax]`,
  `objects/label`): `from_tfds` maps them to our pixel-box examples.
- Segmentation: an images folder and a masks folder paired by file stem (`a.jpg` with `a.png`).

Bad annotations are never trained on silently: each is named with its file and either
refused (`on_bad="refuse"`, a ConfigError) or dropped and counted (`on_bad="drop"`, the
counts in `report` and logged once).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np
from absl import logging

from bit_keras.dense import IGNORE_LABEL
from bit_keras.errors import ConfigError, MissingFileError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MASK_EXTENSIONS = (".png", ".bmp", ".gif")  # lossless: a JPEG mask has invented labels at edges
BOX_TOLERANCE = 1.0  # pixels a box may overhang the image (rounding in exported annotations); clipped
ON_BAD = ("drop", "refuse")
EXAMPLES_NAMED = 3  # bad annotations named in a drop summary


@dataclasses.dataclass
class DenseSource:
    """Examples that passed the checks, what they mean, and what was dropped."""

    examples: list            # detection: {"file", "boxes", "classes"}; segmentation: {"file", "mask_file"}
    class_names: tuple
    report: dict              # reason -> count of dropped annotations/examples
    origin: str               # what the user named (for messages)
    named: dict = dataclasses.field(default_factory=dict)  # reason -> the first few, named with their file

    def dataset(self):
        """A tf.data.Dataset of decoded examples (uint8 image, and boxes+classes or int32 mask)."""
        import tensorflow as tf

        if self.examples and "mask_file" in self.examples[0]:
            files = tf.data.Dataset.from_tensor_slices(
                ([e["file"] for e in self.examples], [e["mask_file"] for e in self.examples]))
            return files.map(lambda image, mask: {"image": _decode(image, 3),
                                                  "mask": tf.cast(_decode(mask, 1)[..., 0], tf.int32)})
        boxes = tf.ragged.constant([e["boxes"].tolist() for e in self.examples], dtype=tf.float32,
                                   ragged_rank=1, inner_shape=(4,))
        classes = tf.ragged.constant([e["classes"].tolist() for e in self.examples], dtype=tf.int32)
        files = [e["file"] for e in self.examples]
        return tf.data.Dataset.from_tensor_slices((files, boxes, classes)).map(
            lambda file, box, label: {"image": _decode(file, 3), "boxes": box, "classes": label})


def _decode(path, channels):
    import tensorflow as tf

    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


class _Problems:
    """Collects bad annotations; refuses the first or counts them all."""

    def __init__(self, on_bad: str, origin: str):
        if on_bad not in ON_BAD:
            raise ConfigError(f"on_bad must be one of {ON_BAD}. Received: on_bad={on_bad!r}.")
        self.on_bad, self.origin = on_bad, origin
        self.counts, self.named = collections.Counter(), collections.defaultdict(list)

    def add(self, reason: str, where: str):
        if self.on_bad == "refuse":
            raise ConfigError(f"{self.origin}: {where}: {reason}. Fix the annotation, or pass on_bad='drop' "
                              "to leave such annotations out (they are counted).")
        self.counts[reason] += 1
        if len(self.named[reason]) < EXAMPLES_NAMED:
            self.named[reason].append(where)

    def report(self) -> dict:
        for reason, count in self.counts.items():
            logging.warning("%s: dropped %d annotation(s): %s (e.g. %s)", self.origin, count, reason,
                            "; ".join(self.named[reason]))
        return dict(self.counts)

    def examples(self) -> dict:
        """reason -> the first EXAMPLES_NAMED bad annotations, named with their file."""
        return {reason: list(names) for reason, names in self.named.items()}


def parse_spec(spec: str):
    """`coco:IMAGES_DIR,ANNOTATIONS.json` -> (images_dir, annotations_file)."""
    if not spec.startswith("coco:") or spec.count(",") != 1:
        raise ConfigError(f"A COCO dataset is named coco:IMAGES_DIR,ANNOTATIONS.json. Received: {spec!r}.")
    images, annotations = spec[len("coco:"):].split(",")
    return images, annotations


def _image_size(path):
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.height, image.width


def load_coco(images_dir, annotations_file, on_bad: str = "drop", check_image_sizes: bool = True) -> DenseSource:
    """Reads COCO-format box annotations; classes become 0..K-1 in category-id order.

    Refused outright: a missing folder or file, JSON without images/annotations/categories,
    an image listed but absent. Per annotation (dropped and counted, or refused): unknown
    image id, unknown category id, degenerate box (width or height <= 0), box outside the
    image (overhang above BOX_TOLERANCE px; a smaller overhang is clipped). Crowd annotations
    (`iscrowd: 1`) are not training targets: left out and counted. With `check_image_sizes`,
    each image's real size must equal the JSON's width/height (headers only are read).
    """
    images_dir, annotations_file = os.fspath(images_dir), os.fspath(annotations_file)
    if not os.path.isdir(images_dir):
        raise MissingFileError(f"COCO images folder {images_dir} does not exist.")
    if not os.path.isfile(annotations_file):
        raise MissingFileError(f"COCO annotations file {annotations_file} does not exist.")
    try:
        with open(annotations_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{annotations_file} is not JSON ({error}).") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if not isinstance(data, dict) or missing:
        raise ConfigError(f"{annotations_file} is not COCO-format: no list of {', '.join(missing)}.")
    if not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in data["categories"]):
        raise ConfigError(f"{annotations_file}: every category needs an integer id.")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: index for index, c in enumerate(categories)}
    problems = _Problems(on_bad, annotations_file)
    if not data["images"]:
        raise ConfigError(f"{annotations_file} lists no images.")
    images = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise ConfigError(f"{annotations_file}: an image entry without id or file_name: {str(entry)[:80]}.")
        path = os.path.join(images_dir, entry["file_name"])
        if not os.path.isfile(path):
            raise MissingFileError(f"{annotations_file}: image id {entry['id']} is {path}, which does not exist.")
        size = (entry.get("height"), entry.get("width"))
        if check_image_sizes or None in size:
            real = _image_size(path)
            if None not in size and tuple(size) != real:
                raise ConfigError(f"{annotations_file}: image {entry['file_name']} is {real[0]}x{real[1]} px but "
                                  f"the annotations say {size[0]}x{size[1]}; fix its height/width.")
            size = real
        images[entry["id"]] = {"file": path, "name": entry["file_name"], "size": size, "boxes": [], "classes": []}
    for annotation in data["annotations"]:
        image = images.get(annotation.get("image_id"))
        where = f"annotation {annotation.get('id')}"
        if image is None:
            problems.add("unknown image id", f"{where} (image id {annotation.get('image_id')})")
            continue
        where = f"{where} of {image['name']}"
        if annotation.get("category_id") not in class_of:
            problems.add("unknown category id", f"{where} (category {annotation.get('category_id')})")
            continue
        if annotation.get("iscrowd", 0):
            problems.add("crowd region (not a training target)", where)
            continue
        box = _checked_box(annotation.get("bbox"), image["size"], where, problems)
        if box is not None:
            image["boxes"].append(box)
            image["classes"].append(class_of[annotation["category_id"]])
    examples = [{"file": image["file"], "boxes": np.asarray(image["boxes"], np.float32).reshape(-1, 4),
                 "classes": np.asarray(image["classes"], np.int32)} for image in images.values()]
    names = tuple(str(c.get("name", c["id"])) for c in categories)
    return DenseSource(examples, names, problems.report(), f"coco:{images_dir},{annotations_file}",
                       problems.examples())


def _checked_box(bbox, size, where, problems):
    """COCO [x, y, w, h] -> [ymin, xmin, ymax, xmax] pixels, or None (counted) when bad."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(np.isfinite(bbox)):
        problems.add("malformed bbox", f"{where} (bbox {bbox})")
        return None
    x, y, width, height = (float(v) for v in bbox)
    if width <= 0 or height <= 0:
        problems.add("degenerate box (zero width or height)", f"{where} (bbox {bbox})")
        return None
    image_height, image_width = size
    if (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + width > image_width + BOX_TOLERANCE
            or y + height > image_height + BOX_TOLERANCE):
        problems.add("box outside the image", f"{where} (bbox {bbox}, image {image_width}x{image_height})")
        return None
    box = [max(y, 0.0), max(x, 0.0), min(y + height, image_height), min(x + width, image_width)]
    if box[2] <= box[0] or box[3] <= box[1]:
        problems.add("degenerate box (zero width or height)", f"{where} (bbox {bbox})")
        return None
    return box


def _tfds_box_flags(boxes, labels, num_classes=None):
    """Per box of a tfds example: (outside [0, 1], zero area, unknown label), each box in one reason only."""
    import tensorflow as tf

    outside = ~tf.reduce_all((boxes >= 0.0) & (boxes <= 1.0), axis=-1)
    degenerate = ~outside & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    unknown = labels < 0
    if num_classes is not None:
        unknown |= labels >= num_classes
    return outside, degenerate, ~outside & ~degenerate & unknown


TFDS_REASONS = ("box outside the image", "degenerate box (zero width or height)", "unknown category id")


def from_tfds(example: dict, num_classes: int | None = None) -> dict:
    """Maps a tfds detection example (`image`, `objects/bbox` normalized yxyx, `objects/label`).

    Returns our example with pixel boxes; boxes outside [0, 1], with zero area or (given
    `num_classes`) a label outside 0..num_classes-1 are dropped, counted in `dropped_boxes`
    (`tfds_box_problems` counts and names them over a whole split before training).
    """
    import tensorflow as tf

    image = example["image"]
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    boxes = tf.cast(example["objects"]["bbox"], tf.float32)
    labels = tf.cast(example["objects"]["label"], tf.int32)
    outside, degenerate, unknown = _tfds_box_flags(boxes, labels, num_classes)
    keep = ~(outside | degenerate | unknown)
    return {"image": image, "boxes": tf.boolean_mask(boxes, keep) * tf.tile(shape, [2]),
            "classes": tf.boolean_mask(labels, keep),
            "dropped_boxes": tf.reduce_sum(tf.cast(~keep, tf.int32))}


def tfds_box_problems(annotations, num_classes: int, on_bad: str = "drop", origin: str = "dataset") -> "_Problems":
    """Checks every box of a tfds detection split before anything trains on it (images not needed).

    `annotations`: examples with `objects/bbox`, `objects/label` and, when the dataset has it,
    `image/filename` (which names a bad box; else the example's index). Returns the `_Problems`
    (counts by reason in `.counts`, examples in `.named`); with on_bad="refuse", raises at the first.
    """
    import tensorflow as tf

    problems = _Problems(on_bad, origin)

    def flags(index, example):
        boxes = tf.cast(example["objects"]["bbox"], tf.float32)
        labels = tf.cast(example["objects"]["label"], tf.int32)
        found = _tfds_box_flags(boxes, labels, num_classes)
        name = example.get("image/filename", tf.constant(b""))
        return {"index": index, "name": name, "boxes": boxes, "labels": labels, "flags": tf.stack(found)}

    bad = annotations.enumerate().map(flags).filter(lambda e: tf.reduce_any(e["flags"]))
    for example in bad.as_numpy_iterator():
        name = example["name"].decode() if example["name"] else f"example {example['index']}"
        for reason, flagged in zip(TFDS_REASONS, example["flags"]):
            for i in np.flatnonzero(flagged):
                box = [round(float(v), 4) for v in example["boxes"][i]]
                problems.add(reason, f"{name} (box {i}: yxyx {box}, label {example['labels'][i]})")
    return problems


def tfds_segmentation_example(example: dict) -> dict:
    """A tfds segmentation example (`image`, `segmentation_mask` [H, W] or [H, W, 1]) as ours."""
    import tensorflow as tf

    mask = tf.cast(example["segmentation_mask"], tf.int32)
    return {"image": example["image"], "mask": mask[..., 0] if mask.shape.rank == 3 else mask}


def mask_reasons(num_classes: int) -> tuple:
    """The two ways a mask is bad, as every mask source names them (size first, then labels)."""
    return "mask of another size than its image", f"labels outside 0..{num_classes - 1}"


def tfds_mask_flags(example: dict, num_classes: int, ignore_label: int = IGNORE_LABEL):
    """(mask of another size than its image, labels outside 0..num_classes-1) for one of our examples."""
    import tensorflow as tf

    other_size = tf.reduce_any(tf.shape(example["image"])[:2] != tf.shape(example["mask"])[:2])
    mask = example["mask"]
    unknown = tf.reduce_any((mask != ignore_label) & ((mask < 0) | (mask >= num_classes)))
    return other_size, ~other_size & unknown


def tfds_mask_problems(examples, num_classes: int, on_bad: str = "drop", origin: str = "dataset",
                       ignore_label: int = IGNORE_LABEL) -> "_Problems":
    """Checks every mask of a tfds segmentation split before anything trains on it (one decoding pass).

    `examples`: tfds examples with `image`, `segmentation_mask` and, when the dataset has it,
    `image/filename` or `file_name` (which names a bad mask; else the example's index).
    """
    import tensorflow as tf

    problems = _Problems(on_bad, origin)
    reasons = mask_reasons(num_classes)

    def flags(index, raw):
        ours = tfds_segmentation_example(raw)
        name = raw.get("image/filename", raw.get("file_name", tf.constant(b"")))
        return {"index": index, "name": name, "image": tf.shape(ours["image"])[:2], "mask": tf.shape(ours["mask"])[:2],
                "flags": tf.stack(tfds_mask_flags(ours, num_classes, ignore_label))}

    bad = examples.enumerate().map(flags).filter(lambda e: tf.reduce_any(e["flags"]))
    for example in bad.as_numpy_iterator():
        name = example["name"].decode() if example["name"] else f"example {example['index']}"
        (image_h, image_w), (mask_h, mask_w) = example["image"], example["mask"]
        details = (f"{name} (mask {mask_h}x{mask_w} vs image {image_h}x{image_w})", name)
        for reason, flagged, where in zip(reasons, example["flags"], details):
            if flagged:
                problems.add(reason, where)
    return problems


def load_mask_folders(images_dir, masks_dir, num_classes: int, on_bad: str = "drop",
                      ignore_label: int = IGNORE_LABEL) -> DenseSource:
    """Pairs `images_dir/NAME.jpg` with `masks_dir/NAME.png` (class index per pixel).

    Refused: missing folders, a mask that is not lossless (JPEG), no pairs at all. Dropped and
    counted (or refused): an image without a mask, a mask without an image, a mask of another
    size than its image, a mask with labels outside 0..num_classes-1 (`ignore_label` allowed).
    """
    from PIL import Image

    for folder in (images_dir, masks_dir):
        if not os.path.isdir(folder):
            raise MissingFileError(f"Segmentation folder {folder} does not exist.")
    problems = _Problems(on_bad, f"{images_dir} + {masks_dir}")
    images = {os.path.splitext(n)[0]: n for n in sorted(os.listdir(images_dir))
              if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")}
    masks = {}
    for name in sorted(os.listdir(masks_dir)):
        stem, extension = os.path.splitext(name)
        if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if extension.lower() not in MASK_EXTENSIONS:
            raise ConfigError(f"Mask {os.path.join(masks_dir, name)} is {extension}: masks must be lossless "
                              f"({', '.join(MASK_EXTENSIONS)}); JPEG invents labels at edges.")
        masks[stem] = name
    for stem in sorted(set(masks) - set(images)):
        problems.add("mask without an image", masks[stem])
    examples = []
    for stem, name in images.items():
        if stem not in masks:
            problems.add("image without a mask", name)
            continue
        image_path, mask_path = os.path.join(images_dir, name), os.path.join(masks_dir, masks[stem])
        with Image.open(mask_path) as mask:
            if mask.mode not in ("L", "P", "I", "I;16"):
                problems.add(f"mask is not single-channel (mode {mask.mode})", masks[stem])
                continue
            labels = np.unique(np.asarray(mask))
            mask_size = (mask.height, mask.width)
        if mask_size != _image_size(image_path):
            image_size = _image_size(image_path)
            problems.add(mask_reasons(num_classes)[0],
                         f"{masks[stem]} ({mask_size[0]}x{mask_size[1]} vs {image_size[0]}x{image_size[1]})")
            continue
        unknown = [int(v) for v in labels if v != ignore_label and not 0 <= v < num_classes]
        if unknown:
            problems.add(mask_reasons(num_classes)[1], f"{masks[stem]} (labels {unknown[:5]})")
            continue
        examples.append({"file": image_path, "mask_file": mask_path})
    report = problems.report()
    if not examples:
        raise ConfigError(f"No image/mask pairs in {images_dir} and {masks_dir} (pairs share a file stem: "
                          f"a.jpg with a.png); dropped: {report or 'none'}.")
    return DenseSource(examples, tuple(str(i) for i in range(num_classes)), report, f"{images_dir} + {masks_dir}",
                       problems.examples())
