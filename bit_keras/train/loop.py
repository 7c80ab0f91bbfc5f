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

Training strategies (`TrainingOptions`, `bit_keras.train.recipes`): label smoothing goes
through Keras' losses (`label_smoothing=`: softmax targets y(1-e) + e/K, sigmoid targets
y(1-e) + e/2), dropout and stochastic depth and the normalization switches through the
network's builders, the EMA through the optimizer (`use_ema`, `ema_momentum`; Keras starts
it at the weights after the first update and then averages a <- d a + (1 - d) w after every
update), RandAugment in the input pipeline. With EMA on, evaluation and bit_final.npz use
the averaged weights (the checkpoints keep both, so training resumes from the raw ones).

Held-out evaluation (`eval_split`, `eval_every`): every `eval_every` updates and at the end,
over the whole split, distributed like training (`bit_keras.train.evaluation`); TensorBoard
scalars in `model_dir/eval`, a progress line, and the latest result in run.json's summary.
Evaluation changes no state (training=False draws no random numbers), so a resumed run
goes on evaluating at the same updates and reaches the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

from bit_keras import files, plots, runs
from bit_keras.train.recipes import TrainingOptions
from bit_keras.train.upstream_schedules import UpstreamSchedule
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
    cpu_devices: int | None = None   # split the CPU into N logical devices before making the strategy
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
    options: TrainingOptions = dataclasses.field(default_factory=TrainingOptions)
    eval_split: str | None = "auto"  # auto: the dataset's validation (or test) split; None/"none": no evaluation
    eval_every: int | None = None    # updates between evaluations (default checkpoint_every); also at the end


@dataclasses.dataclass
class TrainResult:
    step: int
    total_steps: int
    start_step: int
    preempted: bool
    final_weights: str | None
    last_loss: float | None
    history: list                    # (step, loss, top1, learning rate, images per second)
    model: object = None             # the trained BiTImageClassifier (holding the EMA weights with EMA on)
    evaluations: list = dataclasses.field(default_factory=list)  # {step, split, examples, top1, ...} of this session


class _StopFlag:
    """Set by SIGTERM; the loop checks it between host calls and checkpoints before leaving."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def _lock_dir(config, *, strategy=None, **_):
    """What this process writes: the model dir, or (a non-chief multi-worker task) its scratch folder."""
    from bit_keras.distribute import is_chief, worker_scratch

    chief = is_chief(strategy) if strategy is not None else is_chief(name=config.strategy)
    return config.model_dir if chief else worker_scratch()


@dataclasses.dataclass
class _Session:
    """What one call of `train` decided before building anything: strategy, data, plan and the run's record."""

    config: TrainConfig
    strategy: object
    chief: bool
    writes: str                      # model_dir on the chief, a scratch folder on other workers
    batch: int
    per_replica: int
    dataset: object
    info: object
    eval_source: object              # (dataset, DatasetInfo) of the held-out split, or None
    eval_split: str | None
    eval_every: int
    plan: object
    stop_step: int
    precision: str
    record: dict                     # run.json's configuration

    @property
    def schedule(self):
        return self.config.schedule

    @property
    def options(self):
        return self.config.options

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


@dataclasses.dataclass
class _State:
    """The network, its optimizer and their checkpoints, restored where a run left off."""

    model: object
    optimizer: object
    manager: object
    latest: str | None               # the checkpoint restored, None for a fresh run
    start_step: int

    @property
    def kernels(self) -> list:
        """What the L2 weight decay covers: every convolution kernel and the head's (no norm, no bias)."""
        return [v for v in self.model.trainable_variables if v.path.endswith("kernel")]


