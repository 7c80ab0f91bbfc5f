"""Scale-out: fine-tuning and training under tf.distribute (and Keras' JAX distribution), on the CPU.

Each run happens in a child process: the CPU must be split into logical devices before
TensorFlow initialises, and multi-worker jobs are separate processes talking over
127.0.0.1. Every distributed result is compared with a one-device run at the same global
batch (weights and losses), on a network of one unit per block at 16 px.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from bit_keras.resume import checkpoint_name, latest_updates
from tests.processes import kill_after_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
ENV.pop("TF_CONFIG", None)
FINETUNE = ["--dataset", "digits", "--batch", "16", "--steps", "3", "--eval-every", "1", "--resolution", "16",
            "--learning-rate", "0.05", "--eval-split", "none", "--quiet"]

COMPARE_SCRIPT = r"""
import json, sys
from bit_keras.distribute import split_cpu
split_cpu(2)
from bit_keras.finetune.runner import evaluate, finetune
from bit_keras.distribute import make_strategy

tmp, backbone = sys.argv[1], sys.argv[2]
headers = {}
for name, kind, micro in [("default", "default", None), ("mirrored", "mirrored", None),
                          ("default_micro", "default", 8), ("mirrored_micro", "mirrored", 4)]:
    lines = []
    # 17 held-out examples: the last step batch (1 of 16) does not divide over 2 replicas.
    finetune(backbone, dataset="digits", output=f"{tmp}/{name}", batch_size=16, micro_batch_size=micro, steps=3,
             eval_every=1, resolution=16, base_learning_rate=0.05, eval_split="test[:17]" if micro is None else None,
             verbose=0, log=lines.append, strategy=make_strategy(kind))
    headers[name] = lines[0]
for kind in ("default", "mirrored"):
    for split in ("test[:40]", "test[:15]", "test[:17]"):   # batches of 8: 8+7 and 8+8+1 over 2 replicas
        scores = evaluate(f"{tmp}/default", dataset="digits", split=split, batch_size=8,
                          strategy=make_strategy(kind))
        headers[f"evaluate_{kind}_{split}"] = [scores["loss"], scores["accuracy"]]
