"""benchmarks/gpu_vs_timm.py on the CPU at tiny sizes: JAX and PyTorch backends without TensorFlow, timm optional."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_vs_timm.py")
HAVE = {name: importlib.util.find_spec(name) is not None for name in ("jax", "torch", "timm")}


@pytest.mark.skipif(not (HAVE["jax"] and HAVE["torch"]), reason="needs jax and torch")
def test_gpu_vs_timm_smoke_without_tensorflow():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, SCRIPT, "--batch", "2", "--size", "32", "--steps", "1", "--warmup", "1",
         "--block-units", "1,1,1,1", "--precisions", "bfloat16", "--no-tensorflow", "--json"],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    rows = report["rows"]
    assert {(r["backend"], r["precision"], r["mode"]) for r in rows} == {
        (b, "bfloat16", m) for b in ("timm", "jax", "torch") for m in ("inference", "training")}
    for row in rows:
        if row["backend"] == "timm" and not HAVE["timm"]:
            assert row["images_per_second"] is None and row["ratio_to_timm"] is None
            assert row["note"] == "timm is not installed (pip install timm)"
            continue
        assert row["images_per_second"] > 0, row
        assert row["tensorflow_imported"] is False  # the zoo imports and trains without TensorFlow
        if HAVE["timm"]:
            assert row["ratio_to_timm"] > 0


def test_table_says_what_did_not_run():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import gpu_vs_timm
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    report = {"batch": 256, "size": 224, "steps": 20, "block_units": [3, 4, 6, 3], "devices": ["NVIDIA H100"],
              "rows": [{"implementation": "timm resnetv2_50x1_bit", "precision": "float32", "mode": "training",
                        "images_per_second": 2000.0, "ratio_to_timm": 1.0, "note": ""},
                       {"implementation": "bit_keras (jax)", "precision": "float32", "mode": "training",
                        "images_per_second": None, "ratio_to_timm": None, "note": "JAX is not installed"}]}
    lines = gpu_vs_timm.table(report).splitlines()
    assert lines[0] == "R50x1, 224 px, batch 256, median of 20 steps; device: NVIDIA H100"
    assert lines[3] == "| timm resnetv2_50x1_bit | float32 | training | 2000.0 | 1.00x |"
    assert lines[4] == "| bit_keras (jax) | float32 | training | not run: JAX is not installed | n/a |"
