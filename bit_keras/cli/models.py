"""`bit_keras list` and `bit_keras inspect`: the zoo and its checkpoints."""

from __future__ import annotations

import json


def register(subparsers):
    parser = subparsers.add_parser("list", help="List the variants and released checkpoints.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    parser.set_defaults(handler=list_variants)

    parser = subparsers.add_parser("inspect", help="Say which variant an .npz checkpoint (or an onnx/litert/openvino export) is and whether it loads.")
    parser.add_argument("path", help="A release-layout .npz file, or a .onnx/.tflite file or OpenVINO directory.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.set_defaults(handler=inspect_file)


def _rows():
    from bit_keras import presets

    for release in presets.PRESETS.values():
        arch = release.architecture
        yield {"name": release.name, "short_name": release.short_name,
               "architecture": arch.name, "block_units": list(arch.block_units), "width": arch.width,
               "features": arch.num_features, "classes": release.num_classes,
               "parameters": arch.num_params(release.num_classes), "upstream": release.upstream,
               "resolution": release.resolution, "url": release.url}


def list_variants(args):
    rows = list(_rows())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'checkpoint':<28} {'short name':<24} {'arch':<7} {'features':>8} {'classes':>7} {'params':>9}  upstream")
    for row in rows:
        print(f"{row['name']:<28} {row['short_name']:<24} {row['architecture']:<7} {row['features']:>8} "
              f"{row['classes']:>7} {row['parameters'] / 1e6:>8.1f}M  {row['upstream']}")
    from bit_keras.architecture import GRAMMAR

    print("\nAny name above (case-insensitive) means its released weights, in Python (from_preset) and in "
          f"every command. An architecture means random weights: {GRAMMAR}.")
    return 0


def inspect_file(args):
    from bit_keras import checkpoint
    from bit_keras.cli import deploy

    if deploy.is_deploy_path(args.path):  # an ONNX, LiteRT or OpenVINO export
        return deploy.inspect_export(args)

    report = checkpoint.inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        arch = report["architecture"] or f"custom (units {report['block_units']}, width {report['width']})"
        print(f"{report['path']}: {arch}, {report['num_classes'] or 'no'} classes, "
              f"{report['parameters'] / 1e6:.2f}M parameters in {report['arrays']} arrays")
        print("loads: yes" if report["loads"] else f"loads: NO: {report['problem']}")
        if report["nonfinite_keys"]:
            print(f"NaN or Inf in: {', '.join(report['nonfinite_keys'])}")
        if report["unexpected_keys"]:
            print(f"unexpected keys (ignored): {', '.join(report['unexpected_keys'][:10])}")
    return 0 if report["loads"] else 1