print("RESULT " + json.dumps(headers))
"""


def _weights(path):
    import keras

    import bit_keras.classifier  # noqa: F401  (registers the classes in model.keras)

    return keras.saving.load_model(path, compile=False).get_weights()


def _column(run, name):
    with open(os.path.join(run, "logs", "metrics.csv")) as handle:
        return [float(row[name]) for row in csv.DictReader(handle)]


def _losses(run):
    return _column(run, "loss")


def _assert_same_run(run, reference, *, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(_losses(run), _losses(reference), rtol=rtol)
    for mine, theirs in zip(_weights(os.path.join(run, "model.keras")), _weights(os.path.join(reference, "model.keras"))):
        np.testing.assert_allclose(mine, theirs, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """One exported tiny backbone, so that every run starts from the same weights."""
    import keras

    import bit_keras
    from bit_keras.export import export_keras

    keras.utils.set_random_seed(0)
    return export_keras(bit_keras.BiTBackbone((1, 1, 1, 1), width=1, name="tiny"),
                        tmp_path_factory.mktemp("backbone") / "tiny.keras")


@pytest.fixture(scope="module")
def compared(backbone, tmp_path_factory):
    """Runs of 3 updates at global batch 16: default and mirrored over 2 CPUs, with and without micro-batches."""
    tmp = tmp_path_factory.mktemp("compare")
    done = subprocess.run([sys.executable, "-c", COMPARE_SCRIPT, str(tmp), str(backbone)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, json.loads(done.stdout.split("RESULT ", 1)[1])


def test_mirrored_over_two_cpus_equals_one_device_at_the_same_global_batch(compared, backbone):
    tmp, headers = compared
    assert headers["default"] == ("strategy default (one device), 1 replica(s): global batch 16 = 1 replica(s) x "
                                  "16 per replica x 1 accumulation step(s)")
    assert headers["mirrored"] == ("strategy MirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x "
                                   "8 per replica x 1 accumulation step(s)")
    _assert_same_run(tmp / "mirrored", tmp / "default")
    # Not trivially equal: the runs trained (the zero head moved, the loss changed).
    head = _weights(tmp / "default" / "model.keras")[-2]
    assert np.abs(head).max() > 1e-3
    assert len(set(_losses(tmp / "default"))) == 3
    # evaluate() under the mirrored strategy scores the same, also when the split does not divide over the replicas.
    for split in ("test[:40]", "test[:15]", "test[:17]"):
        np.testing.assert_allclose(headers[f"evaluate_mirrored_{split}"], headers[f"evaluate_default_{split}"],
                                   rtol=1e-5, err_msg=split)


def test_every_example_of_an_odd_split_is_scored_once_over_two_replicas(compared):
    tmp, headers = compared
    # The fine-tune's own evaluations of 17 examples (during fit and at the end) equal one device's.
    one, two = (json.loads((tmp / name / "metrics.json").read_text()) for name in ("default", "mirrored"))
    assert one["eval_split"] == two["eval_split"] == "test[:17]"
    np.testing.assert_allclose([two["eval_loss"], two["eval_accuracy"]], [one["eval_loss"], one["eval_accuracy"]],
                               rtol=1e-5)
    np.testing.assert_allclose(_column(tmp / "mirrored", "val_loss"), _column(tmp / "default", "val_loss"), rtol=1e-5)
    # 17 examples scored once each: the accuracy is a whole number of examples out of 17.
    for scores in (headers["evaluate_mirrored_test[:17]"], [two["eval_loss"], two["eval_accuracy"]]):
        assert scores[1] * 17 == pytest.approx(round(scores[1] * 17), abs=1e-4)
    assert headers["evaluate_mirrored_test[:15]"][1] * 15 == pytest.approx(
        round(headers["evaluate_mirrored_test[:15]"][1] * 15), abs=1e-4)


def test_mirrored_micro_batches_accumulate_like_one_device(compared):
    tmp, headers = compared
    assert headers["mirrored_micro"].endswith("global batch 16 = 2 replica(s) x 4 per replica x 2 accumulation step(s)")
    assert headers["default_micro"].endswith("global batch 16 = 1 replica(s) x 8 per replica x 2 accumulation step(s)")
    # Same 8 examples per forward/backward step over all replicas, so the same data and the same updates.
    _assert_same_run(tmp / "mirrored_micro", tmp / "default_micro")
    metrics = json.loads((tmp / "mirrored_micro" / "metrics.json").read_text())
    assert metrics["updates"] == 3


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "bit_keras", *args], capture_output=True, text=True,
                          env=env or ENV, cwd=ROOT, timeout=timeout)


# As a user runs it: the CLI itself silences TensorFlow's logs when nobody set their level.
USER_ENV = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def test_a_global_batch_that_does_not_divide_over_replicas_is_one_line(tmp_path, backbone):
    done = _cli("finetune", "--variant", str(backbone), "--output", str(tmp_path / "run"), *FINETUNE,
                "--strategy", "mirrored", "--cpu-devices", "2", "--micro-batch", "3", env=USER_ENV)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "bit_keras finetune: error: micro-batch 3 must divide the batch of 8 per replica (16 over 2 replicas); "
        "global batch = replicas x micro-batch x accumulation steps."]
    done = _cli("finetune", "--variant", str(backbone), "--output", str(tmp_path / "run"), *FINETUNE[:2],
                "--batch", "15", *FINETUNE[4:], "--strategy", "mirrored", "--cpu-devices", "2", env=USER_ENV)
    assert done.returncode == 2 and "Global batch 15 does not divide over 2 replicas" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = _cli("finetune", "--variant", str(backbone), "--output", str(tmp_path / "run"), *FINETUNE,
                "--strategy", "multi_worker", env=USER_ENV)
    assert done.returncode == 2 and "needs TF_CONFIG" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_mirrored_cli_run_killed_with_sigkill_resumes(tmp_path, backbone):
    output = tmp_path / "run"
    command = [sys.executable, "-m", "bit_keras", "finetune", "--variant", str(backbone), "--output", str(output),
               *FINETUNE, "--steps", "8", "--eval-every", "2", "--micro-batch", "4", "--strategy", "mirrored",
               "--cpu-devices", "2"]
    kill_after_checkpoint(command, output, updates=4, timeout=240, env=ENV, cwd=ROOT)
    assert not (output / "metrics.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "MirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x 4 per replica x 2 accumulation" \
        in resumed.stdout
    assert "Resuming from" in resumed.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["updates"] == 8
    assert metrics["final_learning_rate"] == pytest.approx(0.05 * 0.001, rel=1e-5)
    # The updates before the kill are not redone: the logged updates run 2, 4, ... once each, after resume too.
    with open(output / "logs" / "metrics.csv") as handle:
        updates = [int(float(row["updates"])) for row in csv.DictReader(handle)]
    assert updates[-1] == 8 and updates[0] == 2 and sorted(set(updates)) == [2, 4, 6, 8]


# ------------------------------------------------------------------ multi-worker over 127.0.0.1


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(argv, count=2, log_dir=None):
    """Starts `bit_keras ARGV` as `count` workers of one job on loopback, each with its TF_CONFIG."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(count)]
    processes = []
    for index in range(count):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        log = open(os.path.join(log_dir, f"worker{index}.log"), "w") if log_dir else subprocess.PIPE
        processes.append(subprocess.Popen([sys.executable, "-m", "bit_keras", *argv],
                                          env={**ENV, "TF_CONFIG": json.dumps(config)}, cwd=ROOT, text=True,
                                          stdout=log, stderr=subprocess.STDOUT))
    return processes


