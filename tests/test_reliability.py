"""Runs and exports under mistakes and accidents: --overwrite that destroys nothing it should not,
locks against a second writer, leftovers of killed processes, NaN losses and flag values,
a full disk, corrupt files, and checkpoints that outlive every window a kill could hit."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import bit_keras
from bit_keras import files, runs
from bit_keras.cli import main as cli_main
from bit_keras.errors import CheckpointError, DivergedError, InUseError, TargetExistsError
from bit_keras.export.metadata import check_export_target
from bit_keras.resume import latest_updates, list_checkpoints
from tests import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = (1, 1, 1, 1)


def _cli(capsys, *argv):
    """(exit status, stderr) of `bit_keras ...` run in this process."""
    capsys.readouterr()
    status = cli_main._main(cli_main.build_parser().parse_args(list(argv)))
    return status, capsys.readouterr().err.strip()


def _one_line(err, *fragments):
    assert len(err.splitlines()) == 1 and err.startswith("bit_keras "), err
    for fragment in fragments:
        assert fragment in err, err


# ------------------------------------------------------------------ what --overwrite may replace

def test_overwrite_replaces_only_an_earlier_export_or_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    with pytest.raises(TargetExistsError, match=r"holds notes.txt, src, not an earlier bit_keras export"):
        check_export_target(work, overwrite=True)
    for protected in (".", tmp_path.parent, "/", os.path.expanduser("~")):
        with pytest.raises(TargetExistsError, match="current folder or a folder above it"):
            check_export_target(protected, overwrite=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "export" / "assets").mkdir(parents=True)
    (tmp_path / "export" / "assets" / "bit_keras.json").write_text("{}")
    (tmp_path / "model.keras").write_text("zip")
    for ours in ("empty", "export", "model.keras"):
        check_export_target(tmp_path / ours, overwrite=True)
    with pytest.raises(TargetExistsError, match="is a file, not an earlier bit_keras export"):
        check_export_target(work / "notes.txt", overwrite=True)
    assert (work / "notes.txt").read_text() == "mine"


def test_export_overwrite_of_the_current_folder_is_refused(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "tiny.npz"
    reference.write_checkpoint(checkpoint, UNITS, 1, None, seed=1)
    monkeypatch.chdir(tmp_path)
    status, err = _cli(capsys, "export", "--weights", str(checkpoint), "--output", ".", "--overwrite")
    assert status == 2
    _one_line(err, "Refusing to replace", "current folder")
    assert sorted(os.listdir(tmp_path)) == ["tiny.npz"]


# ------------------------------------------------------------------ locks and leftovers

LOCK_SCRIPT = "import sys; from bit_keras import files\nwith files.locked(sys.argv[1]): print('locked')"


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path):
    target = tmp_path / "run"
    with files.locked(target):
        assert (tmp_path / ".run.lock").read_text().strip() == str(os.getpid())
        other = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(target)], capture_output=True, text=True,
                               cwd=ROOT, timeout=60)
        assert other.returncode == 1 and f"in use by another bit_keras process (PID {os.getpid()}" in other.stderr
        with pytest.raises(InUseError):  # a second open in this process conflicts too
            with files.locked(target):
                pass
    assert os.listdir(tmp_path) == []  # released: the lock file goes
    assert subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(target)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60).stdout == "locked\n"


def test_leftovers_of_a_killed_writer_go_with_the_next_lock_of_the_same_target(tmp_path):
    for name in (".run.abcd1234.partial", ".run.abcd1234.old", ".run.k9_x2yz0.partial.keras",  # of "run"
                 ".run.x.abcd1234.partial", ".runs.abcd1234.partial", ".run.abcd1234.partial.x.y"):  # not of "run"
        (tmp_path / name).mkdir()
    (tmp_path / ".run.lock").write_text("12345\n")  # left by a process that was killed: no one holds it
    with files.locked(tmp_path / "run"):
        assert sorted(os.listdir(tmp_path)) == [".run.abcd1234.partial.x.y", ".run.lock", ".run.x.abcd1234.partial",
                                                ".runs.abcd1234.partial"]


def test_runs_hold_the_lock_and_refuse_a_file_for_a_directory(tmp_path, capsys):
    from bit_keras.finetune.runner import finetune

    with files.locked(tmp_path / "busy"):
        status, err = _cli(capsys, "finetune", "--variant", "r14x1", "--dataset", "digits", "--output",
                           str(tmp_path / "busy"), "--steps", "1", "--batch", "8", "--resolution", "16")
        assert status == 2
        _one_line(err, f"in use by another bit_keras process (PID {os.getpid()}")
        with pytest.raises(InUseError):
            finetune("r14x1", dataset="digits", output=tmp_path / "busy", steps=1, batch_size=8, verbose=0)
    assert not (tmp_path / "busy").exists()

    (tmp_path / "a_file").write_text("x")
    status, err = _cli(capsys, "train", "--dataset", "digits", "--model-dir", str(tmp_path / "a_file"),
                       "--variant", "r14x1", "--batch", "8", "--resolution", "32", "--epochs", "0.01")
    assert status == 2
    _one_line(err, "a_file is a file, not a run directory")


def test_train_refuses_a_file_model_dir_before_touching_anything(tmp_path):
    from bit_keras.train.loop import train

    class Untouchable:
        @property
        def num_replicas_in_sync(self):
            raise AssertionError("the strategy was used before the model dir was checked")

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        train(_config(tmp_path / "file"), strategy=Untouchable(), source=_source())


# ------------------------------------------------------------------ upstream training

def _config(model_dir, **schedule):
    from bit_keras.train.loop import TrainConfig
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    max_steps = schedule.pop("max_steps", 0)
    init_weights = schedule.pop("init_weights", None)
    return TrainConfig(model_dir=str(model_dir), dataset="arrays", block_units=UNITS, width=1, log_every=1,
                       checkpoint_every=2, max_steps=max_steps, init_weights=init_weights,
                       schedule=UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=32, **schedule))


def _source():
    from bit_keras.data import from_arrays

    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), np.arange(16) % 4)


def test_train_resume_refuses_each_schedule_change_by_name(tmp_path):
    import types

    from bit_keras.train.loop import train

    train(_config(tmp_path), source=_source(), log=lambda line: None)
    recorded = (tmp_path / "run.json").read_text()
    fake = types.SimpleNamespace(num_replicas_in_sync=1)
    for change, named in [({"epochs": 45}, "plan.epochs: 90 -> 45"),
                          ({"base_learning_rate": 0.1}, "plan.base_learning_rate: 0.03 -> 0.1"),
                          ({"momentum": 0.8}, "plan.momentum: 0.9 -> 0.8"),
                          ({"weight_decay": 0.001}, "plan.weight_decay: 0.0001 -> 0.001"),
                          ({"decay_epochs": (10, 20)}, "plan.decay_epochs: [30.0, 60.0, 80.0] -> [10.0, 20.0]")]:
        with pytest.raises(ValueError, match="different run") as error:
            train(_config(tmp_path, **change), strategy=fake, source=_source())
        assert named in str(error.value), str(error.value)
    assert (tmp_path / "run.json").read_text() == recorded


def test_a_network_that_fails_to_build_leaves_no_run_record(tmp_path):
    from bit_keras.train.loop import train

    weights = tmp_path / "r14.npz"
    reference.write_checkpoint(weights, UNITS, 1, num_classes=4, seed=1)
    config = _config(tmp_path / "run", init_weights=str(weights))
    config.block_units = (1, 1, 1, 2)  # a typo: the weights have one unit fewer
    with pytest.raises(CheckpointError, match="missing key"):
        train(config, source=_source(), log=lambda line: None)
    assert not (tmp_path / "run" / "run.json").exists()
    # So fixing the mistake is not refused as "a different run".
    train(_config(tmp_path / "run", init_weights=str(weights)), source=_source(), log=lambda line: None)
    assert runs.read_run(tmp_path / "run")["block_units"] == list(UNITS)


def test_a_nan_loss_stops_training_before_anything_is_saved_from_it(tmp_path):
    from bit_keras.train.loop import FINAL_WEIGHTS, train

    config = _config(tmp_path, base_learning_rate=1e30, warmup_steps=1, max_steps=8)
    with pytest.raises(DivergedError, match=r"The loss became nan by update 3"):
        train(config, source=_source(), log=lambda line: None)
    assert not (tmp_path / FINAL_WEIGHTS).exists()
    saved = sorted(f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".index"))
    assert saved == ["ckpt-2.index"]  # the last finite state; none from the diverged updates


def test_json_files_stay_strict():
    with pytest.raises(ValueError, match="JSON compliant"):
        files.write_json("/nonexistent/never.json", {"loss": float("nan")})


# ------------------------------------------------------------------ fine-tuning

def _backbone():
    return bit_keras.BiTBackbone(UNITS, width=1, name="tiny")


OPTIONS = dict(dataset="digits", batch_size=16, resolution=16, base_learning_rate=0.02, eval_split="test[:32]",
               verbose=0)


TRAIN = ["train", "--variant", "r14x1", "--dataset", "digits", "--model-dir", "{dir}", "--batch", "8",
         "--resolution", "32", "--epochs", "0.01", "--warmup-steps", "1", "--strategy", "default"]
FINETUNE = ["finetune", "--variant", "r14x1", "--dataset", "digits", "--output", "{dir}", "--batch", "8",
            "--steps", "2", "--resolution", "16", "--eval-split", "none", "--quiet"]


@pytest.mark.parametrize("command, flags, message", [
    (TRAIN, ["--base-lr", "inf"], "base_learning_rate must be finite"),
    (TRAIN, ["--epochs", "nan"], "--epochs nan"),
    (TRAIN, ["--weight-decay", "nan"], "--weight-decay nan"),
    (TRAIN, ["--decay-epochs", "1,nan"], "decay_epochs must be finite"),
    (FINETUNE, ["--learning-rate", "nan"], "base_learning_rate must be a positive finite number"),
    (FINETUNE, ["--learning-rate", "inf"], "base_learning_rate must be a positive finite number"),
    (FINETUNE, ["--eval-every", "0"], "--eval-every 0"),
    (FINETUNE, ["--eval-every", "-2"], "--eval-every -2"),
    (FINETUNE, ["--examples-per-class", "0"], "--examples-per-class 0"),
    (FINETUNE, ["--examples-per-class", "-1"], "--examples-per-class -1"),
    (FINETUNE, ["--micro-batch", "0"], "micro_batch_size must be a positive integer"),
], ids=lambda value: value[0] if isinstance(value, list) and len(value) > 2 else None)
def test_nonsense_values_are_refused_before_anything_is_created(tmp_path, capsys, command, flags, message):
    status, err = _cli(capsys, *[arg.format(dir=tmp_path / "run") for arg in command], *flags)
    assert status == 2
    _one_line(err, message)
    assert os.listdir(tmp_path) == []


class _Poison(keras.callbacks.Callback):
    """Sets the head's kernel to NaN before update `update` (0-based), as a diverging run would."""

    def __init__(self, update):
        super().__init__()
        self.update = update

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.update:
            kernel = self.model.get_layer("head-conv2d").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_nan_loss_stops_fine_tuning_and_keeps_the_last_good_checkpoint(tmp_path):
    from bit_keras.finetune.runner import finetune

    with pytest.raises(DivergedError, match="The loss became nan by update 3"):
        finetune(_backbone(), output=tmp_path, steps=6, eval_every=2, callbacks=[_Poison(2)], **OPTIONS)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "model.keras").exists()
    assert [updates for updates, _ in list_checkpoints(tmp_path / "checkpoint")] == [2]  # not after the NaN


