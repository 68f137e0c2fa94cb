"""Run logs: JSONL metrics, TensorBoard event files, a rich progress bar, and curve plots.

Everything goes to one run directory::

    run_dir/metrics.jsonl      one JSON object per logged step: {"step", "split", ...metrics}
    run_dir/tensorboard/       event files (tensorboardX; `pip install jaxtune[tensorboard]`, then
                               `tensorboard --logdir run_dir`); each value's tag is ``<split>/<name>``,
                               exactly its JSONL split and key (e.g. ``drift/head/.*``)
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
import time
from typing import Any, Iterable, Iterator, Sequence

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
        """Appends ``metrics`` (numbers; device arrays are fetched) for ``step`` and ``split``.

        The TensorBoard tag of each value is :func:`tensorboard_tag` ``(split, name)``, verbatim.
        """
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            from tensorboardX.proto.summary_pb2 import Summary

            # Written as raw summaries: tensorboardX's add_scalar would rename tags with characters
            # outside [-/\w.] ("drift/head/.*" -> "drift/head/._"), so they would not match the JSONL.
            summary = Summary(value=[Summary.Value(tag=tensorboard_tag(split, k), simple_value=v)
                                     for k, v in values.items()])
            self._tb.file_writer.add_summary(summary, int(step))

    def flush(self) -> None:
        """Makes everything logged so far durable: ``metrics.jsonl`` and the TensorBoard event file."""
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if self._tb is not None:
            _write_queued_events(self._tb)
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


def _write_queued_events(writer: Any) -> None:
    """Waits until a tensorboardX ``SummaryWriter``'s worker thread has written every queued event:
    its ``flush()`` writes only the events that thread has already dequeued, so under load a flushed
    file could miss the last ones. The worker is stopped (its stop signal queues behind every event)
    and a fresh one started on the same queue and file."""
    events = getattr(writer._get_file_writer(), "event_writer", None)
    worker = getattr(events, "_worker", None)
    if worker is None or getattr(events, "_closed", True):
        return
    worker.stop()
    events._worker = type(worker)(events._event_queue, events._ev_writer, events._flush_secs)
    events._worker.start()


def tensorboard_tag(split: str, name: str) -> str:
    """The TensorBoard tag of metric ``name`` logged under ``split``: ``"<split>/<name>"``, unchanged.

    Example::

        >>> tensorboard_tag("drift", "no decay")
        'drift/no decay'
    """
    return f"{split}/{name}"


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


def curve_panels(records: Iterable[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """The panels :func:`plot_curves` draws: ``{title: {split: (steps, values)}}``.

    One panel per metric name (all splits together, loss first), and one per drift group titled
    ``"drift from pretrained: <group>"``. Panels where no split has two points are left out (a
    single point is no curve; ``metrics.jsonl`` keeps it).

    Example::

        >>> rows = [{"step": s, "split": "drift", "head": 0.1 * s} for s in (1, 2)]
        >>> list(curve_panels(rows))
        ['drift from pretrained: head']
    """
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        for k, v in r.items():
            if k in ("step", "split") or not isinstance(v, (int, float)) or math.isnan(v):
                continue
            title = f"drift from pretrained: {k}" if r["split"] == "drift" else k
            xs, ys = panels.setdefault(title, {}).setdefault(r["split"], ([], []))
            xs.append(r["step"])
            ys.append(v)
    order = sorted(panels, key=lambda t: (t.startswith("drift from pretrained: "), t != "loss", t))
    return {t: panels[t] for t in order if max(len(xs) for xs, _ in panels[t].values()) >= 2}


def plot_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> str:
    """Plots the :func:`curve_panels` of a ``metrics.jsonl`` against the step; returns the PNG path.

    A run too short for any curve (every metric logged once) gets a figure that says so.

    Example::

        jt.plot_curves("runs/exp1/metrics.jsonl", "runs/exp1/curves.png", title="exp1")
    """
    plt = pyplot()

    records = read_jsonl(jsonl_path)
    if not any(k not in ("step", "split") for r in records for k in r):
        raise ValueError(f"{jsonl_path} holds no metrics to plot")
    panels = curve_panels(records)
    if not panels:
        fig, ax = plt.subplots(figsize=(4.5, 1.5))
        ax.text(0.5, 0.5, "every metric has a single point:\nno curves (values in metrics.jsonl)",
                ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, out_png, title=title)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, series) in zip(axes.ravel(), panels.items()):
        for split, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=split,
                    color=_SPLIT_COLORS.get(split))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
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


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _progress_classes():
    from rich.progress import Progress, ProgressColumn
    from rich.text import Text

    class MetricsColumn(ProgressColumn):
        """``loss 0.4123  95.2 ex/s`` for a training task; nothing for a task without a loss yet."""

        def render(self, task):
            loss, speed = task.fields.get("loss", float("nan")), task.fields.get("ex_per_s", 0.0)
            return Text("" if math.isnan(loss) else f"loss {loss:.4f}  {speed:.1f} ex/s")

    class LineProgress(Progress):
        """A :class:`rich.progress.Progress` for pipes and log files, where a live bar would print
        nothing until it ends: one plain line per task every ``every_s`` seconds, and at its end."""

        def __init__(self, *columns, every_s: float, **kwargs):
            super().__init__(*columns, **kwargs)
            self.every_s = every_s
            self._printed: dict = {}

        def update(self, task_id, **kwargs) -> None:
            super().update(task_id, **kwargs)
            task = self._tasks[task_id]
            now = time.monotonic()
            if task.finished or now - self._printed.get(task_id, -math.inf) >= self.every_s:
                self._printed[task_id] = now
                print(progress_line(task), flush=True)

    return MetricsColumn, LineProgress


def progress_line(task) -> str:
    """One plain line for a rich progress ``task``: count, loss and speed (if any), elapsed, ETA.

    Example::

        finetune_llrd: 120/200 steps, loss 0.8123, 95.2 ex/s, elapsed 1:02, ETA 0:41
    """
    parts = [f"{task.description}: {int(task.completed)}/{int(task.total)} {task.fields.get('unit', 'steps')}"]
    loss = task.fields.get("loss", float("nan"))
    if not math.isnan(loss):
        parts += [f"loss {loss:.4f}", f"{task.fields.get('ex_per_s', 0.0):.1f} ex/s"]
    eta = 0.0 if task.finished else task.time_remaining
    return ", ".join(parts + [f"elapsed {_clock(task.elapsed)}", f"ETA {_clock(eta)}"])


def progress_bar(total: int, description: str = "train", disable: bool = False, unit: str = "steps",
                 every_s: float = 15.0):
    """A progress display with loss, examples/s, elapsed time and ETA, for ``total`` ``unit``.

    On a terminal it is a live rich bar; in a pipe or a log file (where a live bar shows nothing
    until it ends) it prints one line every ``every_s`` seconds (:func:`progress_line`) and one at
    the end. ``disable`` shows nothing.

    Example::

        with jt.progress_bar(total_steps) as bar:
            task = bar.tasks[0].id
            bar.update(task, advance=1, loss=0.3, ex_per_s=120.0)
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    metrics_column, line_progress = _progress_classes()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), metrics_column(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    # The ETA's speed averages over the whole run from the first step (after compiling): between log
    # points the host runs ahead of the device, so a short window sees bursts and gaps, not a speed.
    window = {"speed_estimate_period": 24 * 3600.0}
    if disable or Console().is_terminal:
        bar = Progress(*columns, disable=disable, **window)
    else:
        bar = line_progress(*columns, every_s=every_s, disable=True, **window)
    bar.add_task(description, total=total, loss=float("nan"), ex_per_s=0.0, unit=unit)
    return bar


def track(items: Sequence, description: str, bar=None, disable: bool = False) -> Iterator:
    """Yields ``items`` while a progress task counts them (an evaluation's batches: no silent minutes).

    The task is added to ``bar`` (a :func:`progress_bar` already shown) and removed at the end, or,
    without one, shown on a progress bar of its own.

    Example::

        scores = evaluate(task, eval_step, state, track(batches, "validation", bar=bar), label_names)
    """
    if bar is None:
        with progress_bar(len(items), description, disable=disable, unit="batches") as own:
            yield from _counted(own, own.tasks[0].id, items)
        return
    task_id = bar.add_task(description, total=len(items), loss=float("nan"), ex_per_s=0.0, unit="batches")
    try:
        yield from _counted(bar, task_id, items)
    finally:
        bar.remove_task(task_id)


def _counted(bar, task_id, items: Sequence) -> Iterator:
    bar.update(task_id, completed=0)
    for done, item in enumerate(items, 1):
        yield item
        bar.update(task_id, completed=done)


def format_table(rows: Iterable[dict], columns: list[str]) -> str:
    """A plain text table of dicts (numbers to 4 decimals) for printing results."""
    rows = list(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line([cell(r.get(c, "")) for c in columns]) for r in rows])
