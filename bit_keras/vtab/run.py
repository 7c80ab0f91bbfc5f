"""`run_vtab()`: one resumable `finetune` run per task in OUTPUT/NAME, then the results table and chart.

Each task folder holds vtab.json, the configuration its run was started with (model, the
SHA-256 of its weights, protocol, batch, steps, resolution, seed). A folder that holds a run
is reused (a finished one read back, an interrupted one resumed) only when that record equals
this benchmark's; otherwise the task is refused in its row, as `finetune` refuses to resume a
changed run, and never scored as this model's. Every value read back from a metrics.json is
checked (an accuracy in [0, 1]); a damaged file fails its own row, named, and is left as it is.
A task that fails gets a row saying why and the others go on. results.{csv,md,json,png} are
rewritten (atomically) after every task, so a killed benchmark still leaves the table of
what finished. The benchmark holds a lock on OUTPUT, so two cannot write one table.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os

from bit_keras import files, hyperrule, plots, presets, runs, weights
from bit_keras.errors import ConfigError, DiskFullError, StoppedError
from bit_keras.vtab.tasks import GROUPS, PROTOCOLS, PUBLISHED_GROUP_MEANS, PUBLISHED_MEAN, TASKS, select

RESULTS = ("results.csv", "results.md", "results.json", "results.png")
COLUMNS = ("task", "title", "group", "accuracy", "status", "error", "run")
RECORD_FILE = "vtab.json"  # in each task folder: the configuration its run was started with


def check_numbers(*, batch_size, micro_batch_size=None, steps=None, resolution=None, seed=0) -> None:
    """Raises ConfigError for a number no task could run with, before the first task starts."""
    for name, value in (("batch_size", batch_size), ("micro_batch_size", micro_batch_size), ("steps", steps),
                        ("resolution", resolution)):
        if (value is not None or name == "batch_size") and not (_is_int(value) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}")
    if micro_batch_size is not None and batch_size % micro_batch_size:
        raise ConfigError(f"micro_batch_size must divide the batch of {batch_size} (batch = replicas x micro-batch "
                          f"x accumulation steps). Received: micro_batch_size={micro_batch_size}")
    if not (_is_int(seed) and 0 <= seed < 2 ** 32):
        raise ConfigError(f"seed must be an integer in [0, 2**32). Received: seed={seed!r}")


def plan(tasks, protocol="1k", *, variant=None, batch_size=512, steps=None, resolution=None) -> list:
    """Per task, the HyperRule a run would use, from the split slices alone (no data touched).

    A model name is checked (an unknown one is refused); an export directory's own metadata
    decides its resolution, so the default is shown. `full` sizes are only known from
    prepared data, so those rows have no rule.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown VTAB protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}.")
    check_numbers(batch_size=batch_size, steps=steps, resolution=resolution)
    large = None
    if variant is not None and not weights.is_export(variant):
        large = presets.hyperrule_resolution(presets.resolve(variant)[0])
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

    `source`: what `finetune` takes (a model name, a `WeightsChoice`, an export directory or a
    Keras backbone). `tasks`: `Task`s, or names as `select` takes them ("all", "dtd,svhn").
    `strategy` goes to every `finetune` (a tf.distribute strategy or its name); in a
    multi-worker job only the chief writes the results tables and the task records.
    """
    from bit_keras.finetune.runner import METRICS_FILE, RUN_MARKERS, finetune
    from bit_keras.distribute import is_chief

    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown VTAB protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}.")
    tasks = select(tasks) if isinstance(tasks, str) else tuple(tasks)
    check_numbers(batch_size=batch_size, micro_batch_size=micro_batch_size, steps=steps, resolution=resolution,
                  seed=seed)
    if not isinstance(strategy, (str, type(None))) and micro_batch_size is not None:
        from bit_keras.distribute import per_replica_micro_batch, replicas_of

        per_replica_micro_batch(batch_size, micro_batch_size, replicas_of(strategy))  # not once per task
    chief = is_chief(name=strategy) if strategy is None or isinstance(strategy, str) else is_chief(strategy)
    if isinstance(source, str) and not weights.is_export(source):
        source = weights.resolve(source)  # a release is fetched once, here, and digested below
    record = task_record(source, protocol=protocol, batch_size=batch_size, steps=steps, resolution=resolution,
                         seed=seed)

    output = os.fspath(output)
    train_split, eval_split = PROTOCOLS[protocol]
    rows = []
    with files.locked(output) if chief else contextlib.nullcontext():
        for task in tasks:
            folder = os.path.join(output, task.name)
            row = {"task": task.name, "title": task.title, "group": task.group, "accuracy": None,
                   "status": "done", "error": None, "run": folder}
            metrics_path = os.path.join(folder, METRICS_FILE)
            held = any(os.path.lexists(os.path.join(folder, marker)) for marker in RUN_MARKERS)
            refusal = _refusal(folder, record) if held else None
            if refusal:
                row["status"], row["error"] = "failed", refusal
            elif os.path.lexists(metrics_path):
                row["status"] = "done earlier"
                row["accuracy"], row["error"] = read_score(metrics_path, eval_split)
            else:
                if chief:
                    files.write_json(os.path.join(folder, RECORD_FILE), record)  # before the run: it names it
                if log:
                    log(f"[{len(rows) + 1}/{len(tasks)}] {task.name}: fine-tuning in {folder}")
                try:
                    metrics = finetune(source, dataset=f"vtab:{task.name}", output=folder, train_split=train_split,
                                       eval_split=eval_split, batch_size=batch_size,
                                       micro_batch_size=micro_batch_size, steps=steps, resolution=resolution,
                                       data_dir=data_dir, download=download, seed=seed, verbose=verbose, log=log,
                                       strategy=strategy)
                    row["accuracy"], row["error"] = score(metrics, None, metrics_path)  # the split it was given
                except (DiskFullError, StoppedError):
                    raise  # every later task would fail alike; a rerun resumes this task from its checkpoint
                except Exception as error:  # noqa: BLE001 - one task's failure must not end the benchmark
                    row["error"] = " ".join(f"{type(error).__name__}: {error}".split())
            if row["error"]:
                row["status"], row["accuracy"] = "failed", None
            rows.append(row)
            if log and row["error"]:
                log(f"{task.name} failed: {row['error']}")
            if chief:
                write_results(output, rows, protocol=protocol)
    return rows


def task_record(source, *, protocol, batch_size, steps, resolution, seed) -> dict:
    """What a task's result depends on, as vtab.json records it (`source` resolved as `finetune` takes it)."""
    model, weights, digest = _describe(source)
    train_split, eval_split = PROTOCOLS[protocol]
    return {"model": model, "weights": weights, "weights_sha256": digest, "protocol": protocol,
            "train_split": train_split, "eval_split": eval_split, "batch_size": batch_size, "steps": steps,
            "resolution": resolution, "seed": seed}


