"""benchmarks/dense_normalization.py (issue 22): the quick study writes its table and chart,
and the five backbones really differ (BatchNorm layers, frozen statistics, against NumPy)."""

import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("pycocotools")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
VARIANTS = ("GN+WS", "frozen BN")


def _script():
    spec = importlib.util.spec_from_file_location("dense_normalization",
                                                  os.path.join(ROOT, "benchmarks", "dense_normalization.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    # Two variants and one micro-batch keep it short; `--quick` alone runs all five at 1 and 8.
    base = _script().main(["--quick", "--variants", ",".join(VARIANTS), "--batches", "2", "--steps", "1",
                           "--pretrain-steps", "1", "--pretrain-batch", "8", "--train-images", "8",
                           "--test-images", "4", "--size", str(SIZE), "--out", str(out)])
    with open(base + ".json") as f:
        return base, json.load(f)


def test_quick_study_writes_table_json_and_chart(study):
    base, saved = study
    assert {(r["variant"], r["batch"], r["task"]) for r in saved["results"]} == {
        (v, 2, t) for v in VARIANTS for t in ("detection", "segmentation")}
    assert len(saved["results"]) == len(VARIANTS) * 2
    assert all(0.0 <= r["score"] <= 1.0 for r in saved["results"])
    assert [p["family"] for p in saved["pretraining"]] == ["GN+WS", "BN"]  # frozen BN fine-tunes the BN one
    with open(base + ".md") as f:
        table = f.read()
    for task in ("Detection", "Segmentation"):
        section = table.split(f"**{task}")[1].split("\n\n")[1].splitlines()
        assert section[0].startswith("| backbone | 2 images per replica | published COCO")
        assert [row.split(" | ")[0].lstrip("| ") for row in section[2:]] == list(VARIANTS)
        for row in section[2:]:
            mean = float(row.split(" | ")[1].split(" ± ")[0])
            assert 0.0 <= mean <= 100.0
    assert "another task and scale" in table
    assert "| frozen BN | " in table and table.count("| 38.6 |") == 1  # Detectron's BN* box AP beside it
    with open(base + ".png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(base + ".png") > 10_000
    # --from-json redraws the same table.
    os.remove(base + ".md")
    _script().main(["--from-json", base + ".json", "--out", os.path.dirname(base)])
    with open(base + ".md") as f:
        assert f.read().split("Pre-training")[0] == table.split("Pre-training")[0]


def test_backbones_differ_in_their_layers():
    import keras

    from bit_keras.dense.study import VARIANTS, batch_norm_layers, build_backbone
    from bit_keras.layers import GroupNormalization, StandardizedConv2D

    for variant, (normalization, standardized, _) in VARIANTS.items():
        backbone = build_backbone(variant)
        kinds = {type(layer) for layer in backbone.layers}
        assert (len(batch_norm_layers(backbone)) > 0) == (normalization == "batch"), variant
        assert (GroupNormalization in kinds) == (normalization == "group"), variant
        assert (StandardizedConv2D in kinds) == standardized, variant
        assert (keras.layers.Conv2D in kinds) == (not standardized), variant


def _bn_pretrained(seed=0):
    """Random BN-family weights with moving statistics far from their initial 0/1."""
    from bit_keras.dense.study import batch_norm_layers, build_backbone

    backbone = build_backbone("BN")
    rng = np.random.default_rng(seed)
    for layer in batch_norm_layers(backbone):
        layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return {"family": "BN", "weights": backbone.get_weights()}, backbone


def test_frozen_bn_keeps_its_statistics_and_bn_does_not():
    from bit_keras.dense.shapes import synthetic_shapes
    from bit_keras.dense.study import batch_norm_layers, finetune

    pretrained, reference = _bn_pretrained()
    before = [(np.array(l.moving_mean), np.array(l.moving_variance), np.array(l.gamma))
              for l in batch_norm_layers(reference)]
    examples = synthetic_shapes(4, SIZE, seed=3)
    runs = {variant: finetune("segmentation", variant, pretrained, examples, examples[:2], batch=2, update_batch=4, updates=1,
                              seed=0, lr=1e-3, keep_model=True) for variant in ("frozen BN", "BN")}
    for variant, run in runs.items():
        layers = batch_norm_layers(run["backbone"])
        assert len(layers) == len(before)
        same = [np.array_equal(l.moving_mean, m) and np.array_equal(l.moving_variance, v) and np.array_equal(l.gamma, g)
                for l, (m, v, g) in zip(layers, before)]
        if variant == "frozen BN":
            assert all(same) and not any(l.trainable for l in layers)
        else:  # the last is the pre-head norm after block 4, which tasks on P2..P5 do not use
            assert not any(same[:-1]) and same[-1] and all(l.trainable for l in layers)
    # keras-hub's DeepLabV3 head BatchNorm is frozen for every variant.
    backbone_layers = {id(l) for l in batch_norm_layers(runs["BN"]["backbone"])}
    head = [l for l in batch_norm_layers(runs["BN"]["model"]) if id(l) not in backbone_layers]
    assert len(head) >= 5 and not any(l.trainable for l in head)
    # Frozen BN normalizes with its fixed statistics even in a training call (NumPy).
    layer = batch_norm_layers(runs["frozen BN"]["backbone"])[0]
    x = np.random.default_rng(1).normal(1.0, 3.0, (2, 4, 4, layer.gamma.shape[0])).astype("float32")
    expected = ((x - np.array(layer.moving_mean)) / np.sqrt(np.array(layer.moving_variance) + layer.epsilon)
                * np.array(layer.gamma) + np.array(layer.beta))
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), expected, rtol=1e-4, atol=1e-4)
    # Trainable BN normalizes with the micro-batch's own statistics (NumPy).
    layer = batch_norm_layers(runs["BN"]["backbone"])[0]
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    expected = (x - mean) / np.sqrt(var + layer.epsilon) * np.array(layer.gamma) + np.array(layer.beta)
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), expected, rtol=1e-4, atol=1e-4)


