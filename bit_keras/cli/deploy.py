"""`bit_keras export --format onnx|litert|openvino` (and `--from-run DIR` for every format): deployment exports."""

from __future__ import annotations

import os

DEPLOY_FORMATS = ("onnx", "litert", "openvino")


def add_deploy_flags(parser):
    # Not "--run": absl's parser would take it for an abbreviation of its --run_with_pdb.
    parser.add_argument("--from-run", dest="run", default=None, metavar="DIR",
                        help="A `bit_keras finetune --output` directory: export its classifier (head and class "
                             "names) instead of --variant/--weights.")
    parser.add_argument("--resolution", type=int, default=None,
                        help="onnx/litert/openvino: the input's fixed height and width. Default: the run's crop, "
                             "else the release's resolution, else 224.")
    parser.add_argument("--quantize", default=None, choices=("float16", "dynamic-int8", "int8"),
                        help="litert: float16, dynamic-int8 or int8; onnx: dynamic-int8 or int8 (int8 needs "
                             "--calibration-data). Checked by top-1 agreement with the float model.")
    parser.add_argument("--calibration-data", default=None,
                        help="Dataset spec for int8 calibration (digits, folder:PATH, tfds:NAME): its first "
                             "200 training images.")
    parser.add_argument("--eval-data", default=None,
                        help="Dataset spec: also report top-1 of the export next to the Keras model's on its "
                             "--eval-split (the accuracy cost of --quantize).")
    parser.add_argument("--eval-split", default="test", help="Split of --eval-data (default test).")
    parser.add_argument("--eval-examples", type=int, default=500, help="Examples of --eval-data (default 500).")


def wants_deploy(args) -> bool:
    return args.format in DEPLOY_FORMATS or args.run is not None


def export(args):
    """Builds the model (a release, an .npz or a fine-tuned run), exports it, and prints the check last."""
    from bit_keras.errors import UsageError

    if args.run and (args.variant or args.weights or not args.load_weights or args.classifier):
        raise UsageError("--from-run exports the run's own classifier; drop --variant/--weights/--random-weights/"
                         "--classifier.")
    if args.format not in DEPLOY_FORMATS:
        if args.quantize or args.calibration_data or args.eval_data:
            raise UsageError("--quantize, --calibration-data and --eval-data apply to --format onnx, litert or "
                             "openvino.")
        return _export_run_savedmodel(args)
    from bit_keras.export import formats

    try:
        formats.check_target(args.output, args.format, overwrite=args.overwrite)  # before anything is built
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        raise UsageError(str(error)) from None
    from bit_keras.export.quantize import check_mode

    # Before anything is built; export_deployable checks the final resolution again.
    check_mode(args.format, args.quantize, args.resolution, calibrated=bool(args.calibration_data))
    model, metadata, resolution = _model(args)
    from bit_keras.export import quantize

    calibration = (quantize.load_images(args.calibration_data, resolution)
                   if args.calibration_data and args.quantize == "int8" else None)
    eval_data = None
    if args.eval_data:
        images, labels, _ = quantize.load_images(args.eval_data, resolution, split=args.eval_split,
                                                 limit=args.eval_examples, with_labels=True)
        eval_data = (images, labels)
    report = formats.export_deployable(model, args.output, format=args.format, metadata=metadata,
                                       resolution=resolution, quantize=args.quantize, calibration=calibration,
                                       overwrite=args.overwrite, eval_data=eval_data)
    outputs = int(model.output_shape[-1])
    print(f"Wrote {report['path']} ({args.format}, {report['quantization']}, {report['size_bytes'] / 1e6:.1f} MB): "
          f"{metadata.get('variant')}, input float32 [batch, {resolution}, {resolution}, 3] in [0, 1] -> "
          f"[batch, {outputs}]")
    if eval_data is not None:
        print(f"Top-1 on {report['eval_examples']} examples of {args.eval_data} ({args.eval_split}): Keras model "
              f"{report['keras_top1']:.4f}, {args.format} {report['quantization']} {report['export_top1']:.4f} "
              f"(same top-1 on {report['eval_top1_agreement']:.1%})")
    runtime = {"onnx": "ONNX Runtime", "litert": "the LiteRT interpreter", "openvino": "OpenVINO"}[args.format]
    print(f"Checked in {runtime} (a fresh process) on {report['probe_images']} probe images against the Keras "
          f"model: top-1 agreement {report['top1_agreement']:.2f}, max relative difference "
          f"{report['max_relative_difference']:.2e} (needed: {report['criterion']})")
    return 0


