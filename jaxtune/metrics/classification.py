"""Classification metrics (accuracy, confusion matrix, per-class report, macro F1, MCC) and label balance."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import numpy as np


def _class_arrays(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    """Validates two aligned 1-D integer arrays of class ids."""
    y_true = np.asarray(labels)
    y_pred = np.asarray(predictions)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D arrays of class ids, got shapes "
            f"{y_true.shape} and {y_pred.shape}; flatten them (and drop ignored positions) first."
        )
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"labels and predictions differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}."
        )
    for name, array in (("labels", y_true), ("predictions", y_pred)):
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"{name} must hold integer class ids, got dtype {array.dtype}; "
                f"take the argmax of logits before scoring."
            )
        if array.size and array.min() < 0:
            raise ValueError(
                f"{name} contain the negative class id {int(array.min())}; remove ignored "
                f"positions (e.g. -100) before scoring."
            )
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with ``0.0`` where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _f1_from(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return _safe_divide(2.0 * precision * recall, precision + recall)


def accuracy(labels, predictions) -> float:
    """Fraction of predictions equal to the labels; ``nan`` for zero examples.

    Example:
        >>> accuracy([0, 1, 2, 2], [0, 1, 1, 2])
        0.75
    """
    y_true, y_pred = _class_arrays(labels, predictions)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of examples with label ``i`` predicted as ``j`` (scikit-learn layout).

    Args:
      labels: 1-D integer class ids.
      predictions: 1-D integer class ids, same length.
      num_classes: size of the matrix; defaults to ``max(labels, predictions) + 1``. A class id
        ``>= num_classes`` is an error.

    Returns:
      An ``int64`` array of shape ``(num_classes, num_classes)``; all zeros for zero examples.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 1, 0]).tolist()
        [[1, 0], [1, 1]]
    """
    y_true, y_pred = _class_arrays(labels, predictions)
    largest = int(max(y_true.max(initial=-1), y_pred.max(initial=-1)))
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(
            f"class id {largest} is outside num_classes={num_classes}; pass the size of the "
            f"label set."
        )
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """Per-class precision, recall, F1 and support, with their averages.

    Attributes:
      label_names: one name per class id.
      precision, recall, f1: float64 arrays of shape ``(num_classes,)``.
      support: int64 array, number of examples of each class in the labels.
      accuracy: overall accuracy (``nan`` for zero examples).
      macro_f1: unweighted mean F1 over the classes that occur in the labels or predictions.
      weighted_f1: support-weighted mean F1 (``nan`` for zero examples).
      confusion: the confusion matrix, rows are labels, columns predictions.
    """

    label_names: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float
    macro_f1: float
    weighted_f1: float
    confusion: np.ndarray

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Per-class ``{"precision", "recall", "f1", "support"}`` keyed by class name."""
        return {
            name: {
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(self.label_names)
        }

    def __str__(self) -> str:
        width = max([len(n) for n in self.label_names] + [len("weighted avg")])
        lines = [f"{'':>{width}}  precision  recall      f1  support"]
        for i, name in enumerate(self.label_names):
            lines.append(
                f"{name:>{width}}  {self.precision[i]:9.4f}  {self.recall[i]:6.4f}  "
                f"{self.f1[i]:6.4f}  {int(self.support[i]):7d}"
            )
        total = int(self.support.sum())
        lines.append(f"{'accuracy':>{width}}  {'':9}  {'':6}  {self.accuracy:6.4f}  {total:7d}")
        lines.append(f"{'macro f1':>{width}}  {'':9}  {'':6}  {self.macro_f1:6.4f}  {total:7d}")
        lines.append(
            f"{'weighted avg':>{width}}  {'':9}  {'':6}  {self.weighted_f1:6.4f}  {total:7d}"
        )
        return "\n".join(lines)


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, support)
    return precision, recall, _f1_from(precision, recall), support


def classification_report(
    labels, predictions, label_names: Sequence[str] | None = None
) -> ClassificationReport:
    """Per-class precision/recall/F1, accuracy, macro and weighted F1 and the confusion matrix.

    Args:
      labels: 1-D integer class ids.
      predictions: 1-D integer class ids, same length.
      label_names: names of the classes ``0..K-1``; defaults to ``"0", "1", ...`` up to the
        largest id seen. Classes that never occur still get a row (all zeros).

    Example:
        >>> report = classification_report([0, 1, 1, 2], [0, 1, 0, 0], ["neg", "neu", "pos"])
        >>> report.as_dict()["neu"]["recall"]
        0.5
        >>> print(report)  # doctest: +SKIP
    """
    y_true, y_pred = _class_arrays(labels, predictions)
    if label_names is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
        label_names = [str(i) for i in range(num_classes)]
    confusion = confusion_matrix(y_true, y_pred, num_classes=len(label_names))
    precision, recall, f1, support = _per_class(confusion)
    present = (support + confusion.sum(axis=0)) > 0
    total = support.sum()
    return ClassificationReport(
        label_names=tuple(label_names),
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        accuracy=accuracy(y_true, y_pred),
        macro_f1=float(f1[present].mean()) if present.any() else float("nan"),
        weighted_f1=float((f1 * support).sum() / total) if total else float("nan"),
        confusion=confusion,
    )


def macro_f1(labels, predictions) -> float:
    """Unweighted mean of per-class F1 over classes present in the labels or the predictions.

    Matches ``sklearn.metrics.f1_score(..., average="macro", zero_division=0)``: a class that is
    never predicted has precision ``0``; classes absent from both arrays are not averaged.
    Returns ``nan`` for zero examples.

    Example:
        >>> round(macro_f1([0, 0, 1, 1], [0, 0, 0, 1]), 4)
        0.7333
    """
    return classification_report(labels, predictions).macro_f1


def matthews_corrcoef(labels, predictions) -> float:
    """Multiclass Matthews correlation coefficient (Gorodkin's R_K), in ``[-1, 1]``.

    Equals ``sklearn.metrics.matthews_corrcoef``. It is ``0.0`` when undefined (labels or
    predictions contain a single class) and ``nan`` for zero examples.

    Example:
        >>> matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0])
        1.0
    """
    y_true, y_pred = _class_arrays(labels, predictions)
    if y_true.size == 0:
        return float("nan")
    confusion = confusion_matrix(y_true, y_pred).astype(np.float64)
    t = confusion.sum(axis=1)
    p = confusion.sum(axis=0)
    correct = np.trace(confusion)
    n = confusion.sum()
    covariance = correct * n - t @ p
    variance = (n * n - p @ p) * (n * n - t @ t)
    if variance == 0:
        return 0.0
    return float(covariance / math.sqrt(variance))


class ImbalancedDataWarning(UserWarning):
    """Warned by :func:`label_balance` when the classes are far from balanced."""


@dataclasses.dataclass(frozen=True)
class LabelBalance:
    """How the examples of a data set spread over its classes.

    Attributes:
      counts: examples per class name (every name in the label set, zeros included).
      fractions: ``counts / total``.
      majority_class: name of the most frequent class (first in label order on ties).
      majority_baseline_accuracy: accuracy of always predicting the majority class; any model
        must beat this number before its accuracy means anything.
      imbalance_ratio: largest class count / smallest class count (``inf`` when a class has no
        examples).
      is_imbalanced: ``imbalance_ratio > warn_ratio``.
    """

    counts: dict[str, int]
    fractions: dict[str, float]
    majority_class: str
    majority_baseline_accuracy: float
    imbalance_ratio: float
    is_imbalanced: bool

    def __str__(self) -> str:
        width = max(len(name) for name in self.counts)
        lines = [f"{name:>{width}}  {self.counts[name]:8d}  {self.fractions[name]:7.2%}"
                 for name in self.counts]
        lines.append(
            f"majority baseline accuracy {self.majority_baseline_accuracy:.4f} "
            f"({self.majority_class}); imbalance ratio {self.imbalance_ratio:.2f}"
        )
        return "\n".join(lines)


def label_balance(
    labels, label_names: Sequence[str], *, warn_ratio: float = 1.5
) -> LabelBalance:
    """Reports class counts, the majority-class baseline and the imbalance ratio of labels.

    Warns with :class:`ImbalancedDataWarning` when the largest class is more than
    ``warn_ratio`` times the smallest (1.5 is the usual threshold in the imbalanced-learning
    literature): report macro-F1 or MCC next to accuracy, and compare against the baseline.

    Args:
      labels: integer class ids of every example (any shape; ``-100`` entries, the ignored
        positions of token labels, are skipped).
      label_names: names of the classes ``0..K-1``.
      warn_ratio: imbalance ratio above which the warning fires.

    Raises:
      ValueError: no labels, or a label outside ``0..len(label_names)-1``.

    Example:
        >>> report = label_balance([0, 0, 0, 1], ["neg", "pos"], warn_ratio=5.0)
        >>> report.majority_baseline_accuracy, report.imbalance_ratio
        (0.75, 3.0)
    """
    flat = np.asarray(labels).reshape(-1)
    flat = flat[flat != -100]
    if flat.size == 0:
        raise ValueError("label_balance got no labels; the data set (or split) is empty.")
    if not np.issubdtype(flat.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {flat.dtype}.")
    if len(label_names) == 0:
        raise ValueError("label_names is empty; pass the names of the classes.")
    bad = flat[(flat < 0) | (flat >= len(label_names))]
    if bad.size:
        raise ValueError(
            f"label {int(bad[0])} is outside the label set of {len(label_names)} classes "
            f"{list(label_names)}."
        )
    counts = np.bincount(flat, minlength=len(label_names))
    total = int(counts.sum())
    majority = int(np.argmax(counts))
    smallest = int(counts.min())
    ratio = float(counts.max() / smallest) if smallest else float("inf")
    report = LabelBalance(
        counts={name: int(c) for name, c in zip(label_names, counts)},
        fractions={name: float(c / total) for name, c in zip(label_names, counts)},
        majority_class=label_names[majority],
        majority_baseline_accuracy=float(counts[majority] / total),
        imbalance_ratio=ratio,
        is_imbalanced=ratio > warn_ratio,
    )
    if report.is_imbalanced:
        warnings.warn(
            f"imbalanced labels: largest/smallest class = {ratio:.2f} (> {warn_ratio}); "
            f"always predicting '{report.majority_class}' already scores accuracy "
            f"{report.majority_baseline_accuracy:.4f}. Report macro-F1 or MCC as well.",
            ImbalancedDataWarning,
            stacklevel=2,
        )
    return report
