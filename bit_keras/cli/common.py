"""Flags that mean the same in every command, and the first line each command prints."""

from __future__ import annotations

MODEL_HELP = ("A released name (m-r50x1, BiT-S-R101x3, BiT-M-R50x1-ILSVRC2012, ...; `bit_keras list`), which "
              "means its released weights, or an architecture (r50x1, r14x1, or r{u1}-{u2}-{u3}-{u4}x{width} for "
              "any units per block, e.g. r2-3-4-1x2), which means random weights.")


DATASET_HELP = ("tfds:NAME[/CONFIG] (tensorflow-datasets), folder:PATH (PATH/<class>/*.jpg), digits "
                "(scikit-learn's, offline) or vtab:TASK (`bit_keras vtab --list`).")
GLOBAL_BATCH_HELP = "Global batch of one update over all replicas"


def add_data_flags(parser, *, dataset: bool = True, required: bool = True, dataset_help: str = DATASET_HELP) -> None:
    """--dataset, --data-dir and --no-download, as finetune, evaluate, train and vtab spell them."""
    if dataset:
        parser.add_argument("--dataset", required=required, help=dataset_help)
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory (default: tfds's own, "
                        "~/tensorflow_datasets; a gs:// path on Cloud TPU).")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="Fail at once if a tfds dataset is not prepared in --data-dir, instead of downloading it.")


def add_batch_flag(parser, *, default=512, dest="batch", default_text="HyperRule: 512") -> None:
    """--batch where it is the global batch of one update (finetune, vtab, hyperrule, train)."""
    parser.add_argument("--batch", dest=dest, type=int, default=default, help=f"{GLOBAL_BATCH_HELP} ({default_text}).")


def add_fine_tuning_flags(parser, *, batch_dest="batch", micro_batch_dest="micro_batch", batch_default=512,
                          batch_default_text="HyperRule: 512") -> None:
    """--batch, --micro-batch, --steps, --resolution and --seed of a HyperRule fine-tune (finetune and vtab)."""
    add_batch_flag(parser, dest=batch_dest, default=batch_default, default_text=batch_default_text)
    parser.add_argument("--micro-batch", dest=micro_batch_dest, type=int, default=None,
                        help="Examples per forward/backward pass on each replica; micro-batches are accumulated "
                             "into one update (same result, less memory): --batch = replicas x micro-batch x "
                             "accumulation steps.")
    parser.add_argument("--steps", type=int, default=None, help="Shorten the HyperRule schedule to N updates.")
    parser.add_argument("--resolution", type=int, default=None, help="Crop size instead of the HyperRule's.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data order, crops, flips and MixUp.")


def add_model_flags(parser, *, default=None, variant_help=MODEL_HELP):
    """--variant, --weights, --random-weights and --cache-dir, as every command spells them."""
    parser.add_argument("--variant", default=default, required=False, help=variant_help)
    parser.add_argument("--weights", default=None,
                        help="A local .npz, a URL or a release name, instead of the weights --variant means.")
    parser.add_argument("--random-weights", dest="load_weights", action="store_false",
                        help="Random (untrained) weights even for a released name.")
    parser.add_argument("--cache-dir", default=None, help="Download cache (default $BIT_KERAS_CACHE or "
                        "~/.cache/bit_keras).")


def resolve_model(args):
    """Applies the weights rule to the model flags and says the outcome first (downloads if needed)."""
    from bit_keras import weights

    choice = weights.resolve(args.variant, args.weights, load_weights=args.load_weights,
                             cache_dir=args.cache_dir)
    print(f"Model {choice.describe()}", flush=True)
    return choice


def resolve_source(args):
    """What a fine-tuning command starts from: an export directory or .keras file as given, else
    `resolve_model` (which prints the weights line first; offline, a release fails here)."""
    from bit_keras.errors import UsageError
    from bit_keras.weights import is_export

    source = args.variant
    if not is_export(source):
        return resolve_model(args)
    if args.weights or not args.load_weights:
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
    """`bit_keras.distribute.check_flags` on the hardware flags (the CLI calls it before any work)."""
    from bit_keras import distribute

    distribute.check_flags(strategy=getattr(args, "strategy", None), cpu_devices=getattr(args, "cpu_devices", None),
                           cluster_timeout=getattr(args, "cluster_timeout", None))


def make_cli_strategy(args):
    """The strategy the hardware flags ask for (`bit_keras.distribute.resolve_strategy`; it splits the CPU first)."""
    from bit_keras.distribute import resolve_strategy

    return resolve_strategy(args.strategy, tpu=args.tpu, cpu_devices=args.cpu_devices, log=print)


def add_precision_flag(parser) -> None:
    """--precision for finetune and train: the choices are bit_keras.precision's."""
    from bit_keras.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bfloat16: Keras mixed_bfloat16 (float32 weights, bfloat16 compute, about half the "
                             "activation memory; warned about on a CPU without bfloat16 instructions, where it is "
                             "emulated and slow); auto: bfloat16 on a TPU, float32 elsewhere.")
