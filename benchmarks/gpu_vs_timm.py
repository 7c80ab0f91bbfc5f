"""R50x1 on the Keras JAX and PyTorch backends against timm's `resnetv2_50x1_bit`, in one run.

For a GPU machine with JAX, PyTorch and timm but no TensorFlow. Times inference and a
training step (SGD with momentum, cross-entropy) in float32 and bfloat16 at the same
batch and resolution, each configuration in its own subprocess (a Keras backend is chosen
when Keras is imported), and prints one table with images/s and the ratio to timm's figure
for the same mode and precision. Keras models get device-resident inputs and are compiled
the way each backend runs fastest by default (XLA on JAX; eager on PyTorch unless
--torch-compile). timm runs channels-last under `torch.autocast` for bfloat16.

    python benchmarks/gpu_vs_timm.py                       # batch 256, 224 px, as on an H100
    python benchmarks/gpu_vs_timm.py --batch 2 --size 32 --steps 1   # a CPU smoke test

A missing library (timm, JAX, a GPU) makes its rows say so instead of failing the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch")
PRECISIONS = ("float32", "bfloat16")
MODES = ("inference", "training")
TIMM_MODEL = "resnetv2_50x1_bit"


def _time(step, steps, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _keras_child(options):
    """In a subprocess with KERAS_BACKEND set: the bit_keras R50x1 for one precision, both modes."""
    import keras
    import numpy as np

    import bit_keras

    precision, batch, size = options["precision"], options["batch"], options["size"]
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    backbone = bit_keras.BiTBackbone(tuple(options["block_units"]), 1, dtype=policy)
    model = bit_keras.BiTImageClassifier(backbone, 1000, dtype=policy)
    rng = np.random.default_rng(0)
    images = keras.ops.convert_to_tensor(rng.uniform(0, 1, (batch, size, size, 3)).astype("float32"))
    labels = keras.ops.convert_to_tensor(rng.integers(0, 1000, (batch,)).astype("int32"))
    jit = True if keras.backend.backend() == "jax" else options["torch_compile"]
    results = {}
    if "inference" in options["modes"]:
        model.compile(jit_compile=jit)
        seconds = _time(lambda: model.predict_on_batch(images), options["steps"], options["warmup"])
        results["inference"] = batch / seconds
    if "training" in options["modes"]:
        model.compile(optimizer=keras.optimizers.SGD(0.003, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        seconds = _time(lambda: model.train_on_batch(images, labels), options["steps"], options["warmup"])
        results["training"] = batch / seconds
    if keras.backend.backend() == "jax":
        import jax

        device = str(jax.devices()[0].device_kind)
    else:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"results": results, "device": device, "tensorflow_imported": sys.modules.get("tensorflow") is not None}


def _timm_child(options):
    """timm's resnetv2_50x1_bit, channels-last, one precision, both modes."""
    import timm
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, batch, size = options["precision"], options["batch"], options["size"]
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=1000).to(device)
    model = model.to(memory_format=torch.channels_last)
    images = torch.rand(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {}
    if "inference" in options["modes"]:
        model.eval()

        def infer():
            with torch.no_grad(), autocast:
                model(images)
            sync()

        results["inference"] = batch / _time(infer, options["steps"], options["warmup"])
    if "training" in options["modes"]:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def train():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            sync()

        results["training"] = batch / _time(train, options["steps"], options["warmup"])
    return {"results": results, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "tensorflow_imported": sys.modules.get("tensorflow") is not None}


def _run_child(kind, options, timeout):
    """One configuration in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ)
    if kind != "timm":
        env["KERAS_BACKEND"] = kind
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = (f"import json, sys; sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import gpu_vs_timm as g; "
            f"print(json.dumps(g.{'_timm_child' if kind == 'timm' else '_keras_child'}(json.loads({json.dumps(options)!r}))))")
    if options.get("block_tensorflow"):
        code = "import sys; sys.modules['tensorflow'] = None\n" + code
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        if "No module named 'timm'" in done.stderr:
            last = "timm is not installed (pip install timm)"
        elif "No module named 'jax'" in done.stderr:
            last = "JAX is not installed"
        return {"error": last[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(*, batch=256, size=224, steps=20, warmup=3, backends=BACKENDS, precisions=PRECISIONS, modes=MODES,
        torch_compile=False, block_tensorflow=False, block_units=(3, 4, 6, 3), timeout=1800) -> dict:
    rows, devices = [], set()
    for precision in precisions:
        options = {"precision": precision, "batch": batch, "size": size, "steps": steps, "warmup": warmup,
                   "modes": list(modes), "torch_compile": torch_compile, "block_tensorflow": block_tensorflow,
                   "block_units": list(block_units)}
        reference = _run_child("timm", options, timeout)
        for kind in ("timm", *backends):
            child = reference if kind == "timm" else _run_child(kind, options, timeout)
            if "device" in child:
                devices.add(child["device"])
            for mode in modes:
                value = child.get("results", {}).get(mode)
                base = reference.get("results", {}).get(mode)
                rows.append({"implementation": f"timm {TIMM_MODEL}" if kind == "timm" else f"bit_keras ({kind})",
                             "backend": kind, "precision": precision, "mode": mode, "images_per_second": value,
                             "ratio_to_timm": value / base if value and base else None,
                             "tensorflow_imported": child.get("tensorflow_imported"),
                             "note": child.get("error", "")})
    return {"batch": batch, "size": size, "steps": steps, "block_units": list(block_units),
            "devices": sorted(devices), "rows": rows}


def table(report) -> str:
    name = "R50x1" if report["block_units"] == [3, 4, 6, 3] else f"bit_keras units {report['block_units']} vs timm R50x1"
    lines = [f"{name}, {report['size']} px, batch {report['batch']}, median of {report['steps']} steps; "
             f"device: {', '.join(report['devices']) or 'unknown'}",
             "| implementation | precision | mode | images/s | vs timm |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        speed = f"{row['images_per_second']:.1f}" if row["images_per_second"] else f"not run: {row['note']}"
        ratio = f"{row['ratio_to_timm']:.2f}x" if row["ratio_to_timm"] else "n/a"
        lines.append(f"| {row['implementation']} | {row['precision']} | {row['mode']} | {speed} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--torch-compile", action="store_true", help="jit_compile=True (torch.compile) on PyTorch.")
    parser.add_argument("--no-tensorflow", action="store_true",
                        help="Make any import of TensorFlow fail in the children (checks the zoo does not need it).")
    parser.add_argument("--block-units", default="3,4,6,3",
                        help="bit_keras's units per block (a smaller model for smoke tests; timm stays R50x1).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(batch=args.batch, size=args.size, steps=args.steps, warmup=args.warmup,
                 backends=tuple(args.backends.split(",")), precisions=tuple(args.precisions.split(",")),
                 modes=tuple(args.modes.split(",")), torch_compile=args.torch_compile,
                 block_tensorflow=args.no_tensorflow,
                 block_units=tuple(int(n) for n in args.block_units.split(",")))
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
