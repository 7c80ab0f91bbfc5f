"""`bit_keras bench`: images/s, fraction of the machine's measured peak, and peak memory."""

from __future__ import annotations

import json
import sys

from bit_keras.errors import ConfigError
from bit_keras.precision import PRECISION_POLICIES

_EPILOG = """\
Figures are medians over --steps timed batches; after every batch a matmul in the row's
precision is timed (bfloat16 rows also time a float32 one and report both fractions), and
the peak is its median, so load from other processes hits both alike.
--baseline also runs the straightforward implementation (same mode, float32, no XLA, no
folding, Keras core's GroupNormalization) interleaved with yours, and reports the
speed-up measured in the same run.

examples:
  bit_keras bench --variant r50x1 --resolution 224 --batch 16 --fold --baseline
  bit_keras bench --variant r50x1 --resolution 224 --batch 16 --mode savedmodel --fold --baseline
  bit_keras bench --variant r50x1 --resolution 128 --batch 32 --mode train --precision bfloat16 --json
  bit_keras bench --variant r50x1 --resolution 224 --batch 16 --mode input
  bit_keras bench --variant r101x3 --mode memory --micro-batch 1,2 --accumulation 2

--mode input writes JPEGs to a temporary folder and times bit_keras's fine-tuning pipeline
on them (decode, resize, random crop, flip, MixUp) on one core and on all cores, next to the
model's fine-tuning step at the same crop and batch.
--mode memory runs one fresh subprocess per row (micro-batch, alone and with gradient
accumulation; --accumulator momentum,keras compares bit_keras's with Keras') at the HyperRule's crop for the variant unless --resolution is given, and
reports each child's peak RSS next to an activation-size estimate.
"""


