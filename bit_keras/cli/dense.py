"""`--task detection|segmentation` of `bit_keras finetune`, `evaluate`, `export` and `demo`.

The flags below are added to `finetune`; the handlers are called from the classification
commands' handlers when the task (or the run directory) is a dense one. TensorFlow loads
only inside the handlers.
"""

from __future__ import annotations

import json
import os
import sys

TASKS = ("classification", "detection", "segmentation")


def add_task_flag(parser, help_suffix=""):
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="classification (default), detection (keras-hub RetinaNet on BiT, COCO mAP) or "
                             "segmentation (keras-hub DeepLabV3 on BiT, mean IoU)." + help_suffix)


def add_dense_flags(parser):
    """finetune's flags that apply to --task detection|segmentation only."""
    group = parser.add_argument_group(
        "detection and segmentation (--task detection|segmentation; --dataset shapes, tfds:coco/2017, tfds:voc/2012, "
        "coco:IMAGES_DIR,ANNOTATIONS.json or masks:IMAGES_DIR,MASKS_DIR)")
    group.add_argument("--num-classes", type=int, default=None,
                       help="Mask labels, background included (masks: folders and tfds masks do not say).")
    group.add_argument("--max-boxes", type=int, default=100, help="Boxes kept per training image (default 100).")
    group.add_argument("--norm", choices=("group", "batch"), default="group",
                       help="group: BiT's GroupNorm + WS (the released weights). batch: a BatchNorm BiT (random "
                            "weights only; research).")
    group.add_argument("--freeze-bn", action="store_true",
                       help="With --norm batch: freeze BatchNorm (statistics and affine), as detection codebases do.")
    group.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=None,
                       help="Segmentation: 16 or 8 dilates BiT's last block(s) (atrous; same weights). Default 32.")
    group.add_argument("--eval-dataset", default=None,
                       help="Dataset spec to score on (default: --dataset's --eval-split; coco:/masks: folders "
                            "have no splits).")
    group.add_argument("--on-bad", choices=("drop", "refuse"), default="drop",
                       help="Bad annotations (boxes outside the image, unknown categories, masks of another "
                            "size): drop and count them (default), or stop at the first.")


def run_finetune(args):
    """`bit_keras finetune --task detection|segmentation`."""
    from bit_keras import weights as weights_rule
    from bit_keras.cli.common import make_cli_strategy, resolve_model
    from bit_keras.errors import UsageError

    if args.variant is None:
        raise UsageError("--variant is required: a model name (m-r50x1, r50x1, ...).")
    if os.path.isdir(args.variant) or args.variant.endswith(".keras"):
        raise UsageError(f"--task {args.task} starts from a model name or --weights .npz, not an export "
                         f"({args.variant}).")
    if args.examples_per_class or args.savedmodel or not args.crop:
        raise UsageError(f"--examples-per-class, --savedmodel and --no-crop apply to classification, not --task "
                         f"{args.task} (export a finished run with `bit_keras export --from-run`).")
    weights_rule.refuse_release_into(args.variant, args.weights,
                                     normalization="batch" if args.norm == "batch" else "group")
    choice = resolve_model(args)
    strategy = make_cli_strategy(args)
    from bit_keras.dense.run import finetune

    metrics = finetune(
        choice, task=args.task, dataset=args.dataset, output=args.output, batch_size=args.batch or 16,
        micro_batch_size=args.micro_batch, steps=args.steps, eval_every=args.eval_every, resolution=args.resolution,
        learning_rate=args.learning_rate, num_classes=args.num_classes, max_boxes=args.max_boxes, norm=args.norm,
        freeze_bn=args.freeze_bn, output_stride=args.output_stride, flip=args.flip, train_split=args.train_split,
        eval_split=args.eval_split, eval_dataset=args.eval_dataset, data_dir=args.data_dir, download=args.download,
        on_bad=args.on_bad, seed=args.seed, overwrite=args.overwrite, precision=args.precision, strategy=strategy,
        verbose=2 if args.quiet or not sys.stdout.isatty() else 1, log=print)
    print(json.dumps(metrics, indent=2))
    print(f"Wrote {args.output}/model.keras and {args.output}/metrics.json")
    return 0


def run_evaluate(args, run_dir):
    """`bit_keras evaluate RUN` for a detection or segmentation run."""
    from bit_keras.dense.run import evaluate

    scores = evaluate(run_dir, dataset=args.dataset, split=args.split if args.split != "test" else None,
                      batch_size=min(args.batch, 16), data_dir=args.data_dir, download=args.download)
    if args.json:
        print(json.dumps(scores, indent=2))
    elif scores["task"] == "detection":
        print(f"{run_dir} on {scores['dataset']} ({scores['examples']} images): COCO box "
              + ", ".join(f"{k} {_number(scores[k])}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
              + " (pycocotools)")
    else:
        print(f"{run_dir} on {scores['dataset']} ({scores['examples']} images): mean IoU {_number(scores['mean_iou'])}, "
              f"pixel accuracy {_number(scores['pixel_accuracy'])}")
    for reason, count in scores.get("dropped_annotations", {}).items():
        print(f"warning: {scores['dataset']}: dropped {count} annotation(s) before scoring: {reason}")
    return 0


def _number(value) -> str:
    return "n/a (no such objects)" if value is None else f"{value:.4f}"


def run_export(args):
    """`bit_keras export --from-run RUN --output DIR` for a detection or segmentation run."""
    from bit_keras.errors import UsageError
    from bit_keras.dense.export import export_run

    if args.variant or args.weights or not args.load_weights or args.classifier or args.fold_standardization:
        raise UsageError("--from-run exports the run's own model; drop --variant/--weights/--random-weights/"
                         "--classifier/--fold-standardization.")
    if args.format not in (None, "savedmodel"):
        raise UsageError(f"A detection or segmentation run exports as a SavedModel only (not {args.format}).")
    path = export_run(args.run, args.output, overwrite=args.overwrite)
    with open(os.path.join(path, "bit_keras_dense.json")) as f:
        meta = json.load(f)
    print(f"Wrote {path}: {meta['task']} SavedModel, serving_default: {meta['inputs']} -> "
          f"{', '.join(meta['outputs'])}")
    return 0


def run_demo(args):
    """`bit_keras demo --task detection|segmentation`."""
    from bit_keras.dense.demo import run_demo

    options = {k: v for k, v in {"variant": args.variant, "weights": args.weights, "steps": args.steps,
                                 "batch_size": args.batch, "resolution": args.resolution}.items() if v is not None}
    run_demo(os.path.join(args.output, args.task), task=args.task, **options)
    return 0