def _finish(processes, timeout=300):
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        outputs.append(out)
    return [p.returncode for p in processes], outputs


def _scratch_left(pid, index):
    import tempfile

    return os.path.exists(os.path.join(tempfile.gettempdir(), f"bit_keras-worker{index}-{pid}"))


def test_two_workers_finetune_like_one_process_with_two_replicas_and_only_the_chief_writes(compared, backbone,
                                                                                          tmp_path):
    reference_dir, _ = compared
    output = tmp_path / "run"
    processes = _workers(["finetune", "--variant", str(backbone), "--output", str(output), *FINETUNE,
                          "--strategy", "multi_worker"])
    codes, outputs = _finish(processes)
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "MultiWorkerMirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x 8 per replica" in outputs[0]
    assert "the chief worker wrote" in outputs[1]
    _assert_same_run(output, reference_dir / "mirrored")
    # One writer: one line per evaluation in the CSV log, one event file per TensorBoard folder.
    assert len(_losses(output)) == 3
    assert len(os.listdir(output / "logs" / "train")) == 1
    assert sorted(os.listdir(output)) == ["curves.png", "logs", "metrics.json", "model.keras", "run.json"]
    assert not _scratch_left(processes[1].pid, 1)


def test_a_killed_worker_job_restarted_with_the_same_command_resumes(backbone, tmp_path):
    output = tmp_path / "run"
    argv = ["finetune", "--variant", str(backbone), "--output", str(output), *FINETUNE, "--steps", "8",
            "--eval-every", "2", "--strategy", "multi_worker"]
    processes = _workers(argv, log_dir=str(tmp_path))
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if latest_updates(output / "checkpoint") >= 2:
            break
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGKILL)   # a worker dies; the chief cannot go on without it
    processes[1].wait()
    try:   # ...and ends by itself, with one line that says what happened and what to do
        processes[0].wait(timeout=180)
    finally:
        processes[0].kill()
    chief_log = (tmp_path / "worker0.log").read_text()
    assert processes[0].returncode == 2, chief_log[-3000:]
    assert "Traceback" not in chief_log and "UnavailableError:" not in chief_log, chief_log[-3000:]
    last = chief_log.strip().splitlines()[-1]
    assert last.startswith("bit_keras finetune: error: worker 1 (127.0.0.1:") and "stopped answering" in last, last
    assert f"{output / 'checkpoint'} was kept: run the same command again on every worker to resume." in last
    assert not (output / "metrics.json").exists()
    updates = latest_updates(output / "checkpoint")
    assert 2 <= updates < 8

    codes, outputs = _finish(_workers(argv))
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert f"Resuming from {output / 'checkpoint' / checkpoint_name(updates)} (update {updates} of 8)" in outputs[0]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["updates"] == 8
    assert metrics["final_learning_rate"] == pytest.approx(0.05 * 0.001, rel=1e-5)


