"""`bit_keras bench --baseline pytorch`: bit_keras against PyTorch BiT, each row in its own process.

Every row (the PyTorch peer, our Keras model on each backend, the folded SavedModel) runs in
a fresh child process per round, so no row inherits another's threads, allocator or compiled
kernels; rounds alternate the row order (forwards, then backwards) so slow drift on a shared
machine hits every row alike. A child builds the network with random weights, runs `warmup`
steps, times `steps` more and prints the times as one JSON line. Ratios are the PyTorch
row's step time over a row's, per round, then the median (and the range) over rounds:
above 1 means faster than PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from bit_keras.bench.machine import thread_environment
from bit_keras.errors import ConfigError

PEER = "pytorch"
INFER_ROWS = ("pytorch", "pytorch-channels-last", "keras-tensorflow", "keras-tensorflow-folded", "savedmodel-folded",
              "keras-jax", "keras-torch")
TRAIN_ROWS = ("pytorch", "keras-tensorflow", "keras-tensorflow-xla", "keras-jax", "keras-torch")
CHILD_TIMEOUT_SECONDS = 1800  # a hang, not slowness: an R50x1 child takes about a minute here


@dataclasses.dataclass(frozen=True)
class Race:
    """One job to race: `mode` "infer" (logits of a batch) or "train" (one SGD-momentum step)."""

    variant: str = "r50x1"
    mode: str = "infer"
    size: int = 224
    batch: int = 8
    precision: str = "float32"
    num_classes: int = 1000
    warmup: int = 2
    steps: int = 3
    threads: int = 0      # 0: every core this process may use

    def rows(self) -> tuple:
        return INFER_ROWS if self.mode == "infer" else TRAIN_ROWS

    def describe(self) -> str:
        job = "inference" if self.mode == "infer" else "fine-tuning step (SGD momentum)"
        return f"{self.variant} {job}, {self.size} px, batch {self.batch}, {self.precision}, {_threads(self)} threads"


def _threads(race: Race) -> int:
    if race.threads:
        return race.threads
    from bit_keras.bench.machine import usable_cores

    return usable_cores()


def check(race: Race, rows) -> None:
    if race.mode not in ("infer", "train"):
        raise ConfigError(f"--baseline pytorch races --mode infer or train. Received: --mode {race.mode}")
    unknown = [row for row in rows if row not in race.rows()]
    if unknown:
        raise ConfigError(f"Unknown row(s) {unknown} for --mode {race.mode}; the rows are {', '.join(race.rows())}.")
    if PEER not in rows:
        raise ConfigError(f"The rows must include {PEER!r}: every ratio is to it.")


def run(race: Race, *, rounds: int = 3, rows=None, log=None) -> dict:
    """Races `rows` (default: all for the mode) over `rounds` rounds; returns the report."""
    rows = tuple(rows or race.rows())
    check(race, rows)
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1. Received: rounds={rounds}")
    times = {row: [] for row in rows}   # per row: one list of step times per round
    for index in range(rounds):
        order = rows if index % 2 == 0 else tuple(reversed(rows))
        for row in order:
            if log:
                log(f"round {index + 1}/{rounds}: {row}")
            times[row].append(_child(race, row))
    return report(race, times)


def report(race: Race, times: dict) -> dict:
    """Medians, best steps and the ratios to the PyTorch row, from {row: [[step seconds] per round]}."""
    peer = [statistics.median(round_times) for round_times in times[PEER]]
    results = []
    for row, rounds in times.items():
        medians = [statistics.median(round_times) for round_times in rounds]
        ratios = [p / m for p, m in zip(peer, medians)]
        results.append({
            "row": row,
            "step_seconds": statistics.median(medians),
            "best_step_seconds": min(min(r) for r in rounds),
            "images_per_second": race.batch / statistics.median(medians),
            "vs_pytorch": statistics.median(ratios),
            "vs_pytorch_range": [min(ratios), max(ratios)],
            "vs_pytorch_best": min(min(r) for r in times[PEER]) / min(min(r) for r in rounds),
            "step_seconds_by_round": [[round(t, 4) for t in r] for r in rounds],
        })
    from bit_keras.bench.machine import cpu_name
    from bit_keras.precision import cpu_bfloat16

    return {"race": dataclasses.asdict(race), "machine": cpu_name(), "cpu_bfloat16": cpu_bfloat16(),
            "rounds": len(peer), "results": results}


def format_report(report: dict) -> list:
    race = Race(**report["race"])
    lines = [f"{race.describe()}; {report['rounds']} round(s) of {race.steps} timed steps, every row in its "
             f"own process; ratio = PyTorch's step time / the row's (above 1: faster than PyTorch)"]
    for result in report["results"]:
        low, high = result["vs_pytorch_range"]
        lines.append(f"  {result['row']:<22} {result['step_seconds']:8.3f} s/step  {result['images_per_second']:7.2f} img/s"
                     f"  {result['vs_pytorch']:5.2f}x (rounds {low:.2f}-{high:.2f}; best vs best "
                     f"{result['vs_pytorch_best']:.2f}x)")
    fastest = max(report["results"], key=lambda result: result["vs_pytorch"])
    lines.append(f"fastest here for this job: {fastest['row']} ({fastest['vs_pytorch']:.2f}x PyTorch)")
    return lines


def _child(race: Race, row: str) -> list:
    threads = str(_threads(race))  # the same for every row: OpenMP (PyTorch, oneDNN) and TensorFlow's pools
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **thread_environment(threads))
    if row.startswith("keras-") or row.startswith("savedmodel"):
        env["KERAS_BACKEND"] = {"keras-jax": "jax", "keras-torch": "torch"}.get(row, "tensorflow")
    spec = json.dumps({"race": dataclasses.asdict(race), "row": row})
    done = subprocess.run([sys.executable, "-m", "bit_keras.peers.race", spec], capture_output=True, text=True,
                          env=env, timeout=CHILD_TIMEOUT_SECONDS)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the {row} row failed (exit {done.returncode}): {tail[0]}")
    return json.loads(lines[-1])["step_seconds"]


def _time(step, race: Race) -> list:
    for _ in range(race.warmup):
        step()
    times = []
    for _ in range(race.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _pytorch_step(race: Race, channels_last: bool):
    import numpy as np
    import torch

    from bit_keras.bench.steps import parse_variant
    from bit_keras.peers.pytorch_bit import ResNetV2

    architecture = parse_variant(race.variant)
    torch.manual_seed(0)
    model = ResNetV2(architecture.block_units, architecture.width, race.num_classes)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(0, 1, (race.batch, 3, race.size, race.size)).astype("float32"))
    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    bfloat16 = race.precision == "bfloat16"
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16)  # noqa: E731
    if race.mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast():
                return model(images).float().numpy()

        return infer
    labels = torch.from_numpy(rng.integers(0, race.num_classes, race.batch))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    model.train()

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return float(loss)

    return train


def _keras_step(race: Race, row: str):
    from bit_keras.bench.steps import make_step

    return make_step(keras_config(race, row))


def keras_config(race: Race, row: str):
    """The `bench.steps.Config` a Keras row runs."""
    from bit_keras.bench.steps import Config

    mode = "savedmodel" if row == "savedmodel-folded" else race.mode
    # keras-jax runs as JAX does by default (jit_compile "auto" is jit there): an un-jitted JAX
    # model runs op by op, which no JAX user does. keras-tensorflow-folded: `fold_standardization`.
    return Config(variant=race.variant, size=race.size, batch=race.batch, mode=mode,
                  precision=race.precision, jit=row.endswith("-xla") or row == "keras-jax",
                  fold=row.endswith("-folded"), num_classes=race.num_classes)


def _child_main(spec: str) -> None:
    spec = json.loads(spec)
    race, row = Race(**spec["race"]), spec["row"]
    if row.startswith("pytorch") or row == "keras-torch":
        import torch

        torch.set_num_threads(_threads(race))
    if row.startswith("pytorch"):
        step = _pytorch_step(race, channels_last=row.endswith("channels-last"))
    else:
        from bit_keras.cli.quiet import quiet_python_logs

        quiet_python_logs()
        step = _keras_step(race, row)
    print(json.dumps({"row": row, "step_seconds": _time(step, race)}), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1])
