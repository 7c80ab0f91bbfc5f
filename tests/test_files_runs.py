"""files.py and runs.py: atomic writes with the usual permissions, and the one resume rule."""

import json
import os
import stat

import pytest

from bit_keras import download, files, runs
from tests import reference


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_results_get_the_umask_permissions_not_tempfile_ones(umask, tmp_path):
    import bit_keras

    expected = 0o666 & ~umask  # 0o644 under 022, 0o664 under 002
    files.write_json(tmp_path / "data.json", {"a": (1, 2)})
    bit_keras.save_weights(bit_keras.BiTBackbone((1, 1, 1, 1), 1, initializer="zeros"), tmp_path / "w.npz")
    reference.write_checkpoint(tmp_path / "source.npz", (1, 1, 1, 1), 1)
    cached = download.fetch((tmp_path / "source.npz").as_uri(), "cached.npz", directory=tmp_path / "cache")
    for path in (tmp_path / "data.json", tmp_path / "w.npz", cached, cached + ".sha256"):
        assert _mode(path) == expected, path
    with files.staged_directory(tmp_path / "export") as staging:
        open(os.path.join(staging, "x"), "w").close()
    assert _mode(tmp_path / "export") == 0o777 & ~umask
    assert json.loads((tmp_path / "data.json").read_text()) == {"a": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["cache", "data.json", "export", "source.npz", "w.npz"]
    name = os.path.basename(cached)
    assert name.startswith("cached-") and sorted(os.listdir(tmp_path / "cache")) == [name, name + ".sha256"]


def test_a_failed_staged_directory_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), files.staged_directory(tmp_path / "out") as staging:
        open(os.path.join(staging, "half"), "w").close()
        raise RuntimeError("killed mid-export")
    assert os.listdir(tmp_path) == []


def test_resume_check_names_every_changed_key_and_keeps_run_json(tmp_path):
    record = {"dataset": "digits", "batch_size": 8, "plan": {"steps": 10}, "precision": "float32"}
    runs.write_run(tmp_path, record)
    before = (tmp_path / runs.RUN_FILE).read_text()
    with pytest.raises(ValueError) as error:
        runs.check_resume(tmp_path, {**record, "batch_size": 16, "precision": "bfloat16"})
    message = str(error.value)
    assert 'batch_size: 8 -> 16; precision: "float32" -> "bfloat16")' in message
    assert "Repeat the original command" in message and "--overwrite" in message and "plan" not in message
    assert (tmp_path / runs.RUN_FILE).read_text() == before


def test_resume_check_compares_json_values(tmp_path):
    runs.check_resume(tmp_path, {"units": (1, 2)})  # no run.json yet: nothing to match
    runs.write_run(tmp_path, {"units": (1, 2), "image_size": (32, 32)})
    runs.check_resume(tmp_path, {"units": [1, 2], "image_size": (32, 32)})
    with pytest.raises(ValueError, match=r"extra: null -> 1"):  # a key the old record lacks counts too
        runs.check_resume(tmp_path, {"units": [1, 2], "image_size": [32, 32], "extra": 1})


def test_remote_paths_go_through_tf_io_gfile():
    directory = "ram://bit_keras_test/run"
    runs.write_run(directory, {"units": (1, 2)})
    assert runs.read_run(directory) == {"units": [1, 2]}
    runs.check_resume(directory, {"units": [1, 2]})
    with pytest.raises(ValueError, match=r"units: \[1, 2\] -> \[3\]"):
        runs.check_resume(directory, {"units": [3]})
    with pytest.raises(FileExistsError):
        with files.staged_file(files.join(directory, runs.RUN_FILE)):
            pass
