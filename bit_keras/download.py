"""Fetching released checkpoints into a local cache, safely.

A URL is cached as `<its file name>-<sha256(URL)[:16]>.npz` (two URLs never share an entry),
with `<that name>.sha256` beside it (`sha256sum -c` reads it). A download goes to a hidden
staging file (`files.staged_file`), is checked (complete, a zip archive of BiT arrays, the
architecture and head of the release asked for, the release's known SHA-256) and only then
renamed into place. Every later use checks the file against its recorded SHA-256 and
downloads it again on a mismatch; a file put in place by hand is checked like a download
and recorded on first use.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.error
import urllib.request
import zipfile

from absl import logging

from bit_keras import checkpoint, files
from bit_keras.errors import CheckpointError, DownloadError

CACHE_ENV = "BIT_KERAS_CACHE"
DIGEST_SUFFIX = ".sha256"
STALE_SECONDS = 3600  # a live download writes at least every `timeout` seconds


def cache_dir(override=None) -> str:
    return os.fspath(override or os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "bit_keras"))


def is_url(text) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0] in ("http", "https", "file")


def cache_path(url: str, filename: str | None = None, *, directory=None) -> str:
    """Where `url` is cached: a readable name (`filename`, else the URL's) plus a hash of the whole URL."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", filename or url.rstrip("/").rsplit("/", 1)[-1]).lstrip(".")
    stem, extension = os.path.splitext(name)
    return os.path.join(cache_dir(directory), f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:16]}{extension}")


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, filename: str | None = None, *, directory=None, timeout: float = 30.0, sha256=None,
          check=None, verify=None) -> str:
    """Returns the local path of `url`, downloading it into the cache once and verifying it on each use.

    `sha256`: the file's known digest. `check(info)`: raises CheckpointError when the file's
    `checkpoint.CheckpointInfo` is not what was asked for (before it enters the cache).
    `verify(source, path)`: for a file that is not a release-layout .npz (timm's safetensors),
    raises DownloadError unless it is usable; it replaces the .npz check.
    """
    target = cache_path(url, filename, directory=directory)
    if cached_path(url, filename, directory=directory, sha256=sha256, check=check, verify=verify):
        return target
    _remove_stale_partials(os.path.dirname(target))
    logging.info("Downloading %s to %s", url, target)
    with files.staged_file(target, overwrite=True) as temporary:  # overwrite: a parallel fetch, a bad entry
        digest = hashlib.sha256()
        with open(temporary, "wb") as stream:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    expected = response.headers.get("Content-Length")
                    while chunk := response.read(1 << 22):
                        digest.update(chunk)
                        stream.write(chunk)
            except (urllib.error.URLError, OSError) as error:
                raise DownloadError(
                    f"Could not download {url} ({error}). If this machine is offline, fetch the file "
                    f"elsewhere and put it at {target} (it is checked and its SHA-256 recorded on first "
                    f"use), or pass its local path as weights=..."
                ) from error
            received = stream.tell()
        if expected is not None and received != int(expected):
            raise DownloadError(f"Download of {url} stopped after {received} of {expected} bytes; try again.")
        _check(url, temporary, digest.hexdigest(), sha256, check, verify)
    _record(target, digest.hexdigest())
    return target


def cached_path(url: str, filename: str | None = None, *, directory=None, sha256=None, check=None,
                verify=None) -> str | None:
    """Where `url` is in the cache, or None when it is not there or no longer matches its SHA-256."""
    path = cache_path(url, filename, directory=directory)
    if not os.path.isfile(path):
        return None
    digest = sha256_of(path)
    try:
        with open(path + DIGEST_SUFFIX, encoding="utf-8") as stream:
            recorded = stream.read().split()[0]
    except (OSError, IndexError):  # put in place by hand, or a fetch killed before recording
        try:
            _check(path, path, digest, sha256, check, verify)
        except DownloadError as error:
            logging.warning("Ignoring %s: %s", path, error)
            return None
        _record(path, digest)
        return path
    if digest != recorded or (sha256 and digest != sha256.lower()):
        logging.warning("%s does not match its recorded SHA-256; it will be downloaded again.", path)
        return None
    return path


def _check(source, path, digest, sha256, check, verify=None) -> None:
    """Raises DownloadError unless `path` is a whole BiT checkpoint of the expected kind and digest."""
    if sha256 and digest != sha256.lower():
        raise DownloadError(f"{source} has SHA-256 {digest}, not the release's {sha256}; nothing was cached.")
    if verify is not None:  # another layout (bit_keras.timm's safetensors) checks itself
        verify(source, path)
        return
    try:
        info = checkpoint.identify(checkpoint.read_headers(path))
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"{damaged} fails its CRC check")
        if check is not None:
            check(info)
    except (CheckpointError, zipfile.BadZipFile) as error:
        raise DownloadError(f"{source} is not a usable BiT .npz checkpoint ({error}); nothing was cached.") from None


def _record(path, digest) -> None:
    with files.staged_file(path + DIGEST_SUFFIX, overwrite=True) as staging:  # umask permissions, atomic
        with open(staging, "w", encoding="utf-8") as stream:
            stream.write(f"{digest}  {os.path.basename(path)}\n")


def _remove_stale_partials(directory) -> None:
    """Removes staging files that downloads killed over an hour ago left in the cache."""
    if not os.path.isdir(directory):
        return
    for entry in os.scandir(directory):
        try:
            if (entry.name.startswith(".") and files.PARTIAL_SUFFIX in entry.name
                    and time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS):
                files.remove(entry.path)
        except OSError:  # removed by another process meanwhile
            pass


def _release_check(preset):
    def check(info):
        if info.architecture != preset.architecture or info.num_classes != preset.num_classes:
            raise CheckpointError(f"it holds {info.describe()}, but {preset.name} is {preset.architecture.name} "
                                  f"with a {preset.num_classes}-class head")
    return check


def fetch_preset(preset, *, directory=None) -> str:
    """The local path of a released checkpoint (`presets.Preset`), downloaded and checked once."""
    return fetch(preset.url, preset.filename, directory=directory, sha256=preset.sha256, check=_release_check(preset))


def cached_preset(preset, *, directory=None) -> str | None:
    """The cached, verified file of a released checkpoint, or None (nothing is downloaded)."""
    return cached_path(preset.url, preset.filename, directory=directory, sha256=preset.sha256,
                       check=_release_check(preset))