def test_a_worker_whose_peer_never_starts_gives_up_naming_it_and_sigterm_ends_the_wait(backbone, tmp_path):
    """Only worker 0 of two is started: it fails after --cluster-timeout; a second one waiting ends on SIGTERM."""
    def lone_worker(timeout):
        workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}
        process = subprocess.Popen([sys.executable, "-m", "bit_keras", "finetune", "--variant", str(backbone),
                                    "--output", str(tmp_path / f"run{timeout}"), *FINETUNE, "--strategy",
                                    "multi_worker", "--cluster-timeout", str(timeout)],
                                   env={**USER_ENV, "TF_CONFIG": json.dumps(config)}, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return process, workers

    (quick, quick_workers), (waiting, _) = lone_worker(3), lone_worker(600)
    try:
        for line in waiting.stdout:   # it says once that it waits, then waits
            if line.startswith("Waiting up to 600 s for the cluster: worker 1 (127.0.0.1:"):
                break
        else:
            raise AssertionError(waiting.stderr.read()[-3000:])
        time.sleep(1)
        waiting.send_signal(signal.SIGTERM)
        started = time.time()
        waiting.wait(timeout=10)
        assert time.time() - started < 5 and waiting.returncode in (143, -signal.SIGTERM)  # 143: the CLI's SIGTERM line
        out, err = quick.communicate(timeout=120)
    finally:
        for process in (quick, waiting):
            process.kill()
    assert quick.returncode == 2, err[-3000:]
    assert err.strip().splitlines() == [
        f"bit_keras finetune: error: No answer from worker 1 ({quick_workers[1]}) after 3 s waiting for the cluster "
        f"(this is worker 0, {quick_workers[0]}). Start the "
        "same command on every machine, each with its own TF_CONFIG task, within --cluster-timeout seconds (or "
        "$BIT_KERAS_CLUSTER_TIMEOUT) of each other."]
    assert not (tmp_path / "run3").exists() and not (tmp_path / "run600").exists()


def test_tf_config_outside_its_cluster_and_impossible_hardware_flags_are_one_line_before_any_work(
        tmp_path, monkeypatch, capsys):
    from bit_keras.cli import main as cli_main
    from bit_keras.errors import ConfigError
    from bit_keras.distribute import task_of

    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    for task, problem in [({"type": "worker", "index": 2}, "(worker 2) is outside its cluster (worker: 2 task(s))"),
                          ({"type": "chief", "index": 0}, "(chief 0) is outside its cluster (worker: 2 task(s))"),
                          ({"type": "worker", "index": -1}, "(worker -1) is outside")]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": task}))
        with pytest.raises(ConfigError, match=re.escape(problem)):
            task_of()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"index": 0}}))
    with pytest.raises(ConfigError, match="not valid JSON of the form"):
        task_of()

    def cli(*argv):
        args = cli_main.build_parser().parse_args(["finetune", "--variant", "r14x1", "--output",
                                                   str(tmp_path / "run"), *FINETUNE, *argv])
        started = time.time()
        code = cli_main._main(args)
        return code, capsys.readouterr().err.strip().splitlines(), time.time() - started

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                         "index": 5}}))
    code, lines, seconds = cli("--strategy", "multi_worker")
    assert code == 2 and len(lines) == 1 and "TF_CONFIG's task (worker 5) is outside its cluster" in lines[0]
    assert seconds < 2   # nothing was loaded or built first
    monkeypatch.delenv("TF_CONFIG")
    for count in ("0", "-3"):
        code, lines, _ = cli("--strategy", "mirrored", "--cpu-devices", count)
        assert code == 2 and lines == [f"bit_keras finetune: error: cpu device count must be >= 1. Received: {count}"]
    for timeout in ("0", "nan", "-1"):
        code, lines, _ = cli("--strategy", "multi_worker", "--cluster-timeout", timeout)
        assert code == 2 and len(lines) == 1 and "--cluster-timeout must be a positive number of seconds" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_lost_peer_is_named_in_one_line_and_anything_else_keeps_its_traceback(monkeypatch):
    import tensorflow as tf

    from bit_keras.errors import ClusterError
    from bit_keras.distribute import lost_worker_error

    class CollectiveAllReduceStrategy:   # what MultiWorkerMirroredStrategy() returns, without a cluster
        cluster_resolver = None

    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                        "index": 0}}))
    unavailable = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed to connect\n"
                                             "Additional GRPC error information from remote target "
                                             "/job:worker/replica:0/task:1 while calling RecvBuf")
    error = lost_worker_error(unavailable, CollectiveAllReduceStrategy(), checkpoint="run/checkpoint")
    assert isinstance(error, ClusterError) and str(error) == (
        "worker 1 (127.0.0.1:2) stopped answering (UnavailableError), so this worker 0 stopped too; "
        "run/checkpoint was kept: run the same command again on every worker to resume.")
    assert "\n" not in str(error)
    assert lost_worker_error(ValueError("a bug"), CollectiveAllReduceStrategy()) is None
    assert lost_worker_error(unavailable, tf.distribute.get_strategy()) is None   # one process: not a lost peer


