"""`bit_keras vtab`: VTAB-1k (19 tasks), one HyperRule fine-tune per task, and the paper-style results table."""

from __future__ import annotations

import json
import os
import sys

from bit_keras.cli.common import (MODEL_HELP, add_data_flags, add_fine_tuning_flags, add_hardware_flags, add_model_flags,
                                  make_cli_strategy, resolve_source)


def register(subparsers):
    parser = subparsers.add_parser(
        "vtab", help="Run VTAB-1k (19 tasks): fine-tune per task with the HyperRule and write the results table.",
        description="Fine-tunes one model per VTAB task (1000 examples: 500 steps at batch 512, no MixUp) in "
                    "OUTPUT/TASK, scores it on the task's test split and writes OUTPUT/results.{csv,md,json,png}. "
                    "Running again skips finished tasks and resumes interrupted ones, when they were run with the "
                    "same model, weights, protocol, batch, steps, resolution and seed (else they are refused).")
    parser.add_argument("--list", action="store_true", help="Print the 19 tasks (group, classes, splits, tfds name).")
    parser.add_argument("--json", action="store_true", help="With --list or --dry-run: print JSON.")
    parser.add_argument("--dry-run", action="store_true", help="Print each task's HyperRule plan; touches no data.")
    add_model_flags(parser, variant_help=MODEL_HELP + " Or an export directory. Needed to run the tasks (not "
                    "for --list; --dry-run takes it for the resolution).")
    parser.add_argument("--output", default=None, help="Results folder: one run folder per task and results.*.")
    parser.add_argument("--tasks", default="all", help="all, natural, specialized, structured or NAME,NAME,...")
    parser.add_argument("--protocol", default="1k", choices=("1k", "val", "full"),
                        help="1k: train800+val200 -> test (default); val: train800 -> val200; full: trainval -> test.")
    add_data_flags(parser, dataset=False)
    add_fine_tuning_flags(parser, batch_dest="batch_size", micro_batch_dest="micro_batch_size")
    parser.add_argument("--quiet", action="store_true", help="One line per evaluation instead of a progress bar.")
    add_hardware_flags(parser.add_argument_group("hardware (passed to every fine-tune)"))
    parser.set_defaults(handler=run_vtab)


def run_vtab(args):
    from bit_keras.errors import UsageError
    from bit_keras.vtab import TASKS, select

    if args.list:
        return _print_list(TASKS, args.json)
    from bit_keras.vtab.run import check_numbers, plan

    tasks = select(args.tasks)
    # Every flag is checked before the first task (or the plan): a bad number or model fails here.
    check_numbers(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, steps=args.steps,
                  resolution=args.resolution, seed=args.seed)
    rows = plan(tasks, args.protocol, variant=args.variant, batch_size=args.batch_size, steps=args.steps,
                resolution=args.resolution)
    if args.dry_run:
        return _print_plan(rows, args.json)
    if args.variant is None or args.output is None:
        raise UsageError("--variant and --output are required to run (or use --list / --dry-run).")
    source = resolve_source(args)
    strategy = make_cli_strategy(args)
    from bit_keras.vtab.run import RESULTS, means, run_vtab as run  # Keras loads only now

    rows = run(source, output=args.output, tasks=tasks, protocol=args.protocol, data_dir=args.data_dir,
               download=args.download, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
               steps=args.steps, resolution=args.resolution, seed=args.seed,
               verbose=2 if args.quiet or not sys.stdout.isatty() else 1, log=print, strategy=strategy)
    for row in rows:
        score = f"{row['accuracy']:.1f}%" if row["accuracy"] is not None else row["error"]
        print(f"{row['task']:<22} {row['group']:<12} {row['status']:<13} {score}")
    mean = means(rows)["all"]
    print(f"mean of 19: {mean:.1f}%" if mean is not None else "mean of 19: needs all 19 tasks")
    print("Wrote " + ", ".join(os.path.join(args.output, name) for name in RESULTS))
    return 1 if any(row["error"] for row in rows) else 0


def _print_list(tasks, as_json):
    rows = [{"task": t.name, "title": t.title, "group": t.group, "classes": t.num_classes, "tfds": t.tfds_name,
             "image_size": list(t.image_size), "splits": t.splits} for t in tasks]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'task':<22} {'group':<12} {'classes':>12}  {'tfds dataset':<52} splits (protocol 1k)")
    for r in rows:
        print(f"{r['task']:<22} {r['group']:<12} {r['classes']:>4} classes  {r['tfds']:<52} "
              f"train {r['splits']['train800val200']}  test {r['splits']['test']}")
    counts = {g: sum(t.group == g for t in tasks) for g in ("natural", "specialized", "structured")}
    print(f"{len(tasks)} tasks: " + ", ".join(f"{n} {g}" for g, n in counts.items()))
    return 0


def _print_plan(rows, as_json):
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        rule = row["hyperrule"]
        if rule is None:
            print(f"{row['task']:<22} {row['group']:<12} the full training set: its size (and so the schedule) "
                  "is known once the data is prepared")
            continue
        mixup = f"MixUp {rule['mixup_alpha']}" if rule["mixup_alpha"] else "no MixUp"
        print(f"{row['task']:<22} {row['group']:<12} {row['train_size']} examples -> {rule['total_steps']} steps "
              f"at batch {rule['batch_size']}, lr {rule['base_learning_rate']:g}, {mixup}, "
              f"{rule['resize']} -> {rule['crop']} px")
    return 0
