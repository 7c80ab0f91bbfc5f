"""The run record, `run.json`: what a run was started with; a resumed run must match it.

Fine-tuning and upstream training share one rule: the caller puts into the record only what
must not change on resume (data, model, schedule, precision), and every key must match, or
the restored weights and data position would mean something else. A run holds its
directory's lock (`files.locked`) from start to end, and stops at a NaN/Inf loss.

SIGTERM (a scheduler's "stop now"): every command runs under `sigterm_stops`, which turns it
into StoppedError (one line, exit status 143) at once; inside `sigterm_deferred` (a `fit`)
the first one only sets a flag that the training loop polls after each step, so it stops
at a step boundary, keeps or writes its checkpoint, and then raises. A second SIGTERM
raises at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal

from bit_keras import files
from bit_keras.errors import ConfigError, DivergedError, StoppedError

RUN_FILE = "run.json"
SUMMARY = "summary"  # results the run writes as it goes (e.g. the last evaluation): not compared on resume


def read_run(directory, name=RUN_FILE) -> dict | None:
    return files.read_json(files.join(directory, name))


def check_resume(directory, record, *, restart="pass --overwrite or use a new directory", name=RUN_FILE) -> None:
    """Raises ConfigError (a ValueError) naming every key where `record` differs from `directory`'s run.json.

    `name`: another record file in `directory` kept by the same rule (vtab's per-task vtab.json)."""
    previous = read_run(directory, name)
    if previous is None:
        return
    # Tuples -> lists, as read back from the file; nested records compare key by key ("plan.momentum").
    previous = {key: value for key, value in previous.items() if key != SUMMARY}
    record = {key: value for key, value in record.items() if key != SUMMARY}
    previous, record = _flat(previous), _flat(json.loads(json.dumps(record)))
    changed = [f"{key}: {_show(previous.get(key))} -> {_show(record.get(key))}"
               for key in sorted(set(previous) | set(record)) if previous.get(key) != record.get(key)]
    if changed:
        raise ConfigError(f"{directory} holds a different run ({'; '.join(changed)}). "
                          f"Repeat the original command to resume it, or {restart}.")


def write_run(directory, record) -> None:
    """Writes `record` as the run record; a summary already in the file is kept unless `record` has one."""
    if SUMMARY not in record:
        summary = (read_run(directory) or {}).get(SUMMARY)
        record = {**record, SUMMARY: summary} if summary is not None else record
    files.write_json(files.join(directory, RUN_FILE), record)


def write_summary(directory, **results) -> None:
    """Sets keys of run.json's summary (e.g. `eval={...}`), keeping the rest of the record."""
    record = read_run(directory) or {}
    record[SUMMARY] = {**record.get(SUMMARY, {}), **results}
    files.write_json(files.join(directory, RUN_FILE), record)


def holding_lock(directory_of):
    """Decorates a run function: it runs holding the lock on its directory, `directory_of(*args, **kwargs)`.

    A second run into the same directory fails at once instead of mixing its checkpoints and
    logs into the first; a file where the directory should be is refused before anything starts.
    """
    def decorate(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            directory = directory_of(*args, **kwargs)
            if not files.is_remote(directory) and os.path.lexists(directory) and not os.path.isdir(directory):
                raise ConfigError(f"{directory} is a file, not a run directory; choose another directory.")
            with files.locked(directory):
                return function(*args, **kwargs)
        return run
    return decorate


def check_finite(loss, update) -> None:
    """Raises DivergedError when `loss` is NaN or infinite: nothing after this point may be saved."""
    if not math.isfinite(float(loss)):
        raise DivergedError(f"The loss became {float(loss)} by update {int(update)}: training diverged and was "
                            "stopped before saving any of it (earlier checkpoints are kept). Lower the learning "
                            "rate or check the data, then start again in a new directory.")


def _flat(record, prefix="") -> dict:
    flat = {}
    for key, value in record.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _show(value) -> str:
    return json.dumps(value, sort_keys=True)


class _Sigterm:
    """The SIGTERM handler of `sigterm_stops`: raises StoppedError, or only records it while deferred."""

    def __init__(self):
        self.deferring = 0
        self.received = False

    def __call__(self, signum, frame):
        if self.deferring and not self.received:
            self.received = True
            return
        raise StoppedError("Stopped by SIGTERM; everything saved so far is kept (a fine-tune or training run "
                           "resumes when the same command is run again).")


SIGTERM = _Sigterm()


@contextlib.contextmanager
def sigterm_stops():
    """While the block runs, SIGTERM raises StoppedError (main thread only; elsewhere nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, SIGTERM)
    except ValueError:  # not the main thread
        yield
        return
    SIGTERM.received = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_deferred():
    """Inside, a first SIGTERM only sets `SIGTERM.received` (poll it between steps); a second one raises."""
    SIGTERM.deferring += 1
    SIGTERM.received = False
    try:
        yield SIGTERM
    finally:
        SIGTERM.deferring -= 1
