"""Detection COCO mAP through pycocotools, segmentation mean IoU and pixel accuracy.

COCO mAP is pycocotools' own COCOeval (the reference implementation), fed from arrays
in memory: boxes in absolute pixels `[ymin, xmin, ymax, xmax]`, converted to COCO's
`[x, y, width, height]`. Object size (small/medium/large) is the ground-truth box area,
as for box-only datasets. A size range with no ground truth has no AP: reported as NaN
(pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from bit_keras.dense import IGNORE_LABEL
from bit_keras.errors import ConfigError, SetupError

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _xywh(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=-1)


def coco_map(ground_truth, predictions, num_classes: int | None = None) -> dict:
    """COCO box AP, AP50, AP75, APs, APm, APl of `predictions` against `ground_truth`.

    Both are sequences with one entry per image, in the same order: ground truth
    `{"boxes", "classes"}`, predictions `{"boxes", "classes", "scores"}` (padding rows with
    class -1, as keras-hub's decoder returns, are skipped).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise SetupError("COCO mAP needs pycocotools: pip install pycocotools==2.0.11 "
                         "(or pip install bit_keras[dense]).") from None

    ground_truth, predictions = list(ground_truth), list(predictions)
    if len(ground_truth) != len(predictions):
        raise ConfigError(f"coco_map needs one prediction entry per image: {len(ground_truth)} images, "
                          f"{len(predictions)} predictions.")
    images, annotations, results, seen = [], [], [], set()
    for image_id, (truth, predicted) in enumerate(zip(ground_truth, predictions), start=1):
        images.append({"id": image_id})
        classes = np.asarray(truth["classes"]).reshape(-1)
        for box, label in zip(_xywh(truth["boxes"]), classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
            seen.add(int(label))
        predicted_classes = np.asarray(predicted["classes"]).reshape(-1)
        scores = np.asarray(predicted["scores"], np.float64).reshape(-1)
        for box, label, score in zip(_xywh(predicted["boxes"]), predicted_classes, scores):
            if label >= 0:
                results.append({"image_id": image_id, "category_id": int(label), "bbox": box.tolist(),
                                "score": float(score)})
                seen.add(int(label))
    labels = range(num_classes) if num_classes is not None else sorted(seen)
    if not results or not annotations:
        return {name: (0.0 if annotations else float("nan")) for name in COCO_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth_api = COCO()
        truth_api.dataset = {"images": images, "annotations": annotations,
                             "categories": [{"id": int(label)} for label in labels]}
        truth_api.createIndex()
        evaluation = COCOeval(truth_api, truth_api.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: (float(value) if value >= 0 else float("nan"))
            for name, value in zip(COCO_METRICS, evaluation.stats[:6])}


def confusion_matrix(labels, predictions, num_classes: int, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """[true, predicted] pixel counts over `num_classes`, `ignore_label` pixels left out."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ConfigError(f"Masks of different sizes: {labels.size} labelled pixels, {predictions.size} predicted.")
    scored = labels != ignore_label
    labels, predictions = labels[scored], predictions[scored]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"Mask labels must be in 0..{num_classes - 1} or {ignore_label} (ignored); "
                          f"found {sorted(set(np.unique(labels)) - set(range(num_classes)))[:5]}.")
    predictions = np.clip(predictions, 0, num_classes - 1)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def segmentation_scores(confusion) -> dict:
    """Mean IoU over classes that occur in labels or predictions, pixel accuracy, per-class IoU.

    A class absent from both has no IoU (NaN in `iou`) and is left out of the mean, as
    VOC/Cityscapes evaluation does for classes with an empty union.
    """
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    total = confusion.sum()
    return {"mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
            "pixel_accuracy": float(true_positive.sum() / total) if total else float("nan"),
            "iou": iou.tolist()}


class SegmentationScores:
    """Accumulates a confusion matrix over batches; `result()` gives `segmentation_scores`."""

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, labels, predictions):
        self.confusion += confusion_matrix(labels, predictions, self.num_classes, self.ignore_label)

    def result(self) -> dict:
        return segmentation_scores(self.confusion)
