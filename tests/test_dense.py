"""Detection/segmentation data, augmentations and metrics (bit_keras.dense), checked against NumPy."""

import json
import os

import numpy as np
import pytest

from bit_keras.errors import ConfigError, MissingFileError

# ---------------------------------------------------------------- synthetic shapes


def test_shapes_seeded_and_boxes_are_tight_boxes_of_masks():
    from bit_keras.dense.shapes import synthetic_shapes

    first, again = synthetic_shapes(6, 32, seed=3), synthetic_shapes(6, 32, seed=3)
    other = synthetic_shapes(6, 32, seed=4)
    assert all((a["image"] == b["image"]).all() for a, b in zip(first, again))
    assert any((a["image"] != b["image"]).any() for a, b in zip(first, other))
    for example in first:
        assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
        _assert_boxes_match_mask(example["boxes"], example["classes"], example["mask"])


def test_a_class_has_the_same_colour_in_every_split():
    """Splits are drawn with different seeds; a class's colour must not depend on the seed (it did:
    a detector learnt the training split's colours and found nothing on the test split)."""
    from bit_keras.dense.shapes import SHAPE_CLASSES, synthetic_shapes

    colours = {}
    for seed in (0, 1, 1003):
        for example in synthetic_shapes(8, 64, seed=seed):
            for label in np.unique(example["mask"][example["mask"] > 0]):
                pixels = example["image"][example["mask"] == label].astype(int)
                colours.setdefault(SHAPE_CLASSES[label - 1], []).append(pixels.mean(0))
    for name, means in colours.items():
        assert np.ptp(np.array(means), axis=0).max() <= 40, name  # jitter of +-20 per object, nothing more