@runs.holding_lock(_lock_dir)
def train(config: TrainConfig, *, strategy=None, source=None, eval_source=None, log=print) -> TrainResult:
    """Runs (or resumes) one upstream pre-training run in `config.model_dir`.

    Args:
        strategy: a ready `tf.distribute.Strategy`; by default one from config.strategy/tpu/cpu_devices.
        source: `(dataset, DatasetInfo)` of uint8 images and labels instead of
            `load_source(config.dataset)` (in-memory data for tests and notebooks).
        eval_source: `(dataset, DatasetInfo)` of the held-out split instead of loading
            `config.eval_split` (with `source=`, no split is loaded unless this is given).
        log: where the progress lines go.
    """
    from bit_keras.distribute import make_strategy

    _check_config(config)
    if source is None:
        check_data(config, held_out=eval_source is None)  # before a cluster is waited for
    strategy = strategy or make_strategy(config.strategy, config.tpu, cpu_devices=config.cpu_devices, log=log)
    session = _start_session(config, strategy, source, eval_source)
    state = _build_state(session, log)
    _log_header(session, state, log)
    step, preempted, last_loss, history, evaluations = _run_updates(session, state, log)
    final = _finish(session, state, step, preempted, log)
    return TrainResult(step=step, total_steps=session.plan.total_steps, start_step=state.start_step,
                       preempted=preempted, final_weights=final, last_loss=last_loss, history=history,
                       model=state.model, evaluations=evaluations)


def _start_session(config, strategy, source, eval_source) -> _Session:
    """Loads the data and the held-out split, plans the schedule and checks a resumed run matches."""
    from bit_keras.distribute import is_chief, per_replica_batch, worker_scratch
    from bit_keras.precision import resolve_precision

    # TensorFlow's multi-worker rule: all workers save (saving may be collective), only the chief
    # into model_dir; the others into a scratch folder removed at the end. All restore the chief's.
    chief = is_chief(strategy)
    writes = config.model_dir if chief else worker_scratch()
    if not chief:
        files.remove(writes)
    batch = int(config.schedule.batch_size)
    per_replica = per_replica_batch(batch, strategy.num_replicas_in_sync)
    given_source = source is not None
    if source is None:
        from bit_keras.data import load_source

        source = load_source(config.dataset, config.split, data_dir=config.data_dir, download=config.download)
    dataset, info = source
    eval_split, eval_source = _held_out(config, given_source, eval_source, info)
    eval_every = int(config.eval_every or config.checkpoint_every)
    plan = config.schedule.plan(info.train_size)
    stop_step = plan.total_steps if config.max_steps is None else min(plan.total_steps, int(config.max_steps))
    precision = resolve_precision(config.precision, strategy)
    schedule = config.schedule
    record = {"dataset": config.dataset, "split": config.split, "block_units": list(config.block_units),
              "width": int(config.width), "num_classes": int(info.num_classes), "train_size": int(info.train_size),
              "batch_size": batch, "image_size": int(schedule.image_size), "seed": int(config.seed),
              "multi_label": bool(schedule.multi_label), "plan": plan.to_dict(), "precision": precision,
              "training": config.options.to_dict(), "eval_split": eval_split,
              "eval_every": eval_every if eval_split is not None else None}
    # A restart must match all of it, or the restored data position and weights would mean something else.
    runs.check_resume(config.model_dir, _as_recorded(runs.read_run(config.model_dir), record),
                      restart="use a new --model-dir")
    return _Session(config=config, strategy=strategy, chief=chief, writes=writes, batch=batch,
                    per_replica=per_replica, dataset=dataset, info=info, eval_source=eval_source,
                    eval_split=eval_split, eval_every=eval_every, plan=plan, stop_step=stop_step,
                    precision=precision, record=record)


