"""Detection and segmentation at 1, 2 and 8 images per replica: GN+WS vs GN vs BN vs frozen BN vs BN+WS.

Usage: python benchmarks/dense_normalization.py [--seeds 2] [--batches 1,2,8] [--steps 40] [--quick] [--out benchmarks]

A small-scale, offline analogue of the COCO comparisons behind BiT's GroupNorm + weight
standardization: detection and segmentation train with 1-2 images per device, where
BatchNorm's batch statistics fail and detection codebases freeze it. Five tiny BiT
backbones (`BiTBackbone`, r14x1 by default) that differ only in normalization are
pre-trained at a large batch on which shapes a synthetic image holds (one pre-training per
normalization family: frozen BN fine-tunes the BN one), then fine-tuned as keras-hub's
RetinaNet (pycocotools box AP) and DeepLabV3 (mean IoU) on seeded synthetic shapes
(`bit_keras.dense.shapes`, 64 px). Every micro-batch setting makes the same `--steps`
updates of `--update-batch` images (gradient accumulation), so the micro-batch changes only
the batch BatchNorm normalizes with. Seeds vary the heads' initialization and the data
order. See `bit_keras/dense/study.py` for the details.

Writes OUT/dense_normalization.{md,json,png}: Markdown tables (mean ± sample standard
deviation over seeds, [min, max]) and a chart; rewritten after every run, so a study stopped
early keeps every cell it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Published COCO results, R-50-FPN Mask R-CNN, 2 images per GPU, 2x schedule (another task and
# scale): box AP and mask AP (instance masks, not semantic mIoU). BN* (frozen BN) and GN: Wu &
# He's Detectron GroupNorm project; GN+WS: mmdetection's model zoo for Qiao et al.'s weight
# standardization. Neither reports BN or BN+WS fine-tuned at 2 images per GPU.
PUBLISHED = {"GN+WS": (40.6, 36.6), "GN": (40.3, 35.7), "frozen BN": (38.6, 34.5)}
PUBLISHED_SOURCE = ("COCO, R-50-FPN Mask R-CNN, 2 images/GPU, 2x schedule: frozen BN (BN*) and GN from Wu & He's "
                    "Detectron GroupNorm project, GN+WS from mmdetection's weight-standardization model zoo")
TASKS = {"detection": "box AP (pycocotools)", "segmentation": "mean IoU"}
QUICK = {"seeds": 1, "batches": "1,8", "steps": 2, "pretrain_steps": 2, "train_images": 16, "test_images": 8}


def parse(argv):
    from bit_keras.dense.study import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per cell")
    parser.add_argument("--batches", default="1,2,8", help="images per micro-batch (per replica); each divides "
                                                          "--update-batch")
    parser.add_argument("--steps", type=int, default=40, help="updates per fine-tuning run")
    parser.add_argument("--update-batch", type=int, default=8, help="images per update")
    parser.add_argument("--pretrain-steps", type=int, default=60, help="pre-training updates per family")
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--test-images", type=int, default=128)
    parser.add_argument("--size", type=int, default=64, help="image side (a multiple of 32)")
    parser.add_argument("--units", default="1,1,1,1", help="units per block of the BiTBackbone")
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam, fine-tuning")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3, help="Adam, pre-training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in a minute or two: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                         for k, v in QUICK.items()))
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--from-json", help="only redraw the tables and chart from a study's .json")
    args = parser.parse_args(argv)
    if args.quick:
        explicit = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or []) if a.startswith("--")}
        for key, value in QUICK.items():
            if key not in explicit:
                setattr(args, key, value)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.units = tuple(int(u) for u in args.units.split(","))
    args.variants = args.variants.split(",")
    args.tasks = args.tasks.split(",")
    if any(args.update_batch % b for b in args.batches):
        parser.error(f"every --batches value must divide --update-batch {args.update_batch}")
    if set(args.tasks) - set(TASKS) or set(args.variants) - set(VARIANTS):
        parser.error(f"--tasks from {','.join(TASKS)}; --variants from {','.join(VARIANTS)}")
    if args.size % 32:
        parser.error("--size must be a multiple of 32 (the P5 stride)")
    return args


def summarize(results, variants, batches, tasks) -> dict:
    """{task: {variant: {batch: {mean, std, min, max, n}}}} of scores in %."""
    table = {}
    for task in tasks:
        for variant in variants:
            for batch in batches:
                values = [100 * r["score"] for r in results
                          if r["task"] == task and r["variant"] == variant and r["batch"] == batch]
                if values:
                    table.setdefault(task, {}).setdefault(variant, {})[batch] = {
                        "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "n": len(values)}
    return table


def markdown(summary, pretraining, variants, batches, meta) -> str:
    lines = []
    for task, column in TASKS.items():
        if task not in summary:
            continue
        published = "box AP" if task == "detection" else "mask AP (instance masks)"
        lines += [f"**{task.capitalize()}: {column} on the synthetic shapes, % (mean ± sd [min, max] over "
                  f"{meta['seeds']} seed(s))**", "",
                  "| backbone | " + " | ".join(f"{b} image{'s' if b > 1 else ''} per replica" for b in batches)
                  + f" | published COCO {published}: another task and scale |",
                  "|---|" + "---|" * len(batches) + "---|"]
        for variant in variants:
            cells = []
            for batch in batches:
                s = summary[task].get(variant, {}).get(batch)
                short = f" (n={s['n']})" if s and s["n"] < meta["seeds"] else ""  # a study stopped early
                cells.append(f"{s['mean']:.1f} ± {s['std']:.1f} [{s['min']:.1f}, {s['max']:.1f}]{short}" if s else "-")
            paper = PUBLISHED.get(variant)
            paper = f"{paper[0 if task == 'detection' else 1]:.1f}" if paper else "not reported"
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {paper} |")
        lines.append("")
    lines.append("Pre-training (one per normalization family, batch {pretrain_batch}, {pretrain_steps} updates): "
                 .format(**meta) + "; ".join(f"{p['family']} test exact-match {100 * p['test_exact_match']:.0f}%"
                                             for p in pretraining) + ".")
    lines.append("")
    lines.append(f"{meta['model']} ({meta['size']} px; RetinaNet P3-P5 with 1 head conv, DeepLabV3 ASPP on P5), "
                 f"{meta['steps']} updates of {meta['update_batch']} images per run (Adam {meta['lr']}), "
                 f"{meta['train_images']} training / {meta['test_images']} test images; {meta['minutes']:.1f} minutes "
                 f"on {meta['machine']}; 1-minute load average during the runs {meta['load_mean']:.1f} "
                 f"(max {meta['load_max']:.1f}). Published column: {PUBLISHED_SOURCE}.")
    return "\n".join(lines) + "\n"


def plot(summary, variants, batches, path, title):
    from bit_keras import plots

    tasks = [task for task in TASKS if task in summary]
    figure, axes = plots._figure((11, 4.6), panels=len(tasks))
    axes = [axes] if len(tasks) == 1 else list(axes)
    width = 0.8 / len(batches)
    for ax, task in zip(axes, tasks):
        for index, batch in enumerate(batches):
            xs = [i + (index - (len(batches) - 1) / 2) * width for i in range(len(variants))]
            cells = [summary[task].get(v, {}).get(batch) for v in variants]
            means = [c["mean"] if c else float("nan") for c in cells]
            low = [c["mean"] - c["min"] if c else 0 for c in cells]
            high = [c["max"] - c["mean"] if c else 0 for c in cells]
            ax.bar(xs, means, width, yerr=[low, high], capsize=3, color=f"C{index}",
                   label=f"{batch} image{'s' if batch > 1 else ''} per replica")
        ax.set_xticks(range(len(variants)), variants)
        ax.set(ylabel=f"{TASKS[task]} (%)", ylim=(0, 100), title=task)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper right", title="bar: mean, whisker: min-max", title_fontsize="small")
    figure.suptitle(title, fontsize="medium")
    return plots._save(figure, path)


def write(results, pretraining, args, minutes, loads):
    import tensorflow as tf

    from bit_keras.architecture import Architecture
    from bit_keras.files import staged_file

    seeds = len({r["seed"] for r in results})
    name = Architecture(args.units, args.width).name
    summary = summarize(results, args.variants, args.batches, args.tasks)
    meta = {"model": f"BiTBackbone {name}", "size": args.size, "steps": args.steps, "update_batch": args.update_batch,
            "pretrain_steps": args.pretrain_steps, "pretrain_batch": args.pretrain_batch, "lr": args.lr,
            "train_images": args.train_images, "test_images": args.test_images, "seeds": seeds,
            "minutes": minutes, "threads": args.threads,
            "load_mean": statistics.mean(loads) if loads else float("nan"),
            "load_max": max(loads) if loads else float("nan"),
            "machine": f"{args.threads} CPU threads ({platform.processor() or platform.machine()}), "
                       f"TensorFlow {tf.__version__}"}
    table = markdown(summary, pretraining, args.variants, args.batches, meta)
    print(table, flush=True)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "dense_normalization")
    with staged_file(base + ".md", overwrite=True) as staging, open(staging, "w") as f:
        f.write(table)
    with staged_file(base + ".json", overwrite=True) as staging, open(staging, "w") as f:
        json.dump({"meta": meta, "args": vars(args), "pretraining": pretraining, "loads": loads,
                   "results": results, "summary": summary}, f, indent=1, default=str)
    plot(summary, args.variants, args.batches, base + ".png",
         f"Small-scale analogue (not COCO): {name} on {args.size} px synthetic shapes, {seeds} seed(s), "
         f"{args.steps} updates of {args.update_batch} images")
    print(f"wrote {base}.md, .json, .png", flush=True)
    return base


def main(argv=None):
    args = parse(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        results = saved["results"]
        for key in ("steps", "update_batch", "pretrain_steps", "pretrain_batch", "lr", "train_images",
                    "test_images", "size"):
            setattr(args, key, saved["meta"][key])
        for key in ("batches", "variants", "tasks", "units", "width"):
            setattr(args, key, saved["args"][key])
        loads = saved["loads"]
        return write(results, saved["pretraining"], args, saved["meta"]["minutes"], loads)

    import tensorflow as tf

    from bit_keras.dense.shapes import synthetic_shapes
    from bit_keras.dense.study import finetune, pretrain, pretraining_family

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already ran in this process (main() called from Python): keep its pools
        pass
    # Three disjoint seeded sets of images: pre-training, fine-tuning, test.
    pretrain_set = synthetic_shapes(max(args.pretrain_batch * 8, 64), args.size, seed=1001)
    train_set = synthetic_shapes(args.train_images, args.size, seed=1002)
    test_set = synthetic_shapes(args.test_images, args.size, seed=1003)
    sizes = {"units": args.units, "width": args.width}
    start = time.perf_counter()
    loads, pretrained = [], {}
    for family in dict.fromkeys(pretraining_family(v) for v in args.variants):
        loads.append(os.getloadavg()[0])
        pretrained[family] = pretrain(family, pretrain_set, test_set, updates=args.pretrain_steps,
                                      batch=args.pretrain_batch, seed=0, lr=args.pretrain_lr,
                                      block_units=args.units, width=args.width)
        print(json.dumps({k: v for k, v in pretrained[family].items() if k != "weights"}), flush=True)
    pretraining = [{k: v for k, v in p.items() if k != "weights"} for p in pretrained.values()]
    results, base = [], None
    for seed in range(args.seeds):       # seeds outermost: a study cut short still covers every cell
        for batch in args.batches:
            for variant in args.variants:
                for task in args.tasks:
                    load = os.getloadavg()[0]
                    loads.append(load)
                    result = finetune(task, variant, pretrained[pretraining_family(variant)], train_set, test_set,
                                      batch=batch, update_batch=args.update_batch, updates=args.steps, seed=seed,
                                      lr=args.lr, block_units=args.units, width=args.width)
                    result["load1"] = load
                    results.append(result)
                    print(json.dumps(result), flush=True)
                    # After every run: a study stopped early keeps what it measured.
                    base = write(results, pretraining, args, (time.perf_counter() - start) / 60, loads)
    return base


if __name__ == "__main__":
    main()
