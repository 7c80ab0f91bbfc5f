"""Writing a directory or file so that it appears complete or not at all.

Exports are written into a hidden sibling (`.NAME.XXXX.partial`) and renamed into place
at the end; a crash or a kill leaves only that hidden sibling, never a `NAME` that looks
like a finished export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

PARTIAL_SUFFIX = ".partial"


def check_target(path, *, overwrite: bool) -> str:
    """Refuses an existing target unless `overwrite`; returns the normalised path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                              "or choose another output.")
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(f"Cannot write {path}: {parent} is a file, not a directory.")
    return path


@contextlib.contextmanager
def staged_directory(path, *, overwrite: bool = False):
    """Yields a fresh hidden directory next to `path`; on success it becomes `path`."""
    path = check_target(path, overwrite=overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=parent)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the export from other users
    try:
        yield staging
        _replace(staging, path, overwrite=overwrite)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path, *, overwrite: bool = False):
    """Yields a temporary file name next to `path` (same suffix); on success it becomes `path`."""
    path = check_target(path, overwrite=overwrite)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    suffix = os.path.splitext(name)[1]
    handle, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX + suffix, dir=parent)
    os.close(handle)
    os.remove(staging)  # writers such as keras.saving want to create the file themselves
    try:
        yield staging
        _replace(staging, path, overwrite=overwrite)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(staging, path, *, overwrite):
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    if not overwrite:  # someone else created it while we were exporting
        raise FileExistsError(f"{path} appeared while exporting; pass overwrite=True to replace it.")
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
