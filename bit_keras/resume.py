"""Checkpoints a run resumes from: numbered, each complete or absent, the previous one kept.

Fine-tuning saves `checkpoint/update-000000020.weights.h5` (the model's and optimizer's
variables, Keras' `save_weights`) after each evaluation period. Each is written under a
temporary name and renamed into place (`files.staged_file`), and the one before it is
removed only once the new one is complete, so a kill or a full disk at any moment leaves a
complete checkpoint behind. Upstream training keeps TensorFlow's own numbered checkpoints
(`tf.train.CheckpointManager` writes them the same way).

Both restore through `first_readable`: the newest checkpoint first; one that cannot be read
is moved into a `*-damaged/` folder beside the checkpoints (never deleted: it may be all
that is left of a long run) and the one before it is tried. When none can be read, the run
starts from the beginning, and says so in one line.
"""

from __future__ import annotations

import os
import re

from bit_keras import files

KEEP = 2  # the newest checkpoint and the one before it, to fall back on
DAMAGED_SUFFIX = "-damaged"
_NAME = re.compile(r"update-(\d+)\.weights\.h5")


def checkpoint_name(updates: int) -> str:
    return f"update-{int(updates):09d}.weights.h5"


def list_checkpoints(directory) -> list:
    """[(updates, path)] of the complete checkpoints in `directory`, newest first (temporary files skipped)."""
    if not os.path.isdir(directory):
        return []
    found = [(int(match[1]), os.path.join(directory, name)) for name in os.listdir(directory)
             if (match := _NAME.fullmatch(name))]
    return sorted(found, reverse=True)


def latest_updates(directory) -> int:
    """Updates done by the newest checkpoint in `directory` (0 when there is none)."""
    found = list_checkpoints(directory)
    return found[0][0] if found else 0


def save(model, directory, updates: int, *, keep: int = KEEP) -> str:
    """Writes `model`'s (and its optimizer's) variables as the checkpoint after `updates`; keeps `keep` in all."""
    path = os.path.join(directory, checkpoint_name(updates))
    os.makedirs(directory, exist_ok=True)
    previous = list_checkpoints(directory)
    with files.staged_file(path, overwrite=True) as staging, \
            files.disk_full_named(path, staging, needed=os.path.getsize(previous[0][1]) if previous else None):
        model.save_weights(staging)
    for _, older in list_checkpoints(directory)[keep:]:  # only now: the new one is complete
        files.remove(older)
    return path


def damaged_dir(directory) -> str:
    return os.path.normpath(directory) + DAMAGED_SUFFIX


def first_readable(candidates, check, *, damaged=None, log=None, what="checkpoint"):
    """The first of `candidates` (newest first) for which `check(candidate)` raises nothing, or None.

    `check` reads (or loads) a candidate and raises on a damaged one. A damaged candidate is
    moved into `damaged` with `move(candidate, damaged)` when `damaged` is a (folder, move)
    pair; None leaves it in place (a worker that must not write the chief's folder).
    """
    tried = []
    for candidate in candidates:
        try:
            check(candidate)
            break
        except Exception as error:  # h5py, Keras and TensorFlow each report a damaged file their own way
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            tried.append(candidate)
            where = ""
            if damaged is not None:
                folder, move = damaged
                where = f"; moved to {move(candidate, folder)}"
            if log is not None:
                log(f"warning: {what} {candidate} cannot be read ({reason}){where}.")
    else:
        candidate = None
    return candidate


def move_into(path, folder) -> str:
    """Moves the file `path` into `folder` (created), never over another file; returns the new path."""
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    target, number = os.path.join(folder, name), 1
    while os.path.lexists(target):
        number += 1
        target = os.path.join(folder, f"{name}.{number}")
    os.rename(path, target)
    return target


def check_weights_file(path) -> None:
    """Reads every array of a Keras `.weights.h5` file; raises on a truncated or damaged one."""
    import h5py

    with h5py.File(path, "r") as stream:
        def read(_, item):
            if isinstance(item, h5py.Dataset):
                item[()]

        stream.visititems(read)


def newest_complete(directory, *, log=None, move_damaged=True):
    """(updates, path) of the newest readable checkpoint in `directory`, or None; damaged ones go aside."""
    found = dict((path, updates) for updates, path in list_checkpoints(directory))
    damaged = (damaged_dir(directory), move_into) if move_damaged else None
    path = first_readable(list(found), check_weights_file, damaged=damaged, log=log)
    if path is None and log is not None:
        log(f"warning: no readable checkpoint is left in {directory}, so the run starts again from the beginning "
            f"(the damaged one{'s were' if len(found) > 1 else ' was'} kept).")
    return (found[path], path) if path is not None else None
