"""Writing files and directories so that they appear complete or not at all.

A result is written into a hidden sibling (`.NAME.XXXX.partial`) and renamed into place at
the end; a crash or a kill leaves only that hidden sibling, never a `NAME` that looks
finished. tempfile makes staging private (0600/0700), so results are given the permissions
`open()` would have given them (0o666/0o777 less the umask). Remote paths ("gs://...") are
staged locally and copied with tf.io.gfile (an object store shows an object whole or not).

A full disk while staging is one `DiskFullError` naming the target, the space it needs and
the space free (`disk_full_named`); the staged part is removed, whatever was in place stays.

`--overwrite` replaces only what looks like our own earlier output (`check_target` with
`markers`), never the current folder or one above it; `locked` keeps two processes from
writing one target, and clears what a killed writer of that target left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile

from bit_keras.errors import ConfigError, DiskFullError, InUseError, TargetExistsError

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"
WEIGHTS_SUFFIX = ".weights.h5"
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def join(directory, name) -> str:
    """os.path.join that keeps "gs://" paths intact."""
    directory = os.fspath(directory)
    return directory.rstrip("/") + "/" + name if is_remote(directory) else os.path.join(directory, name)


def check_target(path, *, overwrite: bool, markers=None, suffixes=(), kind="an earlier output") -> str:
    """Refuses an existing target unless `overwrite`; returns the normalised path.

    With `markers`, `overwrite` replaces only `kind`: an empty folder, a folder holding one of
    the `markers` (relative paths), or a file whose name ends in one of `suffixes` -- so a
    mistyped output never empties a folder of other work (git refuses to clobber alike).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise TargetExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                              "or choose another output.")
    if os.path.lexists(path) and markers is not None:
        _check_replaceable(path, markers, suffixes, kind)
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
        with disk_full_named(path, staging):
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
    # Writers such as keras.saving ("x.weights.h5") and np.savez check the extension.
    suffix = WEIGHTS_SUFFIX if name.endswith(WEIGHTS_SUFFIX) else os.path.splitext(name)[1]
    handle, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX + suffix, dir=parent)
    os.close(handle)
    os.remove(staging)  # writers such as keras.saving want to create the file themselves
    try:
        with disk_full_named(path, staging):
            yield staging
        os.chmod(staging, 0o666 & ~_umask())
        _replace(staging, path, overwrite=overwrite)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def is_disk_full(error) -> bool:
    """Whether `error` (an OSError, h5py's or TensorFlow's own) says the disk or quota is full."""
    if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
        return True
    return isinstance(error, Exception) and any(text in str(error) for text in FULL_DISK_TEXTS)


def size_of(path) -> int:
    """Bytes in a file or a directory tree (0 when there is none)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


@contextlib.contextmanager
def disk_full_named(path, staging=None, *, needed=None):
    """Turns a full disk inside the block into one DiskFullError naming `path` and the space it needs.

    The space needed is `needed` bytes if given, else what `staging` held when the disk filled
    up or the size of the `path` it replaces, whichever is larger (a lower bound either way).
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:  # h5py and TensorFlow report a full disk in their own types
        if not is_disk_full(error):
            raise
        raise disk_full_error(path, error, needed=needed if needed is not None else max(
            size_of(staging) if staging else 0, size_of(path) if os.path.lexists(path) else 0)) from None


def disk_full_error(path, error, *, needed=0) -> DiskFullError:
    path = os.path.abspath(os.fspath(path))
    where = os.path.dirname(path)
    while where and not os.path.isdir(where):
        where = os.path.dirname(where)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    reason = next((text for text in FULL_DISK_TEXTS if text in str(error)), "No space left on device")
    need = f"at least {_megabytes(needed)} free" if needed else "more free space"
    return DiskFullError(f"{reason} while writing {path}: it needs {need} in {where}"
                         + (f" ({_megabytes(free)} free now)" if free is not None else "")
                         + ". Free some space and run the same command again: it resumes (nothing complete was lost).")


def _megabytes(size) -> str:
    return f"{size / 2**20:.1f} MB" if size < 2**30 else f"{size / 2**30:.2f} GB"


def write_json(path, data) -> None:
    """Writes (or replaces) a JSON file atomically; NaN/Infinity are refused (not JSON: strict readers fail)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    with staged_file(path, overwrite=True) as staging, open(staging, "w", encoding="utf-8") as stream:
        stream.write(text)
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


def move_aside(path) -> str:
    """Renames `path` to a hidden `.NAME.XXXXXXXX.old` sibling (one atomic step) and returns that name."""
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    old = tempfile.mkdtemp(prefix=f".{name}.", suffix=OLD_SUFFIX, dir=parent)
    os.rmdir(old)
    os.rename(path, old)
    return old


@contextlib.contextmanager
def locked(path):
    """Holds an exclusive lock on `path` (a run directory or an export) while the block runs.

    The lock is `fcntl.flock` on `.NAME.lock` beside `path` -- beside, so that it survives
    `path` being replaced and never lands inside an export. It is non-blocking: a second
    process fails at once with the holder's PID (written into the file). The kernel drops
    the lock when its holder dies, so a killed run never blocks the next; the next holder
    removes the hidden `.partial`/`.old` siblings a killed writer of `path` left. The file
    is removed on release (a process that locked a file removed meanwhile tries again).
    """
    import fcntl

    if is_remote(path):  # object stores have no locks: one writer per gs:// directory is up to the user
        yield os.fspath(path)
        return
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    lock = os.path.join(parent, f".{name}{LOCK_SUFFIX}")
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise InUseError(f"{path} is in use by another bit_keras process (PID {holder}; lock file {lock}). "
                             "Wait for it to finish, or stop it.") from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(handle), os.stat(lock)):
                break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        leftover = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}(\{PARTIAL_SUFFIX}(\.[^.]*)?|\{OLD_SUFFIX})")
        for entry in os.listdir(parent):  # tempfile's 8-character names, of this target only
            if leftover.fullmatch(entry):
                with contextlib.suppress(OSError):
                    remove(os.path.join(parent, entry))
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
            os.remove(lock)
        os.close(handle)


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
    old = move_aside(path)
    os.rename(staging, path)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


def _check_replaceable(path, markers, suffixes, kind):
    real, here = os.path.realpath(path), os.path.realpath(os.getcwd())
    if real == os.path.realpath(os.path.expanduser("~")) or here == real or here.startswith(real.rstrip(os.sep) + os.sep):
        raise TargetExistsError(f"Refusing to replace {path}: it is the home folder, the current folder or a "
                                "folder above it. Choose another output.")
    if os.path.isdir(path) and not os.path.islink(path):
        entries = sorted(os.listdir(path))
        if not entries or any(os.path.lexists(os.path.join(path, marker)) for marker in markers):
            return
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        raise TargetExistsError(f"Refusing to replace {path}: it holds {shown}, not {kind} (no "
                                f"{' or '.join(markers)}). Remove it yourself or choose another output.")
    if not path.endswith(tuple(suffixes)) or not suffixes:
        raise TargetExistsError(f"Refusing to replace {path}: it is a file, not {kind}. Remove it yourself or "
                                "choose another output.")
