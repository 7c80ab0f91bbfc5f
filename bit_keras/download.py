"""Fetching released checkpoints into a local cache, safely.

A download goes to a hidden staging file in the cache directory (`files.staged_file`), is
checked (complete, a zip archive with BiT keys), and only then renamed into place, so an
interrupted download never leaves a cache entry that looks valid.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
import zipfile

from absl import logging

from bit_keras import files
from bit_keras.errors import DownloadError

CACHE_ENV = "BIT_KERAS_CACHE"




def cache_dir(override=None) -> str:
    return os.fspath(override or os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "bit_keras"))


def is_url(text) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0] in ("http", "https", "file")


def fetch(url: str, filename: str | None = None, *, directory=None, timeout: float = 30.0) -> str:
    """Returns the local path of `url`, downloading it into the cache once."""
    directory = cache_dir(directory)
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    target = os.path.join(directory, filename)
    if os.path.exists(target):
        return target
    logging.info("Downloading %s to %s", url, target)
    with files.staged_file(target, overwrite=True) as temporary:  # overwrite: a parallel fetch of the same file
        with open(temporary, "wb") as stream:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    expected = response.headers.get("Content-Length")
                    shutil.copyfileobj(response, stream, length=1 << 22)
            except (urllib.error.URLError, OSError) as error:
                raise DownloadError(
                    f"Could not download {url} ({error}). If this machine is offline, fetch the file "
                    f"elsewhere and put it at {target} (or set ${CACHE_ENV}), or pass its local path "
                    f"as weights=..."
                ) from error
            received = stream.tell()
        if expected is not None and received != int(expected):
            raise DownloadError(f"Download of {url} stopped after {received} of {expected} bytes; try again.")
        if not zipfile.is_zipfile(temporary) or not _has_bit_keys(temporary):
            raise DownloadError(f"{url} did not return a BiT .npz checkpoint; nothing was cached.")
    return target


def _has_bit_keys(path) -> bool:
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            return False
        return any(name.startswith("resnet/") for name in archive.namelist())


def fetch_preset(preset, *, directory=None) -> str:
    """The local path of a released checkpoint (`presets.Preset`), downloaded once."""
    return fetch(preset.url, preset.filename, directory=directory)


def cached_path(url: str, filename: str | None = None, *, directory=None) -> str | None:
    """Where `url` is in the cache, or None when it has not been downloaded."""
    filename = filename or url.rstrip("/").rsplit("/", 1)[-1]
    path = os.path.join(cache_dir(directory), filename)
    return path if os.path.exists(path) else None
