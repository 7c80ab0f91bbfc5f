"""`bit_keras finetune`, `bit_keras evaluate` and `bit_keras demo`: the BiT-HyperRule on the command line.

Thin: every handler calls `bit_keras.finetune`; TensorFlow is imported inside the handlers.
"""

from __future__ import annotations

import json
import os
import sys

from bit_keras.cli import dense
from bit_keras.cli.common import (DATASET_HELP, MODEL_HELP, add_data_flags, add_fine_tuning_flags,
                                  add_hardware_flags, add_model_flags, add_precision_flag, make_cli_strategy,
                                  resolve_source)


def register(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="Fine-tune a BiT model on a dataset with the BiT-HyperRule (model.fit, resumable).",
        description="Fine-tunes with the BiT-HyperRule through model.fit. Running the same command again "
                    "after an interruption resumes from the last checkpoint in --output.")
    add_model_flags(parser, variant_help=MODEL_HELP + " Or a directory (or .keras file) written by "
                    "`bit_keras export`, with its own weights. Required.")
    add_data_flags(parser, dataset_help=DATASET_HELP + " Detection and segmentation: shapes (offline), "
                   "tfds:coco/2017, tfds:voc/2012, coco:IMAGES,ANNOTATIONS.json or masks:IMAGES,MASKS.")
    parser.add_argument("--output", required=True, help="Run directory: checkpoint/, logs/, model.keras, curves.png, metrics.json.")
    dense.add_task_flag(parser)
    parser.add_argument("--examples-per-class", type=int, default=None, help="Few-shot: k training examples per class.")
    add_fine_tuning_flags(parser, batch_default=None, batch_default_text="HyperRule: 512; detection and "
                          "segmentation: 16")
    parser.add_argument("--eval-every", type=int, default=None, help="Updates between evaluations/checkpoints.")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Peak learning rate instead of the HyperRule's (only sensible without pre-trained weights).")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="No random horizontal flips.")
    parser.add_argument("--no-crop", dest="crop", action="store_false", help="No random crops (resize to the crop size).")
    parser.add_argument("--train-split", default="train", help="Split to fine-tune on, e.g. train or train[:90%%].")
    parser.add_argument("--eval-split", default="test", help="Split scored during and after training; 'none' skips it.")
    add_precision_flag(parser)
    parser.add_argument("--overwrite", action="store_true", help="Start again even if --output holds a run.")
    parser.add_argument("--savedmodel", action="store_true",
                        help="Also write OUTPUT/savedmodel: the fine-tuned classifier as a TF-Hub SavedModel.")
    parser.add_argument("--quiet", action="store_true",
                        help="One line per evaluation instead of a progress bar (the default when output is not a "
                             "terminal, so log files get no control characters).")
    dense.add_dense_flags(parser)
    add_hardware_flags(parser.add_argument_group("hardware"))
    parser.set_defaults(handler=run_finetune)

    parser = subparsers.add_parser("evaluate", help="Score a fine-tuned model (.keras or a finetune --output) on a dataset.")
    parser.add_argument("run", nargs="?", default=None, metavar="RUN",
                        help="A detection or segmentation run directory: COCO mAP (pycocotools) or mean IoU and "
                             "pixel accuracy on its evaluation data (or --dataset/--split).")
    parser.add_argument("--model", default=None, help="A .keras file or a `bit_keras finetune` output directory.")
    add_data_flags(parser, required=False)
    parser.add_argument("--split", default="test", help="Split to score, e.g. test or train[90%%:].")
    parser.add_argument("--batch", type=int, default=128, help="Images per evaluation batch.")
    parser.add_argument("--resolution", type=int, default=None, help="Default: the crop size in the run's run.json.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    add_hardware_flags(parser.add_argument_group("hardware"))
    parser.set_defaults(handler=run_evaluate)

    parser = subparsers.add_parser(
        "demo", help="Offline end to end: build BiT, export it, reload it, fine-tune on digits, print the accuracy.")
    parser.add_argument("--output", default="demo_output", help="Where the export and the run go (default ./demo_output).")
    parser.add_argument("--variant", default=None,
                        help="Default: r50x1 when a released R50x1 checkpoint is cached, else r14x1 (one unit per "
                             "block, random weights). " + MODEL_HELP)
    parser.add_argument("--weights", default=None, help="A release .npz, URL or release name to fine-tune instead.")
    parser.add_argument("--transfer", action="store_true",
                        help="Show transfer instead: pre-train a small BiT on digits 0-4 with the upstream trainer, "
                             "export it, and fine-tune few-shot (1, 5, 10 per class) on digits 5-9 next to random "
                             "weights; prints the table (a few minutes).")
    parser.add_argument("--steps", type=int, default=None, help="Fine-tuning updates (default 100).")
    parser.add_argument("--batch", type=int, default=None, help="Batch size (default 64).")
    parser.add_argument("--resolution", type=int, default=None, help="Crop size (default 32).")
    dense.add_task_flag(parser, " Detection/segmentation: a tiny BiT trained on synthetic shapes, with a picture "
                        "of its predictions (OUTPUT/TASK/predictions.png).")
    parser.set_defaults(handler=run_demo)


def run_finetune(args):
    from bit_keras.errors import UsageError

    if args.task != "classification":
        return dense.run_finetune(args)
    if args.variant is None:
        raise UsageError("--variant is required: a model name (m-r50x1, r50x1, ...) or an export directory.")
    dense_only = [flag for flag, value in (("--num-classes", args.num_classes), ("--norm", args.norm != "group"),
                                           ("--freeze-bn", args.freeze_bn), ("--output-stride", args.output_stride),
                                           ("--eval-dataset", args.eval_dataset)) if value]
    if dense_only:
        raise UsageError(f"{', '.join(dense_only)} apply to --task detection|segmentation only.")
    args.batch = 512 if args.batch is None else args.batch
    from bit_keras.data import check_split

    for split in (args.train_split, args.eval_split):  # before any weights are fetched or model built
        if split.lower() != "none":
            check_split(args.dataset, split, data_dir=args.data_dir)
    source = resolve_source(args)
    strategy = make_cli_strategy(args)
    from bit_keras.finetune.runner import finetune  # Keras loads only now, after the weights are found

    metrics = finetune(
        source, dataset=args.dataset, output=args.output,
        examples_per_class=args.examples_per_class, batch_size=args.batch, micro_batch_size=args.micro_batch,
        steps=args.steps, eval_every=args.eval_every, flip=args.flip, crop=args.crop, resolution=args.resolution,
        base_learning_rate=args.learning_rate, train_split=args.train_split,
        eval_split=None if args.eval_split.lower() == "none" else args.eval_split, data_dir=args.data_dir,
        download=args.download, seed=args.seed, overwrite=args.overwrite, savedmodel=args.savedmodel, verbose=2 if args.quiet or not sys.stdout.isatty() else 1,
        log=print, strategy=strategy, precision=args.precision)
    summary = {k: v for k, v in metrics.items() if k != "hyperrule"}
    print(json.dumps(summary, indent=2))
    from bit_keras.distribute import is_chief

    if isinstance(strategy, str) or is_chief(strategy):
        print(f"Wrote {args.output}/model.keras and {args.output}/metrics.json")
    else:
        print(f"Done; the chief worker wrote {args.output} (this worker's files were temporary).")
    return 0


def run_evaluate(args):
    from bit_keras.errors import UsageError

    target = args.run or args.model
    if args.run and args.model:
        raise UsageError("Name the model once: RUN or --model, not both.")
    if target is None:
        raise UsageError("Name what to score: RUN (a finetune --output directory) or --model FILE.keras.")
    from bit_keras.dense import is_dense_run

    if is_dense_run(target):
        return dense.run_evaluate(args, target)
    if args.dataset is None:
        raise UsageError("--dataset is required to score a classifier (tfds:NAME, folder:PATH or digits).")
    args.model = target
    from bit_keras.finetune.runner import evaluate

    scores = evaluate(args.model, dataset=args.dataset, split=args.split, batch_size=args.batch,
                      resolution=args.resolution, data_dir=args.data_dir, download=args.download,
                      strategy=make_cli_strategy(args))
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        print(f"{scores['model']} on {scores['dataset']}[{scores['split']}] ({scores['examples']} images at "
              f"{scores['resolution']} px): accuracy {scores['accuracy']:.4f} (chance {scores['chance_accuracy']:.4f}), "
              f"loss {scores['loss']:.4f}")
    return 0


def run_demo(args):
    if args.task != "classification":
        return dense.run_demo(args)
    if args.transfer:
        from bit_keras.finetune.transfer_demo import run_transfer_demo

        run_transfer_demo(os.path.join(args.output, "transfer"))
        return 0
    from bit_keras.finetune.demo import run_demo as demo

    options = {k: v for k, v in {"variant": args.variant, "weights": args.weights, "steps": args.steps,
                                 "batch_size": args.batch, "resolution": args.resolution}.items() if v is not None}
    demo(args.output, **options)
    return 0
