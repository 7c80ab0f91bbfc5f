"""Scale-out on the CPU with tf.distribute: a mirrored run over 2 logical CPUs equals one device.

The runs happen in one child process (the CPU is split into logical devices before TensorFlow
initialises there); the hardware checks and the chief rule are checked in this process. Multi-worker
jobs are in test_multi_worker*.py, the SIGKILL resume in test_distributed_resume.py, JAX in
test_distributed_jax.py: separate files, so that the suite's two test processes share them out.
"""

import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.processes import HANG_SECONDS
from tests.scaleout import ENV, FINETUNE, ROOT, assert_same_run, column, free_ports, losses, weights

COMPARE_SCRIPT = r"""
import contextlib, io, json, sys
from bit_keras.distribute import split_cpu
split_cpu(2)
from bit_keras.cli import main as cli_main
from bit_keras.finetune.runner import evaluate, finetune
from bit_keras.distribute import make_strategy

tmp, backbone, refusals = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
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
# Command lines refused over 2 replicas (this process holds 2 logical CPUs already): exit status and stderr.
for name, argv in refusals.items():
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        code = cli_main._main(cli_main.build_parser().parse_args(argv))
    headers["refused_" + name] = [code, stream.getvalue()]
print("RESULT " + json.dumps(headers))
"""


def _refusals(backbone, output):
    base = ["finetune", "--variant", str(backbone), "--output", str(output)]
    mirrored = ["--strategy", "mirrored", "--cpu-devices", "2"]
    return {"micro": [*base, *FINETUNE, *mirrored, "--micro-batch", "3"],
            "batch": [*base, *FINETUNE[:2], "--batch", "15", *FINETUNE[4:], *mirrored],
            "no_tf_config": [*base, *FINETUNE, "--strategy", "multi_worker"]}


@pytest.fixture(scope="module")
def compared(tiny_export, tmp_path_factory):
    """Runs of 3 updates at global batch 16: default and mirrored over 2 CPUs, with and without micro-batches."""
    tmp = tmp_path_factory.mktemp("compare")
    done = subprocess.run([sys.executable, "-c", COMPARE_SCRIPT, str(tmp), str(tiny_export),
                           json.dumps(_refusals(tiny_export, tmp / "refused"))], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, json.loads(done.stdout.split("RESULT ", 1)[1])


def test_mirrored_over_two_cpus_equals_one_device_at_the_same_global_batch(compared):
    tmp, headers = compared
    assert headers["default"] == ("strategy default (one device), 1 replica(s): global batch 16 = 1 replica(s) x "
                                  "16 per replica x 1 accumulation step(s)")
    assert headers["mirrored"] == ("strategy MirroredStrategy, 2 replica(s): global batch 16 = 2 replica(s) x "
                                   "8 per replica x 1 accumulation step(s)")
    assert_same_run(tmp / "mirrored", tmp / "default")
    # Not trivially equal: the runs trained (the zero head moved, the loss changed).
    head = weights(tmp / "default" / "model.keras")[-2]
    assert np.abs(head).max() > 1e-3
    assert len(set(losses(tmp / "default"))) == 3
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
    np.testing.assert_allclose(column(tmp / "mirrored", "val_loss"), column(tmp / "default", "val_loss"), rtol=1e-5)
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
    assert_same_run(tmp / "mirrored_micro", tmp / "default_micro")
    metrics = json.loads((tmp / "mirrored_micro" / "metrics.json").read_text())
    assert metrics["updates"] == 3


def test_a_global_batch_that_does_not_divide_over_replicas_is_one_line(compared):
    tmp, headers = compared
    code, err = headers["refused_micro"]
    assert code == 2 and err.strip().splitlines() == [
        "bit_keras finetune: error: micro-batch 3 must divide the batch of 8 per replica (16 over 2 replicas); "
        "global batch = replicas x micro-batch x accumulation steps."]
    code, err = headers["refused_batch"]
    assert code == 2 and "Global batch 15 does not divide over 2 replicas" in err and len(err.strip().splitlines()) == 1
    code, err = headers["refused_no_tf_config"]
    assert code == 2 and "needs TF_CONFIG" in err and len(err.strip().splitlines()) == 1
    assert not (tmp / "refused").exists()


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

    def no_work(args):   # the checks come before anything is loaded or built
        raise AssertionError("the command started working before refusing its flags")

    def cli(*argv):
        args = cli_main.build_parser().parse_args(["finetune", "--variant", "r14x1", "--output",
                                                   str(tmp_path / "run"), *FINETUNE, *argv])
        args.handler = no_work
        return cli_main._main(args), capsys.readouterr().err.strip().splitlines()

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                         "index": 5}}))
    code, lines = cli("--strategy", "multi_worker")
    assert code == 2 and len(lines) == 1 and "TF_CONFIG's task (worker 5) is outside its cluster" in lines[0]
    monkeypatch.delenv("TF_CONFIG")
    for count in ("0", "-3"):
        code, lines = cli("--strategy", "mirrored", "--cpu-devices", count)
        assert code == 2 and lines == [f"bit_keras finetune: error: cpu device count must be >= 1. Received: {count}"]
    for timeout in ("0", "nan", "-1"):
        code, lines = cli("--strategy", "multi_worker", "--cluster-timeout", timeout)
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
    done = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_JOINING, f"127.0.0.1:{free_ports(1)[0]}"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=HANG_SECONDS)
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]



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
