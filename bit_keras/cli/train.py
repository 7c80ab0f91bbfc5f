"""`bit_keras train`: upstream pre-training of a BiT backbone on tf.distribute (TPU, GPUs, CPU).

Every number of the paper's schedules (`--schedule bit-s|bit-m|bit-l`) can be overridden
by a flag; unset flags keep the schedule's value. The training strategies (label smoothing,
dropout, stochastic depth, EMA, RandAugment, cosine schedule, normalization) are off by
default; `--recipe resnet-rs` sets the ResNet-RS combination and explicit flags override it.
Rerunning the same command with the same `--model-dir` resumes from the last checkpoint.
"""

from __future__ import annotations

import json

from bit_keras.cli.common import (MODEL_HELP, add_batch_flag, add_data_flags, add_hardware_flags, add_model_flags,
                                  add_precision_flag, resolve_model)
from bit_keras.errors import ConfigError


def _floats(text):
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, e.g. 30,60,80. Received: {text!r}") from None


def _ema(text):
    if str(text).strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--ema takes the EMA decay, e.g. 0.9999, or none. Received: {text!r}") from None


def register(subparsers):
    p = subparsers.add_parser(
        "train", help="Pre-train a BiT backbone upstream (BiT-S/M/L schedules) on TPU, GPUs or CPU; resumable.",
        description=__doc__)
    what = p.add_argument_group("model and data")
    add_model_flags(what, variant_help=MODEL_HELP + " The weights initialise a fresh run "
                    "(a resumed run continues from its checkpoint). Default r50x1 (random weights).")
    add_data_flags(what)
    what.add_argument("--split", default="train", help="Split to train on (default train).")
    what.add_argument("--model-dir", required=True, help="Checkpoints, TensorBoard logs, bit_final.npz and curves.png "
                      "(local or gs://). Reuse it to resume. Under multi_worker only the chief writes it, and all "
                      "workers must see it (gs:// or a shared filesystem) to resume.")

    run = p.add_argument_group("hardware")
    add_hardware_flags(run)
    add_precision_flag(run)
    run.add_argument("--jit", action="store_true", help="XLA-compile the forward/backward pass (jit_compile=True).")
    run.add_argument("--steps-per-loop", type=int, default=1, help="Updates per host call (50-200 on TPU).")

    sched = p.add_argument_group("schedule (defaults from --schedule)")
    sched.add_argument("--schedule", default="bit-s", help="bit-s, bit-m or bit-l (default bit-s).")
    add_batch_flag(sched, default=None, default_text="default: the schedule's, 4096")
    sched.add_argument("--resolution", type=int, default=None, help="Training crop size in pixels (default 224).")
    sched.add_argument("--base-lr", type=float, default=None, help="Learning rate per 256 images (default 0.03).")
    sched.add_argument("--warmup-steps", type=int, default=None, help="Linear warm-up updates (default 5000).")
    sched.add_argument("--epochs", type=float, default=None, help="Training epochs (90 for S/M, 40 for L).")
    sched.add_argument("--decay-epochs", type=_floats, default=None, help="Epochs where lr /= 10, e.g. 30,60,80.")
    sched.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay on kernels (default 1e-4).")
    sched.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9).")
    sched.add_argument("--lr-schedule", choices=("step", "cosine"), default=None,
                       help="step: /10 at --decay-epochs (BiT, the default); cosine: half a cosine to 0 after "
                       "the warm-up (ResNet-RS).")
    label = sched.add_mutually_exclusive_group()
    label.add_argument("--multi-label", dest="multi_label", action="store_true", default=None,
                       help="Sigmoid cross-entropy (default for bit-m and bit-l).")
    label.add_argument("--single-label", dest="multi_label", action="store_false",
                       help="Softmax cross-entropy (default for bit-s).")

    strat = p.add_argument_group("training strategies (all off by default; ResNet-RS: --recipe resnet-rs)")
    strat.add_argument("--recipe", default=None, help="resnet-rs: label smoothing 0.1, dropout 0.25, stochastic "
                       "depth 0, EMA 0.9999, RandAugment 2,10, weight decay 4e-5, cosine schedule, 350 epochs "
                       "(Bello et al. 2021); explicit flags override it. Default bit (none of them).")
    strat.add_argument("--label-smoothing", type=float, default=None, help="Label smoothing e (default 0).")
    strat.add_argument("--dropout", type=float, default=None, help="Dropout rate before the head (default 0).")
    strat.add_argument("--stochastic-depth", type=float, default=None,
                       help="Drop-path rate of the last unit, rising linearly over units (default 0).")
    strat.add_argument("--ema", default=None, help="EMA decay of the weights (e.g. 0.9999); evaluation and "
                       "bit_final.npz use the averaged weights. 'none' turns a recipe's off. Default off.")
    strat.add_argument("--randaugment", default=None, help="N,M: RandAugment with N layers at magnitude M "
                       "(0-30), e.g. 2,10; 'none' turns a recipe's off. Default off.")
    strat.add_argument("--norm", choices=("group", "batch", "none"), default=None,
                       help="Normalization layers: group (BiT, default), batch or none.")
    strat.add_argument("--no-ws", dest="ws", action="store_false", default=None,
                       help="Plain convolutions instead of weight-standardized ones.")
    strat.add_argument("--groups", type=int, default=None, help="GroupNorm groups (default 32).")
    strat.add_argument("--sync-bn", action="store_true", default=None,
                       help="With --norm batch: statistics over the global batch instead of each replica's.")

    held = p.add_argument_group("held-out evaluation")
    held.add_argument("--eval-split", default=None, help="Split scored during training: top-1/top-5 (precision@1 "
                      "when multi-label). Default: the dataset's validation split, else its test split (digits: "
                      "test); none: no evaluation.")
    held.add_argument("--eval-every", type=int, default=None,
                      help="Updates between evaluations (default --checkpoint-every); always at the end too.")

    keep = p.add_argument_group("checkpoints and logs")
    keep.add_argument("--checkpoint-every", type=int, default=1000, help="Updates between checkpoints (default 1000).")
    keep.add_argument("--keep", type=int, default=5, help="Checkpoints kept (default 5).")
    keep.add_argument("--log-every", type=int, default=100, help="Updates between progress lines (default 100).")
    keep.add_argument("--max-steps", type=int, default=None, help="Stop after this many updates (the schedule is unchanged).")

    aug = p.add_argument_group("input")
    aug.add_argument("--seed", type=int, default=0, help="Seed of the initial weights, shuffling and crops.")
    aug.add_argument("--shuffle-buffer", type=int, default=10_000,
                     help="Decoded examples in the shuffle buffer (default 10000, ~4 GB at ImageNet sizes).")
    aug.add_argument("--crop-area-min", type=float, default=0.08, help="Smallest Inception-crop area fraction.")
    aug.add_argument("--no-flip", dest="flip", action="store_false", help="No random horizontal flip.")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the resolved schedule, training strategies, evaluation split and the run's warnings "
                   "as JSON and exit.")
    p.add_argument("--train-size", type=int, default=None, help="With --dry-run: examples in --split, so a tfds "
                   "dataset not yet prepared need not be (e.g. 1281167 for imagenet2012's train).")
    p.set_defaults(handler=run_training)


