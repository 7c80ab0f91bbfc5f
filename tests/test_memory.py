"""Loading stays near the model's own size: arrays are read and assigned one at a time.

The full-size figure (R152x4, 3.7 GB: 1.46x) is in BENCHMARKS.md; this guards the same
behaviour on R101x1, measured above the Keras runtime's own footprint.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loading_r101x1_peaks_below_two_and_a_half_times_its_weights():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "load_memory.py"),
                             "--variant", "r101x1", "--json"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["parameters"] == 44_541_480
    assert report["peak_above_baseline_over_weights"] < 2.5