SIGTERM_AFTER_JOINING = r"""
import json, os, signal, sys, time
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [sys.argv[1]]}, "task": {"type": "worker", "index": 0}})
from bit_keras.distribute import multi_worker_strategy
multi_worker_strategy()
os.kill(os.getpid(), signal.SIGTERM)   # TensorFlow's cluster agent would swallow it
time.sleep(30)
"""


def test_sigterm_still_ends_a_worker_once_it_joined_its_cluster():
    done = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_JOINING, f"127.0.0.1:{_free_ports(1)[0]}"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]


TRAIN = ["--variant", "r1-1-1-1x1", "--dataset", "digits", "--batch", "8", "--resolution", "16",
         "--epochs", str(4 * 8 / 1437), "--warmup-steps", "1", "--decay-epochs", str(2 * 8 / 1437),
         "--checkpoint-every", "2", "--log-every", "1", "--shuffle-buffer", "64"]


def _train_losses(text):
    return [float(line.split(" loss ")[1].split()[0]) for line in text.splitlines() if line.startswith("step ")]


def test_two_workers_train_like_one_process_with_two_replicas_and_only_the_chief_writes(tmp_path):
    single = _cli("train", "--model-dir", str(tmp_path / "one"), *TRAIN, "--strategy", "mirrored",
                  "--cpu-devices", "2")
    assert single.returncode == 0, single.stderr[-2000:]
    codes, outputs = _finish(_workers(["train", "--model-dir", str(tmp_path / "two"), *TRAIN,
                                       "--strategy", "multi_worker"]))
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "MultiWorkerMirroredStrategy, 2 replica(s): global batch 8 = 4 per replica" in outputs[0]
    losses = _train_losses(outputs[0])
    assert len(losses) == 4 and len(set(losses)) > 1
    np.testing.assert_allclose(losses, _train_losses(single.stdout), rtol=1e-4)
    one, two = np.load(tmp_path / "one" / "bit_final.npz"), np.load(tmp_path / "two" / "bit_final.npz")
    assert sorted(one.files) == sorted(two.files)
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert "wrote" not in outputs[1]   # the other worker wrote nothing that stays
    assert len(os.listdir(tmp_path / "two" / "train")) == 1


# ------------------------------------------------------------------ JAX: keras.distribution.DataParallel

