"""Throughput of BiT models against the machine's own measured peak.

Speed on a shared machine is noisy, so every figure here is measured in one process with
its reference interleaved: each timed model step is followed by one timed matmul in the
step's precision (the peak probe; bfloat16 steps also time a float32 one), and `compare` interleaves several configurations round by round. Ratios
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    cores = usable_cores()
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


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where sysconf cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def reset_peak_rss() -> None:
    """Restart the high-water mark from the current resident size (Linux 4.0+; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        pass


class MatmulProbe:
    """A large matrix product in `dtype` (float32 or bfloat16): the machine's practical peak in that precision."""

    def __init__(self, size: int = PEAK_MATMUL_SIZE, dtype: str = "float32"):
        import keras

        self.size = size
        self.dtype = dtype
        self.flops = 2 * size ** 3
        self._a = keras.random.normal((size, size), dtype=dtype, seed=0)
        self._b = keras.random.normal((size, size), dtype=dtype, seed=1)
        self.time()  # first call pays for kernel selection

    def describe(self) -> str:
        return f"{self.dtype} matmul {self.size}x{self.size}"

    def time(self) -> float:
        import keras

        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.matmul(self._a, self._b)[0, 0], "float32"))
        return time.perf_counter() - start


def _build_model(config: Config):
    from bit_keras.backbone import PRECISION_POLICIES, BiTBackbone
    from bit_keras.classifier import BiTImageClassifier

    architecture = parse_variant(config.variant)
    policy = PRECISION_POLICIES[config.precision]
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


def _summarize(config, step_times, peak_times, compile_seconds, probes):
    """`peak_times`: {precision: probe times}; the row's own precision is its reference peak."""
    macs = count_macs(parse_variant(config.variant), config.size, config.num_classes)
    passes = 3 if config.mode == "train" else 1
    step = _median(step_times)
    flops_per_step = passes * 2 * macs * config.batch
    achieved = flops_per_step / step
    result = {
        **dataclasses.asdict(config),
        "label": config.label(),
        "images_per_second": config.batch / step,
        "step_seconds": step,
        "step_seconds_all": [round(t, 4) for t in step_times],
        "compile_seconds": compile_seconds,
        "gmacs_per_image": macs / 1e9,
        "model_gflops_per_second": achieved / 1e9,
    }
    for precision, times in peak_times.items():
        probe = probes[precision]
        peak = probe.flops / _median(times)
        result[f"{precision}_peak_gflops_per_second"] = peak / 1e9
        result[f"fraction_of_{precision}_peak"] = achieved / peak
        # Fastest step against fastest probe: what a quiet machine gives; under load from
        # other processes the medians can differ from it in either direction.
        result[f"fraction_of_{precision}_peak_best"] = (flops_per_step / min(step_times)) / (probe.flops / min(times))
    own = config.precision
    result.update({
        "peak_precision": own,
        "peak_gflops_per_second": result[f"{own}_peak_gflops_per_second"],
        "fraction_of_peak": result[f"fraction_of_{own}_peak"],
        "fraction_of_peak_best": result[f"fraction_of_{own}_peak_best"],
        "peak_probe": " and ".join(f"{probes[p].describe()}" for p in peak_times) + ", timed after every step",
    })
    return result


