"""Throughput of BiT models against the machine's own measured peak.

Speed on a shared machine is noisy, so every figure here is measured in one process with
its reference interleaved: each timed model step is followed by one timed float32 matmul
(the peak probe), and `compare` interleaves several configurations round by round. Ratios
and fractions are then taken from medians of neighbouring measurements, which cancels
most of the load that other processes put on the machine.

FLOPs are 2 x MACs, with MACs counted analytically from the architecture (convolutions
and the head, which are >99% of the arithmetic); a training step counts 3x the forward.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from bit_keras.errors import ConfigError, SetupError

MODES = ("infer", "train", "savedmodel")
PRECISIONS = ("float32", "bfloat16")
PEAK_MATMUL_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration.

    `fold` folds weight standardization into plain convolutions (`inference.py`); for
    "savedmodel" it exports the folded model as the serving signature. `jit` compiles the
    step with XLA (for "savedmodel", the loaded serving function is called under XLA).
    `straightforward` swaps bit_keras's GroupNormalization for Keras core's (same math with
    epsilon 1e-5, a reduction over the grouped view): the plain implementation that the
    speed-ups are measured against.
    """

    variant: str = "r50x1"
    size: int = 224
    batch: int = 16
    mode: str = "infer"
    precision: str = "float32"
    jit: bool = False
    fold: bool = False
    straightforward: bool = False
    num_classes: int = 1000

    def label(self) -> str:
        knobs = [self.precision] + (["jit"] if self.jit else []) + (["fold"] if self.fold else [])
        return f"{self.mode} {'+'.join(knobs)}" + (" (straightforward: Keras core GN)" if self.straightforward else "")


def parse_variant(variant: str):
    """The `Architecture` of any model name (release or architecture); weights do not matter here."""
    from bit_keras import presets

    return presets.resolve(variant)[0]


def count_macs(architecture, image_size, num_classes: int | None = 1000) -> int:
    """Multiply-accumulates of one forward pass: every convolution plus the head.

    Walks `Architecture.units()`, as the builder does (7x7/2 root with padding 3, 3x3/2 max
    pool, stride in the 3x3 convolution of each block's first unit, projection on the
    pre-activation). Normalisation, ReLU and additions are not counted. R50x1 at 224 gives
    4.09 G (the 4.23 G quoted for timm's `resnetv2_50x1_bit` also counts those layers).
    """
    height, wide = (image_size, image_size) if isinstance(image_size, int) else image_size

    def out(n, kernel, stride, pad):
        return (n + 2 * pad - kernel) // stride + 1

    h, w = out(height, 7, 2, 3), out(wide, 7, 2, 3)
    macs = h * w * 49 * 3 * architecture.root_channels
    h, w = out(h, 3, 2, 1), out(w, 3, 2, 1)
    for unit in architecture.units():
        cin, mid, cout, stride = unit.in_channels, unit.mid_channels, unit.out_channels, unit.stride
        macs += h * w * cin * mid  # a: 1x1
        ho, wo = out(h, 3, stride, 1), out(w, 3, stride, 1)
        if unit.projection:
            macs += out(h, 1, stride, 0) * out(w, 1, stride, 0) * cin * cout
        macs += ho * wo * 9 * mid * mid + ho * wo * mid * cout  # b: 3x3, c: 1x1
        h, w = ho, wo
    if num_classes:
        macs += architecture.num_features * num_classes
    return macs


def cpu_name() -> str:
    """The CPU model name (as `lscpu` prints it) and the number of cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"


def _proc_status_bytes(field: str):
    """A `kB` field of /proc/self/status in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident memory now (off Linux: the peak so far, the nearest figure there)."""
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory.

    Linux: VmHWM, not `ru_maxrss`, which carries a parent's high-water mark across
    fork+exec (a benchmark started from a large pytest process would report pytest's peak).
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB.


def reset_peak_rss() -> None:
    """Restart the high-water mark from the current resident size (Linux 4.0+; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        pass


class MatmulProbe:
    """A large float32 matrix product, the machine's practical peak of arithmetic."""

    def __init__(self, size: int = PEAK_MATMUL_SIZE):
        import keras

        self.size = size
        self.flops = 2 * size ** 3
        self._a = keras.random.normal((size, size), dtype="float32", seed=0)
        self._b = keras.random.normal((size, size), dtype="float32", seed=1)
        self.time()  # first call pays for kernel selection

    def time(self) -> float:
        import keras

        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(self._a, self._b)[0, 0])
        return time.perf_counter() - start


def _dtype_policy(precision):
    return "mixed_bfloat16" if precision == "bfloat16" else "float32"


