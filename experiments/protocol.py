"""The experiment protocol: seed statistics, selection on validation, tables, plots, headers, sidecars.

Every experiment script under ``experiments/`` follows the same protocol (issue #15):

* at least 3 seeds (``train.seed``: head init, data order, dropout) per grid point;
* hyperparameters chosen on validation only (:func:`select_on_validation`: the grid point with the
  best mean validation metric over seeds), its test values then reported once per seed;
* test mean ± sample std (:func:`mean_std`) and paired differences between strategies with 95%
  Student-t intervals (:func:`paired_interval`), turned into a verdict (:func:`verdict`);
* one command writes the whole results file: a header (:func:`header_lines`), markdown tables
  (:func:`markdown_table`), a PNG (:func:`plot_lines`) and a JSON sidecar
  (:func:`write_sidecar`) that ``python experiments/index.py`` collects into ``experiments/RESULTS.md``.

Everything here is pure numpy/scipy except the plot (matplotlib, Agg) and the header (reads the
machine). Scripts import it as ``import protocol`` (``python experiments/NAME.py`` puts this folder
on ``sys.path``).

Example::

    import protocol
    val = {1e-3: {0: 0.70, 1: 0.71, 2: 0.69}, 3e-3: {0: 0.74, 1: 0.73, 2: 0.75}}
    test = {1e-3: {0: 0.68, 1: 0.70, 2: 0.69}, 3e-3: {0: 0.72, 1: 0.71, 2: 0.74}}
    chosen = protocol.select_on_validation(val, test)        # chosen.point == 3e-3
    protocol.mean_std(list(chosen.test.values()))            # (0.7233..., 0.0152...)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

VERDICTS = ("shown", "not shown", "contradicted")
SIDECAR_KEYS = ("claim", "verdict", "summary")
COMPUTE_KEYS = ("results", "minutes", "unrecorded_times", "processors")   # a sidecar's "compute": runs.Cells.compute()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``; the std is NaN for one value.

    Example::

        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_std needs a non-empty 1-D sequence of numbers, got shape {values.shape}")
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return float(values.mean()), std


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences ``a[i] - b[i]`` (the same seed at ``i``) and its two-sided
    Student-t ``confidence`` interval: ``(mean_diff, low, high)``; low and high are NaN for one pair.

    Example::

        >>> d, low, high = paired_interval([0.75, 0.76, 0.74], [0.70, 0.72, 0.71])
        >>> round(d, 4), low < d < high
        (0.04, True)
    """
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_interval needs two 1-D sequences of the same non-zero length (one value per "
                         f"seed, same seed order), got shapes {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean, std = mean_std(a - b)
    if a.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, a.size - 1)) * std / math.sqrt(a.size)
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """What an interval of ``new - baseline`` supports for the claim "new is better":
    ``"shown"`` (entirely above 0), ``"contradicted"`` (entirely below 0), else ``"not shown"``.

    Example::

        >>> verdict(0.01, 0.05), verdict(-0.02, 0.03), verdict(-0.05, -0.01)
        ('shown', 'not shown', 'contradicted')
    """
    if math.isnan(low) or math.isnan(high):
        return "not shown"
    return "shown" if low > 0 else "contradicted" if high < 0 else "not shown"


def combined_verdict(verdicts: Sequence[str]) -> str:
    """One verdict for a claim made over several conditions (e.g. "at every training-set size"):
    ``"shown"`` if shown in all, ``"contradicted"`` if contradicted in any (one condition where the
    other side is significantly better refutes a claim about every condition), else ``"not shown"``.

    Example::

        >>> combined_verdict(["shown", "shown"]), combined_verdict(["shown", "not shown"])
        ('shown', 'not shown')
        >>> combined_verdict(["not shown", "contradicted"])
        'contradicted'
    """
    unknown = sorted(set(verdicts) - set(VERDICTS))
    if unknown or not verdicts:
        raise ValueError(f"verdicts must be a non-empty list of {VERDICTS}, got {list(verdicts)}")
    if all(v == "shown" for v in verdicts):
        return "shown"
    return "contradicted" if "contradicted" in verdicts else "not shown"


