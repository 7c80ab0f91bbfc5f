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
import statistics
import tempfile
import time

from bit_keras.bench.counts import count_macs
from bit_keras.bench.machine import cpu_name, peak_rss_bytes
from bit_keras.bench.peak import PEAK_MATMUL_SIZE, MatmulProbe
from bit_keras.bench.steps import Config, make_step, parse_variant
from bit_keras.errors import ConfigError


def _summarize(config, step_times, peak_times, compile_seconds, probes):
    """`peak_times`: {precision: probe times}; the row's own precision is its reference peak."""
    macs = count_macs(parse_variant(config.variant), config.size, config.num_classes)
    passes = 3 if config.mode == "train" else 1
    step = statistics.median(step_times)
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
        peak = probe.flops / statistics.median(times)
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
        result["speedup_vs_first"] = statistics.median(ratios)
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
