"""Multi-worker fine-tuning over 127.0.0.1: two worker processes equal one device at the same global batch,
only the chief writes, and a worker whose peer never comes says so (the killed-job resume is in
test_multi_worker_resume.py, training in test_multi_worker_train.py)."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.processes import HANG_SECONDS
from tests.scaleout import (FINETUNE, ROOT, USER_ENV, assert_same_run, finish, free_ports, losses,
                            one_device_finetune, scratch_left, workers)


def test_two_workers_finetune_like_one_device_and_only_the_chief_writes(tiny_export, tmp_path):
    output = tmp_path / "run"
    processes = workers(["finetune", "--variant", str(tiny_export), "--output", str(output), *FINETUNE,
                         "--strategy", "multi_worker"])
    one_device_finetune(tiny_export, tmp_path / "one")   # meanwhile, the reference in this process
    codes, outputs = finish(processes)
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "MultiWorkerMirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x 8 per replica" in outputs[0]
    assert "the chief worker wrote" in outputs[1]
    assert_same_run(output, tmp_path / "one")
    assert len(set(losses(output))) == 3   # it trained
    # One writer: one line per evaluation in the CSV log, one event file per TensorBoard folder.
    assert len(losses(output)) == 3
    assert len(os.listdir(output / "logs" / "train")) == 1
    assert sorted(os.listdir(output)) == ["curves.png", "logs", "metrics.json", "model.keras", "run.json"]
    assert not scratch_left(processes[1].pid, 1)


def test_a_worker_whose_peer_never_starts_gives_up_naming_it_and_sigterm_ends_the_wait(tiny_export, tmp_path):
    """Only worker 0 of two is started: it fails after --cluster-timeout; a second one waiting ends on SIGTERM."""
    def lone_worker(timeout):
        addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 0}}
        process = subprocess.Popen([sys.executable, "-m", "bit_keras", "finetune", "--variant", str(tiny_export),
                                    "--output", str(tmp_path / f"run{timeout}"), *FINETUNE, "--strategy",
                                    "multi_worker", "--cluster-timeout", str(timeout)],
                                   env={**USER_ENV, "TF_CONFIG": json.dumps(config)}, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return process, addresses

    (quick, quick_workers), (waiting, _) = lone_worker(3), lone_worker(600)
    try:
        for line in waiting.stdout:   # it says once that it waits, then waits
            if line.startswith("Waiting up to 600 s for the cluster: worker 1 (127.0.0.1:"):
                break
        else:
            raise AssertionError(waiting.stderr.read()[-3000:])
        time.sleep(1)
        waiting.send_signal(signal.SIGTERM)
        started = time.time()
        waiting.wait(timeout=HANG_SECONDS)
        # 143: the CLI's SIGTERM line. Well before its 600 s: the signal ended the wait.
        assert time.time() - started < 300 and waiting.returncode in (143, -signal.SIGTERM)
        out, err = quick.communicate(timeout=HANG_SECONDS)
    finally:
        for process in (quick, waiting):
            process.kill()
    assert quick.returncode == 2, err[-3000:]
    assert err.strip().splitlines() == [
        f"bit_keras finetune: error: No answer from worker 1 ({quick_workers[1]}) after 3 s waiting for the cluster "
        f"(this is worker 0, {quick_workers[0]}). Start the "
        "same command on every machine, each with its own TF_CONFIG task, within --cluster-timeout seconds (or "
        "$BIT_KERAS_CLUSTER_TIMEOUT) of each other."]
    assert not (tmp_path / "run3").exists() and not (tmp_path / "run600").exists()