def intervals_by_size(pairs: Mapping[int, tuple[Sequence[float], Sequence[float]]], digits: int = 3,
                      size_label: Callable[[int], str] = "{:,}".format) -> tuple[str, str]:
    """A claim over training-set sizes: ``{n: (a, b)}`` (per-seed values, paired) -> the combined
    verdict of the ``a - b`` intervals and their summary ``"n=100: +0.030 [+0.010, +0.050]; ..."``
    (each size written by ``size_label``).

    Example::

        >>> intervals_by_size({100: ([0.7, 0.72, 0.71], [0.6, 0.61, 0.62])})
        ('shown', 'n=100: +0.100 [+0.075, +0.125]')
    """
    verdicts, parts = [], []
    for n, (a, b) in pairs.items():
        d, low, high = paired_interval(a, b)
        verdicts.append(verdict(low, high))
        parts.append(f"n={size_label(n)}: {format_interval(d, low, high, digits)}")
    return combined_verdict(verdicts), "; ".join(parts)


def edge_lines(chosen: Sequence[tuple[str, Sequence[float], float, Sequence[float]]]) -> list[str]:
    """A results-file paragraph (after a blank line) naming every choice made at an edge of its learning-rate grid:
    ``chosen`` holds ``(what, grid, chosen value, validation value per grid point)``; a value that is the
    grid's lowest or highest (of more than one) may not be the optimum, which can lie outside the grid.
    A grid whose points all tied on validation (e.g. every rate stuck at chance) is named apart: its choice
    (the first point) says nothing about the rate. Empty when there is neither.

    Example::

        >>> edge_lines([("a", [1e-4, 3e-4], 1e-4, [0.7, 0.6]), ("b", [1e-4, 3e-4, 1e-3], 3e-4, [0.6, 0.7, 0.6])])
        ['', 'Chosen at an edge of the learning-rate grid (the best rate may lie outside it): a (0.0001, the lowest).']
        >>> edge_lines([("c", [1e-4, 3e-4], 1e-4, [0.1, 0.1])])[1]
        'Every grid point tied on validation (the first was taken; the choice says nothing about the rate): c (0.1).'
    """
    edges, ties = [], []
    for what, grid, value, validation in chosen:
        values = sorted(set(grid))
        if len(values) < 2:
            continue
        if len(set(validation)) == 1:
            ties.append(f"{what} ({validation[0]:g})")
        elif value in (values[0], values[-1]):
            edges.append(f"{what} ({value:g}, the {'lowest' if value == values[0] else 'highest'})")
    lines = []
    if edges:
        lines += ["", "Chosen at an edge of the learning-rate grid (the best rate may lie outside it): "
                      f"{'; '.join(edges)}."]
    if ties:
        lines += ["", "Every grid point tied on validation (the first was taken; the choice says nothing about the "
                      f"rate): {'; '.join(ties)}."]
    return lines


@dataclasses.dataclass(frozen=True)
class Selected:
    """The grid point chosen on validation and its per-seed test values (reported once)."""

    point: Hashable
    val_mean: float
    test: dict[int, float]


