"""Writing files and directories so that they appear complete or not at all.

A result is written into a hidden sibling (`.NAME.XXXX.partial`) and renamed into place at
the end; a crash or a kill leaves only that hidden sibling, never a `NAME` that looks
finished. tempfile makes staging private (0600/0700), so results are given the permissions
`open()` would have given them (0o666/0o777 less the umask). Remote paths ("gs://...") are
staged locally and copied with tf.io.gfile (an object store shows an object whole or not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from bit_keras.errors import ConfigError, TargetExistsError

PARTIAL_SUFFIX = ".partial"


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def join(directory, name) -> str:
    """os.path.join that keeps "gs://" paths intact."""
    directory = os.fspath(directory)
    return directory.rstrip("/") + "/" + name if is_remote(directory) else os.path.join(directory, name)


def check_target(path, *, overwrite: bool) -> str:
    """Refuses an existing target unless `overwrite`; returns the normalised path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise TargetExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                              "or choose another output.")
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ConfigError(f"Cannot write {path}: {parent} is a file, not a directory.")
    return path


@contextlib.contextmanager
def staged_directory(path, *, overwrite: bool = False):
    """Yields a fresh hidden directory next to `path`; on success it becomes `path`."""
    path = check_target(path, overwrite=overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=parent)
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        _replace(staging, path, overwrite=overwrite)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path, *, overwrite: bool = False):
    """Yields a file name to write (same extension as `path`); on success it becomes `path`."""
    if is_remote(path):
        with _staged_remote_file(os.fspath(path), overwrite=overwrite) as staging:
            yield staging
        return
    path = check_target(path, overwrite=overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    suffix = os.path.splitext(name)[1]  # writers such as keras.saving and np.savez check it
    handle, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX + suffix, dir=parent)
    os.close(handle)
    os.remove(staging)  # writers such as keras.saving want to create the file themselves
    try:
        yield staging
        os.chmod(staging, 0o666 & ~_umask())
        _replace(staging, path, overwrite=overwrite)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def write_json(path, data) -> None:
    """Writes (or replaces) a JSON file atomically."""
    with staged_file(path, overwrite=True) as staging, open(staging, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


def read_json(path):
    """The JSON in `path` (local or remote), or None when there is no such file."""
    if is_remote(path):
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as stream:
            return json.load(stream)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def remove(path) -> None:
    """Removes a file or a directory tree, if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def _staged_remote_file(path, *, overwrite):
    import tensorflow as tf

    if not overwrite and tf.io.gfile.exists(path):
        raise TargetExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it.")
    with tempfile.TemporaryDirectory() as local:
        staging = os.path.join(local, path.rstrip("/").rsplit("/", 1)[-1])
        yield staging
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        tf.io.gfile.copy(staging, path, overwrite=overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(staging, path, *, overwrite):
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    if not overwrite:  # someone else created it while we were writing
        raise TargetExistsError(f"{path} appeared while it was being written; pass overwrite=True to replace it.")
    if os.path.isfile(staging) and not os.path.isdir(path):
        os.replace(staging, path)  # file over file: one atomic step
        return
    # A directory cannot be swapped in one step: move the old one aside, rename, then delete it.
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
    os.rmdir(old)
    os.rename(path, old)
    os.rename(staging, path)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)
