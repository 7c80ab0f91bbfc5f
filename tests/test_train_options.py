"""`bit_keras train`'s training strategies and held-out evaluation, checked against NumPy.

Tiny networks (one unit per block, width 1) at 16 px on digits or random arrays, a few
updates each. Held-out evaluation is recounted here from the exported weights through the
independent NumPy network (`tests/reference.py`); the EMA is replayed with its recurrence
from the raw weights the checkpoints keep.
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import reference
from tests.tensorboard_events import read_scalars

UNITS = (1, 1, 1, 1)
SIZE = 16
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, name, **changes):
    from bit_keras.train.loop import TrainConfig
    from bit_keras.train.recipes import TrainingOptions
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    schedule = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=SIZE, warmup_steps=2,
                                          epochs=changes.pop("epochs", 1), multi_label=changes.pop("multi_label", False),
                                          base_learning_rate=changes.pop("base_lr", 0.03))
    options = TrainingOptions(**changes.pop("options", {}))
    return TrainConfig(model_dir=str(tmp_path / name), dataset="arrays", schedule=schedule, block_units=UNITS,
                       width=1, shuffle_buffer=64, log_every=1, options=options, **changes)


def _arrays(n=48, seed=0):
    from bit_keras.data import from_arrays

    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8), rng.integers(0, 10, n)
    return (images, labels), from_arrays(images, labels, num_classes=10)


def _eval_images(images):
    """The held-out preprocessing, done here: bilinear resize to the crop, [0, 1]."""
    import tensorflow as tf

    return np.clip(tf.image.resize(images.astype(np.float32) / 255.0, [SIZE, SIZE]).numpy(), 0, 1)


def _numpy_counts(params, images, labels):
    _, logits = reference.forward(params, _eval_images(images))
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = int((order[:, 0] == labels).sum())
    top5 = int((order[:, :5] == labels[:, None]).any(axis=1).sum())
    return top1, top5


# ------------------------------------------------------------------ schedule, recipe, flags (no training)

def test_cosine_schedule_matches_the_numpy_formula():
    from bit_keras.learning_rates import WarmupCosineDecay
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    peak, warmup, total = 0.48, 10, 100
    schedule = WarmupCosineDecay(peak, warmup, total)
    steps = np.array([0, 1, 4, 8, 9, 10, 30, 54, 77, 98, 99])
    u = steps + 1.0
    expected = np.where(u < warmup, peak * u / warmup,
                        peak * 0.5 * (1 + np.cos(np.pi * (u - warmup) / (total - warmup + 1))))
    got = np.array([float(schedule(int(s))) for s in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)   # float32 cosine near 0
    assert got[steps.tolist().index(9)] == pytest.approx(peak) and got[-1] > 0   # peak after warm-up; last > 0
    plan = UPSTREAM_SCHEDULES["bit-s"].replace(lr_schedule="cosine", batch_size=4096, warmup_steps=warmup,
                                      epochs=total * 4096 / 1e5).plan(100_000)
    assert plan.total_steps == total and plan.decay_steps == ()
    np.testing.assert_allclose([plan.learning_rate(int(s)) for s in steps], expected, rtol=1e-12)
    no_warmup = WarmupCosineDecay(peak, 0, total)
    assert float(no_warmup(0)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / (total + 1))), rel=1e-6)


def _dry_run(capsys, *flags):
    from bit_keras.cli.main import _main, build_parser

    args = build_parser().parse_args(["train", "--dataset", "digits", "--model-dir", "unused", "--batch", "64",
                                      "--dry-run", *flags])
    assert _main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_recipe_resnet_rs_resolves_to_the_documented_values(capsys):
    plan = _dry_run(capsys, "--recipe", "resnet-rs")
    assert plan["recipe"] == "resnet-rs"
    assert plan["training"] == {"label_smoothing": 0.1, "dropout": 0.25, "stochastic_depth": 0.0, "ema": 0.9999,
                                "randaugment": [2, 10.0], "normalization": "group",
                                "weight_standardization": True, "groups": 32, "sync_batch_norm": False}
    assert plan["weight_decay"] == 4e-5 and plan["epochs"] == 350 and plan["lr_schedule"] == "cosine"
    assert plan["decay_steps"] == [] and plan["eval_split"] == "test"
    # Explicit flags override the recipe; "none" turns a recipe's option off.
    plan = _dry_run(capsys, "--recipe", "resnet-rs", "--ema", "none", "--label-smoothing", "0.2", "--randaugment",
                    "1,5", "--lr-schedule", "step", "--epochs", "90", "--norm", "batch", "--sync-bn", "--no-ws",
                    "--eval-split", "none")
    training = plan["training"]
    assert training["ema"] is None and training["label_smoothing"] == 0.2 and training["randaugment"] == [1, 5.0]
    assert training["dropout"] == 0.25 and training["normalization"] == "batch" and training["sync_batch_norm"]
    assert not training["weight_standardization"]
    assert plan["lr_schedule"] == "step" and plan["epochs"] == 90 and plan["eval_split"] is None
    # Without a recipe everything is off.
    plain = _dry_run(capsys)
    assert plain["training"]["ema"] is None and plain["training"]["label_smoothing"] == 0.0
    assert plain["lr_schedule"] == "step" and plain["weight_decay"] == 1e-4


@pytest.mark.parametrize("flags, message", [
    (["--randaugment", "3"], "--randaugment takes N,M"),
    (["--ema", "1.5"], "--ema takes the EMA decay"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--sync-bn"], "--sync-bn synchronises BatchNorm statistics: it needs --norm batch"),
    (["--recipe", "resnet"], "Unknown recipe 'resnet'"),
])
def test_bad_option_values_fail_with_one_line(flags, message):
    done = subprocess.run([sys.executable, "-m", "bit_keras", "train", "--dataset", "digits", "--model-dir", "unused",
                           "--dry-run", *flags], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and done.stdout.strip() == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr[-2000:]


def test_dry_run_shows_the_warnings_the_run_prints(capsys):
    # ResNet-RS's 5000-update warm-up and 0.9999 EMA in a 113-update run: neither can do what it looks like.
    plan = _dry_run(capsys, "--recipe", "resnet-rs", "--epochs", "5")
    assert plan["total_steps"] == 112 and len(plan["warnings"]) == 2, plan["warnings"]
    assert plan["warnings"][0].startswith("the warm-up (5000 updates) is longer than the run (112)")
    assert plan["warnings"][1].startswith("EMA decay 0.9999 averages over about 10000 updates, more than the run's 112")
    late = _dry_run(capsys, "--epochs", "20", "--warmup-steps", "10")["warnings"]   # decay epochs 30, 60, 80
    assert late == [f"decays at update(s) {[round(e * 1437 / 64) for e in (30, 60, 80)]} never happen: the run ends "
                    f"after {round(20 * 1437 / 64)} updates"]
    assert _dry_run(capsys, "--warmup-steps", "10")["warnings"] == []


def test_run_header_prints_the_same_warnings(tmp_path):
    from bit_keras.train.loop import run_warnings, train

    config = _config(tmp_path, "warned", max_steps=0, eval_split="none", options={"ema": 0.999})
    lines = []
    train(config, source=_arrays()[1], log=lines.append)
    plan = config.schedule.plan(48)
    expected = run_warnings(plan, config.options)
    assert len(expected) == 2 and "never happen" in expected[0]
    assert "EMA decay 0.999 averages over about 1000 updates" in expected[1]
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {w}" for w in expected]


def test_dry_run_reports_the_split_the_run_would_score(tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    for split in ("train", "validation"):
        for label in ("a", "b"):
            os.makedirs(tmp_path / "data" / split / label)
            image = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8))
            tf.io.write_file(str(tmp_path / "data" / split / label / "x.png"), image)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _dry_run(capsys, "--dataset", "folder:~/data")["eval_split"] == "validation"
    # A tfds dataset not prepared yet: its splits are known only once it is; the dry run says so, not null.
    plan = _dry_run(capsys, "--dataset", "tfds:imagenet2012", "--data-dir", str(tmp_path / "tfds"),
                    "--train-size", "1281167")
    assert plan["eval_split"] == "auto" and "'validation' split, else its 'test'" in plan["eval_split_note"]
    assert plan["eval_every"] == 1000


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_eval_split_is_named_as_eval_split(tmp_path, dry_run):
    done = subprocess.run([sys.executable, "-m", "bit_keras", "train", "--dataset", "digits", "--variant", "r1-1-1-1x1",
                           "--model-dir", str(tmp_path / "run"), "--eval-split", "tset", "--strategy", "default",
                           *(["--dry-run"] if dry_run else [])],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    lines = [line for line in done.stderr.splitlines() if not re.match(r"[IWE]\d{4} |WARNING: All log", line)]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]  # TensorFlow's C++ start-up lines aside
    assert "Received: --eval-split 'tset'" in lines[0] and "--split" not in lines[0].replace("--eval-split", "")
    assert not os.path.exists(tmp_path / "run" / "run.json")


def test_data_is_checked_before_the_strategy_is_made(tmp_path, monkeypatch):
    from bit_keras.errors import ConfigError, MissingFileError
    from bit_keras import distribute
    from bit_keras.train.loop import train

    def no_strategy(*args, **kwargs):
        raise AssertionError("the strategy was made before the data was checked")

    monkeypatch.setattr(distribute, "make_strategy", no_strategy)
    config = _config(tmp_path, "run")
    for spec, error, message in (("folder:" + str(tmp_path / "none"), MissingFileError, "--dataset"),
                                 ("nope:x", ConfigError, "Unknown dataset spec 'nope:x'"),
                                 ("tfds:no_such_dataset_here", ConfigError, "tensorflow-datasets cannot build")):
        config.dataset = spec
        with pytest.raises(error, match=message):
            train(config)
    # A prepared tfds dataset (tfds' own 20-example test builder) tells its split names without reading data.
    import tensorflow_datasets.testing as tfds_testing

    tfds_testing.DummyMnist(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    config.dataset, config.data_dir, config.eval_split = "tfds:dummy_mnist", str(tmp_path / "tfds"), "validation"
    with pytest.raises(ConfigError, match=r"bad split 'validation'.*\(eval_split='validation'\)"):
        train(config)
    config.split, config.eval_split = "trian", "auto"
    with pytest.raises(ConfigError, match="bad split 'trian'"):
        train(config)
    assert not os.path.exists(tmp_path / "run" / "run.json")


# ------------------------------------------------------------------ label smoothing

@pytest.mark.parametrize("multi_label", [False, True])
def test_label_smoothing_changes_the_loss_as_the_formula_says(tmp_path, multi_label):
    import tensorflow as tf

    from bit_keras.train.input import upstream_dataset
    from bit_keras.train.loop import train

    (images, labels), source = _arrays()
    init = str(tmp_path / "init.npz")
    params = reference.write_checkpoint(init, UNITS, 1, num_classes=10, seed=1)
    epsilon = 0.3
    (held_images, held_labels), held_out = _arrays(12, seed=3)   # 12 examples: a padded last batch of 4
    result = train(_config(tmp_path, "smooth", max_steps=1, init_weights=init, multi_label=multi_label,
                           options={"label_smoothing": epsilon}),
                   source=source, eval_source=held_out, log=lambda line: None)

    tf.random.set_seed(None)
    from bit_keras.data import from_arrays

    ds, _ = from_arrays(images, labels, num_classes=10)
    batch, targets = next(iter(upstream_dataset(ds, num_classes=10, train_size=48, image_size=SIZE, batch_size=8,
                                                seed=0, shuffle_buffer=64)))
    _, logits = reference.forward(params, batch.numpy())
    y = targets.numpy()
    if multi_label:
        smoothed = y * (1 - epsilon) + epsilon / 2
        expected = (np.maximum(logits, 0) - logits * smoothed + np.log1p(np.exp(-np.abs(logits)))).sum(axis=1).mean()
    else:
        smoothed = y * (1 - epsilon) + epsilon / 10
        log_softmax = logits - logits.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        expected = -(smoothed * log_softmax).sum(axis=1).mean()
    assert result.history[0][1] == pytest.approx(expected, rel=1e-4)

    # The evaluation at the end, recounted from the exported weights (one label each: precision@1 = top-1).
    top1, top5 = _numpy_counts(dict(np.load(result.final_weights)), held_images, held_labels)
    final = result.evaluations[-1]
    assert final["examples"] == 12 and final["step"] == 1
    if multi_label:
        assert set(final) & {"top1", "top5"} == set() and final["precision_at_1"] == pytest.approx(top1 / 12)
    else:
        assert final["top1"] == pytest.approx(top1 / 12) and final["top5"] == pytest.approx(top5 / 12)


# ------------------------------------------------------------------ held-out evaluation, distributed

EVAL_SCRIPT = r"""
import json, sys
from bit_keras.distribute import split_cpu
split_cpu(2)
from bit_keras.data import load_source
from bit_keras.train.loop import TrainConfig, train
from bit_keras.train.recipes import TrainingOptions
from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES
from bit_keras.distribute import make_strategy