def read_score(path, eval_split):
    """(accuracy in percent, None) from a finished task's metrics.json, or (None, why it cannot be used)."""
    try:
        metrics = files.read_json(path)
    except (OSError, ValueError) as error:  # broken JSON, undecodable bytes, unreadable
        return None, _damaged(path, f"not readable JSON: {' '.join(str(error).split())}")
    return score(metrics, eval_split, path)


def score(metrics, eval_split, path):
    """(accuracy in percent, None) from a task's metrics, every value checked; else (None, why).

    `eval_split`: the split the score must be of (None: not checked, for a run just made)."""
    if not isinstance(metrics, dict):
        return None, _damaged(path, f"holds a {type(metrics).__name__}, not the metrics of a run")
    if eval_split is not None and metrics.get("eval_split") != eval_split:  # another --protocol's number
        return None, (f"{path} holds a run scored on {metrics.get('eval_split')!r}, not {eval_split!r} "
                      "(another --protocol); use another --output")
    accuracy = metrics.get("eval_accuracy")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy) \
            or not 0 <= accuracy <= 1:
        return None, _damaged(path, f"its eval_accuracy {accuracy!r} is not an accuracy in [0, 1]")
    return round(100 * float(accuracy), 2), None


def _refusal(folder, record):
    """Why the run in `folder` is not this benchmark's to reuse (None: it is)."""
    path = os.path.join(folder, RECORD_FILE)
    again = f"move {folder} aside to run the task again, or use another --output"
    try:
        held = files.read_json(path)
    except (OSError, ValueError) as error:
        return _damaged(path, f"not readable JSON: {' '.join(str(error).split())}")
    if held is None:
        return (f"{folder} holds a run without {RECORD_FILE}, the record of the configuration it was started "
                f"with, so it cannot be told to be this model's; {again}")
    if not isinstance(held, dict):
        return _damaged(path, f"holds a {type(held).__name__}, not a configuration")
    try:
        runs.check_resume(folder, record, restart=again, name=RECORD_FILE)
    except ConfigError as error:
        return str(error)
    return None


def _damaged(path, why):
    return (f"{path} is damaged ({why}), so this task has no score; the file was left as it is: move its folder "
            "aside to run the task again")


def _describe(source):
    """(model, where its weights came from, their SHA-256 or None for random weights)."""
    from bit_keras import download
    from bit_keras.weights import WeightsChoice

    if isinstance(source, WeightsChoice):
        return source.name, source.source, download.sha256_of(source.path) if source.path else None
    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        return path, path, _tree_digest(path)
    import numpy as np

    digest = hashlib.sha256()
    for variable in source.weights:  # a Keras backbone passed in Python
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return getattr(source, "name", "backbone"), "a Keras model", digest.hexdigest()


def _tree_digest(path):
    """SHA-256 over a file, or over a directory's files (names and contents, in sorted order)."""
    from bit_keras import download

    if not os.path.isdir(path):
        return download.sha256_of(path) if os.path.isfile(path) else None
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            file = os.path.join(root, name)
            digest.update(f"{os.path.relpath(file, path)}\0{download.sha256_of(file)}\n".encode())
    return digest.hexdigest()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
