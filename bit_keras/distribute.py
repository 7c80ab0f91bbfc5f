"""Picking the tf.distribute strategy (TPU, mirrored GPUs/CPUs, default) and splitting the batch.

Every command and API gets its strategy here (`resolve_strategy`, `make_strategy`) and asks
what kind it is here (`is_tpu`, `is_multi_worker`, `is_default`); only this module knows them
apart. Tests split the CPU into logical devices (`split_cpu`, before TensorFlow initialises)
so that MirroredStrategy runs with more than one replica on a machine without accelerators.

Multi-worker runs follow TensorFlow's multi-worker guide: every worker runs the same
command, only the chief writes into the run directory, and the others write into a
private scratch folder (`worker_scratch`) that they remove when they finish.

Joining a cluster is bounded: before TensorFlow starts its server, each worker listens on its
own address and waits (in Python, where SIGTERM still ends it) until every other worker's
address answers, for at most `cluster_timeout()` seconds; then it fails with one line naming
the workers that did not. Once the job runs, a worker that stops answering ends the others
with one line too (`lost_worker_error`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import time

from bit_keras.errors import ClusterError, ConfigError, SetupError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST")
# TensorFlow has no variable of its own for this wait (its coordination service waits an hour).
CLUSTER_TIMEOUT_VARIABLE = "BIT_KERAS_CLUSTER_TIMEOUT"
DEFAULT_CLUSTER_TIMEOUT = 600.0   # seconds: time to start the same command on every machine
COLLECTIVE_JOBS = ("chief", "worker")  # the tasks that take part in every step (not "evaluator", "ps")
# What tf.distribute.MultiWorkerMirroredStrategy() returns, under either class name.
MULTI_WORKER_CLASSES = ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")


def is_tpu(strategy) -> bool:
    return type(strategy).__name__.startswith("TPUStrategy")


def is_multi_worker(strategy) -> bool:
    return type(strategy).__name__ in MULTI_WORKER_CLASSES


def is_default(strategy) -> bool:
    """The default strategy (one device), or the stand-in for it where tf.distribute does not apply."""
    return isinstance(strategy, _NoStrategy) or type(strategy).__name__.startswith("_Default")


class _NoStrategy:
    """The default strategy's surface where tf.distribute does not apply (JAX backend)."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def resolve_strategy(strategy=None, *, tpu=None, cpu_devices=None, log=None):
    """A `tf.distribute.Strategy` from a strategy, a name ("auto", "mirrored", ...) or None (the one in force).

    A name is made by `make_strategy` (which splits the CPU into `cpu_devices` first). On the
    JAX backend there is no tf.distribute: None, "auto" and "default" give a stand-in whose
    scope does nothing; Keras' JAX distribution (`jax_data_parallel`) splits batches.
    """
    if strategy is not None and not isinstance(strategy, str):
        return strategy
    import keras

    if keras.backend.backend() != "tensorflow":
        if strategy not in (None, "auto", "default") or tpu:
            asked = f"tpu={tpu!r}" if tpu else f"strategy={strategy!r}"
            raise ConfigError(f"{asked} needs the TensorFlow backend (KERAS_BACKEND=tensorflow); on JAX, "
                              "fine-tuning uses every local device through keras.distribution.")
        return _NoStrategy()
    if strategy is None and not tpu:
        if cpu_devices is not None:
            split_cpu(cpu_devices)
        import tensorflow as tf

        return tf.distribute.get_strategy()
    return make_strategy(strategy or "auto", tpu, cpu_devices=cpu_devices, log=log)


def check_flags(*, strategy=None, cpu_devices=None, cluster_timeout=None) -> None:
    """Refuses impossible hardware settings and a TF_CONFIG outside its cluster before any work.

    A `cluster_timeout` becomes $BIT_KERAS_CLUSTER_TIMEOUT, so every strategy built in this
    process (finetune, train, vtab's runs) waits that long for the cluster.
    """
    if cpu_devices is not None:
        check_cpu_devices(cpu_devices)
    if cluster_timeout is not None:
        seconds = check_cluster_timeout(cluster_timeout, name="--cluster-timeout")
        os.environ[CLUSTER_TIMEOUT_VARIABLE] = repr(seconds)
    if strategy == "multi_worker" and os.environ.get("TF_CONFIG"):
        task_of()   # parses and checks TF_CONFIG (ConfigError)


def replicas_of(strategy) -> int:
    return int(getattr(strategy, "num_replicas_in_sync", 1))


def built_in(strategy, layer) -> bool:
    """Whether `layer`'s variables belong to `strategy` (a ready backbone cannot move into a scope)."""
    if is_default(strategy) or not layer.weights:
        return True
    variable = layer.weights[0]
    return strategy.extended.variable_created_in_scope(getattr(variable, "value", variable))


def split_cpu(count: int) -> None:
    """Splits the first CPU into `count` logical devices. Must run before TensorFlow initialises."""
    check_cpu_devices(count)
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(count))
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != int(count):
            raise SetupError(f"Cannot split the CPU into {count} devices: TensorFlow is already "
                               f"initialised with {current}. Split it before building any model.") from None


