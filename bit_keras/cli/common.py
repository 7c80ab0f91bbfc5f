"""Flags that mean the same in every command, and the first line each command prints."""

from __future__ import annotations

MODEL_HELP = ("A released name (m-r50x1, BiT-S-R101x3, BiT-M-R50x1-ILSVRC2012, ...; `bit_keras list`), which "
              "means its released weights, or an architecture (r50x1, r14x1, or r{u1}-{u2}-{u3}-{u4}x{width} for "
              "any units per block, e.g. r2-3-4-1x2), which means random weights.")


def add_model_flags(parser, *, default=None, variant_help=MODEL_HELP):
    """--variant, --weights, --random-weights and --cache-dir, as every command spells them."""
    parser.add_argument("--variant", default=default, required=False, help=variant_help)
    parser.add_argument("--weights", default=None,
                        help="A local .npz, a URL or a release name, instead of the weights --variant means.")
    parser.add_argument("--random-weights", action="store_true",
                        help="Random (untrained) weights even for a released name.")
    parser.add_argument("--cache-dir", default=None, help="Download cache (default $BIT_KERAS_CACHE or "
                        "~/.cache/bit_keras).")


def resolve_model(args):
    """Applies the weights rule to the model flags and says the outcome first (downloads if needed)."""
    from bit_keras import weights

    choice = weights.resolve(args.variant, args.weights, random_weights=args.random_weights,
                             cache_dir=args.cache_dir)
    print(f"Model {choice.describe()}", flush=True)
    return choice


def resolve_source(args):
    """What a fine-tuning command starts from: an export directory or .keras file as given, else
    `resolve_model` (which prints the weights line first; offline, a release fails here)."""
    import os

    from bit_keras.cli.main import UsageError

    source = args.variant
    if not (os.path.isdir(source) or source.endswith(".keras")):
        return resolve_model(args)
    if args.weights or args.random_weights:
        raise UsageError(f"{source} is an export with its own weights; drop --weights / --random-weights.")
    return source


def add_hardware_flags(parser):
    """--strategy, --tpu and --cpu-devices, as `train`, `finetune`, `evaluate` and `vtab` spell them."""
    from bit_keras.distribute import STRATEGIES

    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: tpu with --tpu, mirrored with GPUs, else default (one device). mirrored: all "
                             "local GPUs (or --cpu-devices); multi_worker: several machines, from TF_CONFIG or "
                             "SLURM (run the same command on every worker). --batch stays the global batch.")
    parser.add_argument("--tpu", default=None, help="TPU name or address for TPUClusterResolver "
                        "('local' on a TPU VM, a TPU node name, grpc://HOST:8470).")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="Split the CPU into N logical devices (mirrored runs without accelerators; tests).")
    parser.add_argument("--cluster-timeout", type=float, default=None, metavar="SECONDS",
                        help="multi_worker: how long a worker waits for the others to start before it gives up "
                             "naming them (default $BIT_KERAS_CLUSTER_TIMEOUT, else 600 = 10 minutes).")


def check_hardware_flags(args):
    """Refuses impossible hardware flags and a TF_CONFIG outside its cluster before any work (the CLI calls it first).

    --cluster-timeout becomes $BIT_KERAS_CLUSTER_TIMEOUT, so every strategy built in this process
    (finetune, train, vtab's runs) waits that long for the cluster.
    """
    import os

    from bit_keras import distribute as strategies

    if getattr(args, "cpu_devices", None) is not None:
        strategies.check_cpu_devices(args.cpu_devices)
    if getattr(args, "cluster_timeout", None) is not None:
        seconds = strategies.check_cluster_timeout(args.cluster_timeout, name="--cluster-timeout")
        os.environ[strategies.CLUSTER_TIMEOUT_VARIABLE] = repr(seconds)
    if getattr(args, "strategy", None) == "multi_worker" and os.environ.get("TF_CONFIG"):
        strategies.task_of()   # parses and checks TF_CONFIG (ConfigError)


def make_cli_strategy(args):
    """The strategy the hardware flags ask for; splits the CPU first, before TensorFlow initialises.

    On a backend other than TensorFlow the name is passed on, and the run refuses what it cannot do.
    """
    if args.cpu_devices is not None:
        from bit_keras.distribute import split_cpu

        split_cpu(args.cpu_devices)
    import keras

    if keras.backend.backend() != "tensorflow":
        return "default" if args.strategy == "auto" and not args.tpu else args.strategy
    from bit_keras.distribute import make_strategy

    return make_strategy(args.strategy, args.tpu, log=print)


def add_precision_flag(parser) -> None:
    """--precision for finetune and train: the choices are bit_keras.precision's."""
    from bit_keras.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bfloat16: Keras mixed_bfloat16 (float32 weights, bfloat16 compute, about half the "
                             "activation memory; warned about on a CPU without bfloat16 instructions, where it is "
                             "emulated and slow); auto: bfloat16 on a TPU, float32 elsewhere.")
