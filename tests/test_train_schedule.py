"""Upstream schedules, strategy selection and the `train` flags: pure Python or mocks, fast.

Expected numbers are worked out here from the paper , not read
back from the code under test.
"""

import types

import pytest

from bit_keras.learning_rates import learning_rate
from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES, resolve_schedule
from bit_keras.distribute import choose_strategy_name, per_replica_batch

IMAGENET = 1_281_167
PEAK_4096 = 0.03 * 4096 / 256  # 0.48


@pytest.mark.parametrize("name, train_size, epochs, decays", [
    ("bit-s", IMAGENET, 90, (30, 60, 80)),           # ILSVRC-2012
    ("bit-m", 14_197_122, 90, (30, 60, 80)),         # ImageNet-21k
    ("bit-l", 300_000_000, 40, (10, 23, 30, 37)),    # JFT-300M
])
def test_paper_schedules_at_warmup_and_every_decay(name, train_size, epochs, decays):
    # The plan's numbers; the learning rate they give at every step is test_schedules.py's.
    plan = UPSTREAM_SCHEDULES[name].plan(train_size)
    per_epoch = train_size / 4096
    assert plan.total_steps == round(epochs * per_epoch)
    assert (plan.learning_rate_peak, plan.warmup_steps) == (pytest.approx(PEAK_4096), 5000)
    assert plan.decay_steps == tuple(round(epoch * per_epoch) for epoch in decays)
    assert UPSTREAM_SCHEDULES[name].momentum == 0.9 and UPSTREAM_SCHEDULES[name].weight_decay == 1e-4
    assert UPSTREAM_SCHEDULES[name].batch_size == 4096 and UPSTREAM_SCHEDULES[name].image_size == 224
    assert UPSTREAM_SCHEDULES[name].multi_label == (name != "bit-s")


def test_bit_s_on_imagenet_in_numbers():
    plan = UPSTREAM_SCHEDULES["bit-s"].plan(IMAGENET)
    # 1281167 / 4096 = 312.785 updates per epoch: x30 = 9383.6, x60 = 18767.1, x80 = 25022.8, x90 = 28151.2.
    assert plan.decay_steps == (9384, 18767, 25023)
    assert plan.total_steps == 28151


def test_other_batches_follow_the_linear_scaling_rule():
    plan = UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=1024).plan(IMAGENET)
    assert plan.learning_rate_peak == pytest.approx(0.12)
    assert plan.decay_steps[0] == round(30 * IMAGENET / 1024)


def test_overrides_and_bad_values():
    custom = UPSTREAM_SCHEDULES["bit-l"].replace(epochs=4, decay_epochs=(1, 2), warmup_steps=0, base_learning_rate=0.1,
                                        momentum=None)
    assert custom.momentum == 0.9 and custom.decay_epochs == (1.0, 2.0)
    plan = custom.plan(100_000)
    assert plan.learning_rate(0) == pytest.approx(0.1 * 4096 / 256)          # no warm-up
    with pytest.raises(ValueError, match="increasing"):
        UPSTREAM_SCHEDULES["bit-s"].replace(decay_epochs=(60, 30))
    with pytest.raises(ValueError, match="momentum"):
        UPSTREAM_SCHEDULES["bit-s"].replace(momentum=1.5)
    with pytest.raises(ValueError, match="Unknown schedule"):
        resolve_schedule("bit-x")
    assert resolve_schedule("L") is UPSTREAM_SCHEDULES["bit-l"]


def test_warmup_and_decay_compose_when_warmup_outlasts_a_boundary():
    assert learning_rate(9, 1.0, 20, (5,)) == pytest.approx(0.5 * 0.1)


def test_global_batch_must_divide_over_replicas():
    assert per_replica_batch(4096, 512) == 8           # the paper: 8 images per TPU v3 core
    assert per_replica_batch(16, 2) == 8
    with pytest.raises(ValueError, match="does not divide over 3 replicas.*multiple of 3"):
        per_replica_batch(16, 3)
    with pytest.raises(ValueError, match="positive"):
        per_replica_batch(0, 1)


