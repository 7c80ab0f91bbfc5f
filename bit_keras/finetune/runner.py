"""`finetune()` and `evaluate()`: the whole HyperRule recipe on a named dataset, resumable.

The output directory holds everything a run needs to be inspected or continued:

    run.json        what was asked (dataset, variant, rule); a resumed run must match it
    checkpoint/     update-N.weights.h5: model and optimizer after every evaluation period, the newest
                    two, each complete or absent (`bit_keras.resume`); removed only once metrics.json
                    is in place (a kill before that resumes)
    checkpoint-damaged/  checkpoints that could not be read, moved aside (never deleted)
    logs/           metrics.csv, and TensorBoard scalars in train/ and validation/ (step: updates)
    model.keras     the fine-tuned classifier (written atomically at the end)
    savedmodel/     the same as a TF-Hub SavedModel (logits), when asked for
    curves.png      loss, accuracy and learning rate against updates, from logs/metrics.csv
    metrics.json    the final metrics (written atomically, last: its presence means "done")

A run killed at any point (or stopped by a full disk) is continued by running the same
command again: the model and optimizer variables come back from the newest readable
checkpoint, including the optimizer's update counter, so the schedule continues at the right
step and learning rate. `overwrite` replaces
only a folder that looks like a run, and only once the data and model have been built.

Under a multi-worker strategy every worker runs the same call; only the chief writes into
`output`. The others write their checkpoints, logs and exports into a private scratch folder
removed at the end (TensorFlow's multi-worker rule: all take part in every collective
step, one keeps the files) and resume from the chief's checkpoint, so `output` must be on a
filesystem all workers see (NFS, gs://) for a restarted worker to resume.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings as python_warnings
import zipfile

import numpy as np


from bit_keras import files, plots, resume, runs
from bit_keras.errors import BiTError, CheckpointError, ConfigError, MissingFileError, StoppedError
from bit_keras.distribute import jax_data_parallel

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"
SAVEDMODEL_DIR = "savedmodel"
RUN_MARKERS = (runs.RUN_FILE, METRICS_FILE, CHECKPOINT_DIR)  # what `overwrite` may replace


def _lock_dir(source, *, output, strategy=None, **_):
    """The directory this process writes: the run's, or a non-chief worker's scratch folder."""
    from bit_keras.distribute import is_chief, worker_scratch

    chief = is_chief(name=strategy) if isinstance(strategy, str) or strategy is None else is_chief(strategy)
    return output if chief else worker_scratch()


@runs.holding_lock(_lock_dir)
@jax_data_parallel()  # a fresh scope per call; only on JAX with several devices
def finetune(source, *, dataset, output, weights=None, load_weights=True, cache_dir=None,
             examples_per_class=None, batch_size=512,
             micro_batch_size=None, steps=None, eval_every=None, flip=True, crop=True, resolution=None,
             base_learning_rate=None, train_split="train", eval_split="test", data_dir=None, download=True, seed=0,
             overwrite=False, savedmodel=False, callbacks=(), verbose=1, log=None, strategy=None,
             precision="auto") -> dict:
    """Fine-tunes `source` on `dataset` with the HyperRule.

    `source` is a model name (a release means its released weights, an architecture random
    ones: `bit_keras.weights`), a `WeightsChoice`, an exported directory or a Keras backbone.
    A release is fetched before anything else happens, so offline it fails at once.

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
        log: where the run header (strategy, replicas, batch split), warnings and "resuming"
            go (the CLI passes `print`); None says nothing.
        strategy: a `tf.distribute.Strategy` or its name ("mirrored", "multi_worker", "tpu", ...);
            None: the one in force. `batch_size` is global; `micro_batch_size` is per replica.
            On the JAX backend every local device is used through `keras.distribution.DataParallel`.
        precision: "float32", "bfloat16" (Keras mixed_bfloat16: float32 weights, bfloat16
            compute; about half the activation memory) or "auto" (bfloat16 on a TPU, else float32).

    Returns the final metrics (also written to output/metrics.json).
    """
    from bit_keras import weights as weights_rule
    from bit_keras.distribute import describe, is_chief, jax_devices_in_use, per_replica_batch, resolve_strategy
    from bit_keras.finetune.fine_tuner import build_finetuner
    from bit_keras.precision import PRECISION_POLICIES, EmulatedBFloat16Warning

    _check_arguments(dataset, train_split, eval_split, data_dir=data_dir, precision=precision,
                     examples_per_class=examples_per_class, micro_batch_size=micro_batch_size, eval_every=eval_every)
    if isinstance(source, str) and not weights_rule.is_export(source):
        source = weights_rule.resolve(source, weights, load_weights=load_weights, cache_dir=cache_dir)
    if isinstance(source, weights_rule.WeightsChoice):
        weights, load_weights = None, True
    output = os.fspath(output)
    if os.path.exists(os.path.join(output, METRICS_FILE)) and not overwrite:
        raise ConfigError(f"{output} holds a finished run ({METRICS_FILE}); pass --overwrite or another --output.")
    strategy = resolve_strategy(strategy)
    chief = is_chief(strategy)  # the default strategy and the JAX stand-in have no cluster: chief
    jax_devices = jax_devices_in_use()
    if jax_devices > 1:  # keras.distribution splits each step's batch over the devices
        per_replica_batch(micro_batch_size or batch_size, jax_devices)
    if overwrite and chief:  # refused now if not a run; replaced only once the data and model are known to work
        files.check_target(output, overwrite=True, markers=RUN_MARKERS, kind="a bit_keras finetune run")

    train_ds, eval_ds, info, train_size = _load_data(dataset, train_split, eval_split, data_dir=data_dir,
                                                     download=download, examples_per_class=examples_per_class,
                                                     seed=seed)
    _seed_initial_weights(seed)  # an architecture name draws its random weights now
    with python_warnings.catch_warnings():
        if log is not None:  # said once, in the run header's warnings, instead
            python_warnings.simplefilter("ignore", EmulatedBFloat16Warning)
        ft = build_finetuner(source, num_classes=info.num_classes, train_size=train_size,
                             image_size=info.image_size, batch_size=batch_size, micro_batch_size=micro_batch_size,
                             weights=weights, load_weights=load_weights, cache_dir=cache_dir, steps=steps,
                             resolution=resolution, base_learning_rate=base_learning_rate, flip=flip, crop=crop,
                             strategy=strategy, dtype=PRECISION_POLICIES.get(precision))  # auto: None
    eval_every = min(int(eval_every or max(1, math.ceil(ft.rule.total_steps / 10))), ft.rule.total_steps)
    run = _run_record(ft, info, source=source, weights=weights, dataset=dataset, train_split=train_split,
                      eval_split=eval_split, examples_per_class=examples_per_class, train_size=train_size,
                      flip=flip, crop=crop, eval_every=eval_every, seed=seed)
    if log is not None:
        log(_header(ft, describe(ft.strategy) if ft.strategy is not None else None, jax_devices))
        log(_plan(ft.rule, base_learning_rate, crop=ft.crop))
    fit = dict(train_ds=train_ds, eval_ds=eval_ds, eval_every=eval_every, callbacks=callbacks,
               savedmodel=savedmodel, verbose=verbose)
    if not chief:
        return _fit_as_worker(ft, run, output, overwrite=overwrite, **fit)
    # Only now: a bad dataset or variant leaves no empty run behind and destroys no old one.
    start = _open_output(output, run, overwrite=overwrite, total_steps=ft.rule.total_steps, log=log)
    for warning in _warnings(ft, info, source=source, base_learning_rate=base_learning_rate, dataset=dataset,
                             train_split=train_split, train_size=train_size) if log is not None else ():
        log(f"warning: {warning}")
    return _fit_and_save(ft, run, output, start=start, log=log, chief=True, **fit)


def _check_arguments(dataset, train_split, eval_split, *, data_dir, precision, **counts) -> None:
    """Refuses bad numbers, an unknown precision and missing splits before any weights or model."""
    from bit_keras.data import check_split
    from bit_keras.precision import resolve_precision

    resolve_precision(precision)  # refuses an unknown name; "auto" is decided with the strategy (build_finetuner)
    for name, value in counts.items():
        if value is not None and (int(value) != value or value < 1):  # 0 would silently mean "the default"
            raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}")
    for split in (train_split, eval_split) if eval_split else (train_split,):
        check_split(dataset, split, data_dir=data_dir)


def _load_data(dataset, train_split, eval_split, *, data_dir, download, examples_per_class, seed):
    """(train dataset, eval dataset or None, train DatasetInfo, training-set size after few-shot selection)."""
    from bit_keras.data import few_shot, load_source

    train_ds, info = load_source(dataset, train_split, data_dir=data_dir, download=download)
    train_size = info.train_size
    if examples_per_class:
        train_ds = few_shot(train_ds, int(examples_per_class), num_classes=info.num_classes, seed=seed)
        train_size = int(examples_per_class) * info.num_classes
    eval_ds = load_source(dataset, eval_split, data_dir=data_dir, download=download)[0] if eval_split else None
    return train_ds, eval_ds, info, train_size


def _run_record(ft, info, *, source, weights, dataset, train_split, eval_split, examples_per_class, train_size,
                flip, crop, eval_every, seed) -> dict:
    """run.json's configuration: what a resumed run must match."""
    from bit_keras.finetune.fine_tuner import backbone_policy

    run = {"dataset": dataset, "train_split": train_split, "eval_split": eval_split,
           "source": _describe_source(source), "weights": _describe_weights(source, weights),
           "examples_per_class": examples_per_class, "train_size": train_size,
           "num_classes": info.num_classes, "class_names": list(info.class_names), "flip": flip, "crop": crop,
           # Examples per forward/backward step over all replicas: what the data and the schedule
           # depend on, so a run resumes on another number of devices when the math is the same.
           "micro_batch_size": ft.step_batch_size, "eval_every": eval_every, "seed": seed,
           "hyperrule": ft.rule.to_dict()}
    if info.lost_by_class:  # the true counts: train_size is what is readable; these were left out
        run["left_out_by_class"] = {name: lost for name, lost, _ in info.lost_by_class}
    policy = backbone_policy(ft.backbone)
    if policy != "float32":  # absent means float32, as in runs recorded before precision could change
        run["precision"] = policy
    return run


