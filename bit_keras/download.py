"""Fetching released checkpoints into a local cache, safely.

A download goes to a temporary file in the cache directory, is checked (complete, a zip
archive with BiT keys), and only then renamed into place, so an interrupted download never
leaves a cache entry that looks valid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

from absl import logging

CACHE_ENV = "BIT_KERAS_CACHE"


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched; the message says where to put the file by hand."""


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
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    logging.info("Downloading %s to %s", url, target)
    try:
        with os.fdopen(handle, "wb") as stream:
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
        os.replace(temporary, target)
        return target
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _has_bit_keys(path) -> bool:
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            return False
        return any(name.startswith("resnet/") for name in archive.namelist())
