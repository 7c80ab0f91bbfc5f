"""`bench --baseline pytorch` really runs both sides, each in its own process, and its ratios are
PyTorch's step time over the row's (checked from the per-round times it reports)."""

import json
import statistics
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def test_the_race_times_pytorch_and_keras_in_separate_processes_and_divides_right(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bit_keras", "bench", "--variant", "r14x1", "--resolution", "32", "--batch", "2",
         "--mode", "train", "--baseline", "pytorch", "--rows", "pytorch,keras-tensorflow", "--rounds", "2",
         "--steps", "1", "--threads", "1", "--json"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    rows = {result["row"]: result for result in report["results"]}
    assert list(rows) == ["pytorch", "keras-tensorflow"] and report["rounds"] == 2
    assert report["race"]["threads"] == 1 and report["race"]["mode"] == "train"
    peer = [statistics.median(r) for r in rows["pytorch"]["step_seconds_by_round"]]
    ours = [statistics.median(r) for r in rows["keras-tensorflow"]["step_seconds_by_round"]]
    assert all(t > 0 for t in peer + ours) and len(peer) == len(ours) == 2
    ratios = sorted(p / o for p, o in zip(peer, ours))
    assert rows["keras-tensorflow"]["vs_pytorch"] == pytest.approx(statistics.median(ratios), rel=1e-3)
    assert rows["keras-tensorflow"]["vs_pytorch_range"] == pytest.approx(ratios, rel=1e-3)
    assert rows["pytorch"]["vs_pytorch"] == 1.0


def test_the_race_refuses_what_it_cannot_run():
    from bit_keras.errors import ConfigError
    from bit_keras.peers import race

    job = race.Race(variant="r14x1", mode="train")
    with pytest.raises(ConfigError, match="savedmodel-folded"):
        race.check(job, ("pytorch", "savedmodel-folded"))  # inference only
    with pytest.raises(ConfigError, match="must include 'pytorch'"):
        race.check(job, ("keras-tensorflow",))
    with pytest.raises(ConfigError, match="--mode infer or train"):
        race.check(race.Race(mode="memory"), ("pytorch",))


def test_each_keras_row_runs_as_its_backend_runs_by_default_and_the_fastest_row_is_named():
    from bit_keras.peers import race

    job = race.Race(variant="r14x1", mode="infer")
    assert race.keras_config(job, "keras-jax").jit  # JAX's default is jit: un-jitted JAX runs op by op
    assert not race.keras_config(job, "keras-tensorflow").jit and not race.keras_config(job, "keras-torch").jit
    assert race.keras_config(job, "keras-tensorflow-folded").fold
    folded = race.keras_config(job, "savedmodel-folded")
    assert folded.fold and folded.mode == "savedmodel"
    report = race.report(job, {"pytorch": [[2.0, 2.0]], "keras-tensorflow": [[1.0, 1.0]], "keras-jax": [[4.0, 4.0]]})
    assert race.format_report(report)[-1] == "fastest here for this job: keras-tensorflow (2.00x PyTorch)"
