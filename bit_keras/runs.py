"""The run record, `run.json`: what a run was started with; a resumed run must match it.

Fine-tuning and upstream training share one rule: the caller puts into the record only what
must not change on resume (data, model, schedule, precision), and every key must match, or
the restored weights and data position would mean something else.
"""

from __future__ import annotations

import json

from bit_keras import files
from bit_keras.errors import ConfigError

RUN_FILE = "run.json"


def read_run(directory) -> dict | None:
    return files.read_json(files.join(directory, RUN_FILE))


def check_resume(directory, record, *, restart="pass --overwrite or use a new directory") -> None:
    """Raises ConfigError (a ValueError) naming every key where `record` differs from `directory`'s run.json."""
    previous = read_run(directory)
    if previous is None:
        return
    record = json.loads(json.dumps(record))  # tuples -> lists, as read back from the file
    changed = [f"{key}: {_show(previous.get(key))} -> {_show(record.get(key))}"
               for key in sorted(set(previous) | set(record)) if previous.get(key) != record.get(key)]
    if changed:
        raise ConfigError(f"{directory} holds a different run ({'; '.join(changed)}). "
                          f"Repeat the original command to resume it, or {restart}.")


def write_run(directory, record) -> None:
    files.write_json(files.join(directory, RUN_FILE), record)


def _show(value) -> str:
    return json.dumps(value, sort_keys=True)