def _object_boxes(mask):
    """Tight [ymin, xmin, ymax, xmax) of each connected object, from the mask (NumPy, 4-connected)."""
    seen, boxes = np.zeros(mask.shape, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, pixels = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and not seen[ny, nx] \
                        and mask[ny, nx] == mask[start]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        pixels = np.array(pixels)
        boxes.append((pixels[:, 0].min(), pixels[:, 1].min(), pixels[:, 0].max() + 1, pixels[:, 1].max() + 1,
                      mask[start] - 1))
    return sorted(boxes)


def _assert_boxes_match_mask(boxes, classes, mask):
    expected = _object_boxes(np.asarray(mask))
    got = sorted(tuple(int(v) for v in box) + (int(c),) for box, c in zip(np.asarray(boxes), np.asarray(classes)))
    assert got == expected


# ---------------------------------------------------------------- augmentations against NumPy


def _example(seed=0, size=32):
    from bit_keras.dense.shapes import synthetic_shapes

    return synthetic_shapes(1, size, max_objects=3, seed=seed)[0]


def test_horizontal_flip_matches_numpy():
    from bit_keras.dense.augment import horizontal_flip

    example = _example(1)
    flipped = {k: np.asarray(v) for k, v in horizontal_flip(example).items()}
    np.testing.assert_array_equal(flipped["image"], example["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["mask"], example["mask"][:, ::-1])
    b = example["boxes"]
    np.testing.assert_array_equal(flipped["boxes"], np.stack([b[:, 0], 32 - b[:, 3], b[:, 2], 32 - b[:, 1]], -1))
    _assert_boxes_match_mask(flipped["boxes"], flipped["classes"], flipped["mask"])


def test_random_flip_is_seeded_and_flips_all_or_nothing():
    import tensorflow as tf
    from bit_keras.dense.augment import random_horizontal_flip

    example = _example(2)
    outcomes = set()
    for seed in range(8):
        out = random_horizontal_flip(example, tf.constant([seed, 0]))
        again = random_horizontal_flip(example, tf.constant([seed, 0]))
        np.testing.assert_array_equal(out["image"], again["image"])
        flipped = bool((np.asarray(out["image"]) != example["image"]).any())
        outcomes.add(flipped)
        _assert_boxes_match_mask(out["boxes"], out["classes"], out["mask"])
    assert outcomes == {True, False}


def test_resize_scales_boxes_and_masks_exactly():
    from bit_keras.dense.augment import resize

    example = _example(3)
    doubled = {k: np.asarray(v) for k, v in resize(example, 64).items()}
    assert doubled["image"].shape == (64, 64, 3) and doubled["image"].dtype == np.uint8
    np.testing.assert_array_equal(doubled["mask"], example["mask"].repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(doubled["boxes"], example["boxes"] * 2)
    _assert_boxes_match_mask(doubled["boxes"], doubled["classes"], doubled["mask"])
    # Non-uniform: boxes scale per axis; the mask is the nearest source pixel (half-pixel centres).
    out = {k: np.asarray(v) for k, v in resize(example, (20, 48)).items()}
    np.testing.assert_allclose(out["boxes"], example["boxes"] * [20 / 32, 48 / 32, 20 / 32, 48 / 32], rtol=1e-6)
    rows = np.floor((np.arange(20) + 0.5) * 32 / 20).astype(int)
    cols = np.floor((np.arange(48) + 0.5) * 32 / 48).astype(int)
    np.testing.assert_array_equal(out["mask"], example["mask"][rows][:, cols])


def test_crop_clips_boxes_and_drops_boxes_that_leave_it():
    from bit_keras.dense.augment import crop

    boxes = np.array([[2, 2, 10, 10], [12, 0, 20, 30], [25, 25, 30, 30], [0, 0, 32, 32]], np.float32)
    example = {"image": np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3), "boxes": boxes,
               "classes": np.array([0, 1, 2, 3], np.int32), "mask": np.arange(32 * 32).reshape(32, 32)}
    out = {k: np.asarray(v) for k, v in crop(example, 8, 4, 16, 20).items()}
    np.testing.assert_array_equal(out["image"], example["image"][8:24, 4:24])
    np.testing.assert_array_equal(out["mask"], example["mask"][8:24, 4:24])
    expected = np.clip(boxes - [8, 4, 8, 4], 0, [16, 20, 16, 20])
    # box 2 ([25,25,30,30]) ends up with zero area (outside): dropped, counted.
    np.testing.assert_array_equal(out["boxes"], expected[[0, 1, 3]])
    np.testing.assert_array_equal(out["classes"], [0, 1, 3])
    assert int(out["dropped_boxes"]) == 1
    # min_visible: box 0 keeps 2x6 of its 8x8 pixels (< 50%), box 1 keeps 8x20 of 8x30.
    half = crop(example, 8, 4, 16, 20, min_visible=0.5)
    np.testing.assert_array_equal(np.asarray(half["classes"]), [1])


def test_random_crop_in_tf_data_matches_numpy_window():
    import tensorflow as tf
    from bit_keras.dense.augment import crop_offsets, random_crop
    from bit_keras.dense.shapes import as_dataset, synthetic_shapes

    examples = synthetic_shapes(4, 32, seed=5)
    seeds = tf.data.Dataset.random(seed=7).batch(2)
    pipeline = tf.data.Dataset.zip(as_dataset(examples), seeds).map(lambda e, s: random_crop(e, s, (20, 24)))
    for example, seed, out in zip(examples, seeds, pipeline):
        top, left = (int(v) for v in crop_offsets(seed, 32, 32, 20, 24))
        np.testing.assert_array_equal(out["image"], example["image"][top:top + 20, left:left + 24])
        np.testing.assert_array_equal(out["mask"], example["mask"][top:top + 20, left:left + 24])
        expected = np.clip(example["boxes"] - [top, left, top, left], 0, [20, 24, 20, 24])
        keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
        np.testing.assert_array_equal(out["boxes"], expected[keep])
        np.testing.assert_array_equal(out["classes"], example["classes"][keep])
        assert int(out["dropped_boxes"]) == int((~keep).sum())


# ---------------------------------------------------------------- COCO mAP (pycocotools)


def _coco(truth, predictions):
    from bit_keras.dense.metrics import coco_map

    return coco_map(truth, predictions)


def test_coco_map_of_perfect_predictions_is_one():
    # One small (<32^2), one medium and one large (>96^2) object, two classes, two images.
    truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 70, 70]]), "classes": np.array([0, 1])},
             {"boxes": np.array([[0, 0, 120, 110]]), "classes": np.array([1])}]
    predictions = [dict(t, scores=np.ones(len(t["classes"]))) for t in truth]
    scores = _coco(truth, predictions)
    assert set(scores) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0), abs=1e-12)  # means over classes


