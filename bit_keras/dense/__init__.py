"""Detection and segmentation data, augmentation and metrics for BiT backbones.

Conventions shared by every module here: one example is a dict with
`image` (uint8 [h, w, 3]), for detection `boxes` (float32 [n, 4], absolute pixels,
`[ymin, xmin, ymax, xmax]` with ymax/xmax exclusive -- keras-hub's default "yxyx") and
`classes` (int32 [n], 0-based), for segmentation `mask` (int32 [h, w], class per pixel,
`IGNORE_LABEL` for pixels not scored). Sources: `sources.py`; augmentations that boxes and
masks follow: `augment.py`; COCO mAP and mean IoU: `metrics.py`; offline synthetic data:
`shapes.py`.
"""

IGNORE_LABEL = 255  # mask value that metrics and losses skip (VOC's "void" border)
DENSE_TASKS = ("detection", "segmentation")


def is_dense_run(path) -> bool:
    """Whether `path` is a `finetune --task detection|segmentation` run directory (its run.json names the task)."""
    import os

    from bit_keras import runs

    record = runs.read_run(path) if path and os.path.isdir(path) else None
    return bool(record) and record.get("task") in DENSE_TASKS