def _fit_as_worker(ft, run, output, *, overwrite, **fit) -> dict:
    """A non-chief worker: resumes from the chief's checkpoint, writes into a scratch folder it removes."""
    from bit_keras.distribute import worker_scratch

    start = None if overwrite else _resume_point(output, run, None, move_damaged=False)
    writes = worker_scratch()
    files.remove(writes)
    os.makedirs(os.path.join(writes, CHECKPOINT_DIR))
    if start is not None:
        start = (start[0], shutil.copy(start[1], os.path.join(writes, CHECKPOINT_DIR)))
    try:
        return _fit_and_save(ft, run, writes, start=start, log=None, chief=False, **fit)
    finally:
        files.remove(writes)


def _open_output(output, run, *, overwrite, total_steps, log):
    """Makes `output` this run's (an old run goes aside in one rename, so the new one starts clean: no old
    logs or checkpoint), writes run.json and returns where to resume: (update, checkpoint) or None."""
    replaced = files.move_aside(output) if overwrite and os.path.lexists(output) else None
    os.makedirs(output, exist_ok=True)
    start = _resume_point(output, run, log)
    runs.write_run(output, run)
    if replaced:
        files.remove(replaced)
    if start is not None and log is not None:
        log(f"Resuming from {start[1]} (update {start[0]} of {total_steps}).")
    return start


