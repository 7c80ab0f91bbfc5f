"""Detection and segmentation fine-tuning runs: `bit_keras finetune --task detection|segmentation`.

A run directory, as classification runs have: `run.json` (what the run was started with; a
resumed run must match it), `checkpoint/` (model and optimizer after every `eval_every`
updates, `bit_keras.resume`), and at the end `model.keras` (the keras-hub task, BiT inside)
and `metrics.json`, each written under a temporary name and renamed into place. Running the
same command again after an interruption resumes from the newest checkpoint (the data order
then continues from a seed derived from that point).

Training: SGD with momentum 0.9, `AccumulatingSGD` (micro-batches accumulate in the momentum
buffer: `--batch 16 --micro-batch 1`), peak rate 0.01 x batch / 16 (RetinaNet's linear rule),
linear warm-up over the first tenth (at most 500 updates), /10 at 2/3 and 8/9 of the run.
"""

from __future__ import annotations

import math
import os

import numpy as np

from bit_keras import files, resume, runs
from bit_keras.dense import is_dense_run  # noqa: F401  (the CLI asks it)
from bit_keras.dense.data import check_task, eval_batches, open_dataset, train_batches
from bit_keras.errors import ConfigError

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
RUN_MARKERS = (runs.RUN_FILE, METRICS_FILE, CHECKPOINT_DIR)
NORMS = ("group", "batch")
DEFAULT_RESOLUTION = {"shapes": 64}
DEFAULT_STEPS = 1000


def default_resolution(dataset: str) -> int:
    return DEFAULT_RESOLUTION.get(dataset, 512)


def anchor_size(dataset: str) -> float:
    """keras-hub's RetinaNet anchors (4: 32 px at P3), except for the synthetic shapes (6-32 px objects in
    64 px images), which get 1 (8 px at P3): an object no anchor overlaps by IoU 0.5 is never a target."""
    return 1 if dataset == "shapes" else 4


def learning_rate_schedule(total_steps, *, batch_size, peak=None, accumulation_steps=1):
    from bit_keras.learning_rates import WarmupStepDecay

    peak = peak if peak is not None else 0.01 * batch_size / 16
    warmup = min(500, total_steps // 10)
    boundaries = [int(total_steps * 2 / 3), int(total_steps * 8 / 9)]
    return WarmupStepDecay(peak, warmup, boundaries, steps_per_update=accumulation_steps)


def build_task(choice, task, num_classes, *, resolution, norm="group", freeze_bn=False, output_stride=None,
               dtype=None, anchor_size=4):
    """The keras-hub task on a BiT backbone from a `weights.WeightsChoice`."""
    from bit_keras.dense.tasks import build_detector, build_segmenter, freeze_batch_norm

    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}. Received: norm={norm!r}")
    if freeze_bn and norm != "batch":
        raise ConfigError("freeze_bn=True freezes BatchNorm; it needs norm='batch' (BiT's GroupNorm has no "
                          "batch statistics to freeze).")
    if output_stride not in (None, 32) and task == "detection":
        raise ConfigError("output_stride applies to segmentation (DeepLab); RetinaNet needs P3..P5 at stride 32.")
    kwargs = {"normalization": "batch"} if norm == "batch" else {}
    if output_stride not in (None, 32):
        kwargs["output_stride"] = int(output_stride)
    from bit_keras.backbone import BiTBackbone

    backbone = BiTBackbone.from_weights(choice, dtype=dtype, **kwargs)
    from bit_keras.layout import norm_layer

    # The classifier's pre-head norm is off the task's path: no gradients (and no Keras warning about them).
    backbone.get_layer(norm_layer(normalization=backbone.normalization)).trainable = False
    if resolution % 32:
        raise ConfigError(f"resolution must be a multiple of 32 (the network's stride). Received: "
                          f"resolution={resolution}")
    if task == "detection":
        model = build_detector(backbone, num_classes, use_prediction_head_norm=True, anchor_size=anchor_size)
    else:
        model = build_segmenter(backbone, num_classes)
    if freeze_bn:
        freeze_batch_norm(backbone)
    return model