def _model(args):
    """(model, metadata, resolution) from --from-run or --variant/--weights."""
    if args.run:
        model, metadata, crop = load_run(args.run)
        return model, metadata, args.resolution or crop
    from bit_keras.cli.common import resolve_model
    from bit_keras.export.variant import build_for_export, refuse_untrained

    choice = resolve_model(args)
    refuse_untrained(choice, args.variant, load_weights=args.load_weights)
    model, metadata = build_for_export(choice, classifier=args.classifier)
    return model, metadata, args.resolution or metadata.get("resolution") or 224


def load_run(directory):
    """(classifier, metadata, crop) of a fine-tuning run directory, loaded as `bit_keras evaluate` loads it."""
    from bit_keras import download, runs
    from bit_keras.errors import MissingFileError
    from bit_keras.finetune.runner import MODEL_FILE, _load_classifier

    path = os.path.join(directory, MODEL_FILE)
    run = runs.read_run(directory)
    if run is None or not os.path.isfile(path):
        raise MissingFileError(f"{directory} is not a finished `bit_keras finetune` run (needs {runs.RUN_FILE} and "
                               f"{MODEL_FILE}).")
    model = _load_classifier(path, run)
    metadata = {"variant": run.get("variant") or os.path.basename(str(run.get("source"))),
                "outputs": "logits", "num_classes": int(model.output_shape[-1]),
                "class_names": run.get("class_names"), "fine_tuned_on": run.get("dataset"),
                "checkpoint": {"source": os.path.abspath(path), "sha256": download.sha256_of(path),
                               "fine_tuned_from": run.get("source"), "weights": run.get("weights")}}
    return model, metadata, int(run["hyperrule"]["crop"])


def _export_run_savedmodel(args):
    """--from-run with --format savedmodel or keras: the run's classifier, written as the plain export writes one."""
    from bit_keras.export.keras_file import export_keras
    from bit_keras.export.savedmodel import export_model
    from bit_keras.inference import fold_standardization

    model, metadata, _ = load_run(args.run)
    if args.format == "keras" or (args.format is None and args.output.endswith(".keras")):
        path = export_keras(model, args.output, overwrite=args.overwrite)
    else:
        serving = fold_standardization(model) if args.fold_standardization else None
        path = export_model(model, args.output, overwrite=args.overwrite, metadata=metadata, serving_model=serving)
    print(f"Wrote {path}: the classifier of {args.run} ({metadata['num_classes']} classes)")
    return 0


def is_deploy_path(path) -> bool:
    from bit_keras.export.runtimes import OPENVINO_XML, SUFFIXES

    return path.endswith(tuple(SUFFIXES.values())) or path.endswith(".xml") or (
        os.path.isdir(path) and os.path.exists(os.path.join(path, OPENVINO_XML)))


def inspect_export(args):
    """`bit_keras inspect FILE.onnx|FILE.tflite|DIR`: loads it in its runtime (a fresh process), runs one
    probe batch and prints its metadata; an unreadable file is one line."""
    import json

    from bit_keras.export import runtimes

    fmt = runtimes.format_of(args.path)
    if not os.path.exists(args.path):
        from bit_keras.errors import MissingFileError

        raise MissingFileError(f"{args.path} does not exist.")
    # Loaded in a fresh process: a file that crashes its runtime fails this command, not the interpreter.
    outputs, meta = runtimes.run_in_fresh_process(args.path, None)
    meta = meta or {}
    if args.json:
        print(json.dumps({"path": args.path, "format": fmt, "runs": True, "output_shape": list(outputs.shape),
                          "metadata": meta}, indent=2))
        return 0
    print(f"{args.path}: {fmt} {meta.get('quantization', '?')}, {meta.get('variant')} {meta.get('outputs', '?')}, "
          f"input {meta.get('input', {}).get('shape')} float32 in [0, 1]; checkpoint sha256 "
          f"{(meta.get('checkpoint') or {}).get('sha256')}")
    print(f"runs: yes ({len(outputs)} probe images -> {list(outputs.shape)})")
    return 0
