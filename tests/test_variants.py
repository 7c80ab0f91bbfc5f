"""The variant registry: names, parameter counts (BIT_SPEC.md's table) and the CLI that lists them."""

import json
import subprocess
import sys

import numpy as np
import pytest

import bit_keras
from bit_keras import variants
from tests import reference

# BIT_SPEC.md section 1, parameters with a 1000-class head, as printed there.
SPEC_PARAMS = {"r50x1": 25.55e6, "r50x3": 217.3e6, "r101x1": 44.5e6, "r101x3": 387.9e6,
               "r152x2": 236.3e6, "r152x4": 936.5e6}


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_match_the_spec(name):
    arch = bit_keras.ARCHITECTURES[name]
    # Independent count: the reference layout is written from the spec, not from bit_keras.
    counted = sum(int(np.prod(s)) for s in reference.release_shapes(arch.block_units, arch.width, 1000).values())
    digits = 2 if name == "r50x1" else 1
    assert round(counted / 1e6, digits) == round(SPEC_PARAMS[name] / 1e6, digits)
    assert arch.num_params(1000) == counted


def test_keras_model_has_the_counted_parameters():
    model = bit_keras.create_model("r50x1")
    assert model.count_params() == bit_keras.ARCHITECTURES["r50x1"].num_params(1000) == 25_549_352


@pytest.mark.parametrize("name, arch, release", [
    ("BiT-M-R50x1", "r50x1", "BiT-M-R50x1"),
    ("m-r50x1", "r50x1", "BiT-M-R50x1"),
    ("s-R101X3", "r101x3", "BiT-S-R101x3"),
    ("bit-m-r152x4-ilsvrc2012", "r152x4", "BiT-M-R152x4-ILSVRC2012"),
    ("BiT-M-R50x1-distilled-160", "r50x1", "BiT-M-R50x1-distilled-160"),
    ("r152x2", "r152x2", None),
])
def test_names_resolve_case_insensitively(name, arch, release):
    assert variants.resolve_architecture(name).name == arch
    found = variants.resolve_checkpoint(name, required=False)
    assert (found.name if found else None) == release


@pytest.mark.parametrize("bad", ["r50x2", "resnet50", "x-r50x1", "m-r50x1-imagenet"])
def test_unknown_names_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="bit_keras list"):
        variants.resolve_architecture(bad)


def test_release_urls_and_head_sizes():
    assert variants.CHECKPOINTS["BiT-M-R101x3"].url == "https://storage.googleapis.com/bit_models/BiT-M-R101x3.npz"
    assert variants.CHECKPOINTS["BiT-M-R50x1-distilled-224"].url.endswith("/distill/R50x1_224.npz")
    assert variants.CHECKPOINTS["BiT-M-R50x1"].num_classes == 21843
    assert variants.CHECKPOINTS["BiT-S-R50x1"].num_classes == 1000
    assert len(variants.CHECKPOINTS) == 6 * 3 + 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True, timeout=120)


def test_cli_list_and_inspect(tmp_path):
    listed = json.loads(_cli("list", "--json").stdout)
    assert {row["name"] for row in listed} == set(variants.CHECKPOINTS)
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
