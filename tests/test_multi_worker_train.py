"""`bit_keras train` as two workers over 127.0.0.1 equals one device at the same global batch; only the chief writes."""

import os

import numpy as np

from bit_keras.cli import main as cli_main
from tests.scaleout import finish, workers

TRAIN = ["--variant", "r1-1-1-1x1", "--dataset", "digits", "--batch", "8", "--resolution", "16",
         "--epochs", str(4 * 8 / 1437), "--warmup-steps", "1", "--decay-epochs", str(2 * 8 / 1437),
         "--checkpoint-every", "2", "--log-every", "1", "--shuffle-buffer", "64"]


def _train_losses(text):
    return [float(line.split(" loss ")[1].split()[0]) for line in text.splitlines() if line.startswith("step ")]


def test_two_workers_train_like_one_device_and_only_the_chief_writes(tmp_path, capsys):
    processes = workers(["train", "--model-dir", str(tmp_path / "two"), *TRAIN, "--strategy", "multi_worker"])
    # Meanwhile the reference, in this process on one device (the same seeded initial weights and data).
    args = cli_main.build_parser().parse_args(["train", "--model-dir", str(tmp_path / "one"), *TRAIN,
                                               "--strategy", "default"])
    assert cli_main._main(args) == 0
    single = capsys.readouterr().out
    codes, outputs = finish(processes)
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "MultiWorkerMirroredStrategy, 2 replica(s): global batch 8 = 4 per replica" in outputs[0]
    losses = _train_losses(outputs[0])
    assert len(losses) == 4 and len(set(losses)) > 1
    np.testing.assert_allclose(losses, _train_losses(single), rtol=1e-4)
    one, two = np.load(tmp_path / "one" / "bit_final.npz"), np.load(tmp_path / "two" / "bit_final.npz")
    assert sorted(one.files) == sorted(two.files)
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert "wrote" not in outputs[1]   # the other worker wrote nothing that stays
    assert len(os.listdir(tmp_path / "two" / "train")) == 1
