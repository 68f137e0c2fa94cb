"""Data that the model cannot represent is an error before training, not a NaN after it.

An embedding lookup with an index past its table returns NaN in JAX (no error), so a token id
outside the vocabulary, a position past ``max_position_embeddings`` or a class id past the
head's size turns into a NaN loss many steps later. These checks run on the prepared examples
(per-example dicts of arrays, as :mod:`jaxtune.data.text` makes them) and name the split, the
example index and the limit.

Example::

    check_labels(tokenized.examples, num_labels=3, split="train")
    check_token_ids(tokenized.examples, model.config.vocab_size, split="train")
    check_lengths(tokenized.examples, model.config.max_position_embeddings, split="train")
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxtune.config import ConfigError
from jaxtune.data.text import IGNORE_INDEX
from jaxtune.errors import UserError

Examples = Sequence[Mapping[str, np.ndarray]]


class DataError(UserError):
    """An example the model cannot take: names the split, the example index and the limit (the
    ``jaxtune`` command shows it as one line, exit status 2)."""

    def __init__(self, message: str, *, split: str, index: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.split, self.index, self.limit = split, index, limit


def _first_outside(examples: Examples, field: str, low: int, high: int, ignore: int | None):
    """(example index, position, value) of the first value outside ``[low, high)``, or None."""
    for index, example in enumerate(examples):
        if field not in example:
            continue
        values = np.asarray(example[field]).reshape(-1)
        outside = (values < low) | (values >= high)
        if ignore is not None:
            outside &= values != ignore
        if outside.any():
            position = int(np.flatnonzero(outside)[0])
            return index, position, int(values[position])
    return None


def check_labels(examples: Examples, num_labels: int, *, split: str = "train", field: str = "labels",
                 ignore_index: int | None = IGNORE_INDEX) -> None:
    """Raises :class:`DataError` for a class id outside ``[0, num_labels)`` (``ignore_index`` allowed;
    ``None`` for per-example class labels, which have no ignored value).

    Example:
        >>> check_labels([{"labels": np.int32(1)}, {"labels": np.int32(3)}], 3, split="validation")
        Traceback (most recent call last):
        ...
        jaxtune.data.checks.DataError: validation example 1: label 3 is outside the classifier head's range [0, 3) ...
    """
    found = _first_outside(examples, field, 0, num_labels, ignore_index)
    if found is not None:
        index, position, value = found
        where = f" at token {position}" if np.ndim(examples[index][field]) else ""
        ignored = "" if ignore_index is None else f" ({ignore_index} marks an ignored position)"
        raise DataError(f"{split} example {index}: label {value}{where} is outside the classifier head's range "
                        f"[0, {num_labels}) (num_labels={num_labels}){ignored}; fix the labels, or give "
                        f"model.num_labels >= {value + 1} if the data has more classes",
                        split=split, index=index, limit=num_labels)


def check_token_ids(examples: Examples, vocab_size: int, *, split: str = "train", field: str = "input_ids",
                    ignore_index: int | None = None, limit_name: str = "vocab_size") -> None:
    """Raises :class:`DataError` for a token id outside the model's vocabulary ``[0, vocab_size)``.

    Use ``field="token_type_ids", limit_name="type_vocab_size"`` for segment ids, and
    ``field="labels", ignore_index=-100`` for text-to-text targets.

    Example:
        >>> check_token_ids([{"input_ids": np.array([101, 50000, 102])}], 30522, split="test")
        Traceback (most recent call last):
        ...
        jaxtune.data.checks.DataError: test example 0: input_ids[1] = 50000 is outside the model's vocabulary ...
    """
    found = _first_outside(examples, field, 0, vocab_size, ignore_index)
    if found is not None:
        index, position, value = found
        raise DataError(f"{split} example {index}: {field}[{position}] = {value} is outside the model's vocabulary "
                        f"[0, {vocab_size}) ({limit_name}={vocab_size}); the tokenizer does not match the model: "
                        "tokenise with the model's own tokenizer (the one in its checkpoint directory)",
                        split=split, index=index, limit=vocab_size)


def check_lengths(examples: Examples, max_length: int, *, split: str = "train", field: str = "input_ids",
                  limit_name: str = "max_position_embeddings") -> None:
    """Raises :class:`DataError` for a sequence longer than the model's position table.

    Example:
        >>> check_lengths([{"input_ids": np.arange(20)}], 16, split="train")
        Traceback (most recent call last):
        ...
        jaxtune.data.checks.DataError: train example 0 has 20 tokens, more than the model's position table ...
    """
    for index, example in enumerate(examples):
        length = len(example[field]) if field in example else 0
        if length > max_length:
            raise DataError(f"{split} example {index} has {length} tokens, more than the model's position table "
                            f"({limit_name}={max_length}); tokenise with data.max_length <= {max_length}",
                            split=split, index=index, limit=max_length)


def check_finite_inputs(examples: Examples, *, split: str = "train") -> None:
    """Raises :class:`DataError` for a floating-point field (e.g. ``images``) holding NaN or inf.

    Example:
        >>> check_finite_inputs([{"images": np.full((2, 2, 3), np.nan, np.float32)}], split="train")
        Traceback (most recent call last):
        ...
        jaxtune.data.checks.DataError: train example 0: images has 12 NaN/inf values ...
    """
    for index, example in enumerate(examples):
        for field, value in example.items():
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise DataError(f"{split} example {index}: {field} has {int((~np.isfinite(value)).sum())} NaN/inf "
                                "values; they would make the loss NaN at the step that draws this example. Fix or "
                                "drop the example (e.g. a corrupt image file)", split=split, index=index)


def check_num_labels(num_labels: int | None, label_names: Sequence[str], dataset: str) -> None:
    """Raises :class:`jaxtune.ConfigError` when ``model.num_labels`` is below the data's label count.

    Example:
        >>> check_num_labels(2, ("negative", "neutral", "positive"), "tweet_sentiment")
        Traceback (most recent call last):
        ...
        jaxtune.config.ConfigError: model.num_labels=2 is smaller than the 3 labels of 'tweet_sentiment' ...
    """
    if num_labels is not None and num_labels < len(label_names):
        raise ConfigError(f"model.num_labels={num_labels} is smaller than the {len(label_names)} labels of "
                          f"{dataset!r} ({', '.join(map(str, label_names[:10]))}); set model.num_labels >= "
                          f"{len(label_names)} or leave it null to use the data's label count")


_CLASS_LABEL_TASKS = ("sequence_classification", "pair_classification", "token_classification",
                      "image_classification")


def check_data_fits_model(splits: Mapping[str, Examples], task: str, model_config: Any, num_labels: int | None,
                          max_length: int | None = None) -> None:
    """Raises :class:`DataError` (or :class:`jaxtune.ConfigError`) for data the model cannot represent.

    Per split: class labels outside the head's ``[0, num_labels)`` (classification ``task``s),
    token ids outside ``model_config.vocab_size`` (``type_vocab_size`` for segment ids, the
    vocabulary for text-to-text targets), sequences longer than ``max_position_embeddings``. Then
    ``max_length`` (``data.max_length``: batches are padded up to it) against that table. Limits the
    config does not have (e.g. T5's relative positions, a CNN's vocabulary) are not checked.
    Floating-point inputs (images) must be finite.

    Example::

        check_data_fits_model({"train": train, "validation": val}, "sequence_classification",
                              model.config, num_labels=3, max_length=128)
    """
    vocab, types = getattr(model_config, "vocab_size", None), getattr(model_config, "type_vocab_size", None)
    positions = getattr(model_config, "max_position_embeddings", None)
    for split, examples in splits.items():
        if task in _CLASS_LABEL_TASKS and num_labels is not None:
            ignore = IGNORE_INDEX if task == "token_classification" else None
            check_labels(examples, num_labels, split=split, ignore_index=ignore)
        if vocab is not None:
            check_token_ids(examples, vocab, split=split)
            if task == "text_to_text":
                check_token_ids(examples, vocab, split=split, field="labels", ignore_index=IGNORE_INDEX)
        if types is not None:
            check_token_ids(examples, types, split=split, field="token_type_ids", limit_name="type_vocab_size")
        if positions is not None:
            check_lengths(examples, positions, split=split)
        check_finite_inputs(examples, split=split)
    if positions is not None and max_length is not None and max_length > positions:
        raise ConfigError(f"data.max_length={max_length} exceeds the model's position table "
                          f"(max_position_embeddings={positions}): batches are padded up to data.max_length, and "
                          f"positions past the table embed as NaN; set data.max_length <= {positions}")
