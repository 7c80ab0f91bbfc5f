"""Presets and the name grammar: names, parameter counts (the paper's table) and the CLI that lists them."""

import json
import subprocess
import sys

import numpy as np
import pytest

import bit_keras
from bit_keras import presets
from bit_keras.architecture import Architecture
from tests import reference

# The paper's table of with a 1000-class head, as printed there.
SPEC_PARAMS = {"r50x1": 25.55e6, "r50x3": 217.3e6, "r101x1": 44.5e6, "r101x3": 387.9e6,
               "r152x2": 236.3e6, "r152x4": 936.5e6}


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_match_the_spec(name):
    arch = Architecture.parse(name)
    # Independent count: the reference layout is written from the spec, not from bit_keras.
    counted = sum(int(np.prod(s)) for s in reference.release_shapes(arch.block_units, arch.width, 1000).values())
    digits = 2 if name == "r50x1" else 1
    assert round(counted / 1e6, digits) == round(SPEC_PARAMS[name] / 1e6, digits)
    assert arch.num_params(1000) == counted


@pytest.mark.parametrize("name, arch, release", [
    ("BiT-M-R50x1", "r50x1", "BiT-M-R50x1"),
    ("m-r50x1", "r50x1", "BiT-M-R50x1"),
    ("s-R101X3", "r101x3", "BiT-S-R101x3"),
    ("bit-m-r152x4-ilsvrc2012", "r152x4", "BiT-M-R152x4-ILSVRC2012"),
    ("BiT-M-R50x1-distilled-160", "r50x1", "BiT-M-R50x1-distilled-160"),
    ("r152x2", "r152x2", None),
    ("R50x2", "r50x2", None),                # any width of a standard depth
    ("r14x1", "r14x1", None),
    ("r2-3-4-1x2", "r2-3-4-1x2", None),      # any units per block
    ("r3-4-6-3x1", "r50x1", None),           # one canonical spelling
])
def test_names_resolve_case_insensitively(name, arch, release):
    architecture, found = presets.resolve(name)
    assert architecture.name == arch and Architecture.parse(architecture.name) == architecture
    assert (found.name if found else None) == release


@pytest.mark.parametrize("bad", ["r51x1", "resnet50", "x-r50x1", "m-r50x1-imagenet", "m-r14x1", "r1-1-1x1",
                                 "r0-1-1-1x1", "r50x0"])
def test_unknown_names_are_refused_with_the_choices(bad):
    with pytest.raises(bit_keras.ConfigError, match="bit_keras list"):
        presets.resolve(bad)


def test_the_walk_gives_projections_where_channels_or_strides_change():
    units = Architecture.parse("r2-1-1-1x1").units()
    assert [(u.name, u.stride, u.projection) for u in units] == [
        ("block1/unit01", 1, True), ("block1/unit02", 1, False), ("block2/unit01", 2, True),
        ("block3/unit01", 2, True), ("block4/unit01", 2, True)]
    assert [(u.in_channels, u.mid_channels, u.out_channels) for u in units[:3]] == [
        (64, 64, 256), (256, 64, 256), (256, 128, 512)]


def test_release_urls_and_head_sizes():
    assert presets.PRESETS["BiT-M-R101x3"].url == "https://storage.googleapis.com/bit_models/BiT-M-R101x3.npz"
    assert presets.PRESETS["BiT-M-R50x1-distilled-224"].url.endswith("/distill/R50x1_224.npz")
    assert presets.PRESETS["BiT-M-R50x1"].num_classes == 21843 and presets.PRESETS["BiT-M-R50x1"].multi_label
    assert presets.PRESETS["BiT-S-R50x1"].num_classes == 1000
    assert len(presets.PRESETS) == 6 * 3 + 2
    # The HyperRule's resolution is the release's data, not a test of the name.
    assert presets.PRESETS["BiT-S-R152x4"].hyperrule_resolution == (512, 480)
    assert presets.PRESETS["BiT-M-R101x3"].hyperrule_resolution == (448, 384)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True, timeout=120)


def test_cli_list_and_inspect(tmp_path):
    listed = json.loads(_cli("list", "--json").stdout)
    assert {row["name"] for row in listed} == set(presets.PRESETS)
    assert next(r for r in listed if r["name"] == "BiT-S-R50x1")["parameters"] == 25_549_352
    path = tmp_path / "tiny.npz"
    reference.write_checkpoint(path, (3, 4, 6, 3), 1, num_classes=None)
    good = _cli("inspect", str(path))
    assert good.returncode == 0 and "r50x1" in good.stdout and "loads: yes" in good.stdout
    with np.load(path) as arrays:
        broken = {k: arrays[k] for k in arrays.files if "block2/unit03" not in k}
    np.savez(tmp_path / "broken.npz", **broken)
    bad = _cli("inspect", str(tmp_path / "broken.npz"))
    assert bad.returncode == 1 and "loads: NO" in bad.stdout
    missing = _cli("inspect", str(tmp_path / "absent.npz"))
    assert missing.returncode == 2 and "No checkpoint at" in missing.stderr and "Traceback" not in missing.stderr