def check_cpu_devices(count) -> None:
    if isinstance(count, bool) or int(count) != count or int(count) < 1:
        raise ConfigError(f"cpu device count must be >= 1. Received: {count}")


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


def make_strategy(strategy: str = "auto", tpu: str | None = None, *, cpu_devices=None, resolver_factory=None,
                  cluster_timeout=None, log=None):
    """A `tf.distribute.Strategy`.

    Args:
        strategy: "auto", "default", "mirrored" (all GPUs, else all logical CPUs),
            "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG or SLURM) or "tpu".
        tpu: the TPU's name or address for `TPUClusterResolver` ("local" on a TPU VM,
            a TPU node name, or grpc://host:8470). Implies strategy "tpu".
        cpu_devices: split the CPU into this many logical devices first (`split_cpu`).
        resolver_factory: builds the resolver from `tpu=`; tests pass a fake one.
        cluster_timeout, log: `multi_worker_strategy`'s.
    """
    if cpu_devices is not None:
        split_cpu(cpu_devices)
    import tensorflow as tf

    name = choose_strategy_name(strategy, tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return multi_worker_strategy(timeout=cluster_timeout, log=log)
    return tpu_strategy(tpu or "local", resolver_factory=resolver_factory)


def multi_worker_strategy(*, timeout=None, log=None):
    """MultiWorkerMirroredStrategy from TF_CONFIG, else from SLURM's variables (TensorFlow's resolver).

    With TF_CONFIG, waits at most `timeout` seconds (default `cluster_timeout()`) for the other
    workers first (`wait_for_cluster`); `log` hears once that it is waiting.
    """
    if os.environ.get("TF_CONFIG"):
        cluster, task_type, task_index = _tf_config()
        if not any(cluster.get(job) for job in COLLECTIVE_JOBS):
            raise SetupError("TF_CONFIG names no worker or chief; give it cluster.worker (host:port list) and "
                             "task {type, index} on every machine.")
        wait_for_cluster(cluster, task_type, task_index, cluster_timeout() if timeout is None else timeout, log=log)
        return _keeping_sigterm(lambda tf: tf.distribute.MultiWorkerMirroredStrategy())
    if all(os.environ.get(name) for name in SLURM_VARIABLES):
        return _keeping_sigterm(lambda tf: tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.SlurmClusterResolver()))
    raise SetupError("--strategy multi_worker needs TF_CONFIG (the cluster and this worker's task) or a SLURM "
                     "job step (srun sets SLURM_PROCID); set TF_CONFIG on every worker or launch with srun.")


def _keeping_sigterm(build):
    """`build(tf)`, then SIGTERM's handler as it was: TensorFlow's cluster agent installs one that swallows it."""
    import tensorflow as tf

    previous = signal.getsignal(signal.SIGTERM)
    strategy = build(tf)
    with contextlib.suppress(ValueError, TypeError):   # not the main thread, or a handler set outside Python
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return strategy