def _iou(a, b):
    """IoU of two [ymin, xmin, ymax, xmax] boxes, by hand."""
    height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's IoU thresholds; a match needs IoU >= t
RECALLS = np.linspace(0, 1, 101)          # COCO's 101 recall points


@pytest.mark.parametrize("shift", [1, 2, 4])
def test_coco_map_of_one_shifted_box_is_the_share_of_thresholds_it_passes(shift):
    truth_box, shifted = [40, 40, 60, 60], [40, 40 + shift, 60, 60 + shift]  # 20x20: "small"
    iou = _iou(truth_box, shifted)
    assert np.isclose(iou, (20 - shift) / (20 + shift))
    matched = iou >= THRESHOLDS
    scores = _coco([{"boxes": np.array([truth_box]), "classes": np.array([0])}],
                   [{"boxes": np.array([shifted]), "classes": np.array([0]), "scores": np.array([0.9])}])
    # One object, one detection: precision 1 at every recall where matched, else no detection.
    assert scores["AP"] == pytest.approx(matched.mean())
    assert scores["AP50"] == pytest.approx(float(matched[0])) and scores["AP75"] == pytest.approx(float(matched[5]))
    assert scores["APs"] == pytest.approx(matched.mean())
    assert np.isnan(scores["APm"]) and np.isnan(scores["APl"])


def test_coco_map_with_a_perfect_and_a_shifted_detection_follows_the_101_point_curve():
    # Image 1: perfect detection, score 0.9. Image 2: shifted by 6 px, score 0.8 (IoU 14/26).
    truth = [{"boxes": np.array([[0, 0, 20, 20]]), "classes": np.array([0])},
             {"boxes": np.array([[10, 10, 30, 30]]), "classes": np.array([0])}]
    predictions = [{"boxes": np.array([[0, 0, 20, 20]]), "classes": np.array([0]), "scores": np.array([0.9])},
                   {"boxes": np.array([[10, 16, 30, 36]]), "classes": np.array([0]), "scores": np.array([0.8])}]
    iou = _iou([10, 10, 30, 30], [10, 16, 30, 36])
    per_threshold = []
    for threshold in THRESHOLDS:
        if iou >= threshold:  # both true positives: precision 1 up to recall 1
            per_threshold.append(1.0)
        else:  # TP then FP: precision 1 up to recall 0.5, nothing beyond
            precision_at = np.where(RECALLS <= 0.5, 1.0, 0.0)
            per_threshold.append(precision_at.mean())
    per_threshold = np.array(per_threshold)
    scores = _coco(truth, predictions)
    assert scores["AP"] == pytest.approx(per_threshold.mean())
    assert scores["AP50"] == pytest.approx(per_threshold[0]) == 1.0
    assert scores["AP75"] == pytest.approx(per_threshold[5]) == pytest.approx(51 / 101)


def test_coco_map_wrong_class_and_padding_rows():
    truth = [{"boxes": np.array([[0, 0, 20, 20]]), "classes": np.array([1])}]
    wrong = [{"boxes": np.array([[0, 0, 20, 20], [0, 0, 0, 0]]), "classes": np.array([0, -1]),
              "scores": np.array([0.9, 0.0])}]
    assert _coco(truth, wrong)["AP"] == 0.0
    with pytest.raises(ConfigError, match="one prediction entry per image"):
        _coco(truth, [])


# ---------------------------------------------------------------- segmentation scores


