"""Run logs: JSONL metrics, TensorBoard event files, a rich progress bar, and curve plots.

Everything goes to one run directory::

    run_dir/metrics.jsonl      one JSON object per logged step: {"step", "split", ...metrics}
    run_dir/tensorboard/       event files (tensorboardX; open with `tensorboard --logdir run_dir`)
    run_dir/curves.png         train/validation curves (:func:`plot_curves`)

Example::

    with jt.RunLogger("runs/exp1") as log:
        log.log(step, {"loss": 0.3}, split="train")
    jt.plot_curves("runs/exp1/metrics.jsonl", "runs/exp1/curves.png")
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable

import numpy as np


class RunLogger:
    """Writes metrics to ``metrics.jsonl`` and TensorBoard under ``run_dir``.

    ``resume_step``: the step a resumed run restarts from (0 when it had no checkpoint yet). Rows
    logged after it are dropped from ``metrics.jsonl``, and TensorBoard is told to purge its events
    after it, so a resumed run never shows the steps it is about to redo twice.

    Example::

        log = RunLogger("runs/exp1", resume_step=200)    # metrics.jsonl keeps steps <= 200
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, resume_step: int | None = None):
        self.run_dir = os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.jsonl_path = os.path.join(self.run_dir, "metrics.jsonl")
        if resume_step is not None:
            truncate_jsonl(self.jsonl_path, resume_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, metrics: dict, split: str = "train") -> None:
        """Appends ``metrics`` (numbers; device arrays are fetched) for ``step`` and ``split``."""
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        """Makes everything logged so far durable: ``metrics.jsonl`` and the TensorBoard event file."""
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLogger:
    """A :class:`RunLogger` that writes nothing: what the processes other than process 0 of a
    multi-process run log through (process 0 writes the run's ``metrics.jsonl``).

    Example::

        log = RunLogger(run_dir) if jt.is_main_process() else NullLogger(run_dir)
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.jsonl_path = os.path.join(self.run_dir, "metrics.jsonl")

    def log(self, step: int, metrics: dict, split: str = "train") -> None:
        """Does nothing."""

    def flush(self) -> None:
        """Does nothing."""

    def close(self) -> None:
        """Does nothing."""


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> None:
    """Drops the rows of a ``metrics.jsonl`` logged after ``last_step`` (atomically: a run killed
    meanwhile leaves the old file or the new one). A half-written last line is dropped too.

    Example::

        truncate_jsonl("runs/exp1/metrics.jsonl", 200)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the torn last line of a run killed while logging
            if row["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use.

    Example::

        plt = pyplot(); fig, ax = plt.subplots()
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | os.PathLike, *, title: str | None = None, dpi: int = 100,
                title_size: float | None = None) -> str:
    """Adds the ``title`` (if any), lays out, writes ``fig`` to ``path``, closes it; returns the path.

    Example::

        save_figure(fig, "out/curves.png", title="run 3")
    """
    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return os.fspath(path)


_SPLIT_COLORS = {"train": "C0", "validation": "C1", "test": "C3"}  # the same colour per split in every panel


def plot_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> str:
    """Plots every metric of every split against the step, one panel per metric name; returns the PNG path."""
    plt = pyplot()

    records = read_jsonl(jsonl_path)
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        for k, v in r.items():
            if k in ("step", "split") or not isinstance(v, (int, float)) or math.isnan(v):
                continue
            xs, ys = series.setdefault(k, {}).setdefault(r["split"], ([], []))
            xs.append(r["step"])
            ys.append(v)
    if not series:
        raise ValueError(f"{jsonl_path} holds no metrics to plot")
    names = sorted(series, key=lambda n: (n != "loss", n))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        for split, (xs, ys) in sorted(series[name].items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=split,
                    color=_SPLIT_COLORS.get(split))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    return save_figure(fig, out_png, title=title)


def plot_classification_report(report, out_png: str | os.PathLike, title: str | None = None) -> str:
    """A PNG of a :class:`jaxtune.metrics.ClassificationReport`: the confusion matrix (counts) beside
    per-class precision / recall / F1 bars; returns the path."""
    plt = pyplot()

    names = list(report.label_names)
    n = len(names)
    fig, (ax_cm, ax_bar) = plt.subplots(1, 2, figsize=(5 + 0.6 * n, 3.5 + 0.25 * n))
    ax_cm.imshow(report.confusion, cmap="Blues")
    dark = report.confusion.max() / 2
    for i in range(n):
        for j in range(n):
            ax_cm.text(j, i, str(int(report.confusion[i, j])), ha="center", va="center", fontsize=8,
                       color="white" if report.confusion[i, j] > dark else "black")
    ax_cm.set_xticks(range(n), names, rotation=45, ha="right")
    ax_cm.set_yticks(range(n), names)
    ax_cm.set_xlabel("predicted")
    ax_cm.set_ylabel("true")
    width = 0.27
    x = np.arange(n)
    for k, (label, values) in enumerate((("precision", report.precision), ("recall", report.recall), ("F1", report.f1))):
        ax_bar.bar(x + (k - 1) * width, values, width, label=label)
    ax_bar.set_xticks(x, names, rotation=45, ha="right")
    ax_bar.set_ylim(0, 1)
    ax_bar.legend(fontsize=8)
    ax_bar.set_title(f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}", fontsize=9)
    return save_figure(fig, out_png, title=title)


def progress_bar(total: int, description: str = "train", disable: bool = False):
    """A rich progress bar showing loss, examples/s and ETA.

    Example::

        with jt.progress_bar(total_steps) as bar:
            task = bar.tasks[0].id
            bar.update(task, advance=1, loss=0.3, ex_per_s=120.0)
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ex_per_s]:.1f} ex/s"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=disable)
    bar.add_task(description, total=total, loss=float("nan"), ex_per_s=0.0)
    return bar


def format_table(rows: Iterable[dict], columns: list[str]) -> str:
    """A plain text table of dicts (numbers to 4 decimals) for printing results."""
    rows = list(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line([cell(r.get(c, "")) for c in columns]) for r in rows])