def _compile(model, task, optimizer):
    from bit_keras.dense.tasks import compile_segmenter

    if task == "detection":
        model.compile(optimizer=optimizer, jit_compile=False)
    else:
        compile_segmenter(model, optimizer, jit_compile=False)


def finetune(choice, *, task, dataset, output, batch_size=16, micro_batch_size=None, steps=None, eval_every=None,
             resolution=None, learning_rate=None, num_classes=None, max_boxes=100, norm="group", freeze_bn=False,
             output_stride=None, flip=True, train_split="train", eval_split="test", eval_dataset=None,
             data_dir=None, download=True, on_bad="drop", seed=0, overwrite=False, precision="float32",
             strategy=None, verbose=2, log=None) -> dict:
    """Fine-tunes a keras-hub RetinaNet (detection) or DeepLabV3 (segmentation) on BiT; returns the metrics.

    `choice` is a `bit_keras.weights.WeightsChoice` (a release, an .npz, or random weights).
    `batch_size` is the global batch of one update; `micro_batch_size` per replica per pass.
    `eval_dataset`: another spec to score on (default: `dataset`'s `eval_split`; for coco: and
    masks: folders, which have no splits, the training data itself unless given).
    """
    import keras

    from bit_keras.distribute import is_chief, per_replica_micro_batch, replicas_of, resolve_strategy, worker_scratch
    from bit_keras.finetune.fine_tuner import (ResumeCheckpoints, StopAfterUpdates, StopOnNonFiniteLoss,
                                               StopOnSigterm)
    from bit_keras.optimizers import AccumulatingSGD
    from bit_keras.precision import PRECISION_POLICIES, resolve_precision

    check_task(task)
    say = log or (lambda _: None)
    for name, value in (("batch_size", batch_size), ("micro_batch_size", micro_batch_size), ("steps", steps),
                        ("eval_every", eval_every), ("max_boxes", max_boxes)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}")
    output = os.fspath(output)
    if os.path.exists(os.path.join(output, METRICS_FILE)) and not overwrite:
        raise ConfigError(f"{output} holds a finished run ({METRICS_FILE}); pass --overwrite or another --output.")
    resolution = int(resolution or default_resolution(dataset))
    steps = int(steps or DEFAULT_STEPS)
    eval_every = min(int(eval_every or max(1, math.ceil(steps / 10))), steps)
    strategy = resolve_strategy(strategy)
    replicas = replicas_of(strategy)
    micro = per_replica_micro_batch(batch_size, micro_batch_size, replicas)
    accumulation = batch_size // (micro * replicas)
    precision = resolve_precision(precision, strategy)
    policy = PRECISION_POLICIES[precision]
    chief = is_chief(strategy)

    train = open_dataset(dataset, task, train_split, num_classes=num_classes, resolution=resolution,
                         data_dir=data_dir, download=download, on_bad=on_bad)
    eval_spec = eval_dataset or dataset
    run = {"task": task, "dataset": dataset, "train_split": train_split, "eval_dataset": eval_spec,
           "eval_split": eval_split, "source": choice.name, "weights": choice.source,
           "num_classes": train.num_classes, "class_names": list(train.class_names), "resolution": resolution,
           "batch_size": int(batch_size), "micro_batch_size": micro * replicas, "steps": steps,
           "eval_every": eval_every, "learning_rate": learning_rate, "norm": norm, "freeze_bn": bool(freeze_bn),
           "output_stride": int(output_stride or 32), "max_boxes": int(max_boxes), "flip": bool(flip),
           "seed": int(seed), "precision": precision}
    if train.dropped:
        run["dropped_annotations"] = train.dropped
    if overwrite and chief:
        files.check_target(output, overwrite=True, markers=RUN_MARKERS, kind="a bit_keras finetune run")
    resuming = not overwrite and resume.list_checkpoints(os.path.join(output, CHECKPOINT_DIR))
    if resuming:  # before anything is built: another run's checkpoint is refused at once
        runs.check_resume(output, run, restart="pass --overwrite to start again, or use another --output")
    keras.utils.set_random_seed(int(seed))
    with strategy.scope():
        model = build_task(choice, task, train.num_classes, resolution=resolution, norm=norm, freeze_bn=freeze_bn,
                           output_stride=output_stride, dtype=policy, anchor_size=anchor_size(dataset))
        schedule = learning_rate_schedule(steps, batch_size=batch_size, peak=learning_rate,
                                          accumulation_steps=accumulation)
        _compile(model, task, AccumulatingSGD(schedule, momentum=0.9, accumulation_steps=accumulation))
    say(f"{task}: {type(model).__name__} on {choice.name} ({norm} norm{', frozen' if freeze_bn else ''}, "
        f"output stride {output_stride or 32}, {precision}); {train.origin}, {train.num_classes} classes, "
        f"{resolution} px; batch {batch_size} = {replicas} replica(s) x micro-batch {micro} x {accumulation} "
        f"accumulation step(s); {steps} updates, evaluation every {eval_every}")
    warn_dropped(train, say)

    if chief:
        replaced = files.move_aside(output) if overwrite and os.path.lexists(output) else None
        writes = output
    else:
        replaced, writes = None, worker_scratch()
    os.makedirs(writes, exist_ok=True)
    checkpoints = os.path.join(writes, CHECKPOINT_DIR)
    start = None
    if resuming:
        start = resume.newest_complete(os.path.join(output, CHECKPOINT_DIR), log=say, move_damaged=chief)
    if chief:
        runs.write_run(output, run)
        if replaced:
            files.remove(replaced)
    done = start[0] if start else 0
    if start:
        say(f"Resuming from {start[1]} (update {done} of {steps}).")
    batches = train_batches(train, task, resolution=resolution, batch_size=micro * replicas, max_boxes=max_boxes,
                            flip=flip, seed=int(seed) + done)
    callbacks = [StopOnNonFiniteLoss(),
                 ResumeCheckpoints(checkpoints, eval_every=eval_every, total_updates=steps,
                                   restore=start[1] if start else None),
                 StopAfterUpdates(steps), StopOnSigterm()]
    with runs.sigterm_deferred():
        history = model.fit(batches, epochs=math.ceil(steps / eval_every), initial_epoch=done // eval_every,
                            steps_per_epoch=eval_every * accumulation, callbacks=callbacks, verbose=verbose,
                            shuffle=False)  # the pipeline shuffles
    if runs.SIGTERM.received:
        from bit_keras.errors import StoppedError

        raise StoppedError("Stopped by SIGTERM after the last complete period's checkpoint; run the same command "
                           "again to resume.")
    losses = history.history.get("loss") or []
    metrics = {"task": task, "updates": int(np.asarray(model.optimizer.iterations)),
               "train_loss": float(losses[-1]) if losses else None}
    if eval_split and str(eval_split).lower() != "none":
        if eval_dataset is None and not dataset.startswith(("shapes", "tfds:")):
            say(f"warning: {dataset} has no splits: scoring on the training data (pass --eval-dataset for "
                "held-out data).")
        data = open_dataset(eval_spec, task, eval_split, num_classes=train.num_classes, resolution=resolution,
                            data_dir=data_dir, download=download, on_bad=on_bad)
        warn_dropped(data, say)
        metrics["eval"] = score(model, data, task, resolution=resolution, max_boxes=max_boxes)
    if chief:
        with files.staged_file(os.path.join(output, MODEL_FILE), overwrite=True) as staging:
            model.save(staging)
        files.write_json(os.path.join(output, METRICS_FILE), metrics)
        runs.write_summary(output, **{k: v for k, v in metrics.items() if k != "task"})
    else:
        files.remove(writes)
    return metrics


