"""Pictures people would rather look at than read: schedules, training curves, benchmarks.

matplotlib is imported only when a picture is drawn (`import bit_keras` stays light), and
figures are drawn on their own Agg canvas, headless, without switching the process's
pyplot backend (a notebook keeps its own). Files are written atomically (files.staged_file).
"""

from __future__ import annotations

import csv
import os

from bit_keras import files
from bit_keras.errors import ConfigError

CURVES_FILE = "curves.png"  # what finetune and train runs leave beside their results
DPI = 100
FORMATS = (".png", ".svg", ".pdf")
SCHEDULE_SIZE = (9, 4.5)    # inches; x DPI = pixels
CURVES_SIZE = (15, 4.5)
BENCH_SIZE = (9, 3.5)
VTAB_SIZE = (9, 6)
DETECTION_PANEL = 2.6      # inches per image in `detections`


def check_path(path) -> str:
    """Refuses an unknown picture format before any work is done."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise ConfigError(f"A picture must be a {', '.join(FORMATS)} file. Received: {path!r}")
    return path


def schedule(rule, path) -> str:
    """A HyperRule's learning rate against updates, the warm-up end and each decay marked."""
    total = rule.total_steps
    marks = {}
    for name, step in [("warm-up ends", rule.warmup_steps), *(("\u00d70.1", b) for b in rule.decay_boundaries)]:
        if 0 < step < total:
            marks.setdefault(step, []).append(name)
    # The rate is linear in warm-up and flat between boundaries: a sample plus both sides of each mark is exact.
    steps = sorted({*range(0, total, max(1, total // 2000)), total - 1, *marks, *(s - 1 for s in marks)})
    figure, ax = _figure(SCHEDULE_SIZE)
    ax.plot(steps, [rule.learning_rate(s) for s in steps], color="C0")
    for start, end in zip(sorted(marks), [*sorted(marks)[1:], total]):
        ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
        ax.text(start, 0.03, f"{' + '.join(marks[start])} at {start} ", transform=ax.get_xaxis_transform(),
                rotation=90, va="bottom", ha="right", fontsize="small")
        ax.text((start + end) / 2, rule.learning_rate(start), f"lr {rule.learning_rate(start):.3g}\n",
                ha="center", va="center", fontsize="small")
    ax.set(yscale="log", xlim=(0, total), ylim=(None, 2 * rule.base_learning_rate),
           xlabel="update (optimizer step)", ylabel="learning rate (log scale)")
    epochs = rule.batch_size / rule.train_size
    ax.secondary_xaxis("top", functions=(lambda s: s * epochs, lambda e: e / epochs)).set_xlabel("epoch")
    ax.grid(alpha=0.3)
    height, width = rule.image_size
    figure.suptitle(f"BiT-HyperRule for {rule.train_size} images of {height}x{width}, batch {rule.batch_size}: "
                    f"{total} updates, peak lr {rule.base_learning_rate:g} ({rule.schedule} schedule)")
    return _save(figure, path)


def finetune_curves(metrics_csv, path, *, title, rule=None) -> str | None:
    """Loss, accuracy and learning rate against updates from a finetune run's CSV log (all sessions).

    With the run's `rule` (a `HyperRule`) the learning rate is drawn for every update, so the
    warm-up and the steps show; the log has it only at the evaluation points."""
    scalars = {}
    with open(metrics_csv, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):  # a resumed run repeats an interrupted period: the last row wins
            row = {name: _number(value) for name, value in row.items()}
            for name, value in row.items() if row.get("updates") is not None else ():
                if value is not None:
                    scalars.setdefault(name, {})[int(row["updates"])] = value
    if not scalars:
        return None
    return _curves(path, title, "update (optimizer step)", [
        ("cross-entropy loss", {"train (mean over the period)": _series(scalars, "loss"),
                                "eval": _series(scalars, "val_loss")}),
        ("accuracy (%)", {"train (mean over the period)": _series(scalars, "accuracy", 100),
                          "eval": _series(scalars, "val_accuracy", 100)}),
        ("learning rate (log scale)", _finetune_learning_rate(scalars, rule))])


def _finetune_learning_rate(scalars, rule) -> dict:
    logged = _series(scalars, "learning_rate")
    if rule is None or not scalars.get("updates"):
        return {"for the next update": logged}
    updates = list(range(min(rule.total_steps, max(scalars["updates"]))))
    return {"per update (the run's schedule)": (updates, [rule.learning_rate(step) for step in updates])}


def train_curves(log_dir, path, *, title) -> str | None:
    """Loss, top-1 and learning rate against steps from `train`'s TensorBoard scalars (all sessions)."""
    from bit_keras.summaries import read_scalars

    scalars = read_scalars(log_dir)
    if not scalars.get("loss"):
        return None
    return _curves(path, title, "step (update)", [
        ("cross-entropy loss", {"train (mean since the previous point)": _series(scalars, "loss")}),
        ("top-1 accuracy (%)", {"train (mean since the previous point)": _series(scalars, "top1", 100)}),
        ("learning rate (log scale)", {"used by the last update": _series(scalars, "learning_rate")})])


def bench(report, path) -> str:
    """`bit_keras bench`'s images/s per configuration as labelled bars."""
    results = report["results"]
    figure, ax = _figure(BENCH_SIZE)
    speeds = [r["images_per_second"] for r in results]
    rows = range(len(results))
    bars = ax.barh(rows, speeds, color=[f"C{i}" for i in rows])
    ax.set_yticks(rows, [r["label"].replace(" (", "\n(") for r in results])
    ax.invert_yaxis()  # first configuration (the baseline, if any) on top
    reference = "baseline" if results[0].get("straightforward") else "top bar"
    ax.bar_label(bars, [f" {r['images_per_second']:.1f} images/s\n {100 * r['fraction_of_peak']:.0f}% of peak"
                        + (f", {r['speedup_vs_first']:.2f}x the {reference}" if i and "speedup_vs_first" in r else "")
                        for i, r in enumerate(results)], fontsize="small")
    ax.set_xlim(0, max(speeds) * 1.5)  # room for the labels
    ax.set_xlabel(f"images per second (median of {report['steps']} timed steps; higher is better)")
    ax.set_title(f"{report['machine']}, Keras backend {report['backend']}", fontsize="small")
    first = results[0]
    figure.suptitle(f"bit_keras bench: {first['variant']} at {first['size']}px, batch {first['batch']}")
    return _save(figure, path)


def vtab(rows, path, *, title) -> str:
    """`bit_keras vtab`'s accuracy per task as bars coloured by group; a failed or unrun task has none."""
    figure, ax = _figure(VTAB_SIZE)
    groups = list(dict.fromkeys(row["group"] for row in rows))
    positions = range(len(rows))
    scores = [row["accuracy"] or 0.0 for row in rows]
    bars = ax.barh(positions, scores, color=[f"C{groups.index(row['group'])}" for row in rows])
    ax.bar_label(bars, [" failed" if row.get("error") else f" {row['accuracy']:.1f}" if row["accuracy"] is not None
                        else "" for row in rows], fontsize="small")
    ax.set_yticks(positions, [f"{row['title']} ({row['group']})" for row in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    figure.suptitle(title)
    return _save(figure, path)


def detections(examples, path, *, predictions=None, class_names=(), title="", min_score=0.3,
               show_masks=False) -> str:
    """Images in a row with ground-truth boxes (dashed) and predicted ones (solid, class: score).

    `examples` hold `image` and `boxes`/`classes` (pixel yxyx) and optionally `mask`;
    `predictions` one `{"boxes", "classes", "scores"}` per image; boxes under `min_score` are left out.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    examples = list(examples)
    if not examples:
        raise ConfigError("detections() needs at least one example to draw.")
    figure, axes = _figure((DETECTION_PANEL * len(examples), DETECTION_PANEL + 0.4), len(examples))
    axes = np.atleast_1d(axes)
    name = lambda label: class_names[label] if 0 <= label < len(class_names) else str(label)  # noqa: E731
    for index, (ax, example) in enumerate(zip(axes, examples)):
        ax.imshow(np.asarray(example["image"]), interpolation="nearest")
        if show_masks and "mask" in example:
            mask = np.asarray(example["mask"]).astype(float)
            ax.imshow(np.ma.masked_where(mask == 0, mask), cmap="tab10", alpha=0.4, interpolation="nearest",
                      vmin=0, vmax=10)
        drawn = [(example.get("boxes", ()), example.get("classes", ()), None, "--")]
        if predictions is not None:
            p = predictions[index]
            drawn.append((p["boxes"], p["classes"], p["scores"], "-"))
        for boxes, labels, scores, style in drawn:
            for k, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
                score = None if scores is None else float(np.asarray(scores).reshape(-1)[k])
                if label < 0 or (score is not None and score < min_score):
                    continue
                ymin, xmin, ymax, xmax = (float(v) for v in box)
                colour = f"C{int(label) % 10}"
                # Pixel i covers [i - 0.5, i + 0.5) in imshow's coordinates.
                ax.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin, fill=False,
                                       edgecolor=colour, linestyle=style, linewidth=1.5))
                if score is not None:
                    ax.text(xmin - 0.5, ymin - 1, f"{name(int(label))}: {score:.2f}", color=colour,
                            fontsize="x-small", va="bottom")
        ax.set_axis_off()
    figure.suptitle(title or ("ground truth (dashed)" + (", predictions (solid)" if predictions is not None else "")),
                    fontsize="small")
    return _save(figure, path)


def _number(text):
    """A CSV cell as a float; None for what CSVLogger writes when a value is missing ("NA", "")."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _series(scalars, tag, scale=1.0):
    """(steps, values) of one tag in {tag: {step: value}}, or None when it was not logged."""
    points = sorted(scalars.get(tag, {}).items())
    return ([step for step, _ in points], [value * scale for _, value in points]) if points else None


def _curves(path, title, xlabel, panels):
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(CURVES_SIZE, len(panels))
    for ax, (ylabel, series) in zip(axes, panels):
        for index, (label, points) in enumerate(series.items()):
            if points:
                ax.plot(*points, label=label, color=f"C{index}", marker="o" if len(points[0]) <= 40 else None,
                        markersize=4)
        ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log" if "log scale" in ylabel else "linear")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)


def _figure(size, panels=1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, panels)


def _save(figure, path) -> str:
    path = check_path(path)
    with files.staged_file(path, overwrite=True) as staging:
        figure.savefig(staging, format=os.path.splitext(path)[1][1:].lower(), dpi=DPI)
    return path
