"""What a sweep's runs say: per-point seed statistics, selection on validation, paired differences.

Pure functions over the rows a sweep writes to ``sweep.jsonl`` (one per run)::

    {"strategy": "llrd", "hparams": {"optim.learning_rate": 3e-05}, "seed": 1,
     "validation": {"val_accuracy": 0.81, ...}, "test": {"accuracy": 0.79, ...}, ...}

Hyperparameters are selected per strategy on the mean *validation* metric over seeds only; the test
metric of the selected points is then reported as mean ± sample std (ddof=1) over seeds, and
strategies are compared by paired differences over their common seeds with a t-interval.

Example::

    points = summarize_points(rows, "accuracy")
    best = select_best(points, "max")
    diffs = paired_differences(rows, best, "accuracy")
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PointSummary:
    """One grid point (a strategy and its hyperparameters) over its seeds."""

    strategy: str
    hparams: dict[str, Any]
    seeds: tuple[int, ...]
    val_mean: float
    val_std: float
    test_mean: float
    test_std: float


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Test metric of strategy ``a`` minus ``b`` (each at its selected point), paired by seed."""

    a: str
    b: str
    seeds: tuple[int, ...]
    mean: float
    std: float
    low: float
    high: float
    confidence: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values).

    Example::

        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval of the mean of ``values`` (NaN for fewer than two).

    Example::

        low, high = t_interval([0.01, 0.03, 0.02])
    """
    from scipy import stats

    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def metric_keys(metric: str) -> tuple[str, str]:
    """``(validation key, test key)`` of a metric given as ``accuracy`` or ``val_accuracy``.

    Example::

        >>> metric_keys("val_accuracy")
        ('val_accuracy', 'accuracy')
    """
    base = metric[len("val_"):] if metric.startswith("val_") else metric
    return f"val_{base}", base


def _hparams_key(hparams: Mapping[str, Any]) -> str:
    return json.dumps(hparams, sort_keys=True, default=str)


def _value(row: Mapping[str, Any], split: str, key: str) -> float:
    scores = row[split]
    if key not in scores:
        raise KeyError(f"run {row.get('run', '?')} has no {split} metric {key!r}; it has {sorted(scores)} "
                       f"(pick one with metric=..., e.g. metric={sorted(scores)[0]!r})")
    return float(scores[key])


def summarize_points(rows: Sequence[Mapping[str, Any]], metric: str) -> list[PointSummary]:
    """One :class:`PointSummary` per (strategy, hyperparameters), in the order the rows first name them."""
    val_key, test_key = metric_keys(metric)
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["strategy"], _hparams_key(row["hparams"])), []).append(row)
    points = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r["seed"])
        val = mean_std([_value(r, "validation", val_key) for r in group])
        test = mean_std([_value(r, "test", test_key) for r in group])
        points.append(PointSummary(group[0]["strategy"], dict(group[0]["hparams"]),
                                   tuple(r["seed"] for r in group), *val, *test))
    return points


def select_best(points: Sequence[PointSummary], mode: str) -> dict[str, PointSummary]:
    """Per strategy, the point with the best mean *validation* metric (``mode`` "max" or "min");
    the test metric plays no part. Ties go to the earlier point.

    Example::

        best = select_best(summarize_points(rows, "accuracy"), "max")
        best["llrd"].hparams   # {"optim.learning_rate": 3e-05}
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0

    def score(point: PointSummary) -> float:  # higher is better; a NaN mean never wins
        return -math.inf if math.isnan(point.val_mean) else sign * point.val_mean

    best: dict[str, PointSummary] = {}
    for point in points:
        if point.strategy not in best or score(point) > score(best[point.strategy]):
            best[point.strategy] = point
    return best


def selected_test_values(rows: Sequence[Mapping[str, Any]], point: PointSummary, metric: str) -> dict[int, float]:
    """``{seed: test metric}`` of the runs of one point."""
    key = _hparams_key(point.hparams)
    return {r["seed"]: _value(r, "test", metric_keys(metric)[1]) for r in rows
            if r["strategy"] == point.strategy and _hparams_key(r["hparams"]) == key}


def paired_differences(rows: Sequence[Mapping[str, Any]], selected: Mapping[str, PointSummary], metric: str,
                       confidence: float = 0.95) -> list[PairedDifference]:
    """For every pair of strategies (in ``selected``'s order), test(a) - test(b) over their common seeds:
    mean, sample std and the ``confidence`` t-interval of the mean difference."""
    values = {name: selected_test_values(rows, point, metric) for name, point in selected.items()}
    out = []
    for a, b in itertools.combinations(selected, 2):
        seeds = tuple(sorted(set(values[a]) & set(values[b])))
        diffs = [values[a][s] - values[b][s] for s in seeds]
        out.append(PairedDifference(a, b, seeds, *mean_std(diffs), *t_interval(diffs, confidence), confidence))
    return out


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _hparams_text(hparams: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hparams.items()) or "(none)"