def warn_dropped(data, say):
    """One line per reason annotations were left out, with the first few named by their file."""
    for reason, count in data.dropped.items():
        named = data.dropped_named.get(reason)
        say(f"warning: {data.origin}: dropped {count} annotation(s): {reason}"
            + (f" (e.g. {'; '.join(named)})" if named else ""))


def score(model, data, task, *, resolution, max_boxes=100, batch_size=8) -> dict:
    """COCO mAP (pycocotools; boxes in the original image's pixels) or mean IoU + pixel accuracy
    (at `resolution`, masks resized nearest) of `model` on `data` (a `DenseData`)."""
    from bit_keras.dense.metrics import SegmentationScores, coco_map
    from bit_keras.dense.tasks import detections_per_image

    truth, predicted, count = [], [], 0
    scores = SegmentationScores(data.num_classes) if task == "segmentation" else None
    for x, y, size in eval_batches(data, task, resolution=resolution, batch_size=batch_size, max_boxes=max_boxes):
        size = size.numpy()
        count += len(size)
        if task == "segmentation":
            logits = model.predict(x, verbose=0)
            scores.update(y.numpy()[..., 0], np.argmax(np.asarray(logits, np.float32), -1))
            continue
        scale = np.concatenate([size, size], -1) / resolution  # resized -> original pixels, [y, x, y, x]
        for i, found in enumerate(detections_per_image(model.predict(x, verbose=0))):
            real = y["labels"].numpy()[i] >= 0
            truth.append({"boxes": y["boxes"].numpy()[i][real] * scale[i], "classes": y["labels"].numpy()[i][real]})
            predicted.append({**found, "boxes": np.asarray(found["boxes"], np.float64).reshape(-1, 4) * scale[i]})
    if task == "segmentation":
        result = scores.result()
        result = {"mean_iou": result["mean_iou"], "pixel_accuracy": result["pixel_accuracy"], "iou": result["iou"]}
    else:
        result = coco_map(truth, predicted, num_classes=data.num_classes)
    if data.dropped:
        result["dropped_annotations"] = dict(data.dropped)
    return {**_no_nan(result), "examples": count, "dataset": data.origin}