def select_on_validation(val: Mapping[Hashable, Mapping[int, float]], test: Mapping[Hashable, Mapping[int, float]],
                         mode: str = "max") -> Selected:
    """Chooses hyperparameters on validation only and reports the chosen point's test values.

    Args:
      val, test: ``{grid point: {seed: metric}}``, the validation and test metric of every run
        (every point run with the same seeds).
      mode: ``"max"`` (accuracy, F1) or ``"min"`` (a loss) of the mean validation metric.

    Returns the point with the best mean validation metric over seeds (ties: the first in ``val``'s
    order); the test values play no part in the choice.

    Example::

        >>> s = select_on_validation({"lr=1e-3": {0: 0.6, 1: 0.7}, "lr=1e-2": {0: 0.8, 1: 0.7}},
        ...                          {"lr=1e-3": {0: 0.9, 1: 0.9}, "lr=1e-2": {0: 0.5, 1: 0.6}})
        >>> s.point, s.test
        ('lr=1e-2', {0: 0.5, 1: 0.6})
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not val:
        raise ValueError("select_on_validation needs at least one grid point")
    seeds = sorted(next(iter(val.values())))
    for point, runs in val.items():
        if point not in test:
            raise KeyError(f"grid point {point!r} has validation but no test values")
        for split, values in (("validation", runs), ("test", test[point])):
            if sorted(values) != seeds:
                raise ValueError(f"grid point {point!r} has {split} seeds {sorted(values)}, the first point has "
                                 f"{seeds}; run every point with the same seeds")
    sign = 1.0 if mode == "max" else -1.0
    means = {point: mean_std([runs[s] for s in seeds])[0] for point, runs in val.items()}
    best = max(means, key=lambda p: -math.inf if math.isnan(means[p]) else sign * means[p])
    return Selected(best, means[best], {s: float(test[best][s]) for s in seeds})


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``"0.7233 ± 0.0152"`` (sample std), or the bare mean for one value.

    Example::

        >>> format_mean_std([0.5, 0.7])
        '0.6000 ± 0.1414'
    """
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_interval(mean: float, low: float, high: float, digits: int = 4) -> str:
    """``"+0.0400 [+0.0152, +0.0648]"`` (a paired difference and its interval).

    Example::

        >>> format_interval(0.04, 0.01, 0.07, digits=2)
        '+0.04 [+0.01, +0.07]'
    """
    if math.isnan(low):
        return f"{mean:+.{digits}f} [n/a]"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def format_grid(points: Sequence[Sequence[Any]], values: Sequence[float], chosen: int, added: int = 0,
                label: Callable[..., str] = lambda lr, *rest: f"{lr:g}") -> str:
    """A selection-table cell: ``label(*point): value`` per grid point, ordered by ``(rest, lr)`` of
    points ``(lr, *rest)``; the chosen one (an index into ``points``) in bold, the last ``added``
    (grown past the base grid's edge, ``member_trainer.extend_past_edges``) in italics.

    Example::

        >>> format_grid([(1e-3,), (3e-3,), (1e-2,)], [0.5, 0.6, 0.7], chosen=2, added=1)
        '0.001: 0.5000, 0.003: 0.6000, ***0.01: 0.7000***'
    """
    grown = set(range(len(points) - added, len(points)))
    order = sorted(range(len(points)), key=lambda i: (tuple(-1 if x is None else x for x in points[i][1:]),
                                                      points[i][0]))
    cells = []
    for i in order:
        text = f"{label(*points[i])}: {values[i]:.4f}"
        marks = ("**" if i == chosen else "") + ("*" if i in grown else "")
        cells.append(f"{marks}{text}{marks[::-1]}")
    return ", ".join(cells)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub markdown table as lines (cells through ``str``; ``|`` in a cell is escaped).

    Example::

        >>> markdown_table(["n", "accuracy"], [[100, "0.61 ± 0.02"]])
        ['| n | accuracy |', '|---|---|', '| 100 | 0.61 ± 0.02 |']
    """
    cell = lambda value: str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row {list(row)} has {len(row)} cells for {len(headers)} headers {list(headers)}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return lines


def plot_lines(path: str, x: Sequence[float], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
               xlabel: str, ylabel: str, title: str, log_x: bool = False) -> str:
    """A PNG (matplotlib, Agg): one line per series, ``{name: (means, stds)}`` over ``x``, stds as
    error bars (NaN std: none). Written without a timestamp, so the same numbers give the same
    bytes. Returns ``path``.

    Example::

        plot_lines("acc.png", [100, 1000], {"random": ([0.5, 0.7], [0.02, 0.01])},
                   xlabel="labelled tweets", ylabel="test accuracy", title="word vectors", log_x=True)
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (means, stds) in series.items():
        if len(means) != len(x) or len(stds) != len(x):
            raise ValueError(f"series {name!r} has {len(means)} means and {len(stds)} stds for {len(x)} x values")
        ax.errorbar(x, means, yerr=np.nan_to_num(np.asarray(stds, np.float64)), marker="o", capsize=3, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_panels(path: str, panels: Mapping[str, tuple[Sequence[float], Mapping[str, tuple[Sequence[float],
                                                                                          Sequence[float]]]]], *,
                xlabel: str, ylabel: str | Mapping[str, str], title: str, log_x: bool = False,
                hlines: Mapping[str, tuple[float, str]] | None = None) -> str:
    """A PNG with one panel per ``{panel title: (x, {name: (means, stds)})}``, side by side, each as
    :func:`plot_lines` draws one (stds as error bars; the same numbers give the same bytes; with ``log_x``,
    ticks at the panel's x values).
    ``ylabel`` may be one per panel; ``hlines``: ``{panel title: (y, label)}``, a dashed reference
    line in that panel. Returns ``path``.

    Example::

        plot_panels("acc.png", {"minilm": ([200, 1600], {"probe": ([0.5, 0.6], [0.02, 0.01])}),
                                "mobilenet_v2": ([100, 2000], {"probe": ([0.7, 0.9], [0.03, 0.01])})},
                    xlabel="training examples", ylabel="test accuracy", title="freezing", log_x=True)
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if not panels:
        raise ValueError(f"{path}: plot_panels needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, (x, series)) in zip(axes[0], panels.items()):
        for name, (means, stds) in series.items():
            if len(means) != len(x) or len(stds) != len(x):
                raise ValueError(f"panel {panel!r}, series {name!r} has {len(means)} means and {len(stds)} stds for "
                                 f"{len(x)} x values")
            ax.errorbar(x, means, yerr=np.nan_to_num(np.asarray(stds, np.float64)), marker="o", capsize=3, label=name)
        if hlines and panel in hlines:
            y, label = hlines[panel]
            ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=label)
        if log_x:   # ticks at the panel's own x values: a range under a decade would get cluttered minor labels
            ax.set_xscale("log")
            ax.set_xticks(x, [format(v, ",g") for v in x])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel[panel])
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def versions(*extra: str) -> str:
    """``"python 3.11.7, jax 0.10.2, ..."``: the versions of the packages a result depends on.

    Example::

        versions("gensim")   # '... numpy 2.1.3, gensim 4.4.0'
    """
    from importlib import metadata

    names = ["jax", "jaxlib", "flax", "optax", "numpy", *extra]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join([f"python {platform.python_version()}", *found])


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")   # what XLA:CPU's code generation uses


def cpu_description(cpuinfo: str | None = None) -> str:
    """The processor as a results file names it: model and the vector extensions XLA:CPU compiles for,
    which decide its rounding (two machines with other extensions need not agree bit for bit).
    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when None; without it, ``platform.processor()``).

    Example::

        >>> cpu_description("model name: AMD EPYC\\nflags: fpu sse2 avx2 fma")
        'AMD EPYC (x86_64: avx2, fma)'
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name") or platform.processor() or "unknown processor"
    flags = [flag for flag in VECTOR_FLAGS if flag in fields.get("flags", "").split()]
    return f"{model} ({platform.machine()}" + (f": {', '.join(flags)})" if flags else ")")


