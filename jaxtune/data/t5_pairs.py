"""Sentence pairs as T5 text-to-text examples, and the reading of generated answers back as labels.

As in the T5 paper (Raffel et al. 2020, appendix D), the pair becomes one input text with the field
names marking the sentences (T5 has no segment ids), and the label becomes a target text:

* SNLI: ``"premise: … hypothesis: …"`` -> ``"entailment"`` / ``"neutral"`` / ``"contradiction"``;
* STS-B: ``"sentence1: … sentence2: …"`` -> the score rounded to the nearest 0.2, as text (``"3.8"``).

A generated answer that is not a label word (or not a number) is *unparsable*: it counts as class
-1 (always wrong) or score -1.0, the defaults of the T5 library's ``string_label_to_class_id`` and
``string_to_float`` postprocessors, and the number of them is reported beside the metrics.

Example::

    tok = tokenize_t5_pairs(tokenizer, ["A man sleeps."], ["Nobody sleeps."], ["contradiction"],
                            names=PAIR_NAMES["snli"], max_length=64)
    reader = GeneratedTargets(tokenizer, SNLI_LABELS, regression=False)
    reader.score(generated_ids, label_ids)   # {"accuracy", "macro_f1", "unparsable"}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxtune.config import TRUNCATIONS
from jaxtune.data.text.tokenizer import IGNORE_INDEX, Tokenized, _check_strings, _warn_truncated

__all__ = ["PAIR_NAMES", "GeneratedTargets", "score_text", "target_texts", "tokenize_t5_pairs"]

#: The field names that mark the two sentences in a T5 input, per data set.
PAIR_NAMES = {"snli": ("premise", "hypothesis"), "stsb": ("sentence1", "sentence2")}

#: What a generated answer that cannot be read becomes (the T5 library's postprocessor defaults).
UNPARSABLE_CLASS, UNPARSABLE_SCORE = -1, -1.0


def score_text(score: float) -> str:
    """A similarity score as a T5 target: rounded to the nearest 0.2 (halves to even), one decimal.

    Example:
        >>> score_text(3.75), score_text(0.0), score_text(4.91)
        ('3.8', '0.0', '5.0')
    """
    return f"{np.round(float(score) * 5) / 5:.1f}"


def target_texts(labels: Sequence, label_names: Sequence[str], *, regression: bool) -> list[str]:
    """The target text of every label: its class name, or its score as :func:`score_text`.

    Example:
        >>> target_texts([2, 0], ("entailment", "neutral", "contradiction"), regression=False)
        ['contradiction', 'entailment']
    """
    if regression:
        return [score_text(value) for value in np.asarray(labels, np.float64)]
    return [label_names[int(value)] for value in np.asarray(labels)]


def _truncated_lengths(first: int, second: int, room: int, truncation: str) -> tuple[int, int] | None:
    """How many tokens of each sentence fit in ``room``; ``None`` when ``truncation`` cannot make them fit.
    ``longest_first`` drops one token at a time from the longer sentence (the second on a tie)."""
    if first + second <= room:
        return first, second
    if truncation == "only_first":
        return (room - second, second) if room - second >= 1 else None
    if truncation == "only_second":
        return (first, room - first) if room - first >= 1 else None
    if room < 2:
        return None
    while first + second > room:
        if first > second:
            first -= 1
        else:
            second -= 1
    return first, second


def tokenize_t5_pairs(tokenizer, firsts: Sequence[str], seconds: Sequence[str], targets: Sequence[str] | None = None,
                      *, names: tuple[str, str] = PAIR_NAMES["snli"], prefix: str = "", max_length: int = 128,
                      max_target_length: int = 16, truncation: str = "longest_first") -> Tokenized:
    """T5 inputs ``"{prefix}{names[0]}: {first} {names[1]}: {second}"`` (ending with ``</s>``) and targets.

    The input is assembled from the separately tokenised parts, so a pair over ``max_length`` is cut
    inside the sentences, never in the field names: ``truncation`` is the pair strategy of
    :func:`jaxtune.data.tokenize_texts` (``"longest_first"`` trims the longer sentence token by
    token, ``"only_first"`` / ``"only_second"`` one side). Untruncated inputs are the tokens of the
    formatted text (:func:`jaxtune.data.format_pairs`). Targets become ``labels`` as in
    :func:`jaxtune.data.tokenize_text_to_text`. Cut examples are reported in ``truncated``.

    Example::

        tok = tokenize_t5_pairs(t5_tokenizer, ["A man sleeps."], ["Nobody sleeps."], ["contradiction"])
        t5_tokenizer.decode(tok.examples[0]["input_ids"], skip_special_tokens=True)
        # 'premise: A man sleeps. hypothesis: Nobody sleeps.'
    """
    firsts, seconds = _check_strings(firsts, "firsts"), _check_strings(seconds, "seconds")
    if len(firsts) != len(seconds):
        raise ValueError(f"{len(firsts)} first sentences but {len(seconds)} second sentences.")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}.")
    encode = lambda texts: tokenizer(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731
    head, middle = encode([f"{prefix}{names[0]}:", f"{names[1]}:"])
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    room = max_length - len(head) - len(middle) - len(eos)
    examples, cut = [], []
    for index, (first, second) in enumerate(zip(encode(firsts), encode(seconds))):
        kept = _truncated_lengths(len(first), len(second), room, truncation)
        if kept is None:
            raise ValueError(f"pair {index} ({len(first)} + {len(second)} tokens) cannot fit max_length={max_length} "
                             f"({room} tokens besides the field names {names}) with truncation={truncation!r}; "
                             "raise max_length or use truncation='longest_first'.")
        if kept != (len(first), len(second)):
            cut.append(index)
        ids = np.asarray(head + first[:kept[0]] + middle + second[:kept[1]] + eos, dtype=np.int32)
        examples.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    _warn_truncated(len(cut), len(firsts), max_length, "sentence pairs")
    report = {"input_ids": tuple(cut)}
    if targets is not None:
        targets = _check_strings(targets, "targets")
        if len(targets) != len(firsts):
            raise ValueError(f"{len(firsts)} pairs but {len(targets)} targets.")
        labels = tokenizer(targets, truncation=True, max_length=max_target_length)["input_ids"]
        report["labels"] = tuple(i for i, (text, ids) in enumerate(zip(targets, encode(targets)))
                                 if len(ids) + len(eos) > max_target_length)
        for example, ids in zip(examples, labels):
            example["labels"] = np.asarray(ids, dtype=np.int32)
    return Tokenized(examples=examples, truncated=report)


def _macro_f1_over_classes(references: np.ndarray, predictions: np.ndarray) -> float:
    """Macro-F1 over the classes present in the references or predictions, unparsable (-1) not a class."""
    classes = sorted((set(references.tolist()) | set(predictions.tolist())) - {UNPARSABLE_CLASS})
    f1 = []
    for c in classes:
        tp = np.sum((predictions == c) & (references == c))
        wrong = np.sum((predictions == c) != (references == c))
        f1.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return float(np.mean(f1)) if f1 else float("nan")


@dataclasses.dataclass(frozen=True)
class GeneratedTargets:
    """Reads token ids generated by a T5 model (and the target ids) back as classes or scores.

    Attributes:
      tokenizer: the model's tokenizer (decodes the ids).
      label_names: the class words (classification), or ``("score",)``.
      regression: targets are scores (:func:`score_text`) instead of class words.
    """

    tokenizer: Any
    label_names: tuple[str, ...]
    regression: bool

    def texts(self, token_ids) -> list[str]:
        """The text of every row of ``token_ids`` (``-100`` padding skipped), stripped."""
        ids = np.asarray(token_ids)
        ids = np.where(ids == IGNORE_INDEX, self.tokenizer.pad_token_id, ids)
        return [t.strip() for t in self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]

    def read(self, text: str) -> int | float | None:
        """The class id (or score) that ``text`` names; ``None`` when it names none."""
        if not self.regression:
            return self.label_names.index(text) if text in self.label_names else None
        try:
            value = float(text)
        except ValueError:
            return None
        return value if np.isfinite(value) else None

    def parse(self, token_ids) -> tuple[np.ndarray, int]:
        """Class ids (int64) or scores (float64) of the rows of ``token_ids``, unparsable ones as -1
        (-1.0); and how many were unparsable."""
        values = [self.read(text) for text in self.texts(token_ids)]
        fallback = UNPARSABLE_SCORE if self.regression else UNPARSABLE_CLASS
        parsed = np.asarray([fallback if v is None else v for v in values],
                            dtype=np.float64 if self.regression else np.int64)
        return parsed, sum(v is None for v in values)

    def score(self, predictions, references, label_names=None) -> dict:
        """Metrics of generated ``predictions`` against target ids ``references`` (rows of token ids):
        accuracy and macro-F1, or Pearson, Spearman and MSE (against the rounded target scores); and
        ``unparsable``, the number of generated answers that could not be read.

        Example::

            reader.score(generated, labels)   # {"accuracy": 0.81, "macro_f1": 0.8, "unparsable": 3.0}
        """
        from jaxtune.tasks import get_task

        predicted, unparsable = self.parse(predictions)
        expected, _ = self.parse(references)
        if self.regression:
            scores = get_task("sequence_regression").score(predicted, expected)
        else:
            accuracy = float(np.mean(predicted == expected)) if len(expected) else float("nan")
            scores = {"accuracy": accuracy, "macro_f1": _macro_f1_over_classes(expected, predicted)}
        return {**scores, "unparsable": float(unparsable)}