def _warnings(ft, info, *, source, base_learning_rate, dataset, train_split, train_size) -> list:
    """What the run header warns about: the schedule's own, random weights at the HyperRule's rate, unreadable files."""
    warnings = [ft.precision_warning] if ft.precision_warning else []
    warnings += ft.rule.warnings()
    if getattr(source, "random", False) and base_learning_rate is None:
        warnings.append(f"random weights: the HyperRule's learning rate ({ft.rule.base_learning_rate:.2g}) is tuned "
                        "for pre-trained features and barely moves random weights; pass a higher one with "
                        "--learning-rate (learning_rate=), e.g. --learning-rate 0.01 as `bit_keras demo` does.")
    if info.skipped:
        shown = ", ".join(f"{os.path.basename(path)} ({why})" for path, why in info.skipped[:3])
        by_class = ", ".join(f"{name} {lost} of {of}" for name, lost, of in info.lost_by_class)
        warnings.append(f"{len(info.skipped)} file(s) of {dataset} [{train_split}] cannot be read as images and were "
                        f"left out before training (by class: {by_class}); it trains on the {train_size} readable "
                        f"ones: {shown}" + (", ..." if len(info.skipped) > 3 else ""))
    return warnings


def _seed_initial_weights(seed):
    """Seeds Keras' initializers, so one --seed gives the same random weights in every run and strategy.

    TensorFlow's global seed is cleared again (as `bit_keras train` does): the input pipeline
    seeds each of its ops itself, and the data order stays what it was without a global seed.
    """
    import keras

    keras.utils.set_random_seed(int(seed))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.random.set_seed(None)