tmp = sys.argv[1]
schedule = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=16, warmup_steps=2, epochs=6 * 8 / 200,
                                      base_learning_rate=0.3)
# 50 held-out examples at a global batch of 8 (4 per replica): the last batch has 2.
config = TrainConfig(model_dir=tmp + "/run", dataset="digits", split="train[:200]", schedule=schedule,
                     block_units=(1, 1, 1, 1), width=1, shuffle_buffer=64, log_every=1, eval_split="test[:50]",
                     eval_every=3, options=TrainingOptions(ema=0.6))
result = train(config, strategy=make_strategy("mirrored"), log=print)
print("RESULT " + json.dumps({"evaluations": result.evaluations, "final": result.final_weights}))
"""


def test_evaluation_counts_every_example_once_over_two_replicas_with_the_ema_weights(tmp_path):
    done = subprocess.run([sys.executable, "-c", EVAL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    evaluations = out["evaluations"]
    assert [e["step"] for e in evaluations] == [3, 6]
    last = evaluations[-1]
    assert last["examples"] == 50 and last["split"] == "test[:50]" and last["weights"] == "ema"

    from bit_keras.data import load_source

    ds, _ = load_source("digits", "test[:50]")
    images, labels = (np.stack(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    top1, top5 = _numpy_counts(dict(np.load(out["final"])), images, labels)
    assert last["top1"] == pytest.approx(top1 / 50, abs=1e-9) and last["top5"] == pytest.approx(top5 / 50, abs=1e-9)
    assert "eval step 6 test[:50]: top-1" in done.stdout and "with the EMA weights" in done.stdout

    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["summary"]["eval"] == last
    scalars = read_scalars(tmp_path / "run" / "eval")
    assert set(scalars["top1"]) == {3, 6} and scalars["top1"][6] == pytest.approx(top1 / 50, abs=1e-6)


# ------------------------------------------------------------------ evaluation resumes with the run

def _cli(model_dir, *extra):
    return [sys.executable, "-m", "bit_keras", "train", "--variant", "r1-1-1-1x1", "--dataset", "digits",
            "--split", "train[:160]", "--eval-split", "test[:20]", "--model-dir", str(model_dir), "--batch", "8",
            "--resolution", "16", "--epochs", "0.5", "--warmup-steps", "2", "--log-every", "5",
            "--checkpoint-every", "2", "--eval-every", "4", "--shuffle-buffer", "50", "--strategy", "default", *extra]


def test_evaluation_continues_in_a_resumed_run(tmp_path):
    first = subprocess.run(_cli(tmp_path, "--max-steps", "6"), capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "eval step 4 test[:20]" in first.stdout and "eval step 6 test[:20]" in first.stdout
    assert json.loads((tmp_path / "run.json").read_text())["summary"]["eval"]["step"] == 6
    second = subprocess.run(_cli(tmp_path), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resuming from ckpt-6 at step 6" in second.stdout
    assert [int(s) for s in re.findall(r"^eval step (\d+) ", second.stdout, re.M)] == [8, 10]
    summary = json.loads((tmp_path / "run.json").read_text())["summary"]["eval"]
    assert summary["step"] == 10 and summary["examples"] == 20
    assert set(read_scalars(tmp_path / "eval")["top1"]) == {4, 6, 8, 10}
    # A resumed run must match: another --eval-every is a different run.
    third = subprocess.run(_cli(tmp_path, "--eval-every", "3"), capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=300)
    assert third.returncode != 0 and "eval_every: 4 -> 3" in third.stderr


# ------------------------------------------------------------------ EMA

def _restore(path, ema):
    """Raw weights and EMA variables of a checkpoint, through the same network and optimizer."""
    import keras
    import tensorflow as tf

    import bit_keras

    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, 1), 10)
    model(np.zeros((1, SIZE, SIZE, 3), np.float32))
    from bit_keras.learning_rates import WarmupStepDecay

    # A schedule, as in training: the optimizer then holds no learning-rate variable.
    optimizer = keras.optimizers.SGD(WarmupStepDecay(0.1, 0, []), momentum=0.9, use_ema=True, ema_momentum=ema)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(path).expect_partial()
    return ([v.numpy() for v in model.trainable_variables],
            [v.numpy() for v in optimizer._model_variables_moving_average])


def test_exported_weights_are_the_ema_replayed_from_the_raw_weights(tmp_path):
    import bit_keras
    from bit_keras.train.loop import train

    _, source = _arrays()
    _, eval_source = _arrays(20, seed=5)
    decay, steps = 0.6, 4
    config = _config(tmp_path, "ema", max_steps=steps, checkpoint_every=1, keep_checkpoints=10, base_lr=0.5,
                     options={"ema": decay}, eval_every=1)
    result = train(config, source=source, eval_source=eval_source, log=lambda line: None)
    assert [e["weights"] for e in result.evaluations] == ["ema"] * steps

    raw = [_restore(str(tmp_path / "ema" / "checkpoints" / f"ckpt-{k}"), decay)[0] for k in range(1, steps + 1)]
    average = raw[0]                                   # Keras copies the weights at the first update
    for weights in raw[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]

    model = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, 1), 10)
    bit_keras.load_weights(model, result.final_weights)
    exported = [v.numpy() for v in model.trainable_variables]
    _, optimizer_average = _restore(str(tmp_path / "ema" / "checkpoints" / f"ckpt-{steps}"), decay)
    for got, expected, kept, last in zip(exported, average, optimizer_average, raw[-1]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, kept, rtol=1e-6, atol=1e-7)
    assert max(float(np.abs(a - b).max()) for a, b in zip(exported, raw[-1])) > 1e-4   # not the raw weights

    # Evaluating (and so swapping the averages in and out) leaves training untouched.
    quiet = train(_config(tmp_path, "ema_no_eval", max_steps=steps, base_lr=0.5, options={"ema": decay}),
                  source=_arrays()[1], log=lambda line: None)
    assert quiet.evaluations == []
    again = np.load(quiet.final_weights)
    for key, value in np.load(result.final_weights).items():
        np.testing.assert_allclose(again[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


# ------------------------------------------------------------------ BatchNorm statistics in the custom loop

def test_batchnorm_moving_statistics_update_in_the_loop_and_are_checkpointed(tmp_path):
    import keras
    import tensorflow as tf

    import bit_keras
    from bit_keras.data import from_arrays
    from bit_keras.train.input import upstream_dataset
    from bit_keras.train.loop import train

    (images, labels), source = _arrays()
    result = train(_config(tmp_path, "bn", max_steps=1, options={"normalization": "batch"}, eval_split="none"),
                   source=source, log=lambda line: None)

    # The same initial network (the loop seeds Keras the same way) and the first batch, rebuilt here.
    keras.utils.set_random_seed(0)
    tf.random.set_seed(None)
    fresh = bit_keras.BiTImageClassifier(bit_keras.BiTBackbone(UNITS, 1, normalization="batch"), 10)
    ds, _ = from_arrays(images, labels, num_classes=10)
    batch, _ = next(iter(upstream_dataset(ds, num_classes=10, train_size=48, image_size=SIZE, batch_size=8,
                                          seed=0, shuffle_buffer=64)))
    norms = [layer for layer in fresh.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    first = norms[0]
    inputs = keras.Model(fresh.backbone.input, first.input)(batch).numpy()
    trained = result.model.backbone.get_layer(first.name)
    momentum = first.momentum
    np.testing.assert_allclose(trained.moving_mean.numpy(), (1 - momentum) * inputs.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trained.moving_variance.numpy(),
                               momentum + (1 - momentum) * inputs.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)

    # The checkpoint keeps them.
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "bn" / "checkpoints" / "ckpt-1")).expect_partial()
    np.testing.assert_array_equal(fresh.backbone.get_layer(first.name).moving_mean.numpy(),
                                  trained.moving_mean.numpy())


def test_a_run_recorded_before_these_options_resumes_with_the_defaults_only(tmp_path):
    from bit_keras.train.loop import train

    _, source = _arrays(16)
    train(_config(tmp_path, "old", max_steps=0), source=source, log=lambda line: None)
    path = tmp_path / "old" / "run.json"
    record = json.loads(path.read_text())
    for key in ("training", "eval_split", "eval_every"):   # what an older bit_keras wrote
        del record[key]
    del record["plan"]["lr_schedule"]
    path.write_text(json.dumps(record))
    train(_config(tmp_path, "old", max_steps=0), source=source, eval_source=_arrays(8)[1], log=lambda line: None)
    assert json.loads(path.read_text())["training"]["ema"] is None     # the full record from now on
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"training\.ema: null -> 0\.9; .*Repeat the original command"):
        train(_config(tmp_path, "old", max_steps=0, options={"ema": 0.9}), source=source, log=lambda line: None)


def test_randaugment_in_the_input_pipeline():
    import tensorflow as tf

    from bit_keras.train.input import randaugment, upstream_dataset

    layer = randaugment(2, 15)
    assert layer.num_ops == 2 and tuple(layer.factor) == pytest.approx((0.0, 0.5))   # magnitude / 30
    tf.random.set_seed(None)
    (images, labels), (ds, _) = _arrays(16)
    common = dict(num_classes=10, train_size=16, image_size=SIZE, batch_size=16, seed=0, shuffle_buffer=16)
    plain, targets = next(iter(upstream_dataset(ds, **common)))
    augmented, same_targets = next(iter(upstream_dataset(ds, augment=(2, 15), **common)))
    np.testing.assert_array_equal(targets.numpy(), same_targets.numpy())
    assert augmented.shape == plain.shape and augmented.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(augmented)) and float(tf.reduce_max(augmented)) <= 1.0
    changed = np.abs(augmented.numpy() - plain.numpy()).reshape(16, -1).max(axis=1) > 1e-3
    assert changed.sum() >= 8   # most images get at least one visible operation
