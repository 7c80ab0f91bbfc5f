"""`bit_keras bench`: images/s, fraction of the machine's measured peak, and peak memory."""

from __future__ import annotations

import json
from bit_keras.errors import ConfigError

_EPILOG = """\
Figures are medians over --steps timed batches; after every batch a float32 matmul is
timed, and the peak is its median, so load from other processes hits both alike.
--baseline also runs the straightforward implementation (same mode, float32, no XLA, no
folding, Keras core's GroupNormalization) interleaved with yours, and reports the
speed-up measured in the same run.

examples:
  bit_keras bench --variant r50x1 --resolution 224 --batch 16 --fold --baseline
  bit_keras bench --variant r50x1 --resolution 224 --batch 16 --mode savedmodel --fold --baseline
  bit_keras bench --variant r50x1 --resolution 128 --batch 32 --mode train --precision bfloat16 --json
"""


def register(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "bench", help="Measure images/s against the machine's own matmul peak.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="r50x1",
                        help="Any model name (r50x1, r14x1, r2-3-4-1x2, BiT-M-R101x3, ...); only its "
                             "architecture matters, the weights are random.")
    parser.add_argument("--resolution", type=int, default=224, help="Image side in pixels.")
    parser.add_argument("--batch", type=int, default=16, help="Images per step.")
    parser.add_argument("--mode", choices=("infer", "train", "savedmodel"), default="infer",
                        help="infer: the Keras model; train: one SGD-momentum step; "
                             "savedmodel: the exported SavedModel's serving_default signature.")
    parser.add_argument("--serving", dest="mode", action="store_const", const="savedmodel",
                        help="Same as --mode savedmodel.")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs the mixed_bfloat16 policy (float32 weights and statistics).")
    parser.add_argument("--jit", action="store_true",
                        help="Compile the step with XLA (on GPUs/TPUs; on CPUs it measured slower here).")
    parser.add_argument("--fold", action="store_true",
                        help="Inference only: fold weight standardization into plain convolutions.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (after one warm-up step).")
    parser.add_argument("--baseline", action="store_true",
                        help="Also time the straightforward implementation, interleaved, and report the speed-up.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="Also draw images/s per configuration as a bar chart (.png, .svg or .pdf).")
    parser.set_defaults(handler=bench)


def bench(args) -> int:
    if args.steps < 1 or args.batch < 1 or args.resolution < 32:
        raise ConfigError(f"Need --steps >= 1, --batch >= 1 and --resolution >= 32; received "
                         f"--steps {args.steps} --batch {args.batch} --resolution {args.resolution}.")
    from bit_keras import benchmark

    benchmark.parse_variant(args.variant)  # a bad name fails before TensorFlow loads
    if args.plot:
        from bit_keras import plots

        plots.check_path(args.plot)  # before minutes of timing
    config = benchmark.Config(variant=args.variant, size=args.resolution, batch=args.batch, mode=args.mode,
                              precision=args.precision, jit=args.jit, fold=args.fold)
    configs = [config]
    if args.baseline:
        configs.insert(0, benchmark.Config(variant=args.variant, size=args.resolution, batch=args.batch,
                                           mode=args.mode, straightforward=True))
    report = benchmark.compare(configs, steps=args.steps)
    if args.plot:
        plots.bench(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}, Keras backend {report['backend']}")
    for result in report["results"]:
        print(benchmark.format_result(result))
    print(f"peak memory (RSS high-water mark of the process): {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    if args.plot:
        print(f"picture: {args.plot}")
    return 0