def _plan(rule, base_learning_rate, *, crop=True) -> str:
    """The run header's schedule line: what the HyperRule (or a flag) decided."""
    from bit_keras.hyperrule import BASE_BATCH, BASE_LEARNING_RATE

    where = ("--learning-rate" if base_learning_rate is not None
             else f"HyperRule {BASE_LEARNING_RATE:g} x {rule.batch_size}/{BASE_BATCH}")
    images = f"resized to {rule.resize} px, random crops of {rule.crop} px" if crop else f"resized to {rule.crop} px"
    decays = ", ".join(map(str, rule.decay_boundaries)) or "none"
    mixup = f"alpha {rule.mixup_alpha:g}" if rule.mixup_alpha else "off"
    return (f"plan: {rule.total_steps} updates at batch {rule.batch_size}; peak learning rate "
            f"{rule.base_learning_rate:.3g} ({where}), linear warm-up {rule.warmup_steps} updates, /10 at updates "
            f"{decays}; images {images}; MixUp {mixup}; "
            f"SGD momentum {rule.momentum:g}")


def _header(ft, strategy_name, jax_devices) -> str:
    """The run header's hardware line: how the global batch splits over replicas and accumulation."""
    if jax_devices > 1:
        where = f"JAX DataParallel over {jax_devices} devices"
        replicas, per_replica = jax_devices, ft.micro_batch_size // jax_devices
    else:
        where = f"strategy {strategy_name or 'default (one device)'}"
        replicas, per_replica = ft.replicas, ft.micro_batch_size
    return (f"{where}, {replicas} replica(s): global batch {ft.batch_size} = {replicas} replica(s) x "
            f"{per_replica} per replica x {ft.accumulation_steps} accumulation step(s)")