def header_lines(title: str, command: str, seeds: Sequence[int], started: float, load_at_start: float,
                 extra_versions: Sequence[str] = (), cache_note: str | None = None) -> list[str]:
    """The head of a results file: title, command, run line, machine, versions, seeds.

    Only the ``- run:`` line (date, duration, load average) changes between two runs of the same
    command on the same machine; :func:`strip_run_line` removes it for comparisons.

    Args:
      started: ``time.time()`` when the experiment started (the duration is measured to now).
      load_at_start: ``os.getloadavg()[0]`` when it started.
      cache_note: what was trained now and what read from a per-run cache (e.g.
        :meth:`runs.Cells.note`), appended to the run line.

    Example::

        start, load = time.time(), os.getloadavg()[0]
        ...
        lines = header_lines("Word vectors", "python experiments/word_vectors.py", [0, 1, 2], start, load)
    """
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    return [f"# {title}", "",
            f"- command: `{command}`",
            f"- run: {when}, {(time.time() - started) / 60:.1f} min, load average {load_at_start:.2f} at the start"
            + (f"; {cache_note}" if cache_note else ""),
            f"- machine: {platform.platform()}, {cpu_description()}, {os.cpu_count()} CPU cores",
            f"- versions: {versions(*extra_versions)}",
            f"- seeds: {', '.join(map(str, seeds))} (each varies head init, data order and dropout)", ""]


def strip_run_line(text: str) -> str:
    """``text`` without its ``- run:`` header line: what must be bit-for-bit equal between reruns.

    Example::

        assert strip_run_line(open(a).read()) == strip_run_line(open(b).read())
    """
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("- run: "))


