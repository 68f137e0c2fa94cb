"""Metrics of answer and generated text: SQuAD exact match and F1, BLEU and chrF (sacrebleu)."""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np


_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation, articles and extra spaces.

    Example:
        >>> normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answers(reference) -> list[str]:
    answers = [reference] if isinstance(reference, str) else list(reference)
    if not answers:
        raise ValueError(
            "a reference has no gold answers; use [''] for an unanswerable question."
        )
    return answers


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad_mean(predictions, references, score) -> float:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references."
        )
    if not predictions:
        return float("nan")
    return float(np.mean([
        max(score(prediction, gold) for gold in _answers(reference))
        for prediction, reference in zip(predictions, references)
    ]))


def squad_exact_match(predictions: Sequence[str], references: Sequence) -> float:
    """Fraction of predictions equal to a gold answer after :func:`normalize_answer`.

    Args:
      predictions: one answer string per question.
      references: per question, a gold answer string or a list of acceptable answers (the
        best-matching one counts).

    Example:
        >>> squad_exact_match(["the Eiffel tower", "Paris"], [["Eiffel Tower"], "Lyon"])
        0.5
    """
    return _squad_mean(
        predictions, references, lambda p, g: float(normalize_answer(p) == normalize_answer(g))
    )


def squad_f1(predictions: Sequence[str], references: Sequence) -> float:
    """Mean token-overlap F1 against the best gold answer (official SQuAD v2.0 script).

    Tokens are the whitespace-split words of :func:`normalize_answer`. An empty prediction scores
    1 against an empty gold answer (unanswerable question) and 0 otherwise.

    Example:
        >>> round(squad_f1(["Eiffel tower in Paris"], ["the Eiffel Tower"]), 4)
        0.6667
    """
    return _squad_mean(predictions, references, _token_f1)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as error:
        raise ImportError(
            "BLEU and chrF need sacrebleu: pip install 'sacrebleu>=2.4'"
        ) from error
    return sacrebleu


def _reference_streams(predictions, references) -> list[list[str]]:
    """Turns per-example references (a string or a list of strings) into sacrebleu streams."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    per_example = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(r) for r in per_example}
    if len(counts) > 1:
        raise ValueError(
            f"every prediction needs the same number of references, got counts {sorted(counts)}."
        )
    if counts == {0}:
        raise ValueError("a prediction has no reference text.")
    return [list(stream) for stream in zip(*per_example)]


def bleu(predictions: Sequence[str], references: Sequence, **kwargs) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenisation) on a 0-100 scale; ``nan`` if empty.

    Args:
      predictions: one detokenised hypothesis per example.
      references: per example, one reference string or a list of references (the same number
        for every example).
      **kwargs: passed to ``sacrebleu.corpus_bleu`` (e.g. ``tokenize="intl"``).

    Example:
        >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 6)
        100.0
    """
    if len(predictions) == 0 and len(references) == 0:
        return float("nan")
    streams = _reference_streams(predictions, references)
    return float(_sacrebleu().corpus_bleu(list(predictions), streams, **kwargs).score)


def chrf(predictions: Sequence[str], references: Sequence, **kwargs) -> float:
    """Corpus chrF (sacrebleu; ``word_order=2`` gives chrF++) on a 0-100 scale; ``nan`` if empty.

    Example:
        >>> chrf(["the cat sat"], ["the cat sat"])
        100.0
    """
    if len(predictions) == 0 and len(references) == 0:
        return float("nan")
    streams = _reference_streams(predictions, references)
    return float(_sacrebleu().corpus_chrf(list(predictions), streams, **kwargs).score)
