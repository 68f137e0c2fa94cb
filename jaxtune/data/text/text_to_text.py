"""Text-to-text (T5): prefixed inputs and target labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxtune.data.text.tokenizer import (Tokenized, _check_strings, _encode, _example_arrays, _max_length,
                                        _warn_truncated)


def tokenize_text_to_text(
    tokenizer,
    sources: Sequence[str],
    targets: Sequence[str] | None = None,
    *,
    prefix: str = "",
    max_source_length: int = 512,
    max_target_length: int = 128,
) -> Tokenized:
    """Tokenises T5-style inputs (with a task prefix) and targets.

    The input is ``prefix + source`` (T5 prefixes: ``"translate English to German: "``,
    ``"summarize: "``, ``"question: ... context: ..."``). Targets become the ``labels`` field
    (ending with ``</s>``), which :func:`pad_batch` pads with ``-100`` so the loss skips padding.
    The decoder input (labels shifted right behind the start token) is made by the model.
    Sources and targets over their limits are truncated and reported under ``"input_ids"``
    and ``"labels"`` in :attr:`Tokenized.truncated`.

    Example:
        >>> tok = tokenize_text_to_text(t5_tokenizer, ["The house is wonderful."],
        ...                             ["Das Haus ist wunderbar."],
        ...                             prefix="translate English to German: ")  # doctest: +SKIP
    """
    sources = [prefix + s for s in _check_strings(sources, "sources")]
    max_source_length = _max_length(tokenizer, max_source_length)
    rows, truncated = _encode(tokenizer, sources, None, max_source_length, "longest_first")
    examples = [
        _example_arrays(encoding, i, ("input_ids", "attention_mask")) for encoding, i in rows
    ]
    _warn_truncated(len(truncated), len(sources), max_source_length, "sources")
    report = {"input_ids": truncated}
    if targets is not None:
        targets = _check_strings(targets, "targets")
        if len(targets) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets.")
        target_rows, target_cut = _encode(
            tokenizer, targets, None, _max_length(tokenizer, max_target_length), "longest_first"
        )
        for example, (encoding, i) in zip(examples, target_rows):
            example["labels"] = np.asarray(encoding["input_ids"][i], dtype=np.int32)
        _warn_truncated(len(target_cut), len(targets), max_target_length, "targets")
        report["labels"] = target_cut
    return Tokenized(examples=examples, truncated=report)