def _held_out(config, given_source, eval_source, info):
    """(name of the split scored, its (dataset, DatasetInfo)), each None when nothing is evaluated."""
    from bit_keras.train import evaluation

    eval_split = None
    if str(config.eval_split).strip().lower() in evaluation.NONE or config.eval_split is None:
        eval_source = None          # --eval-split none
    elif eval_source is not None:
        eval_split = "given" if config.eval_split == "auto" else str(config.eval_split)
    elif not given_source or config.eval_split != "auto":
        eval_split = evaluation.resolve_split(config.eval_split, config.dataset, config.split,
                                              data_dir=config.data_dir)
        if eval_split is not None:
            from bit_keras.data import load_source

            with evaluation.naming_eval_split(eval_split):
                eval_source = load_source(config.dataset, eval_split, data_dir=config.data_dir,
                                          download=config.download)
    if eval_source is not None and eval_source[1].num_classes != info.num_classes:
        raise ConfigError(f"The evaluation split has {eval_source[1].num_classes} classes, training has "
                          f"{info.num_classes}; choose a split of the same dataset with --eval-split.")
    return eval_split, eval_source


def _build_state(session, log) -> _State:
    """Builds the network and the optimizer in the strategy's scope and restores the newest checkpoint
    (or, on a fresh run, loads `init_weights`); writes run.json only once all of that worked."""
    import keras
    import tensorflow as tf

    from bit_keras import checkpoint as release_checkpoint
    from bit_keras.backbone import BiTBackbone
    from bit_keras.classifier import BiTImageClassifier
    from bit_keras.learning_rates import WarmupCosineDecay, WarmupStepDecay
    from bit_keras.precision import PRECISION_POLICIES

    config, schedule, options = session.config, session.schedule, session.options
    # Same initial weights for every strategy. Keras' initializers draw from its own seed
    # generator; TensorFlow's global seed is cleared again because the input stream seeds
    # every op itself (and tf.data refuses tensor seeds while a global seed is set).
    keras.utils.set_random_seed(config.seed)
    tf.random.set_seed(None)
    with session.strategy.scope():
        policy = PRECISION_POLICIES[session.precision]
        model = BiTImageClassifier(BiTBackbone(config.block_units, config.width, dtype=policy,
                                               **_backbone_switches(options)),
                                   session.info.num_classes, multi_label=schedule.multi_label, dtype=policy,
                                   **({"dropout": options.dropout} if options.dropout else {}))
        rates = (WarmupCosineDecay if schedule.lr_schedule == "cosine" else WarmupStepDecay).from_plan(session.plan)
        optimizer = keras.optimizers.SGD(learning_rate=rates, momentum=schedule.momentum,
                                         **({"use_ema": True, "ema_momentum": options.ema} if options.ema else {}))
        optimizer.build(model.trainable_variables)
        state = tf.train.Checkpoint(model=model, optimizer=optimizer)
        # Before the manager reads the checkpoint index: the chief may take unreadable ones out of it.
        latest = _restore_newest(state, files.join(config.model_dir, "checkpoints"), log, move_damaged=session.chief)
        manager = tf.train.CheckpointManager(state, files.join(session.writes, "checkpoints"),
                                             max_to_keep=config.keep_checkpoints, checkpoint_name="ckpt")
        if latest is None and config.init_weights:
            release_checkpoint.load_weights(model, config.init_weights)
    runs.write_run(session.writes, session.record)  # only now: a network or weights that fail to build leave no record
    return _State(model=model, optimizer=optimizer, manager=manager, latest=latest,
                  start_step=int(optimizer.iterations.numpy()))


