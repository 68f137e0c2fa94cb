"""Metrics for scored predictions (STS-B similarity and other regression): Pearson and Spearman
correlation and mean squared error, in float64 NumPy, equal to ``scipy.stats`` (tested to 1e-9).

Re-exported from :mod:`jaxtune.metrics`.

Example:
    >>> round(pearson([1.0, 2.0, 3.0], [1.0, 2.0, 2.5]), 6)
    0.981981
    >>> round(spearman([1.0, 2.0, 3.0], [10.0, 20.0, 15.0]), 6)
    0.5
"""
from __future__ import annotations

import numpy as np

__all__ = ["mean_squared_error", "pearson", "spearman"]


def _paired(labels, predictions, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions.")
    if labels.size < minimum:
        raise ValueError(f"need at least {minimum} (label, prediction) pairs, got {labels.size}.")
    if not (np.isfinite(labels).all() and np.isfinite(predictions).all()):
        raise ValueError("labels and predictions must be finite (found NaN or inf).")
    return labels, predictions


def pearson(labels, predictions) -> float:
    """Pearson's linear correlation; ``nan`` when either side is constant (as ``scipy.stats.pearsonr``).

    Example:
        >>> round(pearson([0.0, 1.0, 2.0], [0.0, 2.0, 4.0]), 6)
        1.0
    """
    x, y = _paired(labels, predictions)
    x, y = x - x.mean(), y - y.mean()
    x_norm, y_norm = np.linalg.norm(x), np.linalg.norm(y)
    if x_norm == 0.0 or y_norm == 0.0:
        return float("nan")
    return float(np.clip(np.dot(x / x_norm, y / y_norm), -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(labels, predictions) -> float:
    """Spearman's rank correlation: Pearson's of the average ranks (ties share a rank).

    Example:
        >>> spearman([1.0, 2.0, 2.0, 4.0], [1.0, 3.0, 3.0, 9.0])
        1.0
    """
    x, y = _paired(labels, predictions)
    return pearson(_average_ranks(x), _average_ranks(y))


def mean_squared_error(labels, predictions) -> float:
    """Mean of ``(prediction - label) ** 2``.

    Example:
        >>> mean_squared_error([1.0, 2.0], [1.0, 4.0])
        2.0
    """
    x, y = _paired(labels, predictions, minimum=1)
    return float(np.mean((y - x) ** 2))
