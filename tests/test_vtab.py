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
    header, first = out.splitlines()[:2]
    assert header.split()[:4] == ["task", "group", "classes", "tfds"] and first.split()[0] == TASKS[0].name
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
    for row in rows:   # the table carries each task's own score, in percent
        scored = json.loads((tmp_path / row["task"] / "metrics.json").read_text())["eval_accuracy"]
        assert float(row["accuracy"]) == pytest.approx(100 * scored, abs=0.005), row["task"]
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
    assert 'protocol: "val" -> "1k"' in next(csv.DictReader(open(tmp_path / "results.csv")))["error"]


def test_a_manual_download_dataset_names_its_folder(tmp_path):
    from bit_keras.errors import MissingFileError
    from bit_keras.vtab.data import load_split

    with pytest.raises(MissingFileError, match=f"in {tmp_path}/downloads/manual, then run again"):
        load_split("diabetic_retinopathy", "test", data_dir=str(tmp_path))


# ------------------------------------------------------------------ what a rerun may reuse, and what it reads back

def _fake_finetune(calls, accuracy=0.5):
    """Stands in for `finetune`: writes run.json and metrics.json as a finished run does, records the call."""
    from bit_keras import files, runs

    def finetune(source, *, dataset, output, eval_split, **kwargs):
        os.makedirs(output, exist_ok=True)
        runs.write_run(output, {"dataset": dataset, "source": getattr(source, "name", str(source))})
        metrics = {"dataset": dataset, "eval_split": eval_split, "eval_accuracy": accuracy}
        files.write_json(os.path.join(output, "metrics.json"), metrics)
        calls.append(dataset)
        return metrics
    return finetune


def _rows(folder):
    return {row["task"]: row for row in csv.DictReader(open(folder / "results.csv"))}


def test_a_finished_task_is_reused_only_by_the_same_configuration(tmp_path, monkeypatch, capsys):
    from bit_keras.finetune import runner

    calls = []
    monkeypatch.setattr(runner, "finetune", _fake_finetune(calls))
    run = ("vtab", "--output", str(tmp_path), "--tasks", "dtd", "--steps", "2", "--batch", "16", "--quiet")
    assert _cli(*run, "--variant", "r14x1") == 0 and calls == ["vtab:dtd"]
    assert _rows(tmp_path)["dtd"]["accuracy"] == "50.0"
    assert json.loads((tmp_path / "dtd" / "vtab.json").read_text())["model"] == "r14x1"
    # Another model, seed, schedule, resolution or protocol is refused in its row, not scored as this one's.
    for change, key in ((("--variant", "r26x1"), "model"), (("--variant", "r14x1", "--seed", "1"), "seed"),
                        (("--variant", "r14x1", "--steps", "3"), "steps"),
                        (("--variant", "r14x1", "--resolution", "32"), "resolution"),
                        (("--variant", "r14x1", "--batch", "32"), "batch_size"),
                        (("--variant", "r14x1", "--protocol", "val"), "protocol")):
        capsys.readouterr()
        assert _cli(*run, *change) == 1, change
        row = _rows(tmp_path)["dtd"]
        assert row["status"] == "failed" and row["accuracy"] == "" and f"{key}: " in row["error"], (change, row)
        assert "holds a different run" in row["error"] and "another --output" in row["error"]
        assert "dtd failed: " in capsys.readouterr().out
    assert _cli(*run, "--variant", "r26x1") == 1
    assert 'model: "r14x1" -> "r26x1"' in _rows(tmp_path)["dtd"]["error"]
    assert calls == ["vtab:dtd"]  # nothing ran again
    assert _cli(*run, "--variant", "r14x1") == 0
    assert _rows(tmp_path)["dtd"]["status"] == "done earlier" and _rows(tmp_path)["dtd"]["accuracy"] == "50.0"


def test_the_weights_digest_and_an_unrecorded_run_decide_reuse(tmp_path, monkeypatch):
    from bit_keras.architecture import Architecture
    from bit_keras.finetune import runner
    from bit_keras.vtab.run import run_vtab
    from bit_keras.weights import WeightsChoice

    calls = []
    monkeypatch.setattr(runner, "finetune", _fake_finetune(calls))
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"first weights")
    choice = WeightsChoice(Architecture.parse("r14x1"), str(weights), str(weights), None)
    output = tmp_path / "vtab"
    run = lambda: run_vtab(choice, output=output, tasks=select("dtd,svhn"), steps=2, batch_size=16)  # noqa: E731
    assert [row["status"] for row in run()] == ["done", "done"]
    weights.write_bytes(b"other weights, same file name")
    rows = run()
    assert [row["status"] for row in rows] == ["failed", "failed"] and "weights_sha256: " in rows[0]["error"]
    weights.write_bytes(b"first weights")
    assert [(row["status"], row["accuracy"]) for row in run()] == [("done earlier", 50.0)] * 2
    # An interrupted run without the record, and a finished one (an older bit_keras, finetune by hand): refused.
    (output / "dtd" / "vtab.json").unlink()
    (output / "dtd" / "metrics.json").unlink()
    (output / "svhn" / "vtab.json").unlink()
    rows = run()
    assert all("without vtab.json" in row["error"] for row in rows) and len(calls) == 2


