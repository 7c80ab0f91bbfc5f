"""Upstream training end to end in subprocesses: strategies agree, SIGKILL/SIGTERM resume, npz out.

MirroredStrategy needs the CPU split into logical devices before TensorFlow initialises,
and the fault-tolerance tests kill real processes, so these run `python`/`bit_keras` in
child processes on a tiny network (one unit per block, width 1) at 32 px.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tests import reference
from tests.tensorboard_events import read_scalars

UNITS = (1, 1, 1, 1)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRATEGIES_SCRIPT = r"""
import json, sys
import numpy as np
from bit_keras.distribute import split_cpu
split_cpu(2)
from bit_keras.data import from_arrays
from bit_keras.train.loop import TrainConfig, train
from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES
from bit_keras.distribute import make_strategy

tmp, init = sys.argv[1], sys.argv[2]
data = np.load(tmp + "/data.npz")
source = from_arrays(data["images"], data["labels"], num_classes=10)
out = {}
for name, kind, multi_label, precision in [("default", "default", False, "float32"),
                                           ("mirrored", "mirrored", False, "float32"),
                                           ("mirrored_bf16_sigmoid", "mirrored", True, "bfloat16")]:
    # A huge weight decay, so that an L2 term counted once per replica would show in the losses.
    schedule = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=32, warmup_steps=2, epochs=3 * 8 / 48,
                                          multi_label=multi_label, weight_decay=20.0)
    strategy = make_strategy(kind)
    result = train(TrainConfig(model_dir=f"{tmp}/{name}", dataset="arrays", schedule=schedule, block_units=(1, 1, 1, 1),
                               width=1, log_every=1, shuffle_buffer=48, init_weights=init, precision=precision,
                               max_steps=3 if name == "default" or name == "mirrored" else 1),
                   strategy=strategy, source=source, log=lambda line: None)
    out[name] = {"replicas": strategy.num_replicas_in_sync, "losses": [h[1] for h in result.history]}
