"""Killing a run as a crash would: SIGKILL once its checkpoint has seen a given number of updates."""

import signal
import subprocess
import time


def kill_after_checkpoint(command, output, *, updates, timeout=300, **popen_kwargs):
    """Starts `command`, waits until OUTPUT/checkpoint holds a checkpoint of `updates` updates, then SIGKILLs it."""
    from bit_keras.resume import latest_updates

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_kwargs)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if latest_updates(output / "checkpoint") >= updates:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