def strip_training_time(sidecar: str | bytes) -> dict:
    """A sidecar's record without its ``compute`` minutes: what must be equal between reruns (a cell
    trained again records the time it took now, as the run line does).

    Example::

        assert strip_training_time(open(a).read()) == strip_training_time(open(b).read())
    """
    record = json.loads(sidecar)
    if "compute" in record:
        record["compute"] = {k: v for k, v in record["compute"].items() if k != "minutes"}
    return record


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run: ``python experiments/<script> <args>``, without
    ``--verify REGEX`` (it trains cached cells again to check them; the file it writes is the same,
    and its run line says what was checked).

    Example::

        >>> command_line("word_vectors.py", ["--quick"])
        'python experiments/word_vectors.py --quick'
        >>> command_line("freezing.py", ["--verify", "n=100", "--only", "cnn", "--verify=probe"])
        'python experiments/freezing.py --only cnn'
    """
    import shlex

    args, kept = sys.argv[1:] if argv is None else list(argv), []
    while args:
        arg = args.pop(0)
        if arg == "--verify":
            args = args[1:]
        elif not arg.startswith("--verify="):
            kept.append(arg)
    return shlex.join(["python", f"experiments/{script}", *kept])


def compute_summary(seconds: list, machines: list) -> dict:
    """The sidecar's ``"compute"`` (:func:`write_sidecar`) of results whose records hold training
    ``seconds`` (None where unrecorded) and ``machines`` (the processor, None where unnamed).

    Example::

        >>> compute_summary([60.0, 120.0, None], ["A (x86_64: avx2)", None, None])
        {'results': 3, 'minutes': 3.0, 'unrecorded_times': 1, 'processors': {'A (x86_64: avx2)': 1, 'not recorded': 2}}
    """
    return {"results": len(seconds), "minutes": round(sum(s for s in seconds if s is not None) / 60, 1),
            "unrecorded_times": sum(s is None for s in seconds),
            "processors": dict(sorted(Counter(m or "not recorded" for m in machines).items(),
                                      key=lambda mk: (mk[0] == "not recorded", mk[0])))}


def write_sidecar(path: str, *, title: str, command: str, results: str, claims: Sequence[Mapping[str, str]],
                  compute: Mapping | None = None) -> str:
    """Writes the machine-readable summary ``experiments/results/<name>.json`` that
    ``experiments/index.py`` lists in ``experiments/RESULTS.md``; returns ``path``.

    Args:
      title: the experiment, in a few words.
      command: the one command that writes the results file.
      results: the results file, relative to ``experiments/`` (e.g. ``results/word_vectors.md``).
      claims: ``[{"claim": ..., "verdict": "shown" | "not shown" | "contradicted", "summary": ...}]``;
        the summary gives the numbers the verdict rests on. An optional ``"sentence"`` states the claim
        as the README's findings should read it (default: the claim's text).
      compute: what the results cost to compute from scratch, for a script with a per-cell cache
        (:meth:`runs.Cells.compute`: ``{"results", "minutes", "unrecorded_times", "processors"}``);
        None for a script that trains everything on every run (its run line gives the time).

    The file holds no date and no timing of this run: a rerun that reads every cell rewrites the same
    bytes; one that trains a cell again differs only in ``compute``'s minutes (:func:`strip_training_time`).

    Example::

        write_sidecar("experiments/results/x.json", title="X", command="python experiments/x.py",
                      results="results/x.md", claims=[{"claim": "A beats B", "verdict": "shown",
                                                        "summary": "+0.03 [+0.01, +0.05]"}])
    """
    checked = []
    for i, claim in enumerate(claims):
        missing = [k for k in SIDECAR_KEYS if not claim.get(k)]
        if missing:
            raise ValueError(f"claim {i} of {path} lacks {missing}; every claim needs {list(SIDECAR_KEYS)}")
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"claim {i} of {path} has verdict {claim['verdict']!r}; use one of {VERDICTS}")
        if "sentence" in claim and not str(claim["sentence"]).strip():
            raise ValueError(f"claim {i} of {path} has an empty 'sentence'; leave it out to use the claim's text")
        optional = {"sentence": str(claim["sentence"])} if "sentence" in claim else {}
        checked.append({**{k: str(claim[k]) for k in SIDECAR_KEYS}, **optional})
    if not checked:
        raise ValueError(f"{path}: a sidecar needs at least one claim")
    record = {"title": title, "command": command, "results": results, "claims": checked}
    if compute is not None:
        missing = [k for k in COMPUTE_KEYS if k not in compute]
        if missing:
            raise ValueError(f"{path}: 'compute' lacks {missing}; give runs.Cells.compute() or None")
        record["compute"] = {k: compute[k] for k in COMPUTE_KEYS}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return path


def write_results(out: str, lines: Sequence[str], *, title: str, command: str,
                  claims: Sequence[Mapping[str, str]], compute: Mapping | None = None) -> str:
    """Writes an experiment's results file ``out`` (``lines`` joined) and its sidecar (``out`` with
    ``.json``, see :func:`write_sidecar`, ``compute`` included); returns the results text.

    Example::

        print(write_results("experiments/results/x.md", ["# X", "", "table"], title="X",
                            command="python experiments/x.py", claims=[{"claim": "A beats B",
                            "verdict": "shown", "summary": "+0.03 [+0.01, +0.05]"}]))
    """
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    write_sidecar(os.path.splitext(out)[0] + ".json", title=title, command=command,
                  results=f"results/{os.path.basename(out)}", claims=claims, compute=compute)
    return text