def register(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "bench", help="Measure images/s against the machine's own matmul peak.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="r50x1",
                        help="Any model name (r50x1, r14x1, r2-3-4-1x2, BiT-M-R101x3, ...); only its "
                             "architecture matters, the weights are random.")
    parser.add_argument("--resolution", type=int, default=None,
                        help="Image side in pixels (default 224; --mode memory: the HyperRule's crop for the variant).")
    parser.add_argument("--batch", type=int, default=16, help="Images per step.")
    parser.add_argument("--mode", choices=("infer", "train", "savedmodel", "input", "memory", "serve"), default="infer",
                        help="infer: the Keras model; train: one SGD-momentum step; "
                             "savedmodel: the exported SavedModel's serving_default signature; "
                             "input: the fine-tuning input pipeline against the model's consumption; "
                             "memory: peak RSS of fine-tuning steps, one subprocess each; "
                             "serve: Keras, folded SavedModel, ONNX Runtime, OpenVINO, LiteRT (float32 and "
                             "quantized): images/s at batch 8, latency p50/p99 at batch 1 (--steps rounds).")
    parser.add_argument("--serving", dest="mode", action="store_const", const="savedmodel",
                        help="Same as --mode savedmodel.")
    parser.add_argument("--precision", choices=tuple(PRECISION_POLICIES), default="float32",
                        help="bfloat16 runs the mixed_bfloat16 policy (float32 weights and statistics).")
    parser.add_argument("--jit", action="store_true",
                        help="Compile the step with XLA (on GPUs/TPUs; on CPUs it measured slower here).")
    parser.add_argument("--fold", action="store_true",
                        help="Inference only: fold weight standardization into plain convolutions.")
    parser.add_argument("--steps", type=int, default=None,
                        help="Timed steps (after one warm-up step; default 10; --baseline pytorch: 3 per process "
                             "after 2 warm-up steps).")
    parser.add_argument("--baseline", nargs="?", const="keras", choices=("keras", "pytorch"), default=None,
                        help="keras (the default when given alone): also time the straightforward Keras "
                             "implementation, interleaved, and report the speed-up. pytorch: race a PyTorch BiT "
                             "(eager nn.Module) against bit_keras on every Keras backend and the folded "
                             "SavedModel, each row in its own process, and report the ratios to PyTorch.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--baseline pytorch: rounds; each runs every row once, in its own process.")
    parser.add_argument("--threads", type=int, default=0,
                        help="--baseline pytorch: threads for every row (PyTorch, OpenMP, TensorFlow's intra-op "
                             "pool; default: every core). 1 gives stable figures on a busy machine.")
    parser.add_argument("--rows", default=None,
                        help="--baseline pytorch: comma-separated rows to race (default: all for the mode; "
                             "pytorch is always one).")
    parser.add_argument("--micro-batch", default="1,2",
                        help="--mode memory: comma-separated micro-batch sizes (default 1,2).")
    parser.add_argument("--accumulation", type=int, default=2,
                        help="--mode memory: also run the largest micro-batch accumulated over this many (1: no).")
    parser.add_argument("--accumulator", default="momentum",
                        help="--mode memory: how the accumulated row accumulates, comma-separated: momentum (in the "
                             "SGD momentum buffer, as bit_keras finetune does; default), keras (Keras' "
                             "gradient_accumulation_steps, a weight-sized accumulator).")
    parser.add_argument("--task", choices=("classification", "detection", "segmentation"), default="classification",
                        help="detection/segmentation: --mode train or memory time keras-hub's RetinaNet/DeepLabV3 "
                             "training on BiT (random weights) at each --micro-batch, one subprocess per row "
                             "(images/s and peak memory; default 512 px).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="Also draw images/s per configuration as a bar chart (.png, .svg or .pdf).")
    parser.set_defaults(handler=bench)


def bench(args) -> int:
    from bit_keras.bench import steps, throughput

    architecture = steps.parse_variant(args.variant)  # a bad name fails before TensorFlow loads
    if args.task != "classification":
        return _dense(args)
    if args.resolution is None:
        if args.mode == "memory":
            from bit_keras import presets

            args.resolution = presets.hyperrule_resolution(architecture)[1]
        else:
            args.resolution = 224
    if args.steps is None:
        args.steps = 3 if args.baseline == "pytorch" else 10
    if args.steps < 1 or args.batch < 1 or args.resolution < 32:
        raise ConfigError(f"Need --steps >= 1, --batch >= 1 and --resolution >= 32; received "
                         f"--steps {args.steps} --batch {args.batch} --resolution {args.resolution}.")
    if args.mode == "memory":
        return _memory(args)
    if args.mode == "serve":
        from bit_keras.export import serve_bench

        report = serve_bench.serve_benchmark(args.variant, args.resolution, steps=args.steps,
                                             threads=args.threads or None,
                                             log=lambda line: print(line, file=sys.stderr, flush=True))
        return _print_or_json(args, report, serve_bench.format_table(report))
    if args.baseline == "pytorch":
        return _race(args)
    if args.mode == "input":
        return _input(args)
    if args.plot:
        from bit_keras import plots

        plots.check_path(args.plot)  # before minutes of timing
    config = steps.Config(variant=args.variant, size=args.resolution, batch=args.batch, mode=args.mode,
                          precision=args.precision, jit=args.jit, fold=args.fold)
    configs = [config]
    if args.baseline:
        configs.insert(0, steps.Config(variant=args.variant, size=args.resolution, batch=args.batch,
                                       mode=args.mode, straightforward=True))
    report = throughput.compare(configs, steps=args.steps)
    if args.plot:
        plots.bench(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}, Keras backend {report['backend']}, {_bfloat16_line()}")
    for result in report["results"]:
        print(throughput.format_result(result))
    print(f"peak memory (RSS high-water mark of the process): {report['peak_rss_bytes'] / 2**20:.0f} MiB")
    if args.plot:
        print(f"picture: {args.plot}")
    return 0


def _dense(args) -> int:
    from bit_keras.dense import bench as dense_bench

    if args.mode not in ("train", "memory") or args.baseline or args.fold or args.jit or args.plot:
        raise ConfigError(f"--task {args.task} measures --mode train or memory only, without --baseline, --fold, "
                          "--jit or --plot.")
    try:
        micro_batches = tuple(int(part) for part in args.micro_batch.split(","))
    except ValueError:
        micro_batches = ()
    resolution = args.resolution or 512
    if not micro_batches or min(micro_batches) < 1 or resolution % 32:
        raise ConfigError(f"Need --micro-batch as positive integers separated by commas and --resolution a multiple "
                          f"of 32; received --micro-batch {args.micro_batch!r} --resolution {resolution}.")
    log = None if args.json else (lambda line: print(line, flush=True))
    report = dense_bench.report(args.task, args.variant, resolution, micro_batches, (args.precision,),
                                steps=args.steps or 3, log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}, load average {', '.join(f'{x:.1f}' for x in report['load_average'])}")
    return 0


def _bfloat16_line() -> str:
    from bit_keras.precision import cpu_bfloat16

    flags = cpu_bfloat16()
    return f"CPU bfloat16 instructions: {', '.join(flags)}" if flags else \
        "CPU bfloat16 instructions: none (bfloat16 is emulated: slow)"


def _race(args) -> int:
    import sys

    from bit_keras.peers import race

    if args.fold or args.jit or args.plot:
        raise ConfigError("--baseline pytorch takes no --fold, --jit or --plot: its rows name what they run "
                          "(savedmodel-folded, keras-tensorflow-xla, ...).")
    job = race.Race(variant=args.variant, mode=args.mode, size=args.resolution, batch=args.batch,
                    precision=args.precision, steps=args.steps, threads=max(0, args.threads))
    rows = tuple(args.rows.split(",")) if args.rows else None
    race.check(job, rows or job.rows())
    log = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    report = race.run(job, rounds=args.rounds, rows=rows, log=log)
    return _print_or_json(args, report, [_bfloat16_line(), *race.format_report(report)])


def _print_or_json(args, report, lines) -> int:
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}")
        for line in lines:
            print(line)
    return 0


def _input(args) -> int:
    from bit_keras.bench import input as bench_input
    from bit_keras.bench.steps import Config

    if args.baseline or args.fold or args.jit or args.plot:
        raise ConfigError("--mode input takes no --baseline, --fold, --jit or --plot.")
    config = Config(variant=args.variant, size=args.resolution, batch=args.batch, mode="train",
                    precision=args.precision)
    report = bench_input.input_report(config, steps=args.steps)
    return _print_or_json(args, report, bench_input.format_input_report(report))


def _memory(args) -> int:
    from bit_keras.bench import memory

    if args.baseline or args.fold or args.jit or args.plot:
        raise ConfigError("--mode memory takes no --baseline, --fold, --jit or --plot.")
    try:
        micro_batches = tuple(int(part) for part in args.micro_batch.split(","))
    except ValueError:
        micro_batches = ()
    accumulators = tuple(args.accumulator.split(","))
    if not set(accumulators) <= set(memory.ACCUMULATORS):
        raise ConfigError(f"--accumulator takes {' or '.join(memory.ACCUMULATORS)} (comma-separated); "
                          f"received {args.accumulator!r}.")
    if not micro_batches or min(micro_batches) < 1 or args.accumulation < 1:
        raise ConfigError(f"Need --micro-batch as positive integers separated by commas and --accumulation >= 1; "
                         f"received --micro-batch {args.micro_batch!r} --accumulation {args.accumulation}.")
    report = memory.memory_report(args.variant, args.resolution, micro_batches, accumulation=args.accumulation,
                                  precision=args.precision, accumulators=accumulators)
    return _print_or_json(args, report, memory.format_memory_report(report))