class _Start(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.updates = int(self.model.optimizer.iterations)


def test_the_checkpoint_outlives_fit_until_the_final_files_are_written(tmp_path, monkeypatch):
    from bit_keras.export import keras_file
    from bit_keras.finetune.runner import finetune

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras_file, "export_keras", full_disk)
    with pytest.raises(OSError, match="No space left"):
        finetune(_backbone(), output=tmp_path, steps=4, eval_every=2, **OPTIONS)
    assert latest_updates(tmp_path / "checkpoint") == 4 and not (tmp_path / "metrics.json").exists()
    monkeypatch.undo()
    start, lines = _Start(), []
    metrics = finetune(_backbone(), output=tmp_path, steps=4, eval_every=2, callbacks=[start], log=lines.append,
                       **OPTIONS)
    assert start.updates == 4 and metrics["updates"] == 4
    assert any(line.startswith("Resuming from") for line in lines)
    assert not (tmp_path / "checkpoint").exists() and (tmp_path / "model.keras").exists()


class _Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("killed")


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # what a kill or a full disk in the middle of a write leaves


def test_an_unreadable_checkpoint_falls_back_to_the_one_before_and_none_readable_starts_afresh(tmp_path):
    from bit_keras.finetune.runner import finetune

    options = dict(output=tmp_path, steps=6, eval_every=2, **OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        finetune(_backbone(), callbacks=[_Stop()], **options)
    checkpoints = tmp_path / "checkpoint"
    assert [updates for updates, _ in list_checkpoints(checkpoints)] == [4, 2]  # the previous one is kept
    _cut(checkpoints / "update-000000004.weights.h5")
    start, lines = _Start(), []
    with pytest.raises(KeyboardInterrupt):
        finetune(_backbone(), callbacks=[start, _Stop()], log=lines.append, **options)
    assert start.updates == 2
    assert any("update-000000004.weights.h5 cannot be read" in line and "moved to" in line for line in lines), lines
    assert os.listdir(tmp_path / "checkpoint-damaged") == ["update-000000004.weights.h5"]  # kept, not deleted

    for _, path in list_checkpoints(checkpoints):
        _cut(Path(path))
    start, lines = _Start(), []
    metrics = finetune(_backbone(), callbacks=[start], log=lines.append, **options)
    assert start.updates == 0 and metrics["updates"] == 6
    assert sum("starts again from the beginning" in line for line in lines) == 1, lines
    assert len(os.listdir(tmp_path / "checkpoint-damaged")) == 3
    assert not checkpoints.exists()


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from bit_keras.finetune.runner import finetune

    save_weights = keras.Model.save_weights

    def killed_at_update_4(model, filepath, *args, **kwargs):
        if int(model.optimizer.iterations) == 4:
            with open(filepath, "wb") as stream:
                stream.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
            raise KeyboardInterrupt("killed in the middle of the write")
        return save_weights(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", killed_at_update_4)
    with pytest.raises(KeyboardInterrupt):
        finetune(_backbone(), output=tmp_path, steps=6, eval_every=2, **OPTIONS)
    assert os.listdir(tmp_path / "checkpoint") == ["update-000000002.weights.h5"]  # no half-written file in place
    monkeypatch.undo()
    start = _Start()
    assert finetune(_backbone(), output=tmp_path, steps=6, eval_every=2, callbacks=[start], **OPTIONS)["updates"] == 6
    assert start.updates == 2


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes_once_space_is_freed(
        tmp_path, monkeypatch, capsys):
    save_weights = keras.Model.save_weights

    def full_at_update_4(model, filepath, *args, **kwargs):
        if int(model.optimizer.iterations) == 4:
            with open(filepath, "wb") as stream:
                stream.write(b"\0" * 1000)
            raise OSError(28, "No space left on device")
        return save_weights(model, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_at_update_4)
    run = tmp_path / "run"
    argv = [arg.format(dir=run) for arg in FINETUNE] + ["--steps", "6", "--eval-every", "2"]
    status, err = _cli(capsys, *argv)
    assert status == 2
    _one_line(err, "No space left on device while writing", str(run / "checkpoint" / "update-000000004.weights.h5"),
              "needs at least", "MB free", "run the same command again")
    assert [updates for updates, _ in list_checkpoints(run / "checkpoint")] == [2]
    monkeypatch.undo()
    capsys.readouterr()
    status, _ = _cli(capsys, *argv)
    assert status == 0 and json.loads((run / "metrics.json").read_text())["updates"] == 6


def test_overwrite_validates_first_replaces_only_a_run_and_starts_clean(tmp_path, capsys):
    from bit_keras.finetune.runner import finetune
    from tests.tensorboard_events import read_scalars

    run = tmp_path / "run"
    finetune(_backbone(), output=run, steps=4, eval_every=2, **OPTIONS)
    finished = {name: (run / name).read_bytes() for name in ("metrics.json", "model.keras", "run.json")}
    with pytest.raises(Exception, match="nonexistent"):  # a typo in the dataset destroys nothing
        finetune(_backbone(), output=run, steps=2, overwrite=True, **{**OPTIONS, "dataset": "folder:/nonexistent"})
    assert {name: (run / name).read_bytes() for name in finished} == finished

    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    status, err = _cli(capsys, "finetune", "--variant", "r14x1", "--dataset", "digits", "--output",
                       str(tmp_path / "thesis"), "--overwrite", "--steps", "1", "--batch", "8", "--resolution", "16")
    assert status == 2
    _one_line(err, "holds chapter1.tex, not a bit_keras finetune run")
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "years of work"

    finetune(_backbone(), output=run, steps=2, eval_every=1, overwrite=True, **OPTIONS)
    rows = (run / "logs" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1"]  # no rows of the replaced run
    assert sorted(read_scalars(run / "logs" / "train")["loss"]) == [1, 2]  # nor its TensorBoard events
    assert json.loads((run / "metrics.json").read_text())["updates"] == 2
    assert sorted(os.listdir(tmp_path)) == ["run", "thesis"]  # the replaced run is gone, not hidden


# ------------------------------------------------------------------ full disks and corrupt files

DISK_FULL_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from bit_keras.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    main.run(sys.argv[1:])
""")


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(tmp_path):
    checkpoint = tmp_path / "tiny.npz"
    reference.write_checkpoint(checkpoint, UNITS, 1, None, seed=1)
    done = subprocess.run([sys.executable, "-c", DISK_FULL_SCRIPT, "export", "--weights", str(checkpoint),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2, done.stderr[-3000:]
    err = [line for line in done.stderr.splitlines() if line.startswith("bit_keras")]
    assert "Traceback" not in done.stderr and len(err) == 1 and "File too large" in err[0], done.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["tiny.npz"]


def test_a_corrupt_keras_file_is_a_one_line_error(tmp_path, capsys):
    from bit_keras.export import export_keras

    path = export_keras(_backbone(), tmp_path / "tiny.keras")
    data = open(path, "rb").read()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    status, err = _cli(capsys, "finetune", "--variant", str(tmp_path / "cut.keras"), "--dataset", "digits",
                       "--output", str(tmp_path / "run"), "--steps", "1", "--batch", "8", "--resolution", "16")
    assert status == 2
    _one_line(err, "cut.keras is not a readable .keras file")
    assert not (tmp_path / "run").exists()



def test_a_full_disk_in_train_and_export_is_one_line_naming_the_path_and_train_resumes(tmp_path, monkeypatch,
                                                                                      capsys):
    import tensorflow as tf

    save = tf.train.CheckpointManager.save

    def full_at_step_2(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number == 2:
            raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2_temp/part-00000: No space left on device")
        return save(manager, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_at_step_2)
    model_dir = tmp_path / "upstream"
    argv = [arg.format(dir=model_dir) for arg in TRAIN] + ["--epochs", "0.02", "--checkpoint-every", "1"]
    status, err = _cli(capsys, *argv)
    assert status == 2
    _one_line(err, "No space left on device while writing", str(model_dir / "checkpoints"), "needs at least",
              "run the same command again")
    monkeypatch.undo()
    capsys.readouterr()
    status = cli_main._main(cli_main.build_parser().parse_args(argv))
    assert status == 0 and "resuming from ckpt-1 at step 1" in capsys.readouterr().out

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    status, err = _cli(capsys, "export", "--variant", "r14x1", "--random-weights", "--output", str(tmp_path / "export"))
    assert status == 2
    _one_line(err, "No space left on device while writing", str(tmp_path / "export"), "free")
    assert sorted(os.listdir(tmp_path)) == ["upstream"]


def test_train_falls_back_to_the_checkpoint_before_an_unreadable_one_and_keeps_it(tmp_path):
    from bit_keras.train.loop import train

    train(_config(tmp_path, max_steps=4), source=_source(), log=lambda line: None)  # ckpt-2, ckpt-4
    (data,) = (tmp_path / "checkpoints").glob("ckpt-4.data-*")
    _cut(data)
    lines = []
    result = train(_config(tmp_path, max_steps=6), source=_source(), log=lines.append)
    assert result.start_step == 2 and result.step == 6
    assert any("ckpt-4 cannot be read" in line and "checkpoints-damaged" in line for line in lines), lines
    assert sorted(os.listdir(tmp_path / "checkpoints-damaged")) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"]

    for data in (tmp_path / "checkpoints").glob("ckpt-*.data-*"):
        _cut(data)
    with pytest.raises(CheckpointError, match="No checkpoint in .* could be read .* run the same command again"):
        train(_config(tmp_path, max_steps=8), source=_source(), log=lambda line: None)
    assert train(_config(tmp_path, max_steps=8), source=_source(), log=lambda line: None).start_step == 0


def test_a_full_disk_anywhere_else_is_one_line_too(tmp_path, capsys):
    import tensorflow as tf

    args = cli_main.build_parser().parse_args(["finetune", "--variant", "r14x1", "--dataset", "digits",
                                               "--output", str(tmp_path)])
    for error in (tf.errors.UnknownError(None, None, "logs/train/events.out: No space left on device"),
                  OSError(28, "No space left on device", str(tmp_path / "logs" / "metrics.csv"))):
        def handler(_, error=error):
            raise error

        args.handler = handler
        capsys.readouterr()
        assert cli_main._main(args) == 2
        _one_line(capsys.readouterr().err.strip(), "No space left on device while writing", "free now",
                  "run the same command again")