JAX_SCRIPT = r"""
import json, sys
import keras
from bit_keras.finetune.runner import evaluate, finetune

tmp, backbone = sys.argv[1], sys.argv[2]
devices = keras.distribution.list_devices()
headers = {}
for name in ("one", "all"):
    lines = []
    run = lambda: finetune(backbone, dataset="digits", output=f"{tmp}/{name}", batch_size=16, steps=3, eval_every=1,
                           resolution=16, base_learning_rate=0.05, eval_split="test[:17]", verbose=0,
                           log=lines.append)   # 17: the last batch (1) does not divide over 2 devices
    if name == "one":   # a distribution chosen by the caller is kept: here, one device
        with keras.distribution.DataParallel(devices=devices[:1]).scope():
            run()
    else:
        run()
    headers[name] = lines[0]
scores = {}
for split in ("test[:15]", "test[:17]"):   # batches of 8: 8+7 and 8+8+1 over 2 devices
    with keras.distribution.DataParallel(devices=devices).scope():
        scores["all" + split] = evaluate(f"{tmp}/one", dataset="digits", split=split, batch_size=8)
    scores["one" + split] = evaluate(f"{tmp}/one", dataset="digits", split=split, batch_size=8)
print("RESULT " + json.dumps({"devices": len(devices), "headers": headers, "scores": scores}))
"""


def test_jax_fine_tunes_over_all_local_devices_like_one_device(backbone, tmp_path):
    pytest.importorskip("jax")
    env = {**ENV, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path), str(backbone)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 2
    assert result["headers"]["all"].startswith("JAX DataParallel over 2 devices, 2 replica(s): global batch 16 = "
                                               "2 replica(s) x 8 per replica")
    assert result["headers"]["one"].startswith("strategy default (one device)")
    _assert_same_run(tmp_path / "all", tmp_path / "one")
    one, all_ = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "all"))
    assert all_["eval_accuracy"] == pytest.approx(one["eval_accuracy"]) and all_["updates"] == 3
    # 17 held-out examples over 2 devices: every one scored once, as on one device (during fit and after).
    assert all_["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    np.testing.assert_allclose(_column(tmp_path / "all", "val_loss"), _column(tmp_path / "one", "val_loss"), rtol=1e-5)
    for split in ("test[:15]", "test[:17]"):
        mine, theirs = result["scores"]["all" + split], result["scores"]["one" + split]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)


# ------------------------------------------------------------------ vtab passes the hardware flags on


def test_vtab_passes_the_strategy_to_every_finetune_and_only_the_chief_writes_the_tables(tmp_path, monkeypatch):
    from bit_keras.cli import main as cli_main
    from bit_keras.finetune import runner
    from bit_keras.vtab import select
    from bit_keras.vtab.run import run_vtab

    calls = []

    def fake_finetune(source, **kwargs):
        calls.append(kwargs)
        return {"eval_accuracy": 0.5}

    monkeypatch.setattr(runner, "finetune", fake_finetune)
    args = cli_main.build_parser().parse_args(["vtab", "--variant", "r14x1", "--output", str(tmp_path / "chief"),
                                               "--tasks", "dsprites_location,clevr_count", "--strategy", "default"])
    assert cli_main._main(args) == 0
    assert [type(call["strategy"]).__name__ for call in calls] == ["_DefaultDistributionStrategy"] * 2
    assert (tmp_path / "chief" / "results.csv").exists()

    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    rows = run_vtab("r14x1", output=str(tmp_path / "worker"), tasks=select("dsprites_location"),
                    strategy="multi_worker")
    assert rows[0]["accuracy"] == 50.0 and calls[-1]["strategy"] == "multi_worker"
    assert not (tmp_path / "worker").exists()


# ------------------------------------------------------------------ who writes


def test_the_chief_is_the_chief_task_or_worker_0(monkeypatch):
    from bit_keras.errors import SetupError
    from bit_keras.distribute import choose_strategy_name, is_chief, multi_worker_strategy

    for name in ("TF_CONFIG", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    assert choose_strategy_name("multi_worker", num_gpus=0) == "multi_worker"
    assert is_chief(name="multi_worker") and is_chief()
    with pytest.raises(SetupError, match="needs TF_CONFIG"):
        multi_worker_strategy()
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for cluster, task, chief in [(workers, ("worker", 0), True), (workers, ("worker", 1), False),
                                 ({**workers, "chief": ["127.0.0.1:3"]}, ("worker", 0), False),
                                 ({**workers, "chief": ["127.0.0.1:3"]}, ("chief", 0), True)]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]}}))
        assert is_chief(name="multi_worker") is chief, (cluster, task)
        assert is_chief(name="mirrored")   # only a multi-worker job has other writers
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not is_chief(name="multi_worker")
