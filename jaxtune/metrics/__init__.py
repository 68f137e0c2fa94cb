"""Evaluation metrics for fine-tuning tasks (host side, NumPy).

Every function takes plain Python sequences or NumPy arrays of *decoded* predictions (class ids,
tag strings, answer strings, generated texts) and returns Python floats or small dataclasses, so
the metrics run after the jitted eval step has handed its outputs to the host.

Conventions, chosen once and used everywhere in this module:

* Scores from classification, tagging and span metrics are fractions in ``[0, 1]``. BLEU and
  chrF keep sacrebleu's ``[0, 100]`` scale, which is how they are reported in papers.
* An average over zero examples (``accuracy([], [])``, ``squad_f1([], [])``, ...) is
  ``float("nan")``: the value is undefined, and NaN makes an empty evaluation set visible in logs
  instead of passing for a real score.
* A ratio whose denominator is zero inside a defined evaluation (precision of a class that is
  never predicted, recall of a class absent from the labels, F1 when both are zero) is ``0.0``.
  This is scikit-learn's ``zero_division=0`` and seqeval's default, and no warning is emitted.
* Matthews correlation is ``0.0`` when it is undefined (only one class in the labels or the
  predictions), as in scikit-learn.

Reference implementations the tests compare against: scikit-learn (accuracy, F1, MCC, confusion
matrix), seqeval (entity F1, default mode), the official SQuAD v2.0 evaluation script
(exact match and F1) and sacrebleu (BLEU, chrF).
The metrics live by kind: :mod:`~jaxtune.metrics.classification` (with label balance),
:mod:`~jaxtune.metrics.sequence` (entity F1), :mod:`~jaxtune.metrics.text` (SQuAD, BLEU, chrF) and
:mod:`jaxtune.regression_metrics`; every name is importable from ``jaxtune.metrics``.
"""

from jaxtune.metrics.classification import (ClassificationReport, ImbalancedDataWarning, LabelBalance, accuracy,
                                            classification_report, confusion_matrix, label_balance, macro_f1,
                                            matthews_corrcoef)
from jaxtune.metrics.sequence import EntityScores, entity_f1, get_entities
from jaxtune.metrics.text import bleu, chrf, normalize_answer, squad_exact_match, squad_f1
from jaxtune.regression_metrics import mean_squared_error, pearson, spearman

__all__ = [
    "ClassificationReport",
    "EntityScores",
    "ImbalancedDataWarning",
    "LabelBalance",
    "accuracy",
    "bleu",
    "chrf",
    "classification_report",
    "confusion_matrix",
    "entity_f1",
    "get_entities",
    "label_balance",
    "macro_f1",
    "matthews_corrcoef",
    "mean_squared_error",
    "normalize_answer",
    "pearson",
    "spearman",
    "squad_exact_match",
    "squad_f1",
]