def _log_header(session, state, log) -> None:
    """The run's header: hardware, data, schedule, strategies, evaluation, warnings, where it resumes."""
    from bit_keras.distribute import describe as describe_strategy
    from bit_keras.precision import bfloat16_warning

    config, schedule, plan, info = session.config, session.schedule, session.plan, session.info
    log(f"strategy {describe_strategy(session.strategy)}, {session.replicas} replica(s): global batch "
        f"{session.batch} = {session.per_replica} per replica; precision {session.precision}; jit_compile "
        f"{'on' if config.jit_compile else 'off'}")
    log(f"data {info.name}: {info.train_size} images, {info.num_classes} classes, crops of {schedule.image_size}px; "
        f"{'sigmoid' if schedule.multi_label else 'softmax'} cross-entropy")
    decays = ("cosine decay to 0" if schedule.lr_schedule == "cosine"
              else f"x0.1 at updates {', '.join(map(str, plan.decay_steps)) or 'none'}")
    log(f"schedule {schedule.name}: {schedule.epochs:g} epochs = {plan.total_steps} updates "
        f"({plan.steps_per_epoch:.2f} per epoch), warm-up {plan.warmup_steps}, {decays}; peak lr "
        f"{plan.learning_rate_peak:g}, momentum {schedule.momentum}, L2 weight decay {schedule.weight_decay:g} on "
        f"{len(state.kernels)} kernels")
    log(f"training strategies: {session.options.describe()}")
    if session.eval_source is not None:
        log(f"evaluation on {session.eval_split} ({session.eval_source[1].train_size} examples at "
            f"{schedule.image_size}px) every {session.eval_every} updates and at the end; "
            + ("precision@1" if schedule.multi_label else "top-1 and top-5")
            + (" of the EMA weights" if session.options.ema else ""))
    else:
        log("evaluation: none (no held-out split; --eval-split names one)")
    warnings = run_warnings(plan, session.options) + [w for w in [bfloat16_warning(session.precision,
                                                                                   session.strategy)] if w]
    for warning in warnings:
        log(f"warning: {warning}")
    if state.start_step:
        log(f"resuming from {os.path.basename(state.latest)} at step {state.start_step} "
            f"(epoch {plan.epoch_of(state.start_step):.2f}, lr {plan.learning_rate(state.start_step):.6g})")


def _train_steps(session, state):
    """`train_steps(iterator, steps)`: `steps` updates in one host call, returning the summed loss and hits."""
    import keras
    import tensorflow as tf

    schedule, info, options = session.schedule, session.info, session.options
    model, optimizer, kernels = state.model, state.optimizer, state.kernels
    strategy, batch, replicas = session.strategy, session.batch, session.replicas

    def compute_gradients(images, targets):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            if schedule.multi_label:   # summed over classes: Keras' mean times the number of classes
                per_example = info.num_classes * keras.losses.binary_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=options.label_smoothing)
            else:
                per_example = keras.losses.categorical_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=options.label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
            l2 = 0.5 * schedule.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k.value)) for k in kernels])
            total = loss + l2 / replicas   # summed over replicas by the optimizer's all-reduce
        gradients = tape.gradient(total, model.trainable_variables)
        hits = tf.gather(targets, tf.argmax(logits, axis=-1), batch_dims=1) > 0
        return gradients, loss, tf.reduce_sum(tf.cast(hits, tf.float32))

    if session.config.jit_compile:
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

    return train_steps


def _training_input(session, state):
    """The distributed training stream, starting at the restored update's first example."""
    from bit_keras.train import input as upstream_input

    config, schedule, info, batch = session.config, session.schedule, session.info, session.batch

    def make_dataset(input_context):
        return upstream_input.upstream_dataset(
            session.dataset, num_classes=info.num_classes, train_size=info.train_size,
            image_size=schedule.image_size, batch_size=input_context.get_per_replica_batch_size(batch),
            seed=config.seed, start_example=state.start_step * batch, flip=config.flip,
            shuffle_buffer=config.shuffle_buffer, crop_area=(config.crop_area_min, 1.0),
            input_context=input_context, augment=session.options.randaugment)

    return iter(session.strategy.distribute_datasets_from_function(make_dataset))