def build_config(args, choice=None):
    """A TrainConfig from parsed flags and the resolved weights (`common.resolve_model`); no TensorFlow."""
    from bit_keras import presets
    from bit_keras.train.loop import TrainConfig
    from bit_keras.train.recipes import TrainingOptions, parse_randaugment, resolve_recipe
    from bit_keras.train.upstream_schedules import resolve_schedule

    architecture = choice.architecture if choice is not None else presets.resolve(args.variant or "r50x1")[0]
    recipe_schedule, recipe_options = resolve_recipe(args.recipe)
    schedule = resolve_schedule(args.schedule).replace(**recipe_schedule).replace(
        batch_size=args.batch, image_size=args.resolution, base_learning_rate=args.base_lr,
        warmup_steps=args.warmup_steps, epochs=args.epochs, decay_epochs=args.decay_epochs,
        weight_decay=args.weight_decay, momentum=args.momentum, multi_label=args.multi_label,
        lr_schedule=args.lr_schedule)
    explicit = {"label_smoothing": args.label_smoothing, "dropout": args.dropout,
                "stochastic_depth": args.stochastic_depth, "normalization": args.norm,
                "weight_standardization": args.ws, "groups": args.groups, "sync_batch_norm": args.sync_bn}
    changes = {**recipe_options, **{key: value for key, value in explicit.items() if value is not None}}
    if args.ema is not None:   # "none" turns a recipe's EMA off
        changes["ema"] = _ema(args.ema)
    if args.randaugment is not None:
        changes["randaugment"] = parse_randaugment(args.randaugment)
    options = TrainingOptions(**changes)
    return TrainConfig(
        model_dir=args.model_dir, dataset=args.dataset, schedule=schedule, block_units=architecture.block_units,
        width=architecture.width, split=args.split, data_dir=args.data_dir, download=args.download,
        strategy=args.strategy, tpu=args.tpu, cpu_devices=args.cpu_devices, precision=args.precision,
        jit_compile=args.jit, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep, log_every=args.log_every,
        steps_per_loop=args.steps_per_loop, max_steps=args.max_steps, shuffle_buffer=args.shuffle_buffer,
        crop_area_min=args.crop_area_min, flip=args.flip, init_weights=choice.path if choice is not None else None,
        options=options, eval_split=args.eval_split or "auto", eval_every=args.eval_every)


