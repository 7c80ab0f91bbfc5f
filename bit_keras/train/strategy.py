"""Picking the tf.distribute strategy (TPU, mirrored GPUs/CPUs, default) and splitting the batch.

One training loop serves every strategy; only this module knows them apart. Tests split
the CPU into logical devices (`split_cpu`, before TensorFlow initialises) so that
MirroredStrategy runs with more than one replica on a machine without accelerators.

Multi-worker runs follow TensorFlow's multi-worker guide: every worker runs the same
command, only the chief writes into the run directory, and the others write into a
private scratch folder (`worker_scratch`) that they remove when they finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from bit_keras.errors import ConfigError, SetupError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST")


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
        strategy: "auto", "default", "mirrored" (all GPUs, else all logical CPUs),
            "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG or SLURM) or "tpu".
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
    if name == "multi_worker":
        return multi_worker_strategy()
    return tpu_strategy(tpu or "local", resolver_factory=resolver_factory)


def multi_worker_strategy():
    """MultiWorkerMirroredStrategy from TF_CONFIG, else from SLURM's variables (TensorFlow's resolver)."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        cluster, _, _ = _tf_config()
        if not cluster.get("worker") and not cluster.get("chief"):
            raise SetupError("TF_CONFIG names no worker or chief; give it cluster.worker (host:port list) and "
                             "task {type, index} on every machine.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if all(os.environ.get(name) for name in SLURM_VARIABLES):
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    raise SetupError("--strategy multi_worker needs TF_CONFIG (the cluster and this worker's task) or a SLURM "
                     "job step (srun sets SLURM_PROCID); set TF_CONFIG on every worker or launch with srun.")


def _tf_config():
    """(cluster, task type, task index) from TF_CONFIG; ConfigError when it is not such JSON."""
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        task = config.get("task") or {}
        return dict(config.get("cluster") or {}), task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError("TF_CONFIG is not valid JSON of the form {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}.") from None


def task_of(strategy=None):
    """(task type, task index, cluster dict) of this process in a multi-worker job, or (None, None, {}).

    Read from the strategy's cluster resolver when it has one, else from TF_CONFIG or SLURM,
    so it can be known before TensorFlow starts (to choose the directory to lock).
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        cluster = resolver.cluster_spec().as_dict()
        return resolver.task_type, int(resolver.task_id or 0), cluster
    if strategy is not None and type(strategy).__name__ not in ("MultiWorkerMirroredStrategy",
                                                                "CollectiveAllReduceStrategy"):
        return None, None, {}
    if os.environ.get("TF_CONFIG"):
        cluster, task_type, task_index = _tf_config()
        return task_type, task_index, cluster
    if os.environ.get("SLURM_PROCID"):
        return "worker", int(os.environ["SLURM_PROCID"]), {}
    return None, None, {}


def is_chief(strategy=None, name=None) -> bool:
    """Whether this process writes the run's outputs: always, except a non-chief multi-worker task.

    As in TensorFlow's multi-worker guide: the "chief" task, or worker 0 when there is no chief.
    `name` is a strategy name for callers that have not built the strategy yet.
    """
    if strategy is None and name != "multi_worker":
        return True
    task_type, task_id, cluster = task_of(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not cluster.get("chief"))


def worker_scratch() -> str:
    """A non-chief worker's private folder for the writes it must do but nobody reads; removed at the end.

    A worker killed with SIGKILL cannot remove its own: the next one removes those whose process is gone.
    """
    import glob
    import shutil

    _, task_id, _ = task_of()
    prefix = os.path.join(tempfile.gettempdir(), f"bit_keras-worker{task_id or 0}-")
    for stale in glob.glob(prefix + "*"):
        pid = stale[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return prefix + str(os.getpid())


@contextlib.contextmanager
def jax_data_parallel():
    """On the JAX backend with several devices: `keras.distribution.DataParallel` over all of them.

    Does nothing elsewhere (on TensorFlow, tf.distribute strategies split batches); inside,
    `jax_devices_in_use()` says how many devices a batch is split over. Multi-host JAX jobs
    first join through `keras.distribution.initialize()` when KERAS_DISTRIBUTION_NUM_PROCESSES is set.
    """
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1:
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    if len(devices) < 2 or keras.distribution.distribution() is not None:
        yield  # one device, or the caller chose a distribution already
        return
    with keras.distribution.DataParallel(devices=devices).scope():
        yield


def jax_devices_in_use() -> int:
    """Devices the `keras.distribution` in force splits each batch over (1: none, or not JAX)."""
    import keras

    if keras.backend.backend() != "jax" or keras.distribution.distribution() is None:
        return 1
    return int(keras.distribution.distribution().device_mesh.devices.size)


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(strategy) -> str:
    """The strategy's name for run headers, e.g. "MirroredStrategy" or "default (one device)"."""
    name = type(strategy).__name__
    if name == "CollectiveAllReduceStrategy":  # what MultiWorkerMirroredStrategy() returns
        return "MultiWorkerMirroredStrategy"
    return "default (one device)" if name.startswith("_Default") else name


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
