"""Picking the tf.distribute strategy (TPU, mirrored GPUs/CPUs, default) and splitting the batch.

One training loop serves every strategy; only this module knows them apart. Tests split
the CPU into logical devices (`split_cpu`, before TensorFlow initialises) so that
MirroredStrategy runs with more than one replica on a machine without accelerators.
"""

from __future__ import annotations
from bit_keras.errors import ConfigError, SetupError

STRATEGIES = ("auto", "default", "mirrored", "tpu")


def split_cpu(count: int) -> None:
    """Splits the first CPU into `count` logical devices. Must run before TensorFlow initialises."""
    import tensorflow as tf

    if int(count) < 1:
        raise ConfigError(f"cpu device count must be >= 1. Received: {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != int(count):
            raise SetupError(f"Cannot split the CPU into {count} devices: TensorFlow is already "
                               f"initialised with {current}. Split it before building any model.") from None


def choose_strategy_name(strategy: str = "auto", tpu: str | None = None, *, num_gpus: int | None = None) -> str:
    """Which strategy a run gets: --tpu means TPU; "auto" takes mirrored with GPUs, else default."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if tpu and strategy not in ("auto", "tpu"):
        raise ConfigError(f"--tpu {tpu!r} asks for a TPU but --strategy is {strategy!r}; drop one of them.")
    if tpu or strategy == "tpu":
        return "tpu"
    if strategy != "auto":
        return strategy
    if num_gpus is None:
        import tensorflow as tf

        num_gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if num_gpus > 0 else "default"


def make_strategy(strategy: str = "auto", tpu: str | None = None, *, resolver_factory=None):
    """A `tf.distribute.Strategy`.

    Args:
        strategy: "auto", "default", "mirrored" (all GPUs, else all logical CPUs) or "tpu".
        tpu: the TPU's name or address for `TPUClusterResolver` ("local" on a TPU VM,
            a TPU node name, or grpc://host:8470). Implies strategy "tpu".
        resolver_factory: builds the resolver from `tpu=`; tests pass a fake one.
    """
    import tensorflow as tf

    name = choose_strategy_name(strategy, tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tpu_strategy(tpu or "local", resolver_factory=resolver_factory)


def tpu_strategy(address: str, *, resolver_factory=None):
    """Connects to the TPU at `address`, initialises it and returns a TPUStrategy over its cores."""
    import tensorflow as tf

    resolver_factory = resolver_factory or tf.distribute.cluster_resolver.TPUClusterResolver
    try:
        resolver = resolver_factory(tpu=address)
        if address not in ("", "local"):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SetupError(f"Cannot reach a TPU at {address!r} ({first_line}). On a TPU VM use --tpu local; "
                           "otherwise the TPU node's name or grpc://HOST:8470, from the same project and zone.") from None
    return tf.distribute.TPUStrategy(resolver)


def per_replica_batch(global_batch: int, replicas: int) -> int:
    """The batch each replica sees; the global batch must split evenly."""
    if int(global_batch) < 1:
        raise ConfigError(f"--batch must be a positive integer. Received: {global_batch}")
    if global_batch % replicas:
        lower = max(replicas, global_batch // replicas * replicas)
        raise ConfigError(f"Global batch {global_batch} does not divide over {replicas} replicas; "
                         f"use a multiple of {replicas}, e.g. {lower} or {lower + replicas}.")
    return global_batch // replicas
