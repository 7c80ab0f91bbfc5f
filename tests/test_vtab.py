"""VTAB-1k: the 19 tasks as data, VTAB's label functions, the data path on tfds mock data, `bit_keras vtab`."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bit_keras.cli import main as cli_main
from bit_keras.errors import ConfigError
from bit_keras.vtab import BY_NAME, TASKS, select, tasks


def _cli(*argv):
    return cli_main._main(cli_main.build_parser().parse_args(list(argv)))


def _mock(num_examples=1000):
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(num_examples=num_examples)


def test_list_shows_the_19_tasks_by_group(capsys):
    assert _cli("vtab", "--list") == 0
    out = capsys.readouterr().out
    assert "19 tasks: 7 natural, 4 specialized, 8 structured" in out
    assert _cli("vtab", "--list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == [t.name for t in TASKS] and len(rows) == 19
    assert sum(r["classes"] for r in rows if r["task"].startswith("smallnorb")) == 18 + 9
    assert [t.name for t in select("specialized,dmlab")] == [
        "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "dmlab"]
    with pytest.raises(ConfigError, match="Unknown VTAB task 'nope'"):
        select("nope")


def test_splits_follow_vtab():
    assert BY_NAME["cifar100"].splits["train800val200"] == "train[:800]+train[45000:45200]"  # 90% of 50000
    assert BY_NAME["dsprites_location"].splits["test"] == "train[663552:]"                   # 80% + 10% of 737280
    assert BY_NAME["clevr_count"].splits["test"] == "validation"
    assert BY_NAME["smallnorb_azimuth"].splits["val200"] == "test[:200]"
    for task in TASKS:
        assert set(task.splits) == {"train800", "val200", "train800val200", "trainval", "test"}


def test_dry_run_plans_500_steps_without_mixup(capsys):
    assert _cli("vtab", "--dry-run", "--tasks", "cifar100,dmlab", "--json") == 0
    cifar, dmlab = json.loads(capsys.readouterr().out)
    for row in (cifar, dmlab):
        assert row["train_size"] == 1000 and row["hyperrule"]["total_steps"] == 500
        assert row["hyperrule"]["mixup_alpha"] == 0.0 and row["hyperrule"]["batch_size"] == 512
    assert cifar["hyperrule"]["crop"] == 128 and dmlab["hyperrule"]["crop"] == 384


def _label(function, **features):
    """The label of one hand-made example (nested dicts of lists, as tfds gives `objects`)."""
    tensors = lambda d: {k: tensors(v) if isinstance(v, dict) else tf.constant(v) for k, v in d.items()}  # noqa: E731
    return int(function(tensors(features)))


def test_clevr_labels():
    assert _label(tasks.clevr_count, objects={"size": [0, 1, 1]}) == 0       # 3 objects
    assert _label(tasks.clevr_count, objects={"size": [0] * 10}) == 7        # 10 objects
    coords = lambda *depths: {"pixel_coords": [[0.0, 0.0, d] for d in depths]}  # noqa: E731
    assert _label(tasks.clevr_distance, objects=coords(7.9, 12.0)) == 0      # closest below 8
    assert _label(tasks.clevr_distance, objects=coords(8.0, 12.0)) == 0      # edges are strict
    assert _label(tasks.clevr_distance, objects=coords(11.0, 8.2)) == 1
    assert _label(tasks.clevr_distance, objects=coords(9.7)) == 4
    assert _label(tasks.clevr_distance, objects=coords(10.5)) == 5


def test_kitti_closest_vehicle_distance():
    def label(types, depths):
        return _label(tasks.kitti_distance, objects={"type": np.array(types, np.int64),
                                                     "location": [[0.0, 0.0, d] for d in depths]})

    assert label([0, 1], [30.0, 5.0]) == 0      # a van at 5 m
    assert label([2], [12.0]) == 1              # a truck at 12 m
    assert label([0, 3], [25.0, 2.0]) == 2      # the pedestrian (type 3) at 2 m does not count
    assert label([4, 5], [3.0, 4.0]) == 3       # no car, van or truck: "far"


def test_dsprites_and_smallnorb_labels():
    x = lambda v: _label(tasks.dsprites_location, label_x_position=np.int64(v))  # noqa: E731
    o = lambda v: _label(tasks.dsprites_orientation, label_orientation=np.int64(v))  # noqa: E731
    assert [x(0), x(1), x(2), x(31)] == [0, 0, 1, 15]
    assert [o(0), o(2), o(3), o(5), o(39)] == [0, 0, 1, 2, 15]              # 40 -> 16 bins of 2.5
    assert _label(tasks.smallnorb_azimuth, label_azimuth=np.int64(17)) == 17
    assert _label(tasks.smallnorb_elevation, label_elevation=np.int64(8)) == 8


@pytest.mark.parametrize("name", ["dsprites_location", "smallnorb_elevation"])
def test_data_path_on_mock_data(name):
    from bit_keras.vtab.data import load_split, task_data

    task = BY_NAME[name]
    with _mock():
        train, test, info = task_data(name, "1k", download=False)
        labels = np.array([int(label) for _, label in train])
        image, _ = next(iter(test))
        assert info.train_size == len(labels) == 1000 and info.num_classes == task.num_classes
        assert labels.min() >= 0 and labels.max() < task.num_classes
        assert image.dtype == tf.uint8 and image.shape[-1] == 3
        assert [load_split(name, split, download=False)[1].train_size for split in ("train800", "val200")] == [800, 200]
    with pytest.raises(ConfigError, match="has splits"):
        load_split(name, "train")


def test_every_task_reads_mock_data():
    from bit_keras.vtab.data import load_split

    with _mock(2):
        for task in TASKS:
            ds, info = load_split(task, "train800val200", download=False)
            assert info.train_size == 1000, task.name  # the declared slices; the mock itself ignores slicing
            for image, label in ds.take(2):
                assert image.dtype == tf.uint8 and image.shape[-1] == 3, task.name
                # Mock CLEVR scenes hold any number of objects; real ones 3 to 10.
                assert task.name == "clevr_count" or 0 <= int(label) < task.num_classes, task.name


class _KillAfterFirstUpdate:
    """finetune with a callback that interrupts smallnorb_elevation's run after its first checkpoint."""

    def __init__(self, finetune):
        self.finetune = finetune

    def __call__(self, source, **kwargs):
        import keras

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise KeyboardInterrupt("simulated kill")

        if kwargs["dataset"] == "vtab:smallnorb_elevation":
            kwargs["callbacks"] = [Kill()]
        return self.finetune(source, **kwargs)


