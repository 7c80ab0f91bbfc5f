"""`bit_keras demo` in a reduced mode: export, reload (hub.KerasLayer and load_backbone), fine-tune, report."""

import json

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
    from bit_keras.finetune.transfer_demo import run_transfer_demo

    lines = []
    table = run_transfer_demo(str(tmp_path), upstream_steps=4, upstream_batch=16, resolution=16, shots=(1,),
                              finetune_steps=2, finetune_batch=8, check_hub=False, print_fn=lines.append)
    assert table["upstream_updates"] == 4 and 0.0 <= table["upstream_accuracy"] <= 1.0
    assert table["downstream_test_examples"] == int((json.loads((tmp_path / "transfer_metrics.json").read_text())
                                                     ["downstream_test_examples"]))
    (row,) = table["rows"]
    assert row["examples_per_class"] == 1 and 0.0 <= row["pretrained"] <= 1.0 and 0.0 <= row["random"] <= 1.0
    assert (tmp_path / "export" / "saved_model.pb").exists() and (tmp_path / "upstream" / "bit_final.npz").exists()
    assert any(line.startswith("[3/3]  1 per class") for line in lines)