def test_mean_iou_and_pixel_accuracy_match_numpy():
    from bit_keras.dense.metrics import SegmentationScores

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 8, 8))
    labels[0, 0, :4] = 255  # ignored
    predictions = np.where(rng.uniform(size=labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    predictions[labels == 255] = 0
    scores = SegmentationScores(4)  # class 3 never occurs: left out of the mean
    scores.update(labels[0], predictions[0])
    scores.update(labels[1], predictions[1])
    result = scores.result()
    valid = labels != 255
    ious = []
    for c in range(3):
        inter = ((labels == c) & (predictions == c) & valid).sum()
        union = (((labels == c) | (predictions == c)) & valid).sum()
        ious.append(inter / union)
    assert result["mean_iou"] == pytest.approx(np.mean(ious))
    assert result["pixel_accuracy"] == pytest.approx((labels == predictions)[valid].mean())
    assert np.isnan(result["iou"][3])
    with pytest.raises(ConfigError, match="Mask labels must be in 0..3"):
        scores.update(np.full((2, 2), 7), np.zeros((2, 2)))


# ---------------------------------------------------------------- sources


def _write_image(path, height, width, value=0):
    from PIL import Image

    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def _coco_folder(tmp_path, annotations):
    images = tmp_path / "images"
    images.mkdir()
    _write_image(images / "a.png", 40, 50, 10)
    _write_image(images / "b.png", 30, 30, 20)
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                       {"id": 2, "file_name": "b.png", "height": 30, "width": 30}],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": annotations}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return str(images), str(path)


GOOD = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 10, 20, 15]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30]}]
BAD = [{"id": 3, "image_id": 1, "category_id": 99, "bbox": [5, 10, 20, 15]},   # unknown category
       {"id": 4, "image_id": 1, "category_id": 7, "bbox": [45, 10, 20, 15]},   # outside (x+w=65 > 50)
       {"id": 5, "image_id": 2, "category_id": 3, "bbox": [3, 3, 0, 10]},      # degenerate
       {"id": 6, "image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5]},       # unknown image
       {"id": 7, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}]


def test_coco_loader_reads_boxes_as_pixel_yxyx_and_decodes(tmp_path):
    from bit_keras.dense.sources import load_coco, parse_spec

    images, annotations = _coco_folder(tmp_path, GOOD + [{"id": 8, "image_id": 2, "category_id": 7,
                                                           "bbox": [-0.5, 1, 30.4, 10]}])  # overhang: clipped
    assert parse_spec(f"coco:{images},{annotations}") == (images, annotations)
    source = load_coco(images, annotations)
    assert source.class_names == ("dog", "cat") and source.report == {}  # category ids 3, 7 -> 0, 1
    a, b = source.examples
    np.testing.assert_array_equal(a["boxes"], [[10, 5, 25, 25]])
    np.testing.assert_array_equal(a["classes"], [1])
    np.testing.assert_allclose(b["boxes"], [[0, 0, 30, 30], [1, 0, 11, 29.9]], atol=1e-5)
    decoded = list(source.dataset())
    assert decoded[0]["image"].shape == (40, 50, 3) and int(decoded[1]["image"][0, 0, 0]) == 20
    np.testing.assert_array_equal(decoded[0]["boxes"], a["boxes"])


def test_coco_loader_drops_bad_annotations_with_counts_or_refuses_naming_them(tmp_path):
    from bit_keras.dense.sources import load_coco

    images, annotations = _coco_folder(tmp_path, GOOD + BAD)
    source = load_coco(images, annotations)
    assert [len(e["classes"]) for e in source.examples] == [1, 1]
    assert source.report == {"unknown category id": 1, "box outside the image": 1,
                             "degenerate box (zero width or height)": 1, "unknown image id": 1,
                             "crowd region (not a training target)": 1}
    with pytest.raises(ConfigError, match=r"annotations.json: annotation 3 of a.png \(category 99\): unknown category"):
        load_coco(images, annotations, on_bad="refuse")


def test_coco_loader_refuses_missing_images_and_wrong_sizes(tmp_path):
    from bit_keras.dense.sources import load_coco

    images, annotations = _coco_folder(tmp_path, GOOD)
    data = json.loads(open(annotations).read())
    data["images"][0]["height"] = 41
    open(annotations, "w").write(json.dumps(data))
    with pytest.raises(ConfigError, match="a.png is 40x50 px but the annotations say 41x50"):
        load_coco(images, annotations)
    os.remove(os.path.join(images, "b.png"))
    with pytest.raises(MissingFileError, match="b.png"):
        load_coco(images, annotations, check_image_sizes=False)
    data["images"] = [{"id": 1}]
    open(annotations, "w").write(json.dumps(data))
    with pytest.raises(ConfigError, match="an image entry without id or file_name"):
        load_coco(images, annotations)
    data["images"] = []
    open(annotations, "w").write(json.dumps(data))
    with pytest.raises(ConfigError, match="lists no images"):
        load_coco(images, annotations)
    with pytest.raises(ConfigError, match="coco:IMAGES_DIR,ANNOTATIONS.json"):
        from bit_keras.dense.sources import parse_spec
        parse_spec("coco:only_one_path")


def _same_object_count(example):
    import tensorflow as tf

    count = tf.minimum(tf.shape(example["objects"]["bbox"])[0], tf.shape(example["objects"]["label"])[0])
    return {"image": example["image"], "objects": {"bbox": example["objects"]["bbox"][:count],
                                                   "label": example["objects"]["label"][:count]}}


def test_tfds_objects_bbox_becomes_pixel_boxes_with_bad_boxes_counted():
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from bit_keras.dense.sources import from_tfds, tfds_box_problems

    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        # mock_data draws each field of `objects` with its own length; real examples have one.
        dataset = tfds.load("voc/2012", split="train", download=False).map(_same_object_count)
        checked = 0
        for raw, example in zip(dataset, dataset.map(from_tfds)):
            height, width = raw["image"].shape[:2]
            boxes = raw["objects"]["bbox"].numpy()
            keep = np.all((boxes >= 0) & (boxes <= 1), -1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            np.testing.assert_allclose(example["boxes"], boxes[keep] * [height, width, height, width], rtol=1e-6)
            np.testing.assert_array_equal(example["classes"], raw["objects"]["label"].numpy()[keep])
            checked += int(keep.sum())
    assert checked > 0
    # Constructed: one good box, one outside [0, 1], one with zero area.
    bad = {"image": tf.zeros([10, 20, 3], tf.uint8),
           "objects": {"bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.1, 0.2, 1.5, 0.6], [0.3, 0.3, 0.3, 0.9]]),
                       "label": tf.constant([4, 5, 6], tf.int64)}}
    out = from_tfds(bad)
    np.testing.assert_allclose(out["boxes"], [[1, 4, 5, 12]], rtol=1e-6)
    np.testing.assert_array_equal(out["classes"], [4])
    assert int(sum(e["dropped_boxes"] for e in tf.data.Dataset.from_tensors(bad).repeat(2).map(from_tfds))) == 4
    assert tfds_box_problems(tf.data.Dataset.from_tensors(bad).repeat(2), num_classes=10).counts == {
        "box outside the image": 2, "degenerate box (zero width or height)": 2}


# ---------------------------------------------------------------- hostile annotations, named and counted

def _fake_tfds(monkeypatch, examples, class_names=("cat", "dog")):
    """tfds.load of an in-memory detection split (tfds's features: image, image/filename, objects)."""
    import types

    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)), "image/filename": tfds.features.Text(),
        "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(),
                                           "label": tfds.features.ClassLabel(names=class_names)})})
    loads = []

    def load(name, split, with_info=False, decoders=None, **_):
        loads.append((name, split, decoders))
        dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8), "image/filename": tf.TensorSpec([], tf.string),
            "objects": {"bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64)}})
        return (dataset, types.SimpleNamespace(features=features)) if with_info else dataset

    monkeypatch.setattr(tfds, "load", load)
    return loads


def _tfds_example(filename, boxes, labels, height=10, width=20):
    return {"image": np.zeros((height, width, 3), np.uint8), "image/filename": filename,
            "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4), "label": np.asarray(labels, np.int64)}}


def test_tfds_bad_boxes_are_counted_named_by_file_and_never_trained_on(monkeypatch):
    from bit_keras.dense.data import open_dataset
    from bit_keras.dense.run import warn_dropped

    _fake_tfds(monkeypatch, [
        _tfds_example("a.jpg", [[0.1, 0.2, 0.5, 0.6], [0.1, 0.2, 1.5, 0.6]], [0, 1]),   # good, outside
        _tfds_example("b.jpg", [[0.3, 0.3, 0.3, 0.9], [0.0, 0.0, 1.0, 1.0]], [1, 7]),   # zero area, unknown id 7
        _tfds_example("c.jpg", [[0.0, 0.0, 1.0, 1.0]], [1])])                           # good
    data = open_dataset("tfds:fake", "detection", "train")
    assert data.num_classes == 2 and data.class_names == ("cat", "dog")
    assert data.dropped == {"box outside the image": 1, "degenerate box (zero width or height)": 1,
                            "unknown category id": 1}
    assert "a.jpg (box 1" in data.dropped_named["box outside the image"][0]
    assert "b.jpg (box 1" in data.dropped_named["unknown category id"][0] and "label 7" in \
        data.dropped_named["unknown category id"][0]
    lines = []
    warn_dropped(data, lines.append)
    assert len(lines) == 3 and all(line.startswith("warning: tfds:fake[train]: dropped 1 annotation(s): ")
                                   for line in lines)
    trained = [(e["boxes"].numpy().tolist(), e["classes"].numpy().tolist()) for e in data.examples]
    assert trained == [([[1.0, 4.0, 5.0, 12.0]], [0]), ([], []), ([[0.0, 0.0, 10.0, 20.0]], [1])]
    with pytest.raises(ConfigError, match=r"tfds:fake\[train\]: a.jpg \(box 1: .*\): box outside the image"):
        open_dataset("tfds:fake", "detection", "train", on_bad="refuse")


def test_tfds_examples_without_a_filename_are_named_by_index(monkeypatch):
    import tensorflow as tf

    from bit_keras.dense.sources import tfds_box_problems

    dataset = tf.data.Dataset.from_tensor_slices({"objects": {"bbox": [[[0.1, 0.1, 0.2, 0.2]], [[0.5, 0.5, 0.4, 0.9]]],
                                                              "label": [[0], [0]]}})
    problems = tfds_box_problems(dataset, num_classes=1)
    assert problems.counts == {"degenerate box (zero width or height)": 1}
    assert problems.named["degenerate box (zero width or height)"][0].startswith("example 1 (box 0")


def test_coco_and_mask_folder_drops_reach_the_run_log_with_their_files(tmp_path):
    from bit_keras.dense.data import open_dataset
    from bit_keras.dense.run import warn_dropped

    images, annotations = _coco_folder(tmp_path, GOOD + BAD)
    data = open_dataset(f"coco:{images},{annotations}", "detection")
    lines = []
    warn_dropped(data, lines.append)
    assert f"warning: coco:{images},{annotations}: dropped 1 annotation(s): unknown category id (e.g. annotation 3 " \
           "of a.png (category 99))" in lines
    assert sum(e["boxes"].shape[0] for e in data.examples) == 2  # only GOOD's boxes are trained on
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "masks").mkdir()
    for name in ("a", "b"):
        _write_image(pairs / "images" / f"{name}.jpg", 8, 6)
    _write_mask(pairs / "masks" / "a.png", np.zeros((8, 6)))
    _write_mask(pairs / "masks" / "b.png", np.zeros((9, 6)))     # another size than its image
    data = open_dataset(f"masks:{pairs / 'images'},{pairs / 'masks'}", "segmentation", num_classes=2)
    lines = []
    warn_dropped(data, lines.append)
    assert lines == [f"warning: masks:{pairs / 'images'},{pairs / 'masks'}: dropped 1 annotation(s): mask of another "
                     "size than its image (e.g. b.png (9x6 vs 8x6))"]
    assert len(list(data.examples)) == 1


def _write_mask(path, mask):
    from PIL import Image

    Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(path)


def test_mask_folders_pair_by_stem_and_drop_bad_masks(tmp_path):
    from bit_keras.dense.sources import load_mask_folders

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b", "c", "d", "e"):
        _write_image(images / f"{name}.jpg", 8, 6)
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:3] = 2
    mask[0, 0] = 255
    _write_mask(masks / "a.png", mask)
    _write_mask(masks / "b.png", np.zeros((8, 7)))          # another size
    _write_mask(masks / "c.png", np.full((8, 6), 9))        # label 9 >= num_classes
    _write_mask(masks / "z.png", np.zeros((8, 6)))          # no image; d/e have no mask
    source = load_mask_folders(images, masks, num_classes=3)
    assert [os.path.basename(e["file"]) for e in source.examples] == ["a.jpg"]
    assert source.report == {"mask of another size than its image": 1, "labels outside 0..2": 1,
                             "mask without an image": 1, "image without a mask": 2}
    (example,) = list(source.dataset())
    np.testing.assert_array_equal(example["mask"], mask)
    assert example["image"].shape == (8, 6, 3)
    for name in ("c", "z"):
        os.remove(masks / f"{name}.png")
    for name in ("c", "d", "e"):
        os.remove(images / f"{name}.jpg")
    with pytest.raises(ConfigError, match=r"b.png \(8x7 vs 8x6\): mask of another size"):
        load_mask_folders(images, masks, num_classes=3, on_bad="refuse")