print("RESULT " + json.dumps(out))
"""


def _cross_entropies(logits, targets):
    shifted = logits - logits.max(axis=1, keepdims=True)
    softmax = np.log(np.exp(shifted).sum(axis=1)) - (shifted * targets).sum(axis=1)
    sigmoid = (np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1)
    return softmax.mean(), sigmoid.mean()


def test_mirrored_over_two_cpus_and_default_agree_with_numpy(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (48, 40, 40, 3), dtype=np.uint8), rng.integers(0, 10, 48)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    init = str(tmp_path / "init.npz")
    reference.write_checkpoint(init, UNITS, 1, num_classes=10, seed=1)   # non-zero head: a non-trivial loss
    done = subprocess.run([sys.executable, "-c", STRATEGIES_SCRIPT, str(tmp_path), init], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["default"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2

    # The first global batch, rebuilt here, through the independent NumPy network.
    import tensorflow as tf

    from bit_keras.data import from_arrays
    from bit_keras.train.input import upstream_dataset

    tf.random.set_seed(None)
    ds, _ = from_arrays(images, labels, num_classes=10)
    batch, targets = next(iter(upstream_dataset(ds, num_classes=10, train_size=48, image_size=32, batch_size=8,
                                                seed=0, shuffle_buffer=48)))
    _, logits = reference.forward(dict(np.load(init)), batch.numpy())
    softmax, sigmoid = _cross_entropies(logits, targets.numpy())

    default, mirrored = result["default"]["losses"], result["mirrored"]["losses"]
    assert default[0] == pytest.approx(softmax, rel=1e-4)
    assert mirrored[0] == pytest.approx(default[0], rel=1e-5)
    # Later steps depend on the all-reduced gradients and the shared optimizer state.
    np.testing.assert_allclose(mirrored[1:], default[1:], rtol=1e-4)
    assert default[1] != default[0]
    assert result["mirrored_bf16_sigmoid"]["losses"][0] == pytest.approx(sigmoid, rel=2e-2)


# ------------------------------------------------------------------ fault tolerance

TOTAL = 24
TRAIN_ARGS = ["--variant", "r14x1", "--dataset", "digits", "--batch", "8", "--resolution", "32",
              "--epochs", str(TOTAL * 8 / 1437), "--warmup-steps", "5", "--decay-epochs", f"{9 * 8 / 1437},{18 * 8 / 1437}",
              "--checkpoint-every", "4", "--keep", "3", "--log-every", "1", "--shuffle-buffer", "300",
              "--strategy", "default"]


def _command(model_dir):
    return [sys.executable, "-m", "bit_keras", "train", "--model-dir", str(model_dir), *TRAIN_ARGS]


def _latest_step(model_dir):
    state = os.path.join(model_dir, "checkpoints", "checkpoint")
    if not os.path.exists(state):
        return None
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', open(state).read(), re.M)
    return int(match.group(1)) if match else None


def _start(model_dir, log):
    return subprocess.Popen(_command(model_dir), stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)


def _wait_for_checkpoint(process, model_dir, at_least, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = _latest_step(model_dir)
        if step is not None and step >= at_least:
            return step
        assert process.poll() is None, "training ended before the checkpoint appeared"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no checkpoint in time")


def _paper_rate(step):
    """0.03 * 8 / 256 with a 5-update warm-up, /10 at updates 9 and 18 (the flags above)."""
    peak = 0.03 * 8 / 256
    return peak * min(1, (step + 1) / 5) * 0.1 ** ((step >= 9) + (step >= 18))


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """Two runs of the same command side by side: one killed with SIGKILL, one stopped with SIGTERM; both resumed."""
    root = tmp_path_factory.mktemp("upstream")
    killed, terminated = root / "killed", root / "terminated"
    runs = {"dirs": (killed, terminated)}
    with open(root / "killed.log", "w") as log_k, open(root / "terminated.log", "w") as log_t:
        process_k, process_t = _start(killed, log_k), _start(terminated, log_t)
        try:
            _wait_for_checkpoint(process_t, terminated, 4)
            process_t.send_signal(signal.SIGTERM)
            _wait_for_checkpoint(process_k, killed, 8)
            process_k.send_signal(signal.SIGKILL)
            process_k.wait(timeout=30)
            runs["terminated_rc"] = process_t.wait(timeout=120)
        finally:
            for process in (process_k, process_t):
                if process.poll() is None:
                    process.kill()
    runs["killed_at"], runs["terminated_at"] = _latest_step(killed), _latest_step(terminated)
    runs["terminated_log"] = open(root / "terminated.log").read()
    resumes = [subprocess.Popen(_command(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                                cwd=ROOT) for d in (killed, terminated)]
    for key, process in zip(("killed_resume", "terminated_resume"), resumes):
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, out[-2000:] + err[-3000:]
        runs[key] = out
    return runs


def test_sigkill_loses_only_the_steps_since_the_last_checkpoint(interrupted_runs):
    step = interrupted_runs["killed_at"]
    assert 8 <= step < TOTAL and step % 4 == 0
    out = interrupted_runs["killed_resume"]
    match = re.search(r"resuming from ckpt-(\d+) at step (\d+) \(epoch [\d.]+, lr ([\d.e-]+)\)", out)
    assert match and int(match.group(1)) == int(match.group(2)) == step
    assert float(match.group(3)) == pytest.approx(_paper_rate(step), rel=1e-5)
    progress = [int(s) for s in re.findall(r"^step (\d+)/24 ", out, re.M)]
    assert progress == list(range(step + 1, TOTAL + 1))
    for line in re.findall(r"^step (\d+)/24 .* lr ([\d.e-]+) images/s [\d.]+$", out, re.M):
        assert float(line[1]) == pytest.approx(_paper_rate(int(line[0]) - 1), rel=1e-5)
    assert _latest_step(interrupted_runs["dirs"][0]) == TOTAL
    kept = sorted(f for f in os.listdir(interrupted_runs["dirs"][0] / "checkpoints") if f.endswith(".index"))
    assert len(kept) == 3   # --keep 3


def test_sigterm_writes_a_checkpoint_and_the_run_resumes_there(interrupted_runs):
    assert interrupted_runs["terminated_rc"] == 143
    log = interrupted_runs["terminated_log"]
    last = max(int(s) for s in re.findall(r"^step (\d+)/24 ", log, re.M))
    assert interrupted_runs["terminated_at"] == last
    assert f"ckpt-{last} at step {last} (SIGTERM" in log
    assert f"resuming from ckpt-{last} at step {last}" in interrupted_runs["terminated_resume"]


def test_resumed_runs_end_with_the_same_weights(interrupted_runs):
    # Stopped at different steps, both resumed with the same data position and learning
    # rate: they must reach the same weights, as an uninterrupted run would.
    killed, terminated = (np.load(d / "bit_final.npz") for d in interrupted_runs["dirs"])
    assert sorted(killed.files) == sorted(terminated.files)
    for key in killed.files:
        np.testing.assert_allclose(killed[key], terminated[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_final_npz_is_a_release_checkpoint(interrupted_runs):
    import bit_keras
    from bit_keras.checkpoint import inspect_checkpoint

    path = interrupted_runs["dirs"][0] / "bit_final.npz"
    report = inspect_checkpoint(path)
    assert report["loads"] and report["block_units"] == list(UNITS) and report["num_classes"] == 10
    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, 1), 10)
    bit_keras.load_weights(model, path)
    images = np.random.default_rng(2).random((2, 32, 32, 3)).astype("float32")
    _, expected = reference.forward(dict(np.load(path)), images)
    np.testing.assert_allclose(np.asarray(model(images)), expected, rtol=1e-3, atol=1e-4)


def test_tensorboard_scalars(interrupted_runs):
    values = read_scalars(interrupted_runs["dirs"][0] / "train")
    assert {"loss", "top1", "learning_rate", "images_per_second"} <= set(values)
    assert set(values["loss"]) == set(range(1, TOTAL + 1))
    for step, rate in values["learning_rate"].items():
        assert rate == pytest.approx(_paper_rate(step - 1), rel=1e-5)


# ------------------------------------------------------------------ checks before training

def _tiny_config(tmp_path, **changes):
    from bit_keras.train.loop import TrainConfig
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    schedule = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=changes.pop("batch", 8), image_size=32)
    return TrainConfig(model_dir=str(tmp_path), dataset="arrays", schedule=schedule, block_units=UNITS, width=1,
                       **changes)


def _tiny_source():
    from bit_keras.data import from_arrays

    return from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 4)


def test_global_batch_not_divisible_by_replicas_is_refused(tmp_path):
    from bit_keras.train.loop import train

    with pytest.raises(ValueError, match="Global batch 9 does not divide over 2 replicas"):
        train(_tiny_config(tmp_path, batch=9), strategy=types.SimpleNamespace(num_replicas_in_sync=2),
              source=_tiny_source())


def test_resuming_with_other_settings_is_refused(tmp_path):
    from bit_keras.train.loop import train

    train(_tiny_config(tmp_path, max_steps=0), source=_tiny_source(), log=lambda line: None)
    recorded = (tmp_path / "run.json").read_text()
    fake = types.SimpleNamespace(num_replicas_in_sync=1)
    with pytest.raises(ValueError, match=r"batch_size: 8 -> 16; .*plan\.batch_size: 8 -> 16; .*new --model-dir"):
        train(_tiny_config(tmp_path, batch=16), strategy=fake, source=_tiny_source())
    with pytest.raises(ValueError, match=r"different run \(precision: \"float32\" -> \"bfloat16\"\)"):
        train(_tiny_config(tmp_path, precision="bfloat16"), strategy=fake, source=_tiny_source())
    assert (tmp_path / "run.json").read_text() == recorded


def test_bfloat16_training_computes_in_bfloat16(tmp_path):
    """`--precision bfloat16` must reach every conv and GroupNorm, not only the log line."""
    from bit_keras.train.loop import train
    from tests.conftest import run_precision_test

    result = train(_tiny_config(tmp_path, precision="bfloat16", max_steps=2, log_every=1), source=_tiny_source(),
                   log=lambda line: None)
    assert result.step == 2 and np.isfinite(result.last_loss)
    run_precision_test(result.model.backbone)


def test_dry_run_prints_the_plan(capsys):
    from bit_keras.cli.main import _main, build_parser

    args = build_parser().parse_args(["train", "--dataset", "digits", "--model-dir", "unused", "--batch", "64",
                                      "--dry-run"])
    assert _main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["train_size"] == 1437 and plan["learning_rate_peak"] == pytest.approx(0.03 * 64 / 256)
    assert plan["decay_steps"] == [round(e * 1437 / 64) for e in (30, 60, 80)]


@pytest.mark.slow  # R50x1: ~25 s of CPU; test_final_npz_is_a_release_checkpoint covers the layout fast
def test_a_trained_r50x1_loads_with_create_model(tmp_path):
    import bit_keras
    from bit_keras.train.loop import train

    config = _tiny_config(tmp_path, batch=2, max_steps=1, log_every=1)
    config.block_units, config.width = (3, 4, 6, 3), 1
    result = train(config, source=_tiny_source())
    model = bit_keras.create_model("r50x1", weights=result.final_weights)
    assert model.num_classes == 4
    saved = np.load(result.final_weights)
    np.testing.assert_array_equal(model.get_layer("head-conv2d").kernel.numpy(), saved["resnet/head/conv2d/kernel"][0, 0])