def _fit_and_save(ft, run, output, train_ds, eval_ds, eval_every, start, callbacks, *, savedmodel,
                  verbose, log, chief):
    """Trains to the end of the schedule, then writes model.keras (and the rest, on the chief) into `output`."""
    import keras

    from bit_keras.export.keras_file import export_keras
    from bit_keras.finetune.fine_tuner import ResumeCheckpoints
    from bit_keras.summaries import ScalarLogger

    dataset, seed, num_classes = run["dataset"], run["seed"], run["num_classes"]
    metrics_path = os.path.join(output, METRICS_FILE)
    batch_size = ft.batch_size
    os.makedirs(os.path.join(output, LOGS_DIR), exist_ok=True)
    # The schedule follows the optimizer's restored update counter, not the epoch number.
    resumed_epoch = math.ceil(start[0] / eval_every) if start is not None else 0
    run_callbacks = [
        # Kept after fit (removed below) until the final files are in place.
        ResumeCheckpoints(os.path.join(output, CHECKPOINT_DIR), eval_every=eval_every,
                          total_updates=ft.rule.total_steps, restore=start[1] if start is not None else None),
        keras.callbacks.CSVLogger(os.path.join(output, LOGS_DIR, "metrics.csv"), append=True),
        ScalarLogger(os.path.join(output, LOGS_DIR)),  # TensorBoard: logs/train, logs/validation
        *callbacks,
    ]
    started = time.time()
    # A resumed run draws a fresh data order instead of replaying the examples already seen.
    try:
        history = ft.fit(train_ds, validation_data=eval_ds, eval_every=eval_every, callbacks=run_callbacks,
                         seed=seed + resumed_epoch, verbose=verbose, initial_epoch=resumed_epoch)
    except StoppedError as stopped:
        kept = resume.latest_updates(os.path.join(output, CHECKPOINT_DIR))
        raise StoppedError(f"{stopped} {os.path.join(output, CHECKPOINT_DIR)} keeps update {kept}: run the same "
                           "command again to resume from there." if kept else
                           f"{stopped} No evaluation period was complete, so no checkpoint was written: running "
                           "the same command again starts the run afresh.") from None
    seconds = time.time() - started

    metrics = {"dataset": dataset, "source": run["source"], "weights": run["weights"], "train_size": run["train_size"],
               "num_classes": num_classes, "chance_accuracy": 1.0 / num_classes,
               "updates": int(np.asarray(ft.model.optimizer.iterations)), "train_seconds_this_session": round(seconds, 1),
               "final_learning_rate": float(np.asarray(ft.model.optimizer.learning_rate)),
               "train_loss": _last(history, "loss"), "train_accuracy": _last(history, "accuracy")}
    if eval_ds is not None:
        scores = ft.evaluate(eval_ds)  # every example once, whatever the split's size and the replicas
        metrics.update({"eval_split": run["eval_split"], "eval_loss": float(scores["loss"]),
                        "eval_accuracy": float(scores["accuracy"])})
    metrics["hyperrule"] = ft.rule.to_dict()
    # Every worker saves (a save may read distributed variables collectively); only the chief's stays.
    export_keras(ft.model, os.path.join(output, MODEL_FILE), overwrite=True)
    if savedmodel:
        from bit_keras.export import export_model

        export_model(ft.model, os.path.join(output, SAVEDMODEL_DIR), overwrite=True, metadata={
            "variant": ft.variant, "outputs": "logits", "num_classes": num_classes,
            "class_names": run["class_names"], "fine_tuned_on": dataset, "hyperrule": ft.rule.to_dict()})
        metrics["savedmodel"] = os.path.join(output, SAVEDMODEL_DIR)
    if chief:  # a picture nobody would see
        plots.finetune_curves(os.path.join(output, LOGS_DIR, "metrics.csv"), os.path.join(output, plots.CURVES_FILE),
                              rule=ft.rule, title=f"fine-tuning {os.path.basename(run['source'])} on {dataset}, batch {batch_size}")
    files.write_json(metrics_path, metrics)
    files.remove(os.path.join(output, CHECKPOINT_DIR))  # only now: a kill before metrics.json resumes
    return metrics


def evaluate(model_path, *, dataset, split="test", batch_size=128, resolution=None, data_dir=None,
             download=True, strategy=None) -> dict:
    """Scores a fine-tuned `.keras` file on a dataset split; the resolution comes from its run.json.

    `strategy` (a `tf.distribute.Strategy` or its name) spreads the batches over its replicas;
    the model and metrics are built in its scope.
    """
    import keras

    from bit_keras.data import check_split, load_source
    from bit_keras.distribute import resolve_strategy
    from bit_keras.train.evaluation import score_split

    check_split(dataset, split, data_dir=data_dir)  # before the model is loaded
    model_path = os.fspath(model_path)
    if os.path.isdir(model_path) and os.path.exists(os.path.join(model_path, MODEL_FILE)):
        model_path = os.path.join(model_path, MODEL_FILE)
    if not os.path.isfile(model_path) or not model_path.endswith(".keras"):
        raise MissingFileError(f"{model_path} is not a .keras file or a finetune output directory holding {MODEL_FILE}.")
    run = runs.read_run(os.path.dirname(model_path)) or {}
    if resolution is None:
        if "hyperrule" not in run:
            raise ConfigError(f"No {runs.RUN_FILE} beside {model_path} says its input resolution; pass --resolution.")
        resolution = run["hyperrule"]["crop"]
    ds, info = load_source(dataset, split, data_dir=data_dir, download=download)
    strategy = resolve_strategy(strategy)
    with strategy.scope():
        model = _load_classifier(model_path, run)
        num_classes = int(model.output_shape[-1])
        if info.num_classes != num_classes:
            raise ConfigError(f"{model_path} has {num_classes} classes but {dataset} has {info.num_classes}.")
        model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        # Every example once, also when the split does not divide over the replicas.
        scores = score_split(model, ds, crop=int(resolution), num_classes=num_classes, batch_size=batch_size,
                             strategy=strategy)
    return {"model": model_path, "dataset": dataset, "split": split, "examples": info.train_size,
            "resolution": int(resolution), "loss": float(scores["loss"]), "accuracy": float(scores["accuracy"]),
            "chance_accuracy": 1.0 / num_classes}