def test_micro_batch_must_divide_the_update():
    from bit_keras.dense.study import finetune
    from bit_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="must divide the update batch"):
        finetune("detection", "GN", {"family": "GN", "weights": []}, [], [], batch=3, update_batch=8, updates=1,
                 seed=0, lr=1e-3)


def test_detector_heads_have_no_normalization():
    """keras-hub's RetinaNet head and FPN add no BatchNorm: the backbone's is the only one."""
    from bit_keras.dense.study import batch_norm_layers, build_backbone, build_task

    backbone = build_backbone("BN")
    detector = build_task("detection", backbone)
    assert {id(l) for l in batch_norm_layers(detector)} == {id(l) for l in batch_norm_layers(backbone)}


def test_a_study_stopped_early_names_its_short_cells():
    """Seeds run outermost; a cell the last seed did not reach says how many runs its spread has (NumPy)."""
    script = _script()
    scores = {("GN", 1, 0): 0.30, ("GN", 1, 1): 0.40, ("BN", 1, 0): 0.25}
    results = [{"task": "segmentation", "variant": v, "batch": b, "seed": s, "score": x} for (v, b, s), x in scores.items()]
    summary = script.summarize(results, ["GN", "BN"], [1], ["segmentation"])
    meta = {"seeds": 2, "pretrain_batch": 32, "pretrain_steps": 1, "model": "m", "size": 32, "steps": 1,
            "update_batch": 8, "lr": 1e-3, "train_images": 8, "test_images": 4, "minutes": 1.0, "machine": "x",
            "load_mean": 1.0, "load_max": 1.0}
    table = script.markdown(summary, [], ["GN", "BN"], [1], meta)
    assert f"| GN | 35.0 ± {100 * np.std([0.3, 0.4], ddof=1):.1f} [30.0, 40.0] |" in table
    assert "| BN | 25.0 ± 0.0 [25.0, 25.0] (n=1) |" in table