def _build_model(config: Config):
    from bit_keras.backbone import BiTBackbone
    from bit_keras.classifier import BiTImageClassifier

    architecture = parse_variant(config.variant)
    policy = _dtype_policy(config.precision)
    # Random kernels: speed does not depend on the values, and nothing is downloaded.
    backbone = BiTBackbone(architecture.block_units, architecture.width, dtype=policy)
    return BiTImageClassifier(backbone, config.num_classes, dtype=policy)


def with_keras_group_norm(model):
    """A copy of `model` whose GroupNormalization layers are Keras core's, weights copied."""
    import keras

    from bit_keras.inference import rebuild
    from bit_keras.layers import GroupNormalization

    def keras_group_norm(layer):
        if isinstance(layer, GroupNormalization):
            return keras.layers.GroupNormalization(groups=layer.groups, epsilon=layer.epsilon,
                                                   name=layer.name, dtype=layer.dtype_policy)
        return None

    return rebuild(model, keras_group_norm)


def make_step(config: Config, *, workdir: str | None = None):
    """A zero-argument callable that runs one batch of `config` to completion."""
    import keras
    import numpy as np

    if config.mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}; received {config.mode!r}.")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}; received {config.precision!r}.")
    if config.size < 32 or config.batch < 1:
        raise ConfigError(f"Need size >= 32 and batch >= 1; received size={config.size}, batch={config.batch}.")
    if config.fold and config.mode == "train":
        raise ConfigError("fold is for inference: a folded model has fixed kernels and cannot be fine-tuned.")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (config.batch, config.size, config.size, 3)).astype("float32")
    model = _build_model(config)
    if config.straightforward:
        model = with_keras_group_norm(model)

    if config.mode == "train":
        labels = rng.integers(0, config.num_classes, (config.batch,))
        model.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=config.jit)
        return lambda: model.train_on_batch(images, labels)

    served = model
    if config.fold:
        from bit_keras.inference import fold_standardization

        served = fold_standardization(model)
    if config.mode == "infer":
        served.compile(jit_compile=config.jit)
        return lambda: served.predict_on_batch(images)
    return _savedmodel_step(model, served, config, images, workdir)


