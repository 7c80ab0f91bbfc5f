"""`finetune()` and `evaluate()`: the whole HyperRule recipe on a named dataset, resumable.

The output directory holds everything a run needs to be inspected or continued:

    run.json        what was asked (dataset, variant, rule); a resumed run must match it
    checkpoint/     keras.callbacks.BackupAndRestore state, written after every evaluation
    logs/           metrics.csv, and TensorBoard scalars in train/ and validation/ (step: updates)
    model.keras     the fine-tuned classifier (written atomically at the end)
    savedmodel/     the same as a TF-Hub SavedModel (logits), when asked for
    metrics.json    the final metrics (written atomically, last: its presence means "done")

A run killed at any point is continued by running the same command again: the model and
optimizer variables come back from the last checkpoint, including the optimizer's update
counter, so the schedule continues at the right step and learning rate.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

from absl import logging

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"
SAVEDMODEL_DIR = "savedmodel"


def finetune(source, *, dataset, output, weights=None, examples_per_class=None, batch_size=512,
             micro_batch_size=None, steps=None, eval_every=None, flip=True, crop=True, resolution=None,
             base_learning_rate=None, train_split="train", eval_split="test", data_dir=None, download=True, seed=0,
             overwrite=False, savedmodel=False, callbacks=(), verbose=1) -> dict:
    """Fine-tunes `source` (variant name, exported directory or Keras backbone) on `dataset` with the HyperRule.

    Args mirror `bit_keras finetune` (see `build_finetuner` for the model ones):
        dataset: "tfds:NAME[/CONFIG]", "folder:PATH" or "digits".
        output: the run directory (see the module docstring). Running again with the same
            arguments resumes an interrupted run; a finished run needs `overwrite=True`.
        examples_per_class: few-shot training: k examples per class drawn with `seed`.
        eval_every: updates between evaluations and checkpoints (default: 10 per run).
        eval_split: split scored during and after training; None skips evaluation.
        savedmodel: also write output/savedmodel, the fine-tuned classifier as a TF-Hub
            Reusable SavedModel (logits), for TF Serving or hub.KerasLayer.
        callbacks: extra Keras callbacks (e.g. to stop a run for tests).

    Returns the final metrics (also written to output/metrics.json).
    """
    import keras

    from bit_keras.data import few_shot, load_source
    from bit_keras.finetune.wrapper import build_finetuner
    from bit_keras.summaries import ScalarLogger

    output = os.fspath(output)
    metrics_path = os.path.join(output, METRICS_FILE)
    if os.path.exists(metrics_path) and not overwrite:
        raise ValueError(f"{output} holds a finished run ({METRICS_FILE}); pass --overwrite or another --output.")
    if overwrite:
        for name in (METRICS_FILE, MODEL_FILE, RUN_FILE):
            _remove(os.path.join(output, name))
        _remove_tree(os.path.join(output, CHECKPOINT_DIR))

    train_ds, info = load_source(dataset, train_split, data_dir=data_dir, download=download)
    train_size = info.train_size
    if examples_per_class:
        train_ds = few_shot(train_ds, int(examples_per_class), num_classes=info.num_classes, seed=seed)
        train_size = int(examples_per_class) * info.num_classes
    eval_ds = load_source(dataset, eval_split, data_dir=data_dir, download=download)[0] if eval_split else None
    ft = build_finetuner(source, num_classes=info.num_classes, train_size=train_size, image_size=info.image_size,
                         batch_size=batch_size, micro_batch_size=micro_batch_size, weights=weights, steps=steps,
                         resolution=resolution, base_learning_rate=base_learning_rate, flip=flip, crop=crop)
    eval_every = min(int(eval_every or max(1, math.ceil(ft.rule.total_steps / 10))), ft.rule.total_steps)
    run = {"dataset": dataset, "train_split": train_split, "eval_split": eval_split,
           "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "backbone"),
           "weights": weights, "examples_per_class": examples_per_class, "train_size": train_size,
           "num_classes": info.num_classes, "class_names": list(info.class_names), "flip": flip, "crop": crop,
           "micro_batch_size": ft.micro_batch_size, "eval_every": eval_every, "seed": seed,
           "hyperrule": ft.rule.to_dict()}
    os.makedirs(output, exist_ok=True)  # only now: a bad dataset or variant leaves no empty run behind
    resumed_epoch = _check_resume(output, run)
    _write_json_atomically(os.path.join(output, RUN_FILE), run)
    if resumed_epoch:
        logging.info("Resuming %s from its checkpoint after %d evaluation periods.", output, resumed_epoch)
        if verbose:
            print(f"Resuming from {os.path.join(output, CHECKPOINT_DIR)} "
                  f"(update {resumed_epoch * eval_every} of {ft.rule.total_steps}).")

    eval_batches = ft.eval_dataset(eval_ds) if eval_ds is not None else None
    os.makedirs(os.path.join(output, LOGS_DIR), exist_ok=True)
    run_callbacks = [
        # double_checkpoint keeps the previous state to fall back on if a kill lands mid-write;
        # the schedule follows the optimizer's restored update counter, not the epoch number.
        keras.callbacks.BackupAndRestore(os.path.join(output, CHECKPOINT_DIR), save_freq="epoch",
                                         double_checkpoint=True),
        keras.callbacks.CSVLogger(os.path.join(output, LOGS_DIR, "metrics.csv"), append=True),
        ScalarLogger(os.path.join(output, LOGS_DIR)),  # TensorBoard: logs/train, logs/validation
        *callbacks,
    ]
    started = time.time()
    # A resumed run draws a fresh data order instead of replaying the examples already seen.
    history = ft.fit(train_ds, validation_data=eval_batches, eval_every=eval_every, callbacks=run_callbacks,
                     seed=seed + resumed_epoch, verbose=verbose)
    seconds = time.time() - started

    metrics = {"dataset": dataset, "source": run["source"], "weights": weights, "train_size": train_size,
               "num_classes": info.num_classes, "chance_accuracy": 1.0 / info.num_classes,
               "updates": int(ft.model.optimizer.iterations), "train_seconds_this_session": round(seconds, 1),
               "final_learning_rate": float(ft.model.optimizer.learning_rate),
               "train_loss": _last(history, "loss"), "train_accuracy": _last(history, "accuracy")}
    if eval_batches is not None:
        scores = ft.model.evaluate(eval_batches, verbose=0, return_dict=True)
        metrics.update({"eval_split": eval_split, "eval_loss": float(scores["loss"]),
                        "eval_accuracy": float(scores["accuracy"])})
    metrics["hyperrule"] = ft.rule.to_dict()
    save_model_atomically(ft.model, os.path.join(output, MODEL_FILE))
    if savedmodel:
        from bit_keras.export import export_model

        export_model(ft.model, os.path.join(output, SAVEDMODEL_DIR), overwrite=True, metadata={
            "variant": ft.variant, "outputs": "logits", "num_classes": info.num_classes,
            "class_names": list(info.class_names), "fine_tuned_on": dataset, "hyperrule": ft.rule.to_dict()})
        metrics["savedmodel"] = os.path.join(output, SAVEDMODEL_DIR)
    _write_json_atomically(metrics_path, metrics)
    return metrics


def evaluate(model_path, *, dataset, split="test", batch_size=128, resolution=None, data_dir=None,
             download=True) -> dict:
    """Scores a fine-tuned `.keras` file on a dataset split; the resolution comes from its run.json."""
    import keras

    import bit_keras.export.backbone  # noqa: F401  (registers ExportedBackbone: runs from an export)
    import bit_keras.finetune.schedule  # noqa: F401  (registers the schedule for loading)
    import bit_keras.resnet_v2  # noqa: F401  (registers the BiT layers)
    from bit_keras.data import eval_pipeline, load_source

    model_path = os.fspath(model_path)
    if os.path.isdir(model_path) and os.path.exists(os.path.join(model_path, MODEL_FILE)):
        model_path = os.path.join(model_path, MODEL_FILE)
    if not os.path.isfile(model_path) or not model_path.endswith(".keras"):
        raise FileNotFoundError(f"{model_path} is not a .keras file or a finetune output directory holding {MODEL_FILE}.")
    run_path = os.path.join(os.path.dirname(model_path), RUN_FILE)
    run = json.load(open(run_path)) if os.path.exists(run_path) else {}
    if resolution is None:
        if "hyperrule" not in run:
            raise ValueError(f"No {RUN_FILE} beside {model_path} says its input resolution; pass --resolution.")
        resolution = run["hyperrule"]["crop"]
    ds, info = load_source(dataset, split, data_dir=data_dir, download=download)
    # A run fine-tuned from an export holds a TFSMLayer that points at that export; Keras
    # refuses such files by default. Allow it only for our own runs (run.json names the export).
    from_export = bool(run.get("source")) and os.path.isdir(run["source"])
    model = keras.saving.load_model(model_path, compile=False, safe_mode=not from_export)
    num_classes = int(model.output_shape[-1])
    if info.num_classes != num_classes:
        raise ValueError(f"{model_path} has {num_classes} classes but {dataset} has {info.num_classes}.")
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    batches = eval_pipeline(ds, _Resolution(int(resolution)), batch_size=batch_size, num_classes=num_classes)
    scores = model.evaluate(batches, verbose=0, return_dict=True)
    return {"model": model_path, "dataset": dataset, "split": split, "examples": info.train_size,
            "resolution": int(resolution), "loss": float(scores["loss"]), "accuracy": float(scores["accuracy"]),
            "chance_accuracy": 1.0 / num_classes}


class _Resolution:
    """What eval_pipeline reads from a rule: the crop size."""

    def __init__(self, crop):
        self.crop = crop


def save_model_atomically(model, path):
    """`model.save` to a temporary file beside `path`, renamed into place when complete."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".model.", suffix=".keras", dir=directory)
    os.close(handle)
    _default_permissions(temporary)
    try:
        model.save(temporary, overwrite=True)
        os.replace(temporary, path)
    finally:
        _remove(temporary)


