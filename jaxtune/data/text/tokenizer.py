"""Loading a fast tokenizer, and what every text task shares: :class:`Tokenized`, the label value
losses skip (:data:`IGNORE_INDEX`), length checks and truncation that is reported, never silent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

import numpy as np

from jaxtune.errors import UserError

logger = logging.getLogger(__name__)

#: Label value that losses and metrics skip (padding, special tokens, non-first sub-words).
IGNORE_INDEX = -100

# Tokenizers without a real limit report a huge sentinel as ``model_max_length``.
_UNBOUNDED_MODEL_LENGTH = 1_000_000


def load_tokenizer(name_or_path: str, **kwargs: Any):
    """Loads a Hugging Face fast tokenizer from a local directory (or the hub where reachable).

    Args:
      name_or_path: a directory with ``tokenizer.json`` (and ``tokenizer_config.json``), or a
        hub id; hub downloads need network access and ``HF_HUB_OFFLINE`` unset.
      **kwargs: passed to ``transformers.AutoTokenizer.from_pretrained``.

    Raises:
      OSError: nothing loadable at ``name_or_path``.
      TypeError: only a slow (Python) tokenizer exists; offsets and word ids need a fast one.

    Example:
        >>> tokenizer = load_tokenizer("path/to/bert-base-uncased")  # doctest: +SKIP
    """
    try:
        from transformers import AutoTokenizer
    except ImportError as error:
        raise ImportError("tokenisation needs transformers: pip install transformers") from error
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise OSError(f"no tokenizer directory at {name_or_path!r}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            os.path.expanduser(name_or_path) if looks_local else name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load a tokenizer from {name_or_path!r}: {str(error).rstrip('.')}. Pass a "
            f"local directory holding tokenizer.json, or a hub id with network access."
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"the tokenizer at {name_or_path!r} ({type(tokenizer).__name__}) is not a fast "
            f"tokenizer; jaxtune needs tokenizer.json (offsets and word ids)."
        )
    return tokenizer


def _max_length(tokenizer, max_length: int | None) -> int:
    model_max = int(getattr(tokenizer, "model_max_length", _UNBOUNDED_MODEL_LENGTH))
    if max_length is None:
        if model_max >= _UNBOUNDED_MODEL_LENGTH:
            raise UserError(
                f"{type(tokenizer).__name__} has no model_max_length; pass max_length= "
                f"(e.g. 512 for T5)."
            )
        return model_max
    if max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}.")
    if max_length > model_max:
        raise UserError(
            f"max_length={max_length} exceeds the model maximum {model_max} "
            f"(tokenizer.model_max_length); longer inputs have no position embeddings."
        )
    return int(max_length)


def _check_strings(values, name: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string.")
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty; there is nothing to tokenise.")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{index}] is {type(value).__name__}, expected str.")
    return values


def _warn_truncated(count: int, total: int, max_length: int, what: str) -> None:
    if count:
        logger.warning(
            "%d of %d %s are longer than max_length=%d tokens and were truncated.",
            count, total, what, max_length,
        )


def _example_arrays(encoding, index: int, fields: Sequence[str]) -> dict[str, np.ndarray]:
    return {f: np.asarray(encoding[f][index], dtype=np.int32) for f in fields if f in encoding}


_MODEL_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class Tokenized:
    """Tokenised examples, unpadded, with what truncation did.

    Attributes:
      examples: one dict per example of int32 arrays: 1-D ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (if the tokenizer makes them) and, when labels were given,
        ``labels`` (0-d class id, or 1-D token / target labels).
      truncated: field name -> indices of the examples whose field was cut to its maximum
        length (``"input_ids"`` for inputs, ``"labels"`` for text-to-text targets).
      word_ids: for word-level inputs (:func:`tokenize_words`), per example the word index of
        every token (``-1`` for special tokens); ``None`` otherwise.
    """

    examples: list[dict[str, np.ndarray]]
    truncated: dict[str, tuple[int, ...]]
    word_ids: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_truncated(self) -> int:
        """Number of examples with at least one truncated field."""
        return len(set().union(*self.truncated.values())) if self.truncated else 0

    def lengths(self, field: str = "input_ids") -> np.ndarray:
        """Unpadded length of ``field`` for every example."""
        return np.asarray([len(example[field]) for example in self.examples], dtype=np.int64)


def _encode(tokenizer, first, second, max_length, truncation, **kwargs):
    """Tokenises without truncation, then re-tokenises only the too-long examples truncated.

    Returns (per-example encodings as a list of BatchEncoding rows, truncated indices). Each row
    is ``(encoding, index_in_that_encoding)`` so word ids stay reachable.
    """
    args = (first,) if second is None else (first, second)
    full = tokenizer(*args, truncation=False, verbose=False, **kwargs)
    too_long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    rows = [(full, i) for i in range(len(full["input_ids"]))]
    if too_long:
        subset = [[first[i] for i in too_long]]
        if second is not None:
            subset.append([second[i] for i in too_long])
        try:
            cut = tokenizer(*subset, truncation=truncation, max_length=max_length, **kwargs)
        except Exception as error:  # the Rust backend raises a bare Exception
            raise ValueError(
                f"cannot truncate examples {list(too_long)[:5]} to max_length={max_length} with "
                f"truncation={truncation!r} ({error}); use truncation='longest_first'."
            ) from error
        for position, i in enumerate(too_long):
            rows[i] = (cut, position)
    return rows, tuple(too_long)