@pytest.mark.parametrize("text, why", [
    ('{"eval_split": "test", "eval_accuracy": 5.0}', "5.0 is not an accuracy in [0, 1]"),
    ('{"eval_split": "test", "eval_accuracy": NaN}', "nan is not an accuracy"),
    ('{"eval_split": "test", "eval_accuracy": "0.5"}', "'0.5' is not an accuracy"),
    ('{"eval_split": "test", "eval_accuracy": true}', "True is not an accuracy"),
    ('{"eval_split": "test"}', "None is not an accuracy"),
    ("[0.5]", "holds a list"),
    ('{"eval_split": "test", "eval_acc', "not readable JSON"),
    (b"\xff\xfe\x00", "not readable JSON"),
])
def test_a_damaged_metrics_file_fails_its_own_row(tmp_path, monkeypatch, capsys, text, why):
    from bit_keras.finetune import runner

    calls = []
    monkeypatch.setattr(runner, "finetune", _fake_finetune(calls, accuracy=0.25))
    run = ("vtab", "--variant", "r14x1", "--output", str(tmp_path), "--tasks", "dtd,svhn", "--steps", "2",
           "--quiet")
    assert _cli(*run) == 0
    metrics = tmp_path / "dtd" / "metrics.json"
    metrics.write_bytes(text if isinstance(text, bytes) else text.encode())
    capsys.readouterr()
    assert _cli(*run) == 1
    rows = _rows(tmp_path)
    assert rows["dtd"]["status"] == "failed" and rows["dtd"]["accuracy"] == ""
    assert f"{metrics} is damaged" in rows["dtd"]["error"] and why in rows["dtd"]["error"], rows["dtd"]["error"]
    assert (rows["svhn"]["status"], rows["svhn"]["accuracy"]) == ("done earlier", "25.0")  # the others stand
    assert f"dtd failed: {metrics} is damaged" in capsys.readouterr().out
    assert "500.0" not in (tmp_path / "results.md").read_text()
    assert metrics.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # left as it was
    assert calls == ["vtab:dtd", "vtab:svhn"]


def test_a_damaged_task_record_is_named(tmp_path, monkeypatch):
    from bit_keras.finetune import runner
    from bit_keras.vtab.run import run_vtab

    monkeypatch.setattr(runner, "finetune", _fake_finetune([]))
    assert run_vtab("r14x1", output=tmp_path, tasks=select("dtd"), steps=2)[0]["status"] == "done"
    (tmp_path / "dtd" / "vtab.json").write_text("[")
    row = run_vtab("r14x1", output=tmp_path, tasks=select("dtd"), steps=2)[0]
    assert row["status"] == "failed" and f"{tmp_path / 'dtd' / 'vtab.json'} is damaged" in row["error"]


@pytest.mark.parametrize("flags, message", [
    (("--batch", "0"), "batch_size must be a positive integer. Received: --batch 0"),
    (("--micro-batch", "0"), "Received: --micro-batch 0"),
    (("--batch", "16", "--micro-batch", "3"), "micro_batch_size must divide the batch of 16"),
    (("--steps", "0"), "Received: --steps 0"),
    (("--resolution", "-5"), "Received: --resolution -5"),
    (("--seed", "-1"), "seed must be an integer in [0, 2**32)"),
    (("--variant", "nonsense"), "Unknown BiT model 'nonsense'"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_impossible_numbers_and_models_are_refused_before_any_task(tmp_path, monkeypatch, capsys, flags, message,
                                                                   dry_run):
    from bit_keras.finetune import runner

    calls = []
    monkeypatch.setattr(runner, "finetune", _fake_finetune(calls))
    argv = ["vtab", "--variant", "r14x1", "--output", str(tmp_path / "out"), "--tasks", "dtd", *flags]
    assert _cli(*argv, *(("--dry-run",) if dry_run else ())) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured
    assert calls == [] and not os.path.exists(tmp_path / "out")


def test_one_benchmark_per_output(tmp_path, monkeypatch):
    from bit_keras import files
    from bit_keras.errors import InUseError
    from bit_keras.finetune import runner
    from bit_keras.vtab.run import run_vtab

    calls = []
    monkeypatch.setattr(runner, "finetune", _fake_finetune(calls))
    with files.locked(tmp_path / "out"):  # another benchmark writing this table and its task records
        with pytest.raises(InUseError, match="in use by another bit_keras process"):
            run_vtab("r14x1", output=tmp_path / "out", tasks=select("dtd"), steps=2)
    assert calls == [] and not os.path.exists(tmp_path / "out" / "dtd")


def test_an_export_is_recorded_by_its_contents(tmp_path):
    from bit_keras.vtab.run import task_record

    export = tmp_path / "export"
    (export / "variables").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"graph")
    (export / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    def record():
        return task_record(str(export), protocol="1k", batch_size=512, steps=None, resolution=None, seed=0)

    first = record()
    assert first["model"] == str(export) and len(first["weights_sha256"]) == 64 and first["eval_split"] == "test"
    (export / "variables" / "variables.data-00000-of-00001").write_bytes(b"other weights")
    assert record()["weights_sha256"] != first["weights_sha256"]


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
