"""Helpers of the scale-out tests (test_distributed*.py, test_multi_worker*.py).

Runs happen in child processes: the CPU must be split into logical devices before
TensorFlow initialises, and multi-worker jobs are separate processes talking over
127.0.0.1. Every distributed result is compared with a one-device run at the same global
batch (weights and losses), on a network of one unit per block at 16 px.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.processes import HANG_SECONDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
ENV.pop("TF_CONFIG", None)
# As a user runs it: the CLI itself silences TensorFlow's logs when nobody set their level.
USER_ENV = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
FINETUNE = ["--dataset", "digits", "--batch", "16", "--steps", "3", "--eval-every", "1", "--resolution", "16",
            "--learning-rate", "0.05", "--eval-split", "none", "--quiet"]


def one_device_finetune(backbone, output, **changes):
    """In this process, on one device: what FINETUNE asks the CLI for (the reference of the scale-out runs)."""
    from bit_keras.finetune.runner import finetune

    options = dict(dataset="digits", output=str(output), batch_size=16, steps=3, eval_every=1, resolution=16,
                   base_learning_rate=0.05, eval_split=None, verbose=0, log=lambda line: None)
    return finetune(str(backbone), **{**options, **changes})


def weights(path):
    import keras

    import bit_keras.classifier  # noqa: F401  (registers the classes in model.keras)

    return keras.saving.load_model(path, compile=False).get_weights()


def column(run, name):
    with open(os.path.join(run, "logs", "metrics.csv")) as handle:
        return [float(row[name]) for row in csv.DictReader(handle)]


def losses(run):
    return column(run, "loss")


def assert_same_run(run, reference, *, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(losses(run), losses(reference), rtol=rtol)
    for mine, theirs in zip(weights(os.path.join(run, "model.keras")), weights(os.path.join(reference, "model.keras"))):
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True,
                          env=env or ENV, cwd=ROOT, timeout=HANG_SECONDS)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def workers(argv, count=2, log_dir=None):
    """Starts `bit_keras ARGV` as `count` workers of one job on loopback, each with its TF_CONFIG."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    for index in range(count):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        log = open(os.path.join(log_dir, f"worker{index}.log"), "w") if log_dir else subprocess.PIPE
        processes.append(subprocess.Popen([sys.executable, "-m", "bit_keras", *argv],
                                          env={**ENV, "TF_CONFIG": json.dumps(config)}, cwd=ROOT, text=True,
                                          stdout=log, stderr=subprocess.STDOUT))
    return processes


def finish(processes):
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=HANG_SECONDS)
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return [p.returncode for p in processes], outputs


def scratch_left(pid, index):
    import tempfile

    return os.path.exists(os.path.join(tempfile.gettempdir(), f"bit_keras-worker{index}-{pid}"))
