"""A multi-worker fine-tuning job whose worker dies: the chief stops with one line, the same command resumes."""

import json
import signal
import time

import pytest

from bit_keras.resume import checkpoint_name, latest_updates
from tests.processes import HANG_SECONDS
from tests.scaleout import FINETUNE, finish, workers


def test_a_killed_worker_job_restarted_with_the_same_command_resumes(tiny_export, tmp_path):
    output = tmp_path / "run"
    argv = ["finetune", "--variant", str(tiny_export), "--output", str(output), *FINETUNE, "--steps", "8",
            "--eval-every", "2", "--strategy", "multi_worker"]
    processes = workers(argv, log_dir=str(tmp_path))
    deadline = time.time() + HANG_SECONDS
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if latest_updates(output / "checkpoint") >= 2:
            break
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGKILL)   # a worker dies; the chief cannot go on without it
    processes[1].wait()
    try:   # ...and ends by itself, with one line that says what happened and what to do
        processes[0].wait(timeout=HANG_SECONDS)
    finally:
        processes[0].kill()
    chief_log = (tmp_path / "worker0.log").read_text()
    assert processes[0].returncode == 2, chief_log[-3000:]
    assert "Traceback" not in chief_log and "UnavailableError:" not in chief_log, chief_log[-3000:]
    last = chief_log.strip().splitlines()[-1]
    assert last.startswith("bit_keras finetune: error: worker 1 (127.0.0.1:") and "stopped answering" in last, last
    assert f"{output / 'checkpoint'} was kept: run the same command again on every worker to resume." in last
    assert not (output / "metrics.json").exists()
    updates = latest_updates(output / "checkpoint")
    assert 2 <= updates < 8

    codes, outputs = finish(workers(argv))
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert f"Resuming from {output / 'checkpoint' / checkpoint_name(updates)} (update {updates} of 8)" in outputs[0]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["updates"] == 8
    assert metrics["final_learning_rate"] == pytest.approx(0.05 * 0.001, rel=1e-5)
