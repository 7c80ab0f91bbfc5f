"""Loading and saving release-layout checkpoints: by name, all or nothing, with clear errors."""

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import bit_keras
from bit_keras import checkpoint
from tests import reference

UNITS, WIDTH = (1, 1, 1, 1), 1


@pytest.fixture(scope="module")
def params_and_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
    return reference.write_checkpoint(path, UNITS, WIDTH, num_classes=6, seed=3), path


def _model(num_classes=6, include_top=True):
    backbone = bit_keras.BiTBackbone(UNITS, WIDTH)
    return bit_keras.BiTImageClassifier(backbone, num_classes) if include_top else backbone


def _rewrite(params, path, **changes):
    altered = dict(params)
    for key, value in changes.items():
        if value is None:
            altered.pop(key)
        else:
            altered[key] = value
    np.savez(path, **altered)
    return path


def _snapshot(model):
    return [np.array(w) for w in model.weights]


def test_every_weight_lands_where_its_key_says(params_and_path, tmp_path):
    params, path = params_and_path
    model = _model()
    bit_keras.load_weights(model, path)
    conv = model.get_layer("block3-unit01-b-standardized_conv2d")
    np.testing.assert_array_equal(conv.kernel, params["resnet/block3/unit01/b/standardized_conv2d/kernel"])
    proj = model.get_layer("block2-unit01-a-proj-standardized_conv2d")
    np.testing.assert_array_equal(proj.kernel, params["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"])
    np.testing.assert_array_equal(model.get_layer("head-conv2d").kernel, params["resnet/head/conv2d/kernel"][0, 0])
    # Saving writes back exactly the release's keys and values.
    out = tmp_path / "round_trip.npz"
    bit_keras.save_weights(model, out)
    with np.load(out) as saved:
        assert set(saved.files) == set(params)
        for key in params:
            np.testing.assert_array_equal(saved[key], params[key])


def test_other_class_count_gets_zero_head_and_same_backbone(params_and_path):
    params, path = params_and_path
    model = _model(num_classes=3)
    bit_keras.load_weights(model, path)
    head = model.get_layer("head-conv2d")
    assert not np.any(head.kernel) and not np.any(head.bias)
    np.testing.assert_array_equal(model.get_layer("group_norm").gamma, params["resnet/group_norm/gamma"])


def test_missing_key_is_named_and_nothing_is_loaded(params_and_path, tmp_path):
    params, _ = params_and_path
    key = "resnet/block4/unit01/c/group_norm/beta"
    bad = _rewrite(params, tmp_path / "missing.npz", **{key: None})
    model = _model()
    before = _snapshot(model)
    with pytest.raises(checkpoint.CheckpointError, match="missing key 'resnet/block4/unit01/c/group_norm/beta'"):
        bit_keras.load_weights(model, bad)
    for old, new in zip(before, _snapshot(model)):
        np.testing.assert_array_equal(old, new)


def test_misshaped_key_names_both_shapes_and_the_fitting_variant(tmp_path):
    # An R50x1 file offered to an R101x1 model: the error says to build r50x1.
    path = tmp_path / "r50.npz"
    reference.write_checkpoint(path, (3, 4, 6, 3), 1, num_classes=None)
    with pytest.raises(checkpoint.CheckpointError, match="missing key .*block3/unit07.*build 'r50x1'"):
        bit_keras.load_weights(bit_keras.BiTBackbone((3, 4, 23, 3), 1), path)
    wide = tmp_path / "wide.npz"
    reference.write_checkpoint(wide, UNITS, 2, num_classes=None)
    with pytest.raises(checkpoint.CheckpointError, match=r"has shape \(7, 7, 3, 128\), the model expects \(7, 7, 3, 64\)"):
        bit_keras.load_weights(_model(include_top=False), wide)