def _load_classifier(model_path, run):
    """The classifier in `model_path`, never running code stored in the file (Keras' safe_mode stays on).

    A run from a SavedModel export holds a TFSMLayer, which safe_mode refuses (it would load
    whatever SavedModel the file names), so the classifier is rebuilt from run.json's export
    path and class count and only the weights are read from the file.
    """
    import keras

    from bit_keras.classifier import BiTImageClassifier  # registers the BiT classes for load_model
    from bit_keras.learning_rates import WarmupStepDecay  # noqa: F401  (registers the schedule)

    source = run.get("source")
    if isinstance(source, str) and os.path.isabs(source) and not os.path.exists(source) and not source.endswith(".keras"):
        raise MissingFileError(f"{model_path} was fine-tuned from the export {source}, which is not there any "
                               "more; put it back to evaluate the run.")
    try:
        if isinstance(source, str) and os.path.isdir(source):
            from bit_keras.export import load_backbone

            model = BiTImageClassifier(load_backbone(source), int(run["num_classes"]))
            model.load_weights(model_path)  # reads model.weights.h5 only, not the stored config
            return model
        return load_keras_model(model_path)
    except BiTError:
        raise
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(f"{model_path} cannot be loaded as a bit_keras run (nothing stored in it is "
                              f"executed): {reason}") from None


def _resume_point(output, run, log, *, move_damaged=True):
    """(updates, path) of the newest readable checkpoint in `output` (None: start from the beginning).

    Unreadable checkpoints are moved into checkpoint-damaged/ (by the chief only) and the one
    before is used; a checkpoint of another configuration is refused before anything moves.
    """
    directory = os.path.join(output, CHECKPOINT_DIR)
    if not resume.list_checkpoints(directory):
        if os.path.exists(os.path.join(directory, "latest.weights.h5")) and log is not None:
            log(f"warning: {directory}/latest.weights.h5 was written by an older bit_keras (Keras' BackupAndRestore), "
                "which this one does not resume from: the run starts again from the beginning.")
        return None
    runs.check_resume(output, run, restart="pass --overwrite to start again, or use another --output")
    return resume.newest_complete(directory, log=log, move_damaged=move_damaged)


def _last(history, key):
    values = history.history.get(key)
    return float(values[-1]) if values else None


def _describe_source(source) -> str:
    """What the run record calls its model: a name, an absolute export path, or a backbone's name."""
    from bit_keras.weights import WeightsChoice

    if isinstance(source, WeightsChoice):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        return os.path.abspath(source)
    return getattr(source, "name", "backbone")


def _describe_weights(source, weights):
    from bit_keras.weights import WeightsChoice

    return source.source if isinstance(source, WeightsChoice) else weights


def load_keras_model(model_path):
    """A `.keras` file's model for inference: safe_mode on (no stored code runs), no optimizer, and
    without Keras' warning that the saved optimizer state was not loaded (not wanted, not missing)."""
    import keras

    with python_warnings.catch_warnings():
        python_warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(model_path, compile=False, safe_mode=True)