def test_vtab_runs_two_tasks_resumes_a_killed_one_and_skips_finished_ones(tmp_path, capsys, monkeypatch):
    # --protocol val scores on val200: three evaluations of 200 images instead of 1000 keep this quick.
    from bit_keras.finetune import runner

    argv = ("vtab", "--variant", "r14x1", "--output", str(tmp_path), "--tasks", "dsprites_location,smallnorb_elevation",
            "--steps", "2", "--batch", "16", "--resolution", "16", "--protocol", "val", "--no-download", "--quiet")
    with _mock(800), monkeypatch.context() as patch:  # 800: enough for train800 and val200
        patch.setattr(runner, "finetune", _KillAfterFirstUpdate(runner.finetune))
        with pytest.raises(KeyboardInterrupt):
            _cli(*argv)
    assert next(csv.DictReader(open(tmp_path / "results.csv")))["status"] == "done"  # written after each task
    assert os.path.isdir(tmp_path / "smallnorb_elevation" / "checkpoint")
    capsys.readouterr()
    with _mock(800):
        assert _cli(*argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("Model ")  # the weights line first
    assert "Resuming from" in out and "update 1 of 2" in out
    for name in ("results.csv", "results.md", "results.json", "results.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["task"] for r in rows] == ["dsprites_location", "smallnorb_elevation"]
    assert [r["status"] for r in rows] == ["done earlier", "done"]
    assert all(0 <= float(r["accuracy"]) <= 100 for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert "| **mean of 19** | |  | 66.9 | 70.6 | 76.3 |" in table and "| dSpr-Loc | structured |" in table
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["means"]["all"] is None and summary["protocol"] == "val"
    metrics = json.loads((tmp_path / "dsprites_location" / "metrics.json").read_text())
    assert metrics["train_size"] == 800 and metrics["eval_split"] == "val200" and metrics["updates"] == 2
    # Rerun without the mock: finished tasks are read back (no data touched), an unprepared one fails in its row.
    assert _cli(*argv[:6], "dsprites_location,smallnorb_elevation,clevr_count", *argv[7:],
                "--data-dir", str(tmp_path / "no_tfds")) == 1
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["status"] for r in rows] == ["failed", "done earlier", "done earlier"]  # the paper's order
    assert "tfds:clevr" in rows[0]["error"] and "not prepared" in rows[0]["error"]
    assert "| Clevr-Count | structured | failed: MissingFileError" in (tmp_path / "results.md").read_text()
    # Another protocol into the same folder is refused per task, not mixed into the table.
    assert _cli(*argv[:6], "dsprites_location", *argv[7:-4], "--protocol", "1k", "--quiet") == 1
    assert "another --protocol" in next(csv.DictReader(open(tmp_path / "results.csv")))["error"]


def test_a_manual_download_dataset_names_its_folder(tmp_path):
    from bit_keras.errors import MissingFileError
    from bit_keras.vtab.data import load_split

    with pytest.raises(MissingFileError, match=f"in {tmp_path}/downloads/manual, then run again"):
        load_split("diabetic_retinopathy", "test", data_dir=str(tmp_path))


def test_a_full_disk_or_sigterm_in_one_task_ends_vtab_instead_of_failing_every_task(tmp_path, monkeypatch):
    from bit_keras.errors import DiskFullError, StoppedError
    from bit_keras.finetune import runner
    from bit_keras.vtab.run import run_vtab
    from bit_keras.vtab.tasks import select

    for error in (DiskFullError("No space left on device while writing X: it needs at least 1.0 MB free"),
                  StoppedError("Stopped by SIGTERM after update 3 of 6.")):
        calls = []

        def finetune(*args, error=error, **kwargs):
            calls.append(kwargs["dataset"])
            raise error

        monkeypatch.setattr(runner, "finetune", finetune)
        with pytest.raises(type(error)):
            run_vtab("r14x1", output=tmp_path / type(error).__name__, tasks=select("caltech101,dtd"))
        assert calls == ["vtab:caltech101"]
