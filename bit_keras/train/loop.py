"""The upstream training loop: one custom `strategy.run` loop for TPU, GPUs and CPU.

Why a custom loop and not `model.fit`: resuming mid-epoch needs the data position to be a
function of the restored update counter (fit restarts its epoch), preemption needs a
checkpoint at a step boundary that we choose, the weight decay is a coupled L2 term on the
kernels only, and TPUs want several steps per host call; all are a few plain lines here.

Weight decay: the paper's "1e-4" is read the way the ResNet line of work it builds on
(TF's official ResNet, Goyal et al. 2017) meant it: a coupled L2 term
`1e-4 / 2 * sum(kernel ** 2)` added to the loss, so its gradient `1e-4 * kernel` goes
through momentum like the data gradient. It covers the convolution kernels and the head's
kernel, not GroupNorm's gamma/beta nor the head's bias. Keras' built-in `weight_decay` is
the decoupled form, which bypasses momentum and so decays about 10x less per step at
momentum 0.9 with the same 1e-4 -- a different recipe from the paper's.

Fault tolerance: `tf.train.CheckpointManager` under `model_dir/checkpoints` (model,
optimizer and its update counter) every `checkpoint_every` updates and on SIGTERM.
TensorFlow writes a checkpoint's files under `<prefix>_temp/` and renames them into place,
and only then rewrites the `checkpoint` index file with an atomic temp-file rename
(`file_io.atomic_write_string_to_file`), so the index never names a half-written
checkpoint and a run killed at any moment restarts from the last complete one. A NaN or
infinite loss stops the run (DivergedError) before a checkpoint or bit_final.npz keeps it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from bit_keras import files, plots, runs
from bit_keras.train.schedules import UpstreamSchedule
from bit_keras.errors import ConfigError

FINAL_WEIGHTS = "bit_final.npz"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job


@dataclasses.dataclass
class TrainConfig:
    """Everything one upstream run needs; `bit_keras train` fills it from flags."""

    model_dir: str
    dataset: str
    schedule: UpstreamSchedule
    block_units: tuple = (3, 4, 6, 3)
    width: int = 1
    split: str = "train"
    data_dir: str | None = None
    download: bool = True            # False: a tfds dataset must already be prepared
    strategy: str = "auto"
    tpu: str | None = None
    precision: str = "auto"          # auto: bfloat16 on TPU, float32 elsewhere
    jit_compile: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 100
    steps_per_loop: int = 1          # updates per host call (TPUs like 50-200)
    max_steps: int | None = None     # stop early; the schedule still spans the whole run
    shuffle_buffer: int = 10_000     # decoded images; ~4 GB at ImageNet sizes
    crop_area_min: float = 0.08
    flip: bool = True
    init_weights: str | None = None  # a release-layout .npz to start from (fresh runs only)


@dataclasses.dataclass
class TrainResult:
    step: int
    total_steps: int
    start_step: int
    preempted: bool
    final_weights: str | None
    last_loss: float | None
    history: list                    # (step, loss, top1, learning rate, images per second)
    model: object = None             # the trained BiTImageClassifier (for notebooks and checks)


class _StopFlag:
    """Set by SIGTERM; the loop checks it between host calls and checkpoints before leaving."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