def _evaluator(session, state, evaluations, log):
    """`run_evaluation(step)`: scores the held-out split, logs and records it; None without one."""
    if session.eval_source is None:
        return None
    import tensorflow as tf

    from bit_keras.summaries import write_scalar
    from bit_keras.train import evaluation
    from bit_keras.train import input as upstream_input

    schedule, info, eval_dataset, eval_info = session.schedule, session.info, *session.eval_source

    def make_eval_dataset(input_context):
        return upstream_input.eval_dataset(
            eval_dataset, num_classes=info.num_classes, image_size=schedule.image_size,
            batch_size=input_context.get_per_replica_batch_size(session.batch), num_examples=eval_info.train_size,
            input_context=input_context)

    evaluator = evaluation.make_evaluator(state.model, session.strategy, make_eval_dataset,
                                          num_classes=info.num_classes, multi_label=schedule.multi_label)
    eval_writer = tf.summary.create_file_writer(files.join(session.writes, "eval"))

    def run_evaluation(at_step):
        with evaluation.average_weights(state.model, state.optimizer) as averaged:
            result = evaluator()
        result = {"step": at_step, "split": session.eval_split, **result, "weights": "ema" if averaged else "raw"}
        log(f"eval step {at_step} {session.eval_split}: {evaluation.describe(result, schedule.multi_label)}"
            + (" with the EMA weights" if averaged else ""))
        with eval_writer.as_default():
            for name in evaluation.metric_names(schedule.multi_label):
                write_scalar(name, result[name], at_step)
        eval_writer.flush()
        runs.write_summary(session.writes, eval=result)
        evaluations.append(result)

    return run_evaluation


def _run_updates(session, state, log):
    """The loop: host calls of up to `steps_per_loop` updates, logging, evaluating and checkpointing at
    their boundaries, until the plan (or max_steps) ends or SIGTERM asks to stop.

    Returns (step reached, preempted, last logged loss, history rows, evaluations of this session)."""
    import tensorflow as tf

    from bit_keras.distribute import lost_worker_error
    from bit_keras.summaries import write_scalar

    config, plan, batch, manager = session.config, session.plan, session.batch, state.manager
    stop_step, eval_every = session.stop_step, session.eval_every
    train_steps = _train_steps(session, state)
    evaluations = []
    run_evaluation = _evaluator(session, state, evaluations, log)
    history, step, preempted, last_loss = [], state.start_step, False, None
    stop = _StopFlag()
    previous_handler = _install(signal.SIGTERM, stop)
    try:
        if step < stop_step:
            iterator = _training_input(session, state)
        writer = tf.summary.create_file_writer(files.join(session.writes, "train"))
        window = {"steps": 0, "loss": 0.0, "hits": 0.0, "start": time.perf_counter()}
        while step < stop_step:
            if stop.signal is not None:
                preempted = True
                break
            steps = min(config.steps_per_loop, stop_step - step,
                        config.log_every - step % config.log_every,
                        config.checkpoint_every - step % config.checkpoint_every,
                        eval_every - step % eval_every)
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
            if run_evaluation is not None and (step % eval_every == 0 or step == stop_step):
                run_evaluation(step)
            if step % config.checkpoint_every == 0 and step < stop_step:
                _save(manager, step)
                log(f"checkpoint {manager.latest_checkpoint} at step {step}")
        if step > state.start_step or stop.signal is not None:
            if _latest_step(manager) != step:
                _save(manager, step)
            log(f"checkpoint {manager.latest_checkpoint} at step {step}"
                + (" (SIGTERM: stopping; rerun the same command to resume)" if preempted else ""))
    except Exception as error:   # a multi-worker peer that stopped answering: one line, not pages of TF
        lost = lost_worker_error(error, session.strategy, checkpoint=getattr(manager, "directory", None))
        if lost is None:
            raise
        raise lost from None
    finally:
        _install(signal.SIGTERM, previous_handler)
    return step, preempted, last_loss, history, evaluations