def _no_nan(value):
    """NaN (no such objects: APl without large boxes, IoU of an absent class) -> None, JSON's null."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def load_task(path):
    """The keras-hub task of a run directory (or its model.keras), without its optimizer."""
    import keras_hub  # noqa: F401  (registers keras-hub's classes)

    import bit_keras.backbone  # noqa: F401  (registers BiTBackbone)

    model_path = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise ConfigError(f"{path} has no {MODEL_FILE}: the run has not finished (run the same finetune command "
                          "again to resume it).")
    from bit_keras.finetune.runner import load_keras_model

    return load_keras_model(model_path)


def evaluate(run_dir, *, dataset=None, split=None, batch_size=8, data_dir=None, download=True) -> dict:
    """Scores a finished run on its evaluation data (or `dataset` / `split`)."""
    record = runs.read_run(run_dir)
    if not record or record.get("task") not in ("detection", "segmentation"):
        raise ConfigError(f"{run_dir} is not a detection or segmentation run (no run.json with a task).")
    model = load_task(run_dir)
    task, resolution = record["task"], record["resolution"]
    recorded = record.get("eval_split")
    split = split or (recorded if recorded and str(recorded).lower() != "none" else "test")
    data = open_dataset(dataset or record["eval_dataset"], task, split,
                        num_classes=record["num_classes"], resolution=resolution, data_dir=data_dir,
                        download=download)
    if data.num_classes != record["num_classes"]:
        raise ConfigError(f"{data.origin} has {data.num_classes} classes; the run was trained on "
                          f"{record['num_classes']}.")
    return {"task": task, "run": run_dir, **score(model, data, task, resolution=resolution,
                                                   max_boxes=record.get("max_boxes", 100), batch_size=batch_size)}