def test_not_an_npz_says_so(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(checkpoint.CheckpointError, match="not an .npz file"):
        bit_keras.load_weights(_model(), path)
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        bit_keras.load_weights(_model(), tmp_path / "absent.npz")


def test_create_model_checks_the_variant_against_the_file(params_and_path):
    _, path = params_and_path
    with pytest.raises(checkpoint.CheckpointError, match="but the model asked for is r50x1"):
        bit_keras.create_model("m-r50x1", weights=path)


def test_create_model_takes_head_size_from_the_checkpoint(tmp_path):
    path = tmp_path / "r50.npz"
    params = reference.write_checkpoint(path, (3, 4, 6, 3), 1, num_classes=4, seed=9)
    model = bit_keras.create_model("BiT-S-R50x1", weights=str(path))
    assert model.num_classes == 4
    np.testing.assert_array_equal(model.get_layer("head-conv2d").bias, params["resnet/head/conv2d/bias"])
    features = bit_keras.create_model("s-r50x1", weights=path, include_top=False)
    assert features.output_shape == (None, 2048)


def test_inspect_reports_architecture_and_problems(params_and_path, tmp_path):
    params, path = params_and_path
    report = checkpoint.inspect_checkpoint(path)
    assert report["block_units"] == [1, 1, 1, 1] and report["width"] == 1 and report["num_classes"] == 6
    assert report["loads"] and report["parameters"] == sum(v.size for v in params.values())
    bad = _rewrite(params, tmp_path / "bad.npz", **{"resnet/block1/unit01/b/standardized_conv2d/kernel": np.zeros((3, 3, 64, 63), "float32")})
    report = checkpoint.inspect_checkpoint(bad)
    assert not report["loads"] and "(3, 3, 64, 63)" in report["problem"]


KERNEL = "resnet/block1/unit01/b/standardized_conv2d/kernel"


def _npy(array) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array)
    return stream.getvalue()


def _archive(path, members):
    """An .npz written member by member (`name: bytes`), to make damaged ones."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, data in members.items():
            archive.writestr(key + ".npy", data)
    return path


def _short_data(params, path):
    return _archive(path, {**{k: _npy(v) for k, v in params.items()}, KERNEL: _npy(params[KERNEL])[:-100]})


def _bad_crc(params, path):
    np.savez(path, **params)
    data = bytearray(path.read_bytes())
    data[data.find(params[KERNEL].tobytes()) + 1000] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage, message", [(_short_data, "truncated or corrupt"), (_bad_crc, "CRC|corrupt")])
def test_damaged_array_data_is_found_before_anything_is_assigned(params_and_path, tmp_path, damage, message):
    params, _ = params_and_path
    bad = damage(params, tmp_path / "bad.npz")
    report = checkpoint.inspect_checkpoint(bad)
    assert not report["loads"] and KERNEL in report["problem"]
    model = _model()
    before = _snapshot(model)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        bit_keras.load_weights(model, bad)
    for old, new in zip(before, _snapshot(model)):
        np.testing.assert_array_equal(old, new)


def test_nan_and_inf_are_named_and_loaded_only_on_request(params_and_path, tmp_path, capsys):
    from bit_keras.cli import main as cli_main

    params, _ = params_and_path
    gamma = "resnet/group_norm/gamma"
    poisoned = dict(params, **{KERNEL: params[KERNEL].copy(), gamma: params[gamma].copy()})
    poisoned[KERNEL][0, 0, 0, 0], poisoned[gamma][3] = np.nan, -np.inf
    bad = _rewrite(poisoned, tmp_path / "nan.npz")
    report = checkpoint.inspect_checkpoint(bad)
    assert report["nonfinite_keys"] == sorted([KERNEL, gamma]) and not report["loads"]
    assert KERNEL in report["problem"]
    assert cli_main._main(cli_main.build_parser().parse_args(["inspect", str(bad)])) == 1
    assert f"NaN or Inf in: {KERNEL}, {gamma}" in capsys.readouterr().out
    model = _model()
    before = _snapshot(model)
    with pytest.raises(checkpoint.CheckpointError, match="NaN or Inf.*allow_nonfinite=True"):
        bit_keras.load_weights(model, bad)
    for old, new in zip(before, _snapshot(model)):
        np.testing.assert_array_equal(old, new)
    bit_keras.load_weights(model, bad, allow_nonfinite=True)
    assert np.isnan(np.asarray(model.get_layer("block1-unit01-b-standardized_conv2d").kernel)[0, 0, 0, 0])
    assert checkpoint.inspect_checkpoint(params_and_path[1])["nonfinite_keys"] == []


def test_inspect_counts_absurd_shapes_exactly(params_and_path, tmp_path):
    params, _ = params_and_path
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 10**12)})
    bad = _archive(tmp_path / "huge.npz", {**{k: _npy(v) for k, v in params.items()}, "extra/huge": header.getvalue()})
    report = checkpoint.inspect_checkpoint(bad)
    assert report["parameters"] == sum(v.size for v in params.values()) + 10**24
    assert not report["loads"] and "extra/huge" in report["problem"]


def test_inspect_refuses_a_device_before_reading_it():
    # Run apart under a memory limit: reading /dev/zero would never end.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from bit_keras.cli.main import run; sys.exit(run(['inspect', '/dev/zero']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["bit_keras inspect: error: '/dev/zero' is not a regular file."]
