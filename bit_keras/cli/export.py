"""`bit_keras export`: a checkpoint as a TF Hub SavedModel (or a `.keras` file)."""

from __future__ import annotations

from bit_keras.cli import deploy
from bit_keras.cli.common import MODEL_HELP, add_model_flags
from bit_keras.errors import ConfigError


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="Export a BiT variant as a TF Hub SavedModel (or a .keras file).",
        description="Writes a TF2 SavedModel following TF Hub's Reusable SavedModel API: float32 images in "
                    "[0, 1], shape [batch, height, width, 3], to features [batch, 2048*width] (or logits with "
                    "--classifier). Load it with hub.KerasLayer(DIR, trainable=True) in tf-keras or "
                    "bit_keras.export.load_backbone(DIR) in Keras 3.")
    add_model_flags(parser, variant_help=MODEL_HELP + " An architecture needs --weights or --random-weights "
                    "(untrained weights are never exported by accident). Left out: the architecture the "
                    "--weights file holds.")
    parser.add_argument("--output", required=True,
                        help="The SavedModel directory (or .keras file) to write; for onnx/litert a .onnx/.tflite "
                             "file, for openvino and keras-hub a directory.")
    parser.add_argument("--classifier", action="store_true",
                        help="Export the logits of the checkpoint's head instead of the feature vector.")
    parser.add_argument("--format", choices=("savedmodel", "keras", "keras-hub", "onnx", "litert", "openvino"),
                        default=None,
                        help="savedmodel (TF Hub), keras (a .keras file with named blocks, for partial "
                             "fine-tuning with bit_keras.freeze_up_to), keras-hub (a preset directory for "
                             "keras_hub.models.ImageClassifier/Backbone.from_preset and keras_hub.upload_preset); "
                             "onnx (.onnx), litert (.tflite) and openvino (a directory): folded, checked in their "
                             "own runtime before they are kept. Default: keras when --output ends in .keras, "
                             "else savedmodel.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output.")
    parser.add_argument("--fold-standardization", action="store_true",
                        help="Serve `serving_default` from a copy with pre-standardized kernels (faster "
                             "inference in TF Serving). The export then holds the weights twice.")
    deploy.add_deploy_flags(parser)
    parser.set_defaults(handler=export)


def _folder(args):
    if not args.fold_standardization:
        return None
    if args.format == "keras":
        raise ConfigError("--fold-standardization applies to SavedModels only; drop it with --format keras.")
    from bit_keras.inference import fold_standardization

    return fold_standardization


def export(args):
    import json
    import os

    if args.run is not None:
        from bit_keras.dense import is_dense_run

        if is_dense_run(args.run):  # a detection or segmentation run: its own SavedModel
            from bit_keras.cli.dense import run_export

            return run_export(args)
    if args.format is None:
        args.format = "keras" if args.output.endswith(".keras") else "savedmodel"
    elif args.format == "savedmodel" and args.output.endswith(".keras"):
        raise ConfigError(f"--output {args.output} ends in .keras but --format is savedmodel (a directory); "
                          "drop --format to write a .keras file, or name a directory.")
    if deploy.wants_deploy(args):
        return deploy.export(args)

    from bit_keras.errors import UsageError
    from bit_keras.export import variant
    from bit_keras.export.metadata import check_export_target, read_metadata

    try:
        # Cheap refusals first, before TensorFlow is imported or anything is downloaded.
        check_export_target(args.output, overwrite=args.overwrite)

        path = variant.export_variant(args.variant, args.output, weights=args.weights,
                                      classifier=args.classifier, overwrite=args.overwrite,
                                      load_weights=args.load_weights, format=args.format,
                                      cache_dir=args.cache_dir, serving_model_fn=_folder(args))
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        raise UsageError(str(error)) from None
    if args.format == "keras":
        print(f"Wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
        return 0
    if args.format == "keras-hub":
        from bit_keras.export.keras_hub import read_metadata as read_preset_metadata

        meta = read_preset_metadata(path)
        print(f"Wrote {path}: a keras-hub preset of {meta['model']} ({'logits' if meta['num_classes'] else 'features'}, "
              f"images resized to {meta['resolution'][0]}x{meta['resolution'][1]}); load it with "
              f"keras_hub.models.{'ImageClassifier' if meta['num_classes'] else 'Backbone'}.from_preset({path!r}) "
              "after `import bit_keras.models`")
        return 0
    meta = read_metadata(path)
    print(f"Wrote {path}: {meta['variant']}, {meta['outputs']} "
          f"[batch, {meta['num_classes'] if meta['outputs'] == 'logits' else meta['num_features']}]")
    print(json.dumps({key: meta[key] for key in ("variant", "outputs", "num_features", "num_classes", "upstream")}))
    return 0
