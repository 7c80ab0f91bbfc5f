"""The weights rule's edges: Python says when a name means random weights, one test for "an export?",
and `train` refuses a release into a non-BiT network before it downloads anything."""

import warnings

import bit_keras
from bit_keras import weights


def _from_preset_warnings(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bit_keras.BiTBackbone.from_preset("r1-1-1-1x1", **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "random weights" in str(w.message)]


def test_an_architecture_name_warns_of_random_weights_unless_they_were_asked_for():
    (message,) = _from_preset_warnings()
    assert message.startswith("r14x1: random weights (untrained") and "load_weights=False" in message
    assert _from_preset_warnings(load_weights=False) == []


def test_the_warning_comes_once_per_call_site():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")   # Python's own rule: once per place in the code
        for _ in range(2):
            bit_keras.BiTImageClassifier.from_preset("r1-1-1-1x1", num_classes=2)
    assert sum("random weights" in str(w.message) for w in caught) == 1


def test_is_export_is_one_test(tmp_path):
    assert weights.is_export(tmp_path) and weights.is_export(str(tmp_path / "model.keras"))
    assert not weights.is_export("m-r50x1") and not weights.is_export(str(tmp_path / "w.npz"))
    assert not weights.is_export(None)


def test_train_refuses_a_release_into_a_non_bit_network_before_downloading(tmp_path, monkeypatch, capsys):
    from bit_keras import download
    from bit_keras.cli.main import _main, build_parser

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before refusing")

    monkeypatch.setattr(download, "fetch_preset", no_download)
    monkeypatch.setattr(download, "fetch", no_download)
    args = build_parser().parse_args(["train", "--variant", "m-r50x1", "--norm", "batch", "--dataset", "digits",
                                      "--model-dir", str(tmp_path / "run")])
    assert _main(args) == 2
    assert "loads only into it" in capsys.readouterr().err