def _savedmodel_step(model, served, config, images, workdir):
    """Exports `model` (serving signature: `served`), loads it back and calls `serving_default`."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SetupError("--mode savedmodel needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
    import tensorflow as tf

    from bit_keras.export import export_model

    directory = tempfile.mkdtemp(prefix="bit_keras_bench_", dir=workdir)
    path = export_model(model, os.path.join(directory, "export"),
                        serving_model=None if served is model else served)
    loaded = tf.saved_model.load(path)  # kept referenced: the signature uses its variables
    serving = loaded.signatures["serving_default"]
    if config.jit:
        call = tf.function(lambda x: serving(images=x), jit_compile=True)
    else:
        call = lambda x: serving(images=x)  # noqa: E731
    inputs = tf.constant(images)

    def step(_keep=loaded):
        return [value.numpy() for value in call(inputs).values()]

    return step


def _median(values):
    return statistics.median(values)


def _summarize(config, step_times, peak_times, compile_seconds, probe):
    macs = count_macs(parse_variant(config.variant), config.size, config.num_classes)
    passes = 3 if config.mode == "train" else 1
    step = _median(step_times)
    peak = probe.flops / _median(peak_times)
    flops_per_step = passes * 2 * macs * config.batch
    achieved = flops_per_step / step
    return {
        **dataclasses.asdict(config),
        "label": config.label(),
        "images_per_second": config.batch / step,
        "step_seconds": step,
        "step_seconds_all": [round(t, 4) for t in step_times],
        "compile_seconds": compile_seconds,
        "gmacs_per_image": macs / 1e9,
        "model_gflops_per_second": achieved / 1e9,
        "peak_gflops_per_second": peak / 1e9,
        "fraction_of_peak": achieved / peak,
        # Fastest step against fastest probe: what a quiet machine gives; under load from
        # other processes the medians can differ from it in either direction.
        "fraction_of_peak_best": (flops_per_step / min(step_times)) / (probe.flops / min(peak_times)),
        "peak_probe": f"float32 matmul {probe.size}x{probe.size}, timed after every step",
    }


def compare(configs, *, steps: int = 10, warmup: int = 1, probe_size: int = PEAK_MATMUL_SIZE):
    """Benchmarks `configs` in one process, interleaved round by round.

    Each round times one step of every configuration, each followed by one peak probe.
    Returns a dict with one result per configuration (`results`), the ratios of the
    first configuration's step time to each one's (`speedup_vs_first`, median over
    rounds of the per-round ratio), the machine and the process's peak RSS.
    """
    import keras

    if steps < 1:
        raise ConfigError(f"steps must be at least 1; received {steps}.")
    configs = list(configs)
    probe = MatmulProbe(probe_size)
    with tempfile.TemporaryDirectory(prefix="bit_keras_bench_") as workdir:
        runners, compile_seconds = [], []
        for config in configs:
            step = make_step(config, workdir=workdir)
            start = time.perf_counter()
            for _ in range(max(1, warmup)):
                step()
            compile_seconds.append(time.perf_counter() - start)
            runners.append(step)
        step_times = [[] for _ in configs]
        peak_times = [[] for _ in configs]
        for _ in range(steps):
            for index, step in enumerate(runners):
                start = time.perf_counter()
                step()
                step_times[index].append(time.perf_counter() - start)
                peak_times[index].append(probe.time())
    results = [_summarize(c, s, p, t, probe) for c, s, p, t in zip(configs, step_times, peak_times, compile_seconds)]
    first = step_times[0]
    for result, times in zip(results, step_times if len(configs) > 1 else []):
        ratios = [a / b for a, b in zip(first, times)]
        result["speedup_vs_first"] = _median(ratios)
        result["speedup_vs_first_range"] = [min(ratios), max(ratios)]
    return {
        "machine": cpu_name(),
        "backend": keras.backend.backend(),
        "steps": steps,
        "peak_rss_bytes": peak_rss_bytes(),
        "results": results,
    }


def benchmark(config: Config, *, steps: int = 10, warmup: int = 1) -> dict:
    """One configuration: images/s, fraction of the measured matmul peak, peak RSS."""
    report = compare([config], steps=steps, warmup=warmup)
    result = report["results"][0]
    return {**result, "machine": report["machine"], "backend": report["backend"],
            "peak_rss_bytes": report["peak_rss_bytes"]}


GROUP_NORM_SHAPES = ((16, 56, 56, 256), (16, 56, 56, 64), (16, 28, 28, 512), (16, 14, 14, 1024))


def compare_group_norm(shapes=GROUP_NORM_SHAPES, *, rounds: int = 9, jit: bool = False, log=None) -> list:
    """Keras core's GroupNormalization vs bit_keras's at R50x1's activation shapes.

    Both layers run in compiled graphs (`jit` adds XLA), interleaved round by round. Returns
    one dict per shape with the median times and the median per-round speed-up; prints it.
    """
    import keras
    import numpy as np

    from bit_keras.layers import GroupNormalization

    rows = []
    for shape in shapes:
        x = keras.random.normal(shape, seed=0) * 3.0 + 1.0
        ours = GroupNormalization()
        core = keras.layers.GroupNormalization(groups=32, epsilon=1e-5)
        steps = []
        for layer in (core, ours):
            model = keras.Sequential([keras.Input(shape[1:]), layer])
            model.compile(jit_compile=jit)
            model.predict_on_batch(x)
            steps.append(lambda m=model: m.predict_on_batch(x))
        np.testing.assert_allclose(steps[1](), steps[0](), atol=1e-4)  # the same function
        times = [[], []]
        for _ in range(rounds):
            for index, step in enumerate(steps):
                start = time.perf_counter()
                step()
                times[index].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(*times)]
        row = {"shape": list(shape), "keras_core_ms": 1e3 * _median(times[0]),
               "bit_keras_ms": 1e3 * _median(times[1]), "speedup": _median(ratios),
               "speedup_range": [min(ratios), max(ratios)]}
        if log is not None:
            log(f"{shape}: Keras core {row['keras_core_ms']:.1f} ms, bit_keras {row['bit_keras_ms']:.1f} ms, "
                f"{row['speedup']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})")
        rows.append(row)
    return rows


def format_result(result: dict) -> str:
    """One line per configuration, for people."""
    text = (f"{result['variant']} {result['size']}px batch {result['batch']} {result['label']}: "
            f"{result['images_per_second']:.2f} images/s, {result['model_gflops_per_second']:.1f} GFLOP/s "
            f"= {100 * result['fraction_of_peak']:.1f}% of the measured peak "
            f"({result['peak_gflops_per_second']:.1f} GFLOP/s; best step vs best probe "
            f"{100 * result['fraction_of_peak_best']:.1f}%)")
    if "speedup_vs_first" in result:
        low, high = result["speedup_vs_first_range"]
        text += f", {result['speedup_vs_first']:.2f}x the first row's speed (rounds {low:.2f}-{high:.2f})"
    return text
