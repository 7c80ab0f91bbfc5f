"""`bit_keras demo` in a reduced mode: export, reload (hub.KerasLayer and load_backbone), fine-tune, report."""

import json

import pytest

from bit_keras.cli import main as cli_main


# The demo's default path (empty cache, random r14x1) runs end to end in tests/test_cli_output.py.


def test_demo_finds_a_released_checkpoint_in_the_cache(tmp_path, monkeypatch):
    from bit_keras import download, presets
    from bit_keras.weights import cached_release

    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path))
    assert cached_release("r50x1") is None

    def cache(name):  # a cache entry as fetch leaves it: the file and its recorded SHA-256
        release = presets.PRESETS[name]
        path = download.cache_path(release.url, release.filename)
        with open(path, "wb") as stream:
            stream.write(name.encode())
        download._record(path, download.sha256_of(path))
        return path

    small = cache("BiT-S-R50x1")
    assert cached_release("r50x1") == small
    medium = cache("BiT-M-R50x1")
    assert cached_release("r50x1") in (small, medium)
    assert cached_release("r101x1") is None
    for path in (small, medium):  # changed since it was recorded: not used
        with open(path, "ab") as stream:
            stream.write(b"!")
    assert cached_release("r50x1") is None


def test_transfer_demo_runs_its_three_stages(tmp_path):
    """Tiny settings: upstream training, export + reload, few-shot pairs, the table written."""
    import numpy as np
    import tensorflow as tf

    from bit_keras.data import load_source
    from bit_keras.finetune.transfer_demo import run_transfer_demo
    from tests import reference

    lines = []
    table = run_transfer_demo(str(tmp_path), upstream_steps=4, upstream_batch=16, resolution=16, shots=(1,),
                              finetune_steps=2, finetune_batch=8, check_hub=False, print_fn=lines.append)
    assert table["upstream_updates"] == 4
    # The upstream accuracy is the pre-trained network's on held-out digits 0-4: the independent NumPy BiT
    # with the run's bit_final.npz scores the same (to an example or two that sit on a tie).
    ds, _ = load_source("digits", "test")
    images, labels = (np.stack(column) for column in zip(*ds.as_numpy_iterator()))
    keep = labels < 5
    resized = tf.image.resize(images[keep].astype("float32") / 255.0, [16, 16]).numpy()
    _, logits = reference.forward(dict(np.load(tmp_path / "upstream" / "bit_final.npz")), resized)
    assert table["upstream_accuracy"] == pytest.approx(np.mean(np.argmax(logits, axis=1) == labels[keep]),
                                                       abs=2 / keep.sum())
    metrics = json.loads((tmp_path / "transfer_metrics.json").read_text())
    assert table["downstream_test_examples"] == metrics["downstream_test_examples"] == np.sum(labels >= 5)
    (row,) = table["rows"]
    # Both fine-tunes ran their updates, and each accuracy counts whole examples of the downstream test set.
    assert row["examples_per_class"] == 1 and row["pretrained_updates"] == row["random_updates"] == 2
    for label in ("pretrained", "random"):
        correct = row[label] * table["downstream_test_examples"]
        assert correct == pytest.approx(round(correct), abs=1e-6), label
    assert (tmp_path / "export" / "saved_model.pb").exists() and (tmp_path / "upstream" / "bit_final.npz").exists()
    assert any(line.startswith("[3/3]  1 per class") for line in lines)
