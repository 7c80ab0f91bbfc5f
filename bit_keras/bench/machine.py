"""The machine a benchmark runs on: its CPU, its memory and this process's resident size (/proc)."""

from __future__ import annotations

import os
import platform
import resource
import sys


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_environment(threads: int) -> dict:
    """The variables that size TensorFlow's and OpenMP's (PyTorch, oneDNN) thread pools.

    They must be set before TensorFlow or PyTorch starts: both read them once.
    """
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def pin_threads(threads: int) -> None:
    """Give this process `threads` compute threads on every backend (a user's own settings win).

    Call it before importing Keras; on the PyTorch backend it also sets torch's pool.
    """
    for name, value in thread_environment(threads).items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("KERAS_BACKEND") == "torch":
        import torch

        torch.set_num_threads(threads)


def cpu_name() -> str:
    """The CPU model name (as `lscpu` prints it) and the number of cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = usable_cores()
    return f"{name} ({cores} cores)"


def _proc_status_bytes(field: str):
    """A `kB` field of /proc/self/status in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident memory now (off Linux: the peak so far, the nearest figure there)."""
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory.

    Linux: VmHWM, not `ru_maxrss`, which carries a parent's high-water mark across
    fork+exec (a benchmark started from a large pytest process would report pytest's peak).
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB.


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where sysconf cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def reset_peak_rss() -> None:
    """Restart the high-water mark from the current resident size (Linux 4.0+; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        pass
