"""timm's layout of BiT weights: names, the key map, and parity with the .npz path."""

import numpy as np
import pytest

import bit_keras
from bit_keras import download, presets, timm
from bit_keras.architecture import Architecture
from bit_keras.errors import CheckpointError


def test_timm_names_are_release_names():
    assert presets.find_preset("resnetv2_50x1_bit.goog_in21k").name == "BiT-M-R50x1"
    assert presets.find_preset("resnetv2_101x3_bit.goog_in21k_ft_in1k").name == "BiT-M-R101x3-ILSVRC2012"
    assert presets.find_preset("resnetv2_50x1_bit.goog_distilled_in1k").name == "BiT-M-R50x1-distilled-224"
    assert presets.find_preset("hf://timm/resnetv2_152x4_bit.goog_in21k").name == "BiT-M-R152x4"
    assert len(presets.TIMM_NAMES) == 13  # timm has BiT-M (6), its ILSVRC-2012 fine-tunes (6), one student


def test_the_key_map_is_timms_load_weights():
    # timm/models/resnetv2.py `_load_weights`, key by key.
    assert timm.timm_key("resnet/root_block/standardized_conv2d/kernel") == "stem.conv.weight"
    assert timm.timm_key("resnet/block1/unit01/a/group_norm/gamma") == "stages.0.blocks.0.norm1.weight"
    assert timm.timm_key("resnet/block3/unit06/b/standardized_conv2d/kernel") == "stages.2.blocks.5.conv2.weight"
    assert timm.timm_key("resnet/block4/unit03/c/group_norm/beta") == "stages.3.blocks.2.norm3.bias"
    assert timm.timm_key("resnet/block2/unit01/a/proj/standardized_conv2d/kernel") == "stages.1.blocks.0.downsample.conv.weight"
    assert timm.timm_key("resnet/group_norm/gamma") == "norm.weight"
    assert timm.timm_key("resnet/head/conv2d/kernel") == "head.fc.weight"
    from bit_keras import layout

    keys = [e.key for e in layout.checkpoint_layout(Architecture.parse("r50x1"), 10)]
    assert len({timm.timm_key(k) for k in keys}) == len(keys)  # one timm key per release key


def _timm_file(npz, path):
    with np.load(npz) as arrays:
        timm.write_safetensors(path, {timm.timm_key(k): timm.to_timm(k, arrays[k]) for k in arrays.files})


def test_the_same_weights_through_npz_and_timm_layout_give_the_same_outputs(tmp_path):
    model = bit_keras.BiTImageClassifier.from_preset("r2-1-1-1x1", num_classes=5)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    bit_keras.save_weights(model, tmp_path / "w.npz")
    _timm_file(tmp_path / "w.npz", tmp_path / "w.safetensors")
    images = rng.uniform(0, 1, (2, 48, 40, 3)).astype("float32")
    via_npz = bit_keras.BiTImageClassifier.from_preset("r2-1-1-1x1", weights=tmp_path / "w.npz", cache_dir=tmp_path)
    via_timm = bit_keras.BiTImageClassifier.from_preset("r2-1-1-1x1", weights=str(tmp_path / "w.safetensors"),
                                                        cache_dir=tmp_path)
    want = np.asarray(model(images))
    np.testing.assert_array_equal(np.asarray(via_npz(images)), want)
    np.testing.assert_array_equal(np.asarray(via_timm(images)), want)
    # The same file by its `hf://timm/NAME` handle, from the verified cache (put there by hand, offline).
    cached = download.cache_path(timm.HF_URL.format(name="my_bit"), "my_bit.safetensors", directory=tmp_path)
    (tmp_path / "w.safetensors").rename(cached)
    hub = bit_keras.BiTBackbone.from_preset("r2-1-1-1x1", weights="hf://timm/my_bit", cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(hub(images)), np.asarray(via_npz.backbone(images)))
    assert open(cached + ".sha256").read().split()[0] == download.sha256_of(cached)


def test_bfloat16_tensors_widen_exactly_and_bad_files_are_named(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], "float32")
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = b'{"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}'
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
    np.testing.assert_array_equal(timm.read_safetensors(tmp_path / "b.safetensors")["x"], values)
    (tmp_path / "cut.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw[:4])
    with pytest.raises(CheckpointError, match="outside the file"):
        timm.read_safetensors(tmp_path / "cut.safetensors")
    timm.write_safetensors(tmp_path / "other.safetensors", {"fc.weight": np.zeros((2, 2))})
    with pytest.raises(CheckpointError, match="Not a timm BiT"):
        timm.as_npz(tmp_path / "other.safetensors", tmp_path)
