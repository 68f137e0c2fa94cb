"""Single sentences and sentence pairs tokenised for sequence (pair) classification and regression."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxtune.data.text.tokenizer import (_MODEL_FIELDS, Tokenized, _check_strings, _encode, _example_arrays,
                                        _max_length, _warn_truncated)


def tokenize_texts(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    *,
    max_length: int | None = None,
    truncation: str = "longest_first",
) -> Tokenized:
    """Tokenises single sentences or sentence pairs for sequence (pair) classification.

    Args:
      tokenizer: a fast tokenizer (:func:`load_tokenizer`).
      texts: first sentences.
      pairs: optional second sentences (same length); ``token_type_ids`` mark the segments.
      labels: optional class id per example, stored as a 0-d int32 ``labels`` field; float labels
        (regression scores) are stored as float32.
      max_length: token limit including special tokens; defaults to the model maximum.
      truncation: ``"longest_first"``, ``"only_first"`` or ``"only_second"`` (transformers'
        strategies) for examples over the limit; they are reported, see :class:`Tokenized`.

    Example:
        >>> tok = tokenize_texts(tokenizer, ["a cat", "a dog"], labels=[0, 1])  # doctest: +SKIP
        >>> batch = pad_batch(tok.examples, length_buckets(128),
        ...                   pad_token_id=tokenizer.pad_token_id)  # doctest: +SKIP
    """
    texts = _check_strings(texts, "texts")
    if pairs is not None:
        pairs = _check_strings(pairs, "pairs")
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs.")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels.")
    max_length = _max_length(tokenizer, max_length)
    rows, truncated = _encode(tokenizer, texts, pairs, max_length, truncation)
    examples = [_example_arrays(encoding, i, _MODEL_FIELDS) for encoding, i in rows]
    if labels is not None:
        dtype = np.float32 if np.issubdtype(np.asarray(labels).dtype, np.floating) else np.int32
        for example, label in zip(examples, labels):
            example["labels"] = np.asarray(label, dtype=dtype)
    _warn_truncated(len(truncated), len(texts), max_length, "texts")
    return Tokenized(examples=examples, truncated={"input_ids": truncated})
