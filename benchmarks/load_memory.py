"""Peak resident memory of building a BiT variant and loading a release-layout checkpoint.

Usage: python benchmarks/load_memory.py --variant r152x4 [--checkpoint FILE.npz] [--json]
Without --checkpoint a random checkpoint in the release layout is written to a temporary
directory first (in a separate process, so its memory is not counted).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def measure(variant: str, checkpoint: str) -> dict:
    import keras  # noqa: F401  (the runtime's own footprint is the baseline)

    import bit_keras
    from bit_keras.bench.machine import peak_rss_bytes, reset_peak_rss, rss_bytes

    reset_peak_rss()  # the peak counts from here, not from a parent process's
    baseline = rss_bytes()
    start = time.perf_counter()
    model = bit_keras.create_model(variant, weights=checkpoint)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    weights = os.path.getsize(checkpoint)
    return {"variant": variant, "parameters": model.count_params(), "checkpoint_bytes": weights,
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "peak_over_weights": round(peak / weights, 3),
            "peak_above_baseline_over_weights": round((peak - baseline) / weights, 3),
            "seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="r50x1")
    parser.add_argument("--checkpoint")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = os.path.join(scratch, "random.npz")
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            code = ("import sys; sys.path.insert(0, %r); import bit_keras; from tests import reference; "
                    "a = bit_keras.Architecture.parse(%r); "
                    "reference.write_checkpoint(%r, a.block_units, a.width, 1000)") % (root, args.variant, checkpoint)
            subprocess.run([sys.executable, "-c", code], check=True)
        result = measure(args.variant, checkpoint)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>34}: {value}")


if __name__ == "__main__":
    main()