def _finish(session, state, step, preempted, log) -> str | None:
    """The chief writes bit_final.npz (the EMA weights with EMA on) and curves.png; others remove their scratch."""
    from bit_keras import checkpoint as release_checkpoint
    from bit_keras.train import evaluation

    config = session.config
    if not session.chief:
        files.remove(session.writes)
        return None
    if preempted:
        return None
    final = files.join(config.model_dir, FINAL_WEIGHTS)
    averaged = evaluation.has_average(state.optimizer)
    if averaged:   # after the last checkpoint, which keeps the raw weights to resume from
        state.optimizer.finalize_variable_values(state.model.trainable_variables)
    release_checkpoint.save_weights(state.model, final)  # atomic, also on gs://
    log(f"wrote {final} (release .npz layout{', EMA weights' if averaged else ''}) at step {step}")
    curves = plots.train_curves(files.join(config.model_dir, "train"), files.join(config.model_dir, plots.CURVES_FILE),
                                title=f"bit_keras train on {session.info.name}, {session.schedule.name} schedule, "
                                      f"batch {session.batch}")
    if curves:
        log(f"wrote {curves} (loss, top-1 and learning rate against step, all sessions)")
    return final


def _check_config(config):
    for name in ("checkpoint_every", "keep_checkpoints", "log_every", "steps_per_loop"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be >= 1. Received: {getattr(config, name)}")
    if config.max_steps is not None and int(config.max_steps) < 0:
        raise ConfigError(f"max-steps must be >= 0. Received: {config.max_steps}")
    from bit_keras.precision import resolve_precision

    resolve_precision(config.precision)  # refuses an unknown name
    if not 0 < config.crop_area_min <= 1:
        raise ConfigError(f"crop-area-min must be in (0, 1]. Received: {config.crop_area_min}")
    if config.eval_every is not None and int(config.eval_every) < 1:
        raise ConfigError(f"eval-every must be >= 1. Received: {config.eval_every}")


def run_warnings(plan, options) -> list:
    """What the run header (and `--dry-run`) warns about: a plan that cannot do what it looks like.

    The schedule's own (a warm-up longer than the run, decays after its end; the same sentences
    as the HyperRule's), and an EMA that averages over more updates than the run has: its
    weights, which are evaluated and exported, would stay close to the first update's.
    """
    warnings = plan.warnings()
    if options.ema is not None and plan.total_steps < 1 / (1 - options.ema):
        kept = options.ema ** max(plan.total_steps - 1, 0)
        warnings.append(f"EMA decay {options.ema:g} averages over about {round(1 / (1 - options.ema))} updates, "
                        f"more than the run's {plan.total_steps}: at the end the averaged weights (evaluated and "
                        f"exported) are still {kept:.0%} the first update's (lower --ema, or --ema none)")
    return warnings


def check_data(config, *, held_out=True) -> None:
    """Refuses a dataset spec or split that cannot load, where that is known without reading data or TensorFlow.

    Runs before the strategy (a multi-worker one waits for its cluster): an unknown spec, a tfds
    name tfds does not know or a split a prepared tfds dataset does not have, a missing folder.
    Splits of folders and digits are checked as they load, before the network is built.
    """
    from bit_keras.data.sources import load_source, split_size
    from bit_keras.errors import MissingFileError
    from bit_keras.train import evaluation

    scheme, _, name = str(config.dataset).partition(":")
    if scheme == "folder" and name:
        if not os.path.isdir(os.path.expanduser(name)):
            raise MissingFileError(f"Image folder {name!r} (--dataset) does not exist. Expected PATH/<class>/*.jpg "
                                   "or PATH/<split>/<class>/*.jpg.")
        return
    if not (scheme == "tfds" and name):
        if config.dataset not in ("digits",) and scheme != "vtab":
            load_source(config.dataset, config.split)  # an unknown spec: refused before anything loads
        return
    split_size(config.dataset, config.split, data_dir=config.data_dir)  # None: not prepared yet
    eval_split = evaluation.resolve_split(config.eval_split, config.dataset, config.split, data_dir=config.data_dir)
    if held_out and eval_split is not None:
        with evaluation.naming_eval_split(eval_split):
            split_size(config.dataset, eval_split, data_dir=config.data_dir)


def _as_recorded(previous, record):
    """`record` as a run.json written before the training strategies and evaluation existed can match it.

    Such a run trained with the BiT defaults (step schedule, all strategies off) and never
    evaluated: it resumes when those defaults are kept, and may start evaluating.
    """
    if previous is None or "training" in previous:
        return record
    record = {key: value for key, value in record.items() if key not in ("eval_split", "eval_every")}
    if record["training"] == TrainingOptions().to_dict():
        del record["training"]
    if record["plan"].get("lr_schedule") == "step" and "lr_schedule" not in previous.get("plan", {}):
        record["plan"] = {key: value for key, value in record["plan"].items() if key != "lr_schedule"}
    return record


def _backbone_switches(options):
    """The network switches that differ from BiT's (GroupNorm with 32 groups, WS, no drop-path)."""
    defaults = TrainingOptions().backbone_kwargs()
    return {key: value for key, value in options.backbone_kwargs().items() if value != defaults[key]}


def _restore_newest(state, directory, log, *, move_damaged):
    """Restores the newest readable checkpoint in `directory` into `state`; its prefix, or None (a fresh run).

    One rule with fine-tuning (`bit_keras.resume.first_readable`): an unreadable checkpoint is
    moved into checkpoints-damaged/ and dropped from the index, and the one before is tried.
    """
    import tensorflow as tf

    from bit_keras import resume
    from bit_keras.errors import CheckpointError

    status = tf.train.get_checkpoint_state(directory)
    candidates = list(reversed(status.all_model_checkpoint_paths)) if status is not None else []
    if status is not None and status.model_checkpoint_path not in candidates:
        candidates.insert(0, status.model_checkpoint_path)
    if not candidates:
        return None
    candidates = [path if os.path.isabs(path) or files.is_remote(path) else files.join(directory, path)
                  for path in candidates]
    attempted = []

    def check(prefix):
        attempted.append(prefix)
        state.restore(prefix).assert_existing_objects_matched()

    move = move_damaged and not files.is_remote(directory)
    damaged = (resume.damaged_dir(directory), _move_checkpoint) if move else None
    latest = resume.first_readable(candidates, check, damaged=damaged, log=log)
    if move and latest is not None and latest != candidates[0]:
        kept = [path for path in candidates if path not in attempted or path == latest]
        tf.compat.v1.train.update_checkpoint_state(directory, latest, all_model_checkpoint_paths=list(reversed(kept)))
    if latest is None:
        if move:
            files.remove(os.path.join(directory, "checkpoint"))  # the next run starts afresh
        # The failed restores may have set some variables: build afresh in a new process.
        raise CheckpointError(f"No checkpoint in {directory} could be read (moved to "
                              f"{resume.damaged_dir(directory)}); run the same command again to start afresh.")
    return latest


def _move_checkpoint(prefix, folder) -> str:
    """Moves the files of TensorFlow checkpoint `prefix` (ckpt-N.index, ckpt-N.data-*) into `folder`."""
    import glob

    from bit_keras import resume

    for path in glob.glob(glob.escape(prefix) + ".*"):
        resume.move_into(path, folder)
    return os.path.join(folder, os.path.basename(prefix))


def _save(manager, step):
    """manager.save; a full disk is one line naming the folder and the size of the checkpoint before."""
    previous = manager.latest_checkpoint
    needed = (sum(files.size_of(path) for path in _checkpoint_files(previous)) if previous else None)
    with files.disk_full_named(manager.directory, needed=needed):
        manager.save(checkpoint_number=step)


def _checkpoint_files(prefix):
    import tensorflow as tf

    return tf.io.gfile.glob(prefix + ".*") if not files.is_remote(prefix) else []


def _latest_step(manager):
    latest = manager.latest_checkpoint
    return int(latest.rsplit("-", 1)[-1]) if latest else None


def _install(signum, handler):
    """signal.signal where allowed (only the main thread may); returns the previous handler."""
    try:
        return signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    except ValueError:
        return None