def compare(configs, *, steps: int = 10, warmup: int = 1, probe_size: int = PEAK_MATMUL_SIZE):
    """Benchmarks `configs` in one process, interleaved round by round.

    Each round times one step of every configuration, each followed by one peak probe in
    the configuration's precision (a bfloat16 row also times a float32 probe, so it is
    reported against both peaks). Returns a dict with one result per configuration
    (`results`), the ratios of the first configuration's step time to each one's
    (`speedup_vs_first`, median over rounds of the per-round ratio), the machine and the
    process's peak RSS.
    """
    import keras

    if steps < 1:
        raise ConfigError(f"steps must be at least 1; received {steps}.")
    configs = list(configs)
    precisions = ["float32"] + (["bfloat16"] if any(c.precision == "bfloat16" for c in configs) else [])
    probes = {precision: MatmulProbe(probe_size, precision) for precision in precisions}
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
        peak_times = [{p: [] for p in dict.fromkeys([c.precision, "float32"])} for c in configs]
        for _ in range(steps):
            for index, step in enumerate(runners):
                start = time.perf_counter()
                step()
                step_times[index].append(time.perf_counter() - start)
                for precision, times in peak_times[index].items():
                    times.append(probes[precision].time())
    results = [_summarize(c, s, p, t, probes) for c, s, p, t in zip(configs, step_times, peak_times, compile_seconds)]
    first = step_times[0]
    for result, times in zip(results, step_times if len(configs) > 1 else []):
        ratios = [a / b for a, b in zip(first, times)]
        result["speedup_vs_first"] = _median(ratios)
        result["speedup_vs_first_range"] = [min(ratios), max(ratios)]
    from bit_keras.precision import cpu_bfloat16

    return {
        "machine": cpu_name(),
        "cpu_bfloat16": cpu_bfloat16(),
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
            f"= {100 * result['fraction_of_peak']:.1f}% of the measured {result.get('peak_precision', 'float32')} peak "
            f"({result['peak_gflops_per_second']:.1f} GFLOP/s; best step vs best probe "
            f"{100 * result['fraction_of_peak_best']:.1f}%)")
    if result.get("peak_precision", "float32") != "float32" and "fraction_of_float32_peak" in result:
        text += (f", {100 * result['fraction_of_float32_peak']:.1f}% of the float32 peak "
                 f"({result['float32_peak_gflops_per_second']:.1f} GFLOP/s)")
    if "speedup_vs_first" in result:
        low, high = result["speedup_vs_first_range"]
        text += f", {result['speedup_vs_first']:.2f}x the first row's speed (rounds {low:.2f}-{high:.2f})"
    return text


# ---------------------------------------------------------------------------- input pipeline

GPU_TRAINING_IMAGES_PER_SECOND = 2000  # timm's resnetv2_50x1_bit training on an H100 (issue 15's anchor)


