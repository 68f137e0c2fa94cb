"""The statistics every experiment of issue #15 reports: mean ± sample std over seeds, paired differences
with t-intervals, and a markdown table writer. Minimal on purpose (built on :mod:`jaxtune.sweep_report`).

Example::

    >>> mean_std([0.5, 0.7])
    (0.6, 0.1414...)
    >>> paired_interval([0.6, 0.7, 0.8], [0.5, 0.6, 0.6])[0]
    0.1333...
"""
from __future__ import annotations

import math
from typing import Sequence

from jaxtune.sweep_report import mean_std as _mean_std
from jaxtune.sweep_report import t_interval


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for a single value)."""
    return _mean_std([float(v) for v in values])


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean_diff, low, high)``: the mean of ``a[i] - b[i]`` (values paired by seed) and its Student-t
    ``confidence`` interval (NaN bounds with fewer than two pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    low, high = t_interval(diffs, confidence)
    return mean_std(diffs)[0], low, high


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std"`` of ``values`` (just the value when there is one)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def interval_text(diff: tuple[float, float, float], digits: int = 3) -> str:
    """A :func:`paired_interval` as ``"+0.012 [-0.003, +0.027]"``."""
    mean, low, high = diff
    if math.isnan(low):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