@runs.holding_lock(lambda config, **_: config.model_dir)
def train(config: TrainConfig, *, strategy=None, source=None, log=print) -> TrainResult:
    """Runs (or resumes) one upstream pre-training run in `config.model_dir`.

    Args:
        strategy: a ready `tf.distribute.Strategy`; by default one from config.strategy/tpu.
        source: `(dataset, DatasetInfo)` of uint8 images and labels instead of
            `load_source(config.dataset)` (in-memory data for tests and notebooks).
        log: where the progress lines go.
    """
    import keras
    import tensorflow as tf

    from bit_keras import checkpoint as release_checkpoint
    from bit_keras.backbone import BiTBackbone
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.schedules import WarmupStepDecay
    from bit_keras.summaries import write_scalar
    from bit_keras.train import input as upstream_input
    from bit_keras.train.strategy import make_strategy, per_replica_batch

    _check_config(config)
    strategy = strategy or make_strategy(config.strategy, config.tpu)
    on_tpu = isinstance(strategy, (tf.distribute.TPUStrategy,))
    replicas = strategy.num_replicas_in_sync
    schedule = config.schedule
    batch = int(schedule.batch_size)
    per_replica = per_replica_batch(batch, replicas)

    if source is None:
        from bit_keras.data import load_source

        source = load_source(config.dataset, config.split, data_dir=config.data_dir, download=config.download)
    dataset, info = source
    plan = schedule.plan(info.train_size)
    stop_step = plan.total_steps if config.max_steps is None else min(plan.total_steps, int(config.max_steps))
    precision = config.precision if config.precision != "auto" else ("bfloat16" if on_tpu else "float32")
    run = {"dataset": config.dataset, "split": config.split, "block_units": list(config.block_units),
           "width": int(config.width), "num_classes": int(info.num_classes), "train_size": int(info.train_size),
           "batch_size": batch, "image_size": int(schedule.image_size), "seed": int(config.seed),
           "multi_label": bool(schedule.multi_label), "plan": plan.to_dict(), "precision": precision}
    # A restart must match all of it, or the restored data position and weights would mean something else.
    runs.check_resume(config.model_dir, run, restart="use a new --model-dir")

    # Same initial weights for every strategy. Keras' initializers draw from its own seed
    # generator; TensorFlow's global seed is cleared again because the input stream seeds
    # every op itself (and tf.data refuses tensor seeds while a global seed is set).
    keras.utils.set_random_seed(config.seed)
    tf.random.set_seed(None)
    with strategy.scope():
        policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
        model = BiTImageClassifier(BiTBackbone(config.block_units, config.width, dtype=policy),
                                   info.num_classes, multi_label=schedule.multi_label, dtype=policy)
        optimizer = keras.optimizers.SGD(learning_rate=WarmupStepDecay.from_plan(plan),
                                         momentum=schedule.momentum)
        optimizer.build(model.trainable_variables)
        state = tf.train.Checkpoint(model=model, optimizer=optimizer)
        manager = tf.train.CheckpointManager(state, files.join(config.model_dir, "checkpoints"),
                                             max_to_keep=config.keep_checkpoints, checkpoint_name="ckpt")
        if manager.latest_checkpoint:
            state.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        elif config.init_weights:
            release_checkpoint.load_weights(model, config.init_weights)
    runs.write_run(config.model_dir, run)  # only now: a network or weights that fail to build leave no record
    start_step = int(optimizer.iterations.numpy())
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel")]

    log(f"strategy {_strategy_label(strategy)}, {replicas} replica(s): global batch {batch} = {per_replica} "
        f"per replica; precision {precision}; jit_compile {'on' if config.jit_compile else 'off'}")
    log(f"data {info.name}: {info.train_size} images, {info.num_classes} classes, crops of {schedule.image_size}px; "
        f"{'sigmoid' if schedule.multi_label else 'softmax'} cross-entropy")
    log(f"schedule {schedule.name}: {schedule.epochs:g} epochs = {plan.total_steps} updates "
        f"({plan.steps_per_epoch:.2f} per epoch), warm-up {plan.warmup_steps}, x0.1 at updates "
        f"{', '.join(map(str, plan.decay_steps)) or 'none'}; peak lr {plan.learning_rate_peak:g}, momentum "
        f"{schedule.momentum}, L2 weight decay {schedule.weight_decay:g} on {len(kernels)} kernels")
    for warning in plan.warnings():
        log(f"warning: {warning}")
    if start_step:
        log(f"resuming from {os.path.basename(manager.latest_checkpoint)} at step {start_step} "
            f"(epoch {plan.epoch_of(start_step):.2f}, lr {plan.learning_rate(start_step):.6g})")

    def make_dataset(input_context):
        pipeline_batch = input_context.get_per_replica_batch_size(batch)
        return upstream_input.upstream_dataset(
            dataset, num_classes=info.num_classes, train_size=info.train_size, image_size=schedule.image_size,
            batch_size=pipeline_batch, seed=config.seed, start_example=start_step * batch, flip=config.flip,
            shuffle_buffer=config.shuffle_buffer, crop_area=(config.crop_area_min, 1.0),
            input_context=input_context)

    def compute_gradients(images, targets):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            if schedule.multi_label:
                per_example = tf.reduce_sum(
                    tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
            else:
                per_example = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
            l2 = 0.5 * schedule.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k.value)) for k in kernels])
            total = loss + l2 / replicas   # summed over replicas by the optimizer's all-reduce
        gradients = tape.gradient(total, model.trainable_variables)
        hits = tf.gather(targets, tf.argmax(logits, axis=-1), batch_dims=1) > 0
        return gradients, loss, tf.reduce_sum(tf.cast(hits, tf.float32))

    if config.jit_compile:
        compute_gradients = tf.function(compute_gradients, jit_compile=True)

    def replica_step(images, targets):
        gradients, loss, hits = compute_gradients(images, targets)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, hits

    @tf.function
    def train_steps(iterator, steps):
        loss_sum, hit_sum = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(steps):
            loss, hits = strategy.run(replica_step, args=next(iterator))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            hit_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, hits, axis=None)
        return loss_sum, hit_sum

    history, step, preempted, last_loss = [], start_step, False, None
    stop = _StopFlag()
    previous_handler = _install(signal.SIGTERM, stop)
    try:
        if step < stop_step:
            iterator = iter(strategy.distribute_datasets_from_function(make_dataset))
        writer = tf.summary.create_file_writer(files.join(config.model_dir, "train"))
        window = {"steps": 0, "loss": 0.0, "hits": 0.0, "start": time.perf_counter()}
        while step < stop_step:
            if stop.signal is not None:
                preempted = True
                break
            steps = min(config.steps_per_loop, stop_step - step,
                        config.log_every - step % config.log_every,
                        config.checkpoint_every - step % config.checkpoint_every)
            loss_sum, hit_sum = train_steps(iterator, tf.constant(steps, tf.int32))
            runs.check_finite(loss_sum, step + steps)  # before any checkpoint can keep the broken weights
            window["loss"] += float(loss_sum)
            window["hits"] += float(hit_sum)
            window["steps"] += steps
            step += steps
            if step % config.log_every == 0 or step == stop_step:
                seconds = time.perf_counter() - window["start"]
                last_loss = window["loss"] / window["steps"]
                top1 = window["hits"] / (window["steps"] * batch)
                rate = plan.learning_rate(step - 1)
                speed = window["steps"] * batch / seconds
                history.append((step, last_loss, top1, rate, speed))
                log(f"step {step}/{plan.total_steps} epoch {plan.epoch_of(step):.2f} loss {last_loss:.4f} "
                    f"top-1 {100 * top1:.2f}% lr {rate:.6g} images/s {speed:.1f}")
                with writer.as_default():
                    for name, value in (("loss", last_loss), ("top1", top1), ("learning_rate", rate),
                                        ("images_per_second", speed)):
                        write_scalar(name, value, step)
                writer.flush()
                window = {"steps": 0, "loss": 0.0, "hits": 0.0, "start": time.perf_counter()}
            if step % config.checkpoint_every == 0 and step < stop_step:
                manager.save(checkpoint_number=step)
                log(f"checkpoint {manager.latest_checkpoint} at step {step}")
        if step > start_step or stop.signal is not None:
            if _latest_step(manager) != step:
                manager.save(checkpoint_number=step)
            log(f"checkpoint {manager.latest_checkpoint} at step {step}"
                + (" (SIGTERM: stopping; rerun the same command to resume)" if preempted else ""))
    finally:
        _install(signal.SIGTERM, previous_handler)

    final = None
    if not preempted:
        final = files.join(config.model_dir, FINAL_WEIGHTS)
        release_checkpoint.save_weights(model, final)  # atomic, also on gs://
        log(f"wrote {final} (release .npz layout) at step {step}")
        curves = plots.train_curves(files.join(config.model_dir, "train"),
                                    files.join(config.model_dir, plots.CURVES_FILE),
                                    title=f"bit_keras train on {info.name}, {schedule.name} schedule, batch {batch}")
        if curves:
            log(f"wrote {curves} (loss, top-1 and learning rate against step, all sessions)")
    return TrainResult(step=step, total_steps=plan.total_steps, start_step=start_step, preempted=preempted,
                       final_weights=final, last_loss=last_loss, history=history, model=model)


def _check_config(config):
    for name in ("checkpoint_every", "keep_checkpoints", "log_every", "steps_per_loop"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be >= 1. Received: {getattr(config, name)}")
    if config.max_steps is not None and int(config.max_steps) < 0:
        raise ConfigError(f"max-steps must be >= 0. Received: {config.max_steps}")
    if config.precision not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"precision must be auto, float32 or bfloat16. Received: {config.precision!r}")
    if not 0 < config.crop_area_min <= 1:
        raise ConfigError(f"crop-area-min must be in (0, 1]. Received: {config.crop_area_min}")


def _strategy_label(strategy):
    name = type(strategy).__name__
    return "default (one device)" if name.startswith("_Default") else name


def _latest_step(manager):
    latest = manager.latest_checkpoint
    return int(latest.rsplit("-", 1)[-1]) if latest else None


def _install(signum, handler):
    """signal.signal where allowed (only the main thread may); returns the previous handler."""
    try:
        return signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    except ValueError:
        return None
