"""`bit_keras demo` in a reduced mode: export, reload (hub.KerasLayer and load_backbone), fine-tune, report."""

import json

from bit_keras.cli import main as cli_main


def test_demo_runs_end_to_end_offline_and_says_weights_are_random(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path / "empty_cache"))
    output = tmp_path / "demo"
    args = cli_main.build_parser().parse_args(
        ["demo", "--output", str(output), "--steps", "4", "--batch", "8", "--resolution", "16"])
    assert cli_main._main(args) == 0
    printed = capsys.readouterr().out
    assert "NO released BiT checkpoint" in printed and "RANDOM weights" in printed
    assert "hub.KerasLayer max |diff|" in printed and "Result: test accuracy" in printed
    result = json.loads((output / "demo_metrics.json").read_text())
    assert result["variant"] == "r14x1" and result["weights"] == "random" and result["steps"] == 4
    assert result["test_examples"] == 360 and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["load_backbone_max_abs_diff"] < 1e-5
    assert (output / "export" / "saved_model.pb").exists()


def test_demo_finds_a_released_checkpoint_in_the_cache(tmp_path, monkeypatch):
    from bit_keras.weights import cached_release

    monkeypatch.setenv("BIT_KERAS_CACHE", str(tmp_path))
    assert cached_release("r50x1") is None
    (tmp_path / "BiT-S-R50x1.npz").write_bytes(b"")
    assert cached_release("r50x1") == str(tmp_path / "BiT-S-R50x1.npz")
    (tmp_path / "BiT-M-R50x1.npz").write_bytes(b"")
    assert cached_release("r50x1") in (str(tmp_path / "BiT-S-R50x1.npz"), str(tmp_path / "BiT-M-R50x1.npz"))
    assert cached_release("r101x1") is None
