"""`run_vtab()`: one resumable `finetune` run per task in OUTPUT/NAME, then the results table and chart.

A task whose folder holds metrics.json is read back, not run again; a task that fails gets a
row saying why and the others go on. results.{csv,md,json,png} are rewritten (atomically)
after every task, so a killed benchmark still leaves the table of what finished.
"""

from __future__ import annotations

import csv
import io
import os

from bit_keras import files, hyperrule, plots, presets
from bit_keras.errors import DiskFullError, StoppedError
from bit_keras.vtab.tasks import GROUPS, PROTOCOLS, PUBLISHED_GROUP_MEANS, PUBLISHED_MEAN, TASKS

RESULTS = ("results.csv", "results.md", "results.json", "results.png")
COLUMNS = ("task", "title", "group", "accuracy", "status", "error", "run")


def plan(tasks, protocol="1k", *, variant=None, batch_size=512, steps=None, resolution=None) -> list:
    """Per task, the HyperRule a run would use, from the split slices alone (no data touched).

    `full` sizes are only known from prepared data, so those rows have no rule.
    """
    try:
        large = presets.hyperrule_resolution(presets.resolve(variant)[0]) if variant else None
    except Exception:  # an export directory: its own metadata decides; show the default
        large = None
    rows = []
    for task in tasks:
        size = task.size(PROTOCOLS[protocol][0])
        rule = None
        if size:
            rule = hyperrule.hyperrule(size, task.image_size, batch_size=batch_size,
                                       large_resolution=large or hyperrule.DEFAULT_LARGE_RESOLUTION)
            rule = hyperrule.shorten(rule, steps) if steps else rule
            rule = hyperrule.at_resolution(rule, resolution) if resolution else rule
        rows.append({"task": task.name, "group": task.group, "train_size": size,
                     "hyperrule": rule.to_dict() if rule else None})
    return rows


def run_vtab(source, *, output, tasks, protocol="1k", data_dir=None, download=True, batch_size=512,
             micro_batch_size=None, steps=None, resolution=None, seed=0, verbose=2, log=None, strategy=None) -> list:
    """Fine-tunes `source` on each task (see the module docstring); returns the rows written to the tables.

    `strategy` goes to every `finetune` (a tf.distribute strategy or its name); in a multi-worker
    job only the chief writes the results tables.
    """
    from bit_keras.finetune.runner import METRICS_FILE, finetune
    from bit_keras.train.strategy import is_chief

    chief = is_chief(name=strategy) if strategy is None or isinstance(strategy, str) else is_chief(strategy)

    output = os.fspath(output)
    train_split, eval_split = PROTOCOLS[protocol]
    rows = []
    for task in tasks:
        folder = os.path.join(output, task.name)
        row = {"task": task.name, "title": task.title, "group": task.group, "accuracy": None,
               "status": "done", "error": None, "run": folder}
        if os.path.exists(os.path.join(folder, METRICS_FILE)):
            metrics = files.read_json(os.path.join(folder, METRICS_FILE))
            row["status"] = "done earlier"
            if metrics.get("eval_split") != eval_split:  # another --protocol's run: not this table's number
                row["status"] = "failed"
                row["error"] = (f"{folder} holds a run scored on {metrics.get('eval_split')!r}, not {eval_split!r} "
                                "(another --protocol); use another --output")
                metrics = {}
        else:
            if log:
                log(f"[{len(rows) + 1}/{len(tasks)}] {task.name}: fine-tuning in {folder}")
            try:
                metrics = finetune(source, dataset=f"vtab:{task.name}", output=folder, train_split=train_split,
                                   eval_split=eval_split, batch_size=batch_size, micro_batch_size=micro_batch_size,
                                   steps=steps, resolution=resolution, data_dir=data_dir, download=download,
                                   seed=seed, verbose=verbose, log=log, strategy=strategy)
            except (DiskFullError, StoppedError):
                raise  # every later task would fail alike; a rerun resumes this task from its checkpoint
            except Exception as error:  # noqa: BLE001 - one task's failure must not end the benchmark
                metrics, row["status"] = {}, "failed"
                row["error"] = " ".join(f"{type(error).__name__}: {error}".split())
        if metrics.get("eval_accuracy") is not None:
            row["accuracy"] = round(100 * float(metrics["eval_accuracy"]), 2)
        rows.append(row)
        if log and row["error"]:
            log(f"{task.name} failed: {row['error']}")
        if chief:
            write_results(output, rows, protocol=protocol)
    return rows


def means(rows) -> dict:
    """Our mean accuracy per group and over all 19 ("all"); None until every task in it has a score."""
    scores = {row["task"]: row["accuracy"] for row in rows}
    out = {}
    for key in (*GROUPS, "all"):
        names = [t.name for t in TASKS if key in ("all", t.group)]
        values = [scores.get(name) for name in names]
        out[key] = round(sum(values) / len(values), 2) if None not in values else None
    return out


def write_results(output, rows, *, protocol="1k") -> list:
    """results.csv / .md / .json / .png in `output`, each written atomically; returns their paths."""
    paths = [os.path.join(output, name) for name in RESULTS]
    summary = {"protocol": protocol, "tasks": rows, "means": means(rows), "published_mean": PUBLISHED_MEAN,
               "published_group_means": PUBLISHED_GROUP_MEANS}
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(paths[0], stream.getvalue())
    _write_text(paths[1], markdown(rows, protocol=protocol))
    files.write_json(paths[2], summary)
    mean = summary["means"]["all"]
    plots.vtab(rows, paths[3], title=f"VTAB ({protocol}, scored on {PROTOCOLS[protocol][1]}): accuracy per task"
               + (f", mean of 19 {mean:.1f}" if mean is not None else ""))
    return paths


def markdown(rows, *, protocol="1k") -> str:
    """The paper-style table: every task in the paper's order, the group means and the mean of 19."""
    names = tuple(PUBLISHED_MEAN)
    scores = {row["task"]: row for row in rows}
    lines = [f"| Task | Group | Ours ({protocol}) | " + " | ".join(names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for task in TASKS:
        row = scores.get(task.name, {})
        ours = _cell(row.get("accuracy")) if not row.get("error") else f"failed: {row['error']}"
        lines.append(f"| {task.title} | {task.group} | {ours} | "
                     + " | ".join(_cell(task.published[n]) for n in names) + " |")
    ours = means(rows)
    for group in GROUPS:
        lines.append(f"| **{group} mean** | | {_cell(ours[group])} | "
                     + " | ".join(_cell(PUBLISHED_GROUP_MEANS[group][n]) for n in names) + " |")
    lines.append(f"| **mean of 19** | | {_cell(ours['all'])} | "
                 + " | ".join(_cell(PUBLISHED_MEAN[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _cell(value):
    return "" if value is None else f"{value:.1f}"


def _write_text(path, text):
    with files.staged_file(path, overwrite=True) as staging, open(staging, "w", encoding="utf-8") as stream:
        stream.write(text)