def make_jpegs(directory: str, *, count: int = 64, image_size=(375, 500), classes: int = 2, seed: int = 0) -> str:
    """Writes `count` JPEGs (quality 90, smooth random content plus noise, ImageNet-like sizes) as
    `directory/<class>/*.jpg`; returns `directory`. Needs TensorFlow (its JPEG encoder)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    height, width = image_size
    for index in range(count):
        folder = os.path.join(directory, f"class{index % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform(0, 255, (1, height // 16 + 1, width // 16 + 1, 3)).astype("float32")
        image = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")
        with open(os.path.join(folder, f"{index:05d}.jpg"), "wb") as stream:
            stream.write(tf.io.encode_jpeg(image, quality=90).numpy())
    return directory


def input_throughput(path: str, *, crop: int, batch: int, threads=None, batches: int = 8, warmup: int = 2,
                     mixup_alpha: float = 0.1) -> dict:
    """Images/s of bit_keras's training pipeline on `folder:path`: decode, resize, random crop,
    flip and MixUp (`bit_keras.data.load_source` + `train_pipeline`, the fine-tuning input).

    `threads`: tf.data's private thread pool size (1: one core's supply); None: all cores.
    """
    import tensorflow as tf

    from bit_keras import hyperrule
    from bit_keras.data import load_source, train_pipeline

    ds, info = load_source(f"folder:{path}")
    rule = hyperrule.at_resolution(hyperrule.hyperrule(info.train_size, info.image_size, batch_size=batch), crop)
    pipeline = train_pipeline(ds, rule, batch_size=batch, num_classes=info.num_classes, mixup_alpha=mixup_alpha,
                              seed=0, shuffle_buffer=info.train_size)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        pipeline = pipeline.with_options(options)
    iterator = iter(pipeline)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _labels = next(iterator)
    seconds = time.perf_counter() - start
    return {"threads": threads or usable_cores(),
            "images_per_second": batches * batch / seconds, "batches": batches, "batch": batch,
            "resize": rule.resize, "crop": rule.crop, "mixup_alpha": mixup_alpha,
            "output_shape": list(images.shape), "source_images": info.train_size,
            "source_image_size": list(info.image_size)}


def input_report(config: Config, *, steps: int = 3, batches: int = 8, images: int = 64,
                 image_size=(375, 500), gpu_images_per_second: float = GPU_TRAINING_IMAGES_PER_SECOND) -> dict:
    """The fine-tuning pipeline's supply (one core, all cores) next to the model's consumption.

    JPEGs are written to a temporary folder first. The consumption is a fine-tuning step of
    `config` (mode train) timed like `compare` does; the supply is measured after it, alone.
    """
    import math

    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="bit_keras_input_") as directory:
        make_jpegs(directory, count=images, image_size=image_size)
        one = input_throughput(directory, crop=config.size, batch=config.batch, threads=1, batches=batches)
        every = input_throughput(directory, crop=config.size, batch=config.batch, batches=batches)
    model = compare([dataclasses.replace(config, mode="train")], steps=steps)["results"][0]
    per_core = one["images_per_second"]
    consumption = model["images_per_second"]
    return {
        "machine": cpu_name(), "cores": cores, "jpeg_size": list(image_size), "jpegs": images,
        "pipeline_one_core": one, "pipeline_all_cores": every,
        "pipeline_images_per_second_per_core": per_core,
        "model": model, "model_images_per_second": consumption,
        "supply_over_consumption": every["images_per_second"] / consumption,
        "cores_per_model": consumption / per_core,
        "gpu_images_per_second": gpu_images_per_second,
        "cores_for_gpu": math.ceil(gpu_images_per_second / per_core),
    }


def format_input_report(report: dict) -> list:
    one, every, model = report["pipeline_one_core"], report["pipeline_all_cores"], report["model"]
    starved = "the model would wait for its input" if report["supply_over_consumption"] < 1 else "the model is not starved"
    return [
        f"input: {report['jpegs']} JPEGs of {report['jpeg_size'][1]}x{report['jpeg_size'][0]} -> decode, resize "
        f"{one['resize']}, random crop {one['crop']}, flip, MixUp {one['mixup_alpha']} (bit_keras.data.train_pipeline), "
        f"batch {one['batch']}",
        f"pipeline supply: {one['images_per_second']:.1f} images/s on 1 core, "
        f"{every['images_per_second']:.1f} images/s on {every['threads']} cores",
        f"model consumption ({model['variant']} fine-tuning, {model['precision']}, {model['size']}px, batch "
        f"{model['batch']}): {model['images_per_second']:.2f} images/s = "
        f"{report['cores_per_model']:.3f} cores of input work",
        f"supply / consumption: {report['supply_over_consumption']:.1f}x: {starved}",
        f"a GPU training at {report['gpu_images_per_second']:.0f} images/s needs about {report['cores_for_gpu']} "
        f"such cores for this pipeline",
    ]


# ---------------------------------------------------------------------------- memory

def activation_bytes(architecture, image_size: int, batch: int = 1, bytes_per_value: int = 4,
                     num_classes: int = 1000) -> int:
    """Estimate of the activations a training step keeps for its backward pass.

    Every intermediate tensor of the forward pass counted once (the input, each
    convolution's output, each GroupNorm's and ReLU's output, the projections and the
    residual sums) at `bytes_per_value`. Frameworks keep some of these twice (a cast, a
    float32 statistic copy) and free others early, so this is an order of magnitude, not a
    prediction; `bench --mode memory` puts the measured figure next to it.
    """
    def out(n, kernel, stride, pad):
        return (n + 2 * pad - kernel) // stride + 1

    h = out(image_size, 7, 2, 3)
    values = image_size * image_size * 3 + h * h * architecture.root_channels  # input, root conv
    h = out(h, 3, 2, 1)
    values += h * h * architecture.root_channels  # max pool
    for unit in architecture.units():
        cin, mid, cout, stride = unit.in_channels, unit.mid_channels, unit.out_channels, unit.stride
        ho = out(h, 3, stride, 1)
        values += 2 * h * h * cin          # pre-activation GN + ReLU
        values += 3 * h * h * mid          # conv a, GN, ReLU
        values += 3 * ho * ho * mid        # conv b, GN, ReLU
        values += 2 * ho * ho * cout       # conv c, residual sum
        if unit.projection:
            values += ho * ho * cout
        h = ho
    values += 2 * h * h * architecture.num_features + architecture.num_features + num_classes  # final GN+ReLU, pool, head
    return values * batch * bytes_per_value


def parameter_count(architecture, num_classes: int = 1000) -> int:
    """Weights of the model: convolutions, GroupNorm gamma/beta and the head (with bias)."""
    count = 49 * 3 * architecture.root_channels
    for unit in architecture.units():
        cin, mid, cout = unit.in_channels, unit.mid_channels, unit.out_channels
        count += 2 * cin + cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * cout
        if unit.projection:
            count += cin * cout
    return count + 2 * architecture.num_features + (architecture.num_features + 1) * num_classes


ACCUMULATORS = ("momentum", "keras")


def _memory_child(spec: str) -> None:
    """Runs in a fresh process: one fine-tuning update (and a second), prints RSS figures as JSON."""
    import json

    import keras
    import numpy as np

    options = json.loads(spec)
    config = Config(variant=options["variant"], size=options["size"], batch=options["micro_batch"], mode="train",
                    precision=options["precision"], num_classes=options["num_classes"])
    accumulation = options["accumulation"]
    model = _build_model(config)
    if options["accumulator"] == "keras":  # Keras' own: a weight-sized accumulator beside the momentum
        optimizer = keras.optimizers.SGD(0.003, momentum=0.9,
                                         gradient_accumulation_steps=accumulation if accumulation > 1 else None)
    else:  # what `bit_keras finetune` uses: micro-batches accumulate in the momentum buffer
        from bit_keras.optimizers import AccumulatingSGD
        optimizer = AccumulatingSGD(0.003, momentum=0.9, accumulation_steps=accumulation)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (config.batch, config.size, config.size, 3)).astype("float32")
    labels = rng.integers(0, config.num_classes, (config.batch,))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    built = rss_bytes()
    start = time.perf_counter()
    for _ in range(options["updates"] * accumulation):
        model.train_on_batch(images, labels)
    print(json.dumps({"rss_after_build_bytes": built, "vm_hwm_bytes": peak_rss_bytes(),
                      "parameters": model.count_params(), "seconds": time.perf_counter() - start}))


def measure_memory(variant: str, size: int, micro_batch: int, *, accumulation: int = 1, precision: str = "float32",
                   accumulator: str = "momentum", num_classes: int = 1000, updates: int = 2,
                   timeout: float = 3600) -> dict:
    """Peak RSS of fine-tuning `variant` at `size` px in a fresh subprocess.

    The child builds the model, compiles SGD with momentum and runs `updates` updates of
    `accumulation` micro-batches of `micro_batch` images, accumulated as `bit_keras finetune`
    does (`accumulator="momentum"`: in the momentum buffer, `bit_keras.optimizers`) or with
    Keras' `gradient_accumulation_steps` (`"keras"`: a separate accumulator). The peak is the child's `ru_maxrss` from `os.wait4`, so nothing of this
    process is counted.
    """
    import json
    import subprocess

    if accumulator not in ACCUMULATORS:
        raise ConfigError(f"accumulator must be one of {', '.join(ACCUMULATORS)}. Received: {accumulator!r}")
    spec = json.dumps({"variant": variant, "size": size, "micro_batch": micro_batch, "accumulation": accumulation,
                       "precision": precision, "accumulator": accumulator, "num_classes": num_classes,
                       "updates": updates})
    code = f"from bit_keras.benchmark import _memory_child; _memory_child({spec!r})"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err)
        start = time.perf_counter()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        # SIGKILL: on Linux the out-of-memory killer, which is this benchmark's answer "does not fit".
        killed = child.returncode == -9
        if (child.returncode != 0 or not lines) and not killed:
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SetupError(f"The memory benchmark's subprocess ({variant}, {size}px, micro-batch {micro_batch}, "
                             f"accumulation {accumulation}) failed with exit code {child.returncode}: {tail[0][:300]}")
        child_report = {} if killed else json.loads(lines[-1])
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    architecture = parse_variant(variant)
    activations = activation_bytes(architecture, size, micro_batch, 2 if precision == "bfloat16" else 4, num_classes)
    parameters = parameter_count(architecture, num_classes)
    return {"variant": variant, "size": size, "micro_batch": micro_batch, "accumulation": accumulation,
            "batch": micro_batch * accumulation, "precision": precision, "accumulator": accumulator,
            "fits": not killed, "peak_rss_bytes": peak, "machine_memory_bytes": machine_memory_bytes(),
            "vm_hwm_bytes": child_report.get("vm_hwm_bytes"), "rss_after_build_bytes": child_report.get("rss_after_build_bytes"),
            "parameters": child_report.get("parameters"), "parameters_counted": parameters,
            "activation_estimate_bytes": activations,
            # weights, gradients, momentum, and Keras' accumulator under its gradient accumulation
            "optimizer_state_estimate_bytes": 4 * parameters * (3 + (accumulation > 1 and accumulator == "keras")),
            "seconds": round(time.perf_counter() - start, 1)}


def memory_report(variant: str, size: int, micro_batches=(1, 2), *, accumulation: int = 2,
                  precision: str = "float32", accumulators=("momentum",)) -> dict:
    """`measure_memory` for each micro-batch, and for the largest also accumulated over `accumulation`
    micro-batches (once per accumulator), with the measured growth per image (between the
    smallest and largest micro-batch)."""
    rows = [measure_memory(variant, size, micro_batch, precision=precision) for micro_batch in micro_batches]
    if accumulation > 1:
        rows += [measure_memory(variant, size, max(micro_batches), accumulation=accumulation, precision=precision,
                                accumulator=accumulator) for accumulator in accumulators]
    plain = [row for row in rows if row["accumulation"] == 1 and row.get("fits", True)]
    report = {"machine": cpu_name(), "variant": variant, "size": size, "precision": precision, "rows": rows}
    if len(plain) > 1 and plain[-1]["micro_batch"] > plain[0]["micro_batch"]:
        images = plain[-1]["micro_batch"] - plain[0]["micro_batch"]
        report["measured_bytes_per_image"] = (plain[-1]["peak_rss_bytes"] - plain[0]["peak_rss_bytes"]) / images
        report["estimated_activation_bytes_per_image"] = activation_bytes(
            parse_variant(variant), size, 1, 2 if precision == "bfloat16" else 4)
    return report


def format_memory_report(report: dict) -> list:
    gib = 2 ** 30
    lines = [f"memory: {report['variant']} fine-tuning at {report['size']}px, {report['precision']}, "
             f"SGD momentum, peak RSS of a fresh subprocess per row (ru_maxrss)"]
    for row in report["rows"]:
        if not row.get("fits", True):
            total = row.get("machine_memory_bytes")
            lines.append(f"micro-batch {row['micro_batch']}, accumulation {row['accumulation']}: does not fit: killed "
                         f"(out of memory) at {row['peak_rss_bytes'] / gib:.2f} GiB RSS"
                         + (f", on a machine with {total / gib:.1f} GiB" if total else ""))
            continue
        keras_accumulator = row["accumulation"] > 1 and row.get("accumulator") == "keras"
        accumulated = (f"accumulating {row['accumulation']} micro-batches (batch {row['batch']}) "
                       f"{'with Keras gradient_accumulation_steps' if keras_accumulator else 'in the momentum'}"
                       if row["accumulation"] > 1 else "no accumulation")
        lines.append(f"micro-batch {row['micro_batch']}, {accumulated}: peak RSS {row['peak_rss_bytes'] / gib:.2f} GiB "
                     f"(after building {row['rss_after_build_bytes'] / gib:.2f} GiB; estimate: activations "
                     f"{row['activation_estimate_bytes'] / gib:.2f} GiB + weights/gradients/momentum"
                     f"{'/accumulator' if keras_accumulator else ''} "
                     f"{row['optimizer_state_estimate_bytes'] / gib:.2f} GiB)")
    if "measured_bytes_per_image" in report:
        lines.append(f"per image: {report['measured_bytes_per_image'] / gib:.2f} GiB measured, "
                     f"{report['estimated_activation_bytes_per_image'] / gib:.2f} GiB estimated activations")
    return lines