def markdown(header: Mapping[str, Any], points: Sequence[PointSummary], selected: Mapping[str, PointSummary],
             differences: Sequence[PairedDifference], metric: str, mode: str) -> str:
    """``sweep.md``: a header (command, date, machine, seeds ...) and the three tables."""
    val_key, test_key = metric_keys(metric)
    lines = [f"# Sweep {header.get('name', '')}".rstrip(), ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "name"]
    lines += [f"- selection: best mean `{val_key}` ({mode}) over seeds, per strategy, on validation only",
              "", "## All points (mean ± sample std over seeds)", "",
              f"| strategy | hyperparameters | seeds | {val_key} | {test_key} (test) |", "|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.strategy} | {_hparams_text(p.hparams)} | {len(p.seeds)} | "
                     f"{_pm(p.val_mean, p.val_std)} | {_pm(p.test_mean, p.test_std)} |")
    lines += ["", "## Selected on validation", "",
              f"| strategy | hyperparameters | seeds | {val_key} | {test_key} (test) |", "|---|---|---|---|---|"]
    for name, p in selected.items():
        lines.append(f"| {name} | {_hparams_text(p.hparams)} | {len(p.seeds)} | "
                     f"{_pm(p.val_mean, p.val_std)} | {_pm(p.test_mean, p.test_std)} |")
    if differences:
        level = f"{differences[0].confidence:.0%}"
        lines += ["", f"## Paired test differences (same seeds, {level} t-interval)", "",
                  f"| A - B | seeds | mean ± std of {test_key}(A) - {test_key}(B) | {level} interval |",
                  "|---|---|---|---|"]
        for d in differences:
            interval = "n/a" if math.isnan(d.low) else f"[{d.low:+.4f}, {d.high:+.4f}]"
            lines.append(f"| {d.a} - {d.b} | {len(d.seeds)} | {_pm(d.mean, d.std)} | {interval} |")
    return "\n".join(lines) + "\n"


def _x_axis(points: Sequence[PointSummary]) -> tuple[list[float], list[str] | None, str, bool]:
    """x position per point, tick labels (None on a numeric axis), the axis label, and whether a log
    scale fits. One numeric hyperparameter is a numeric axis; anything else is one tick per combination."""
    keys = sorted({k for p in points for k in p.hparams})
    if len(keys) == 1 and all(isinstance(p.hparams.get(keys[0]), (int, float)) for p in points):
        xs = [float(p.hparams[keys[0]]) for p in points]
        return xs, None, keys[0], min(xs) > 0 and max(xs) / min(xs) >= 10
    texts = [_hparams_text(p.hparams) for p in points]
    ticks = list(dict.fromkeys(texts))
    return [float(ticks.index(t)) for t in texts], ticks, ", ".join(keys) or "point", False


def plot(points: Sequence[PointSummary], selected: Mapping[str, PointSummary], metric: str, path: str,
         title: str | None = None) -> str:
    """``sweep.png``: validation and test metric vs the hyperparameter, one line per strategy, seed
    std as error bars, the selected points starred; returns the path."""
    from jaxtune.runlog import pyplot, save_figure

    plt = pyplot()
    xs, ticks, label, log = _x_axis(points)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, (split, key) in zip(axes[0], (("validation", metric_keys(metric)[0]), ("test", metric_keys(metric)[1]))):
        for strategy in dict.fromkeys(p.strategy for p in points):
            mine = sorted((x, p) for x, p in zip(xs, points) if p.strategy == strategy)
            means = [p.val_mean if split == "validation" else p.test_mean for _, p in mine]
            stds = [p.val_std if split == "validation" else p.test_std for _, p in mine]
            line = ax.errorbar([x for x, _ in mine], means, yerr=np.nan_to_num(stds), marker="o", capsize=3,
                               label=strategy)
            chosen = [(x, m) for (x, p), m in zip(mine, means) if selected.get(strategy) == p]
            if chosen:
                ax.plot(*zip(*chosen), marker="*", markersize=14, linestyle="none", color=line[0].get_color())
        if log:
            ax.set_xscale("log")
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(label)
        ax.set_title(f"{split}: {key} (mean ± std over seeds; * selected on validation)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title=title)
