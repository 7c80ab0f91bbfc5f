"""Keras' JAX distribution: fine-tuning over all local devices (2 host-platform CPUs) equals one device."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import HANG_SECONDS
from tests.scaleout import ENV, ROOT, assert_same_run, column

JAX_SCRIPT = r"""
import json, sys
import keras
from bit_keras.finetune.runner import evaluate, finetune

tmp, backbone = sys.argv[1], sys.argv[2]
devices = keras.distribution.list_devices()
headers = {}
for name in ("one", "all"):
    lines = []
    run = lambda: finetune(backbone, dataset="digits", output=f"{tmp}/{name}", batch_size=16, steps=3, eval_every=1,
                           resolution=16, base_learning_rate=0.05, eval_split="test[:17]", verbose=0,
                           log=lines.append)   # 17: the last batch (1) does not divide over 2 devices
    if name == "one":   # a distribution chosen by the caller is kept: here, one device
        with keras.distribution.DataParallel(devices=devices[:1]).scope():
            run()
    else:
        run()
    headers[name] = lines[0]
scores = {}
for split in ("test[:15]", "test[:17]"):   # batches of 8: 8+7 and 8+8+1 over 2 devices
    with keras.distribution.DataParallel(devices=devices).scope():
        scores["all" + split] = evaluate(f"{tmp}/one", dataset="digits", split=split, batch_size=8)
    scores["one" + split] = evaluate(f"{tmp}/one", dataset="digits", split=split, batch_size=8)
print("RESULT " + json.dumps({"devices": len(devices), "headers": headers, "scores": scores}))
"""


def test_jax_fine_tunes_over_all_local_devices_like_one_device(tiny_export, tmp_path):
    pytest.importorskip("jax")
    # XLA's LLVM optimisation off: the same operations, compiled ~15% cheaper (this test compiles one step per run).
    env = {**ENV, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path), str(tiny_export)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 2
    assert result["headers"]["all"].startswith("JAX DataParallel over 2 devices, 2 replica(s): global batch 16 = "
                                               "2 replica(s) x 8 per replica")
    assert result["headers"]["one"].startswith("strategy default (one device)")
    assert_same_run(tmp_path / "all", tmp_path / "one")
    one, all_ = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "all"))
    assert all_["eval_accuracy"] == pytest.approx(one["eval_accuracy"]) and all_["updates"] == 3
    # 17 held-out examples over 2 devices: every one scored once, as on one device (during fit and after).
    assert all_["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    np.testing.assert_allclose(column(tmp_path / "all", "val_loss"), column(tmp_path / "one", "val_loss"), rtol=1e-5)
    for split in ("test[:15]", "test[:17]"):
        mine, theirs = result["scores"]["all" + split], result["scores"]["one" + split]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)