def test_detections_picture_draws_boxes(tmp_path):
    from PIL import Image
    from bit_keras import plots
    from bit_keras.dense.shapes import synthetic_shapes

    examples = synthetic_shapes(2, 32, seed=0)
    predictions = [{"boxes": e["boxes"], "classes": e["classes"], "scores": np.ones(len(e["classes"]))}
                   for e in examples]
    bare = [dict(e, boxes=np.zeros((0, 4)), classes=[]) for e in examples]
    plain = plots.detections(bare, tmp_path / "a.png", title="t")
    boxed = plots.detections(examples, tmp_path / "b.png", predictions=predictions, class_names=("r", "e", "t"),
                             title="t")
    assert (np.asarray(Image.open(plain)) != np.asarray(Image.open(boxed))).any()
    with pytest.raises(ConfigError, match="at least one example"):
        plots.detections([], tmp_path / "c.png")


def test_tfds_masks_of_another_size_or_with_unknown_labels_are_named_and_never_trained_on(monkeypatch):
    import types

    import tensorflow as tf
    import tensorflow_datasets as tfds

    from bit_keras.dense import IGNORE_LABEL
    from bit_keras.dense.data import open_dataset
    from bit_keras.errors import ConfigError

    def example(name, size, mask_size, labels):
        mask = np.zeros(mask_size + (1,), np.uint8)
        mask.flat[:len(labels)] = labels
        return {"image": np.zeros(size + (3,), np.uint8), "segmentation_mask": mask, "file_name": name}

    examples = [example("a.jpg", (8, 6), (8, 6), [1, 2]),                # good
                example("b.jpg", (8, 6), (6, 8), [1]),                   # transposed mask
                example("c.jpg", (8, 6), (8, 6), [1, 5]),                # label 5 of 3 classes
                example("d.jpg", (4, 4), (4, 4), [IGNORE_LABEL, 2])]     # good: the ignore label is allowed
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                           "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
                                           "file_name": tfds.features.Text()})

    def load(name, split, with_info=False, **_):
        dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8), "segmentation_mask": tf.TensorSpec([None, None, 1], tf.uint8),
            "file_name": tf.TensorSpec([], tf.string)})
        return (dataset, types.SimpleNamespace(features=features)) if with_info else dataset

    monkeypatch.setattr(tfds, "load", load)
    data = open_dataset("tfds:pets", "segmentation", "train", num_classes=3)
    assert data.dropped == {"mask of another size than its image": 1, "labels outside 0..2": 1}
    assert data.dropped_named == {"mask of another size than its image": ["b.jpg (mask 6x8 vs image 8x6)"],
                          "labels outside 0..2": ["c.jpg"]}
    trained = [tuple(e["mask"].shape) for e in data.examples]
    assert trained == [(8, 6), (4, 4)]  # a and d only
    with pytest.raises(ConfigError, match=r"tfds:pets\[train\]: b.jpg \(mask 6x8 vs image 8x6\): mask of another size"):
        open_dataset("tfds:pets", "segmentation", "train", num_classes=3, on_bad="refuse")