def test_strategy_selection():
    assert choose_strategy_name("auto", None, num_gpus=0) == "default"
    assert choose_strategy_name("auto", None, num_gpus=4) == "mirrored"
    assert choose_strategy_name("auto", "my-tpu") == "tpu"
    assert choose_strategy_name("tpu") == "tpu"
    assert choose_strategy_name("mirrored", num_gpus=0) == "mirrored"
    with pytest.raises(ValueError, match="drop one"):
        choose_strategy_name("mirrored", "my-tpu")
    with pytest.raises(ValueError, match="Unknown strategy"):
        choose_strategy_name("horovod")


def test_tpu_strategy_with_a_mock_resolver(monkeypatch):
    """No TPU here: TensorFlow's TPU calls are stubbed, to check what reaches them (the address, which resolver)
    and that an unreachable TPU is one line naming --tpu local. Real strategies on 2 logical CPUs run in
    test_distributed.py."""
    import tensorflow as tf

    from bit_keras import distribute as strategy_module

    resolvers, connected, initialised = [], [], []

    class FakeResolver:
        def __init__(self, tpu):
            self.tpu = tpu
            resolvers.append(self)

    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", connected.append)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", initialised.append)
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: types.SimpleNamespace(resolver=r))
    made = strategy_module.make_strategy("auto", "grpc://10.0.0.2:8470", resolver_factory=FakeResolver)
    # An address means a TPU: its resolver is connected to (a remote TPU node) and initialised.
    assert [r.tpu for r in resolvers] == ["grpc://10.0.0.2:8470"] and made.resolver is resolvers[0]
    assert connected == initialised == [resolvers[0]]
    made = strategy_module.make_strategy("tpu", None, resolver_factory=FakeResolver)
    # A TPU VM's own chips: "local", initialised but not connected to as a remote cluster.
    assert resolvers[1].tpu == "local" and made.resolver is resolvers[1]
    assert connected == [resolvers[0]] and initialised == resolvers

    def unreachable(tpu):
        raise ValueError("Could not lookup TPU metadata from name 'nope'")

    with pytest.raises(RuntimeError, match="Cannot reach a TPU at 'nope'.*--tpu local"):
        strategy_module.make_strategy("tpu", "nope", resolver_factory=unreachable)


def _parse(*argv):
    from bit_keras.cli.main import build_parser

    return build_parser().parse_args(["train", *argv])


def test_cli_flags_override_every_schedule_number():
    from bit_keras.cli.train import build_config

    config = build_config(_parse("--variant", "r101x3", "--dataset", "digits", "--model-dir", "gs://b/run",
                                 "--schedule", "bit-m", "--batch", "1024", "--base-lr", "0.1", "--warmup-steps", "100",
                                 "--epochs", "9", "--decay-epochs", "3,6,8", "--weight-decay", "5e-5",
                                 "--momentum", "0.8", "--single-label", "--checkpoint-every", "50", "--keep", "2",
                                 "--tpu", "local", "--precision", "bfloat16", "--jit"))
    s = config.schedule
    assert (s.batch_size, s.base_learning_rate, s.warmup_steps, s.epochs) == (1024, 0.1, 100, 9)
    assert (s.decay_epochs, s.weight_decay, s.momentum, s.multi_label) == ((3, 6, 8), 5e-5, 0.8, False)
    assert (config.block_units, config.width) == ((3, 4, 23, 3), 3)
    assert (config.checkpoint_every, config.keep_checkpoints, config.tpu, config.precision, config.jit_compile) == \
        (50, 2, "local", "bfloat16", True)
    default = build_config(_parse("--dataset", "digits", "--model-dir", "d", "--schedule", "bit-l"))
    assert default.schedule == UPSTREAM_SCHEDULES["bit-l"] and default.schedule.multi_label
    tiny = build_config(_parse("--dataset", "digits", "--model-dir", "d", "--variant", "r1-1-1-1x1"))
    assert (tiny.block_units, tiny.width) == ((1, 1, 1, 1), 1)


def test_cli_errors_are_one_line(capsys):
    from bit_keras.cli.main import _main

    code = _main(_parse("--dataset", "digits", "--model-dir", "d", "--schedule", "bit-q"))
    assert code == 2 and "Unknown schedule 'bit-q'" in capsys.readouterr().err
