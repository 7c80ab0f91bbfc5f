"""Killing a run as a crash would: SIGKILL once its checkpoint has seen a given number of evaluations."""

import json
import signal
import subprocess
import time


def kill_after_checkpoint(command, output, *, epochs=2, timeout=300, **popen_kwargs):
    """Starts `command`, waits until OUTPUT/checkpoint records `epochs` evaluation periods, then SIGKILLs it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_kwargs)
    metadata = output / "checkpoint" / "training_metadata.json"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= epochs:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