def cluster_timeout() -> float:
    """Seconds a worker waits for the others: $BIT_KERAS_CLUSTER_TIMEOUT, else 600 (10 minutes)."""
    value = os.environ.get(CLUSTER_TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_CLUSTER_TIMEOUT
    return check_cluster_timeout(value, name=f"${CLUSTER_TIMEOUT_VARIABLE}")


def check_cluster_timeout(value, *, name="cluster_timeout") -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds. Received: {value!r}")
    return seconds


def wait_for_cluster(cluster, task_type, task_index, timeout, *, log=None, poll=0.5):
    """Waits until every other chief/worker address accepts connections; ClusterError after `timeout` s.

    This task listens on its own address meanwhile, so that the others see it before
    TensorFlow's server takes the port over. All of it is plain Python: a SIGTERM (default
    action) ends the process at once. A task outside the collective jobs (an evaluator) waits for nothing.
    """
    if task_type not in COLLECTIVE_JOBS:
        return
    others = [(job, index, address) for job in COLLECTIVE_JOBS for index, address in enumerate(cluster.get(job, ()))
              if (job, index) != (task_type, task_index)]
    own = cluster[task_type][task_index]
    listener = _listen(own, task_type, task_index)
    try:
        deadline, waiting, said = time.monotonic() + float(timeout), list(others), False
        while True:
            waiting = [task for task in waiting if not _answers(task[2])]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{job} {index} ({address})" for job, index, address in waiting)
                raise ClusterError(
                    f"No answer from {names} after {timeout:g} s waiting for the cluster (this is {task_type} "
                    f"{task_index}, {own}). Start the same command on every machine, each with its own TF_CONFIG "
                    f"task, within --cluster-timeout seconds (or ${CLUSTER_TIMEOUT_VARIABLE}) of each other.")
            if log is not None and not said:
                names = ", ".join(f"{job} {index} ({address})" for job, index, address in waiting)
                log(f"Waiting up to {timeout:g} s for the cluster: {names}.")
                said = True
            time.sleep(poll)
    finally:
        if listener is not None:
            listener.close()


def _split_address(address):
    host, _, port = str(address).rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def _listen(address, task_type, task_index):
    """A plain socket on this task's port (None when the host part is not this machine's to bind)."""
    _, port = _split_address(address)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as error:
        listener.close()
        import errno

        if error.errno == errno.EADDRINUSE:
            raise ClusterError(f"Port {port} of {task_type} {task_index} ({address}) is already in use on this "
                               "machine (another job, or a worker of this one still running); stop it or give "
                               "TF_CONFIG another port.") from None
        return None
    listener.listen(16)
    return listener


def _answers(address) -> bool:
    try:
        with socket.create_connection(_split_address(address), timeout=1.0):
            return True
    except OSError:
        return False


def _tf_config():
    """(cluster, task type, task index) from TF_CONFIG; ConfigError when it is not such JSON or not consistent."""
    example = ("{\"cluster\": {\"worker\": [\"host:port\", ...]}, \"task\": {\"type\": \"worker\", "
               "\"index\": 0}}")
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        task = config.get("task") or {}
        cluster = {str(job): list(addresses) for job, addresses in dict(config.get("cluster") or {}).items()}
        task_type, task_index = task.get("type"), task.get("index", 0)
        if isinstance(task_index, bool) or int(task_index) != task_index:
            raise ValueError(task_index)
        task_index = int(task_index)
        if not all(isinstance(address, str) and _split_address(address) for addresses in cluster.values()
                   for address in addresses):
            raise ValueError(cluster)
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"TF_CONFIG is not valid JSON of the form {example}.") from None
    if task_type is not None and (task_type not in cluster or not 0 <= task_index < len(cluster[task_type])):
        jobs = ", ".join(f"{job}: {len(addresses)} task(s)" for job, addresses in cluster.items()) or "no tasks"
        raise ConfigError(f"TF_CONFIG's task ({task_type} {task_index}) is outside its cluster ({jobs}); give each "
                          "machine the index of its own address in that job's list (counting from 0).")
    return cluster, task_type, task_index


# What a collective step raises when a peer is gone (TensorFlow's error class names).
LOST_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError", "AbortedError", "InternalError",
                    "UnknownError", "FailedPreconditionError")


def lost_worker_error(error, strategy, *, checkpoint=None):
    """A one-line ClusterError for a multi-worker job whose step failed because a task stopped answering.

    None when `error` is anything else (a real bug keeps its traceback). The task is named from
    TensorFlow's message ("/job:worker/replica:0/task:1"); `checkpoint` is the folder that was kept.
    """
    import re

    if not is_multi_worker(strategy):
        return None
    if type(error).__name__ not in LOST_PEER_ERRORS or not type(error).__module__.startswith("tensorflow"):
        return None
    task_type, task_index, cluster = task_of(strategy)
    text = str(error)
    named = []
    for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text):
        if (job, int(index)) != (task_type, task_index) and (job, int(index)) not in named:
            named.append((job, int(index)))
    if named:
        who = ", ".join(f"{job} {index}" + (f" ({cluster[job][index]})" if index < len(cluster.get(job, ())) else "")
                        for job, index in named)
    else:
        who = "another worker"
    kept = (f"{checkpoint} was kept" if checkpoint else "the last checkpoint was kept")
    return ClusterError(f"{who} stopped answering ({type(error).__name__}), so this {task_type} {task_index} "
                        f"stopped too; {kept}: run the same command again on every worker to resume.")


def task_of(strategy=None):
    """(task type, task index, cluster dict) of this process in a multi-worker job, or (None, None, {}).

    Read from the strategy's cluster resolver when it has one, else from TF_CONFIG or SLURM,
    so it can be known before TensorFlow starts (to choose the directory to lock).
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        cluster = resolver.cluster_spec().as_dict()
        return resolver.task_type, int(resolver.task_id or 0), cluster
    if strategy is not None and not is_multi_worker(strategy):
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
    if is_multi_worker(strategy):  # MultiWorkerMirroredStrategy() is a CollectiveAllReduceStrategy
        return "MultiWorkerMirroredStrategy"
    return "default (one device)" if is_default(strategy) else type(strategy).__name__


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


def per_replica_micro_batch(global_batch, micro_batch_size, replicas) -> int:
    """Each replica's micro-batch: global batch = replicas x micro-batch x accumulation steps, checked."""
    per_replica = per_replica_batch(int(global_batch), replicas)  # ConfigError when it does not divide
    if micro_batch_size is None:
        return per_replica
    if isinstance(micro_batch_size, bool) or int(micro_batch_size) != micro_batch_size or micro_batch_size < 1 \
            or per_replica % micro_batch_size:
        where = f" per replica ({global_batch} over {replicas} replicas)" if replicas > 1 else ""
        raise ConfigError(f"micro-batch {micro_batch_size} must divide the batch of {per_replica}{where}; "
                          f"global batch = replicas x micro-batch x accumulation steps.")
    return int(micro_batch_size)