def _check_resume(output, run) -> int:
    """The number of evaluation periods a checkpoint in `output` has done (0: a fresh run)."""
    metadata = os.path.join(output, CHECKPOINT_DIR, "training_metadata.json")
    if not os.path.exists(metadata):
        return 0
    previous_path = os.path.join(output, RUN_FILE)
    previous = json.load(open(previous_path)) if os.path.exists(previous_path) else None
    if previous is not None and previous != json.loads(json.dumps(run)):
        changed = sorted(k for k in set(run) | set(previous) if json.dumps(run.get(k)) != json.dumps(previous.get(k)))
        raise ValueError(f"{output} holds a checkpoint of a different run (differs in: {', '.join(changed)}). "
                         "Repeat the original command to resume it, or pass --overwrite to start again.")
    with open(metadata) as stream:
        return int(json.load(stream).get("epoch", 0))


def _last(history, key):
    values = history.history.get(key)
    return float(values[-1]) if values else None


def _write_json_atomically(path, data):
    handle, temporary = tempfile.mkstemp(prefix=".tmp.", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2)
    _default_permissions(temporary)
    os.replace(temporary, path)


def _default_permissions(path):
    """mkstemp makes files private (0600); results should get the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _remove(path):
    if os.path.exists(path):
        os.remove(path)


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