def _dry_run(args, config):
    """The plan as JSON: schedule, strategies, the split the run will score and the warnings it will print."""
    from bit_keras.data import split_size
    from bit_keras.train import evaluation
    from bit_keras.train.loop import run_warnings

    # A dry run neither downloads nor prepares: tfds knows split sizes only from prepared data.
    size = args.train_size if args.train_size is not None else split_size(
        config.dataset, config.split, data_dir=config.data_dir)
    if size is None:
        raise ConfigError(f"{config.dataset} is not prepared, so the size of {config.split!r} is unknown: "
                          "pass --train-size N (its number of examples) for a dry run.")
    eval_split, note = evaluation.planned_split(config.eval_split, config.dataset, config.split,
                                                data_dir=config.data_dir)
    if eval_split is not None and note is None:
        with evaluation.naming_eval_split(eval_split):  # a split the run could not load fails here too
            split_size(config.dataset, eval_split, data_dir=config.data_dir)
    plan = config.schedule.plan(size)  # refuses a size below 1
    report = plan.to_dict()
    report["learning_rate_at"] = [{"step": s, "learning_rate": lr} for s, lr in plan.milestones()]
    report["recipe"] = args.recipe or "bit"
    report["training"] = config.options.to_dict()
    report["eval_split"] = eval_split
    if note:
        report["eval_split_note"] = note
    report["eval_every"] = int(config.eval_every or config.checkpoint_every) if eval_split else None
    report["warnings"] = run_warnings(plan, config.options)
    print(json.dumps(report, indent=2))
    return 0


def run_training(args):
    from bit_keras.train.loop import check_data

    if args.variant is None and args.weights is None:
        args.variant = "r50x1"
    if args.load_weights:  # a release into a non-BiT network: refused before anything is downloaded
        from bit_keras.weights import refuse_release_into

        switches = {"normalization": args.norm, "weight_standardization": args.ws, "groups": args.groups}
        refuse_release_into(args.variant, args.weights, **{k: v for k, v in switches.items() if v is not None})
    # A dry run downloads nothing: it needs the architecture only (a --weights file names its own).
    choice = resolve_model(args) if not args.dry_run or args.variant is None else None
    config = build_config(args, choice)
    check_data(config)  # a bad --dataset, --split or --eval-split fails before anything starts
    if args.dry_run:
        return _dry_run(args, config)
    from bit_keras.train.loop import PREEMPTED_EXIT_CODE, train

    result = train(config, log=lambda line: print(line, flush=True))
    return PREEMPTED_EXIT_CODE if result.preempted else 0
