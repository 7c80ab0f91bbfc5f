"""A/B of two source trees on one `bench --baseline pytorch` row: fresh process per step batch, alternating.

Each round runs the row once with tree A on PYTHONPATH and once with tree B (order alternating
round by round), each in its own process (`bit_keras.peers.race`'s child), and prints the
per-round ratio A/B of the median step times (above 1: B is faster) and the load average.

    git archive HEAD | tar -x -C /tmp/base
    python benchmarks/ab_trees.py /tmp/base . --row keras-tensorflow --mode infer --size 224 --batch 8 --rounds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree_a")
    parser.add_argument("tree_b")
    parser.add_argument("--row", default="keras-tensorflow")
    parser.add_argument("--mode", default="infer")
    parser.add_argument("--variant", default="r50x1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--env-b", default="", help="extra KEY=VALUE,... for B's process only")
    args = parser.parse_args(argv)
    race = {"variant": args.variant, "mode": args.mode, "size": args.size, "batch": args.batch,
            "precision": args.precision, "warmup": 2, "steps": args.steps, "threads": args.threads}
    trees = {"A": os.path.abspath(args.tree_a), "B": os.path.abspath(args.tree_b)}
    extra = dict(item.split("=", 1) for item in args.env_b.split(",") if item)
    times = {"A": [], "B": []}
    for index in range(args.rounds):
        for name in ("A", "B") if index % 2 == 0 else ("B", "A"):
            threads = str(args.threads)
            env = dict(os.environ, PYTHONPATH=trees[name], TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=threads,
                       TF_NUM_INTRAOP_THREADS=threads,
                       KERAS_BACKEND={"keras-jax": "jax", "keras-torch": "torch"}.get(args.row, "tensorflow"))
            if name == "B":
                env.update(extra)
            spec = json.dumps({"race": race, "row": args.row})
            done = subprocess.run([sys.executable, "-m", "bit_keras.peers.race", spec], capture_output=True,
                                  text=True, env=env, cwd=trees[name])
            line = [x for x in done.stdout.splitlines() if x.startswith("{")]
            if not line:
                sys.exit(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}")
            times[name].append(statistics.median(json.loads(line[-1])["step_seconds"]))
        with open("/proc/loadavg") as handle:
            load = handle.read().split()[0]
        print(f"round {index + 1}: A {times['A'][-1]:.3f} s  B {times['B'][-1]:.3f} s  A/B "
              f"{times['A'][-1] / times['B'][-1]:.2f}x  (load {load})", flush=True)
    ratios = [a / b for a, b in zip(times["A"], times["B"])]
    print(f"{args.row} {args.mode} {args.size} px batch {args.batch} {args.precision}, {args.threads} thread(s): "
          f"A {statistics.median(times['A']):.3f} s/step, B {statistics.median(times['B']):.3f} s/step, "
          f"A/B median {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
