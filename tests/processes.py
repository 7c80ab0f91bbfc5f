"""Child processes in tests: how long before one counts as hung, and killing a run as a crash would."""

import signal
import subprocess
import time

# A guard against hangs, not a speed limit: a busy 2-core machine may need minutes for what a quiet
# one does in seconds, and a test must never fail only because the machine was slow.
HANG_SECONDS = 900


def kill_after_checkpoint(command, output, *, updates, timeout=HANG_SECONDS, **popen_kwargs):
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
