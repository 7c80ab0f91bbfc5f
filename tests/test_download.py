"""Downloads against a local HTTP server: cached once, checked, never a corrupt cache entry."""

import dataclasses
import hashlib
import http.server
import io
import os
import threading
import time
import zipfile

import numpy as np
import pytest

import bit_keras
from bit_keras import download, presets, weights
from bit_keras.architecture import Architecture
from tests import reference


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}  # path -> (bytes, advertised length or None)
    hits = []

    def do_GET(self):
        self.hits.append(self.path)
        if self.path not in self.files:
            self.send_error(404)
            return
        body, advertised = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(advertised or len(body)))
        self.end_headers()
        self.wfile.write(body)  # a short body with a longer Content-Length mimics a dropped connection

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("srv") / "ckpt.npz"
    reference.write_checkpoint(path, (1, 1, 1, 1), 1, num_classes=3, seed=5)
    payload = path.read_bytes()
    reference.write_checkpoint(path, (1, 1, 1, 1), 1, num_classes=3, seed=6)
    no_arrays = io.BytesIO()
    with zipfile.ZipFile(no_arrays, "w") as archive:
        archive.writestr("resnet/readme.txt", "a zip with BiT-looking names but no arrays")
    _Handler.files.update({
        "/BiT-M-R50x1.npz": (payload, None),
        "/good.npz": (payload, None),
        "/other/good.npz": (path.read_bytes(), None),
        "/truncated.npz": (payload[: len(payload) // 2], len(payload)),
        "/page.npz": (b"<html>not found</html>", None),
        "/noarrays.npz": (no_arrays.getvalue(), None),
    })
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", payload
    httpd.shutdown()


def test_fetch_downloads_once_into_the_cache(server, tmp_path):
    base, payload = server
    _Handler.hits.clear()
    first = download.fetch(f"{base}/good.npz", directory=tmp_path)
    second = download.fetch(f"{base}/good.npz", directory=tmp_path)
    assert first == second == download.cache_path(f"{base}/good.npz", directory=tmp_path)
    name = os.path.basename(first)
    assert name.startswith("good-") and name.endswith(".npz")  # readable, and keyed by the whole URL
    assert open(first, "rb").read() == payload
    assert _Handler.hits == ["/good.npz"]
    assert sorted(os.listdir(tmp_path)) == [name, name + ".sha256"]  # no temporary files left behind
    assert open(first + ".sha256").read() == f"{hashlib.sha256(payload).hexdigest()}  {name}\n"  # sha256sum -c


def test_two_urls_with_one_file_name_never_share_an_entry(server, tmp_path):
    base, payload = server
    first = download.fetch(f"{base}/good.npz", directory=tmp_path)
    other = download.fetch(f"{base}/other/good.npz", directory=tmp_path)
    assert first != other and open(first, "rb").read() == payload
    assert open(other, "rb").read() == _Handler.files["/other/good.npz"][0] != payload


def test_a_cache_entry_is_verified_on_every_use(server, tmp_path):
    base, payload = server
    url = f"{base}/good.npz"
    path = download.fetch(url, directory=tmp_path)
    with open(path, "r+b") as stream:  # damaged (or replaced) after it was cached
        stream.seek(len(payload) // 2)
        stream.write(b"\0" * 64)
    _Handler.hits.clear()
    assert download.cached_path(url, directory=tmp_path) is None
    assert download.fetch(url, directory=tmp_path) == path and _Handler.hits == ["/good.npz"]
    assert open(path, "rb").read() == payload
    # A file put in place by hand (no recorded digest) is checked like a download, then recorded.
    os.remove(path + ".sha256")
    assert download.fetch(url, directory=tmp_path) == path and _Handler.hits == ["/good.npz"]
    assert os.path.exists(path + ".sha256")


def test_a_known_sha256_is_verified(server, tmp_path, monkeypatch):
    base, payload = server
    monkeypatch.setattr(presets, "RELEASE_URL", base)
    release = presets.Preset("BiT-T-R14x1", Architecture.parse("r14x1"), "test", 3, False, "good.npz", 224,
                             sha256="0" * 64)
    with pytest.raises(download.DownloadError, match="SHA-256"):
        download.fetch_preset(release, directory=tmp_path)
    assert os.listdir(tmp_path) == []
    release = dataclasses.replace(release, sha256=hashlib.sha256(payload).hexdigest())
    assert open(download.fetch_preset(release, directory=tmp_path), "rb").read() == payload


def test_stale_partial_downloads_are_cleaned_up(server, tmp_path):
    base, _ = server
    stale, live = tmp_path / ".good.npz.abc.partial.npz", tmp_path / ".good.npz.def.partial.npz"
    stale.write_bytes(b"killed")
    live.write_bytes(b"still downloading")
    os.utime(stale, (time.time() - 7200,) * 2)
    download.fetch(f"{base}/good.npz", directory=tmp_path)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("name, message", [("truncated.npz", "stopped after"), ("page.npz", "not a usable BiT .npz"),
                                           ("noarrays.npz", "no arrays")])
def test_bad_downloads_leave_no_cache_entry(server, tmp_path, name, message):
    base, _ = server
    with pytest.raises(download.DownloadError, match=message):
        download.fetch(f"{base}/{name}", directory=tmp_path)
    assert os.listdir(tmp_path) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    url = "http://127.0.0.1:9/BiT-S-R50x1.npz"
    with pytest.raises(download.DownloadError, match=f"put it at {download.cache_path(url, directory=tmp_path)}"):
        download.fetch(url, directory=tmp_path, timeout=2)


def test_weights_default_fetches_the_release_file_by_name(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setattr(presets, "RELEASE_URL", base)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    # The served file is a tiny architecture, so it is refused by name before it enters the cache.
    with pytest.raises(bit_keras.DownloadError, match="holds r14x1, 3-class head.*BiT-M-R50x1 is r50x1"):
        bit_keras.BiTImageClassifier.from_preset("m-r50x1")  # a release name means its weights
    assert os.listdir(tmp_path) == []
    # A URL works the same way and loads when the architecture matches.
    tiny = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 3)
    choice = weights.resolve(None, f"{base}/good.npz")
    assert choice.architecture == tiny.architecture and choice.source == f"{base}/good.npz"
    bit_keras.load_weights(tiny, choice.path)
    assert np.any(np.asarray(tiny.get_layer("head-conv2d").kernel))
