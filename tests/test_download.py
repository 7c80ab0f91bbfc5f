"""Downloads against a local HTTP server: cached once, checked, never a corrupt cache entry."""

import http.server
import os
import threading

import numpy as np
import pytest

import bit_keras
from bit_keras import download, presets, weights
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
    _Handler.files.update({
        "/BiT-M-R50x1.npz": (payload, None),
        "/good.npz": (payload, None),
        "/truncated.npz": (payload[: len(payload) // 2], len(payload)),
        "/page.npz": (b"<html>not found</html>", None),
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
    assert first == second == str(tmp_path / "good.npz")
    assert open(first, "rb").read() == payload
    assert _Handler.hits == ["/good.npz"]
    assert os.listdir(tmp_path) == ["good.npz"]  # no temporary files left behind


@pytest.mark.parametrize("name, message", [("truncated.npz", "stopped after"), ("page.npz", "did not return a BiT .npz")])
def test_bad_downloads_leave_no_cache_entry(server, tmp_path, name, message):
    base, _ = server
    with pytest.raises(download.DownloadError, match=message):
        download.fetch(f"{base}/{name}", directory=tmp_path)
    assert os.listdir(tmp_path) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with pytest.raises(download.DownloadError, match=f"put it at {tmp_path}/BiT-S-R50x1.npz"):
        download.fetch("http://127.0.0.1:9/BiT-S-R50x1.npz", directory=tmp_path, timeout=2)


def test_weights_default_fetches_the_release_file_by_name(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setattr(presets, "RELEASE_URL", base)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    # The served file is a tiny architecture, so the variant check must refuse it by name...
    with pytest.raises(bit_keras.CheckpointError, match="holds r14x1"):
        bit_keras.BiTImageClassifier.from_preset("m-r50x1")  # a release name means its weights
    # ...after caching it under the release's file name.
    assert os.listdir(tmp_path) == ["BiT-M-R50x1.npz"]
    # A URL works the same way and loads when the architecture matches.
    tiny = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone((1, 1, 1, 1), 1), 3)
    choice = weights.resolve(None, f"{base}/good.npz")
    assert choice.architecture == tiny.architecture and choice.source == f"{base}/good.npz"
    bit_keras.load_weights(tiny, choice.path)
    assert np.any(np.asarray(tiny.get_layer("head-conv2d").kernel))
