"""Text features for fine-tuning: tokenisation, label alignment, QA windows, T5 targets, buckets.

Everything here runs on the host with NumPy and a Hugging Face *fast* tokenizer (the Rust
``tokenizers`` backend, needed for word ids and character offsets). The flow is

1. tokenise a data set once into :class:`Tokenized` -- a list of per-example dicts of *unpadded*
   1-D int32 arrays (``input_ids``, ``attention_mask``, ``token_type_ids`` where the model has them,
   and ``labels`` / ``start_positions`` / ``end_positions`` for training);
2. batch the examples with :func:`pad_batch` or :func:`bucket_batches`, which pad every sequence
   field to the smallest of a few **length buckets** (:func:`length_buckets`: powers of two up to
   ``max_length``), so a jitted train step compiles once per bucket instead of once per length;
3. map model outputs back to words (:func:`word_predictions`) or answer text
   (:func:`decode_qa_predictions`) for the metrics in :mod:`jaxtune.metrics`.

Truncation is never silent: texts longer than ``max_length`` are cut (``truncation`` strategy as
in ``transformers``), their indices are returned in :attr:`Tokenized.truncated`, and a warning on
the ``jaxtune.data.text`` logger gives the count. Long QA contexts are not cut but split into
overlapping windows. ``max_length`` may not exceed the tokenizer's ``model_max_length`` (the
position-embedding size): that is an error, not a truncation.

Conventions: ignored label positions are ``-100`` (:data:`IGNORE_INDEX`), as in ``optax`` /
``transformers`` losses; character offsets of non-context tokens are ``(-1, -1)``.

Each kind of task has its module: :mod:`~jaxtune.data.text.tokenizer` (loading, :class:`Tokenized`),
:mod:`~jaxtune.data.text.classification`, :mod:`~jaxtune.data.text.tokens` (token labels),
:mod:`~jaxtune.data.text.qa`, :mod:`~jaxtune.data.text.text_to_text` and
:mod:`~jaxtune.data.text.batching`; every name is importable from ``jaxtune.data.text``.
"""

from jaxtune.data.text.batching import (DEFAULT_PAD_VALUES, batch_shapes, bucket_batches, bucket_for, bucket_plan,
                                        length_buckets, pad_batch)
from jaxtune.data.text.classification import tokenize_texts
from jaxtune.data.text.qa import QAFeatures, decode_qa_predictions, prepare_qa_features
from jaxtune.data.text.text_to_text import tokenize_text_to_text
from jaxtune.data.text.tokenizer import IGNORE_INDEX, Tokenized, load_tokenizer
from jaxtune.data.text.tokens import align_labels, tokenize_words, word_predictions

__all__ = [
    "DEFAULT_PAD_VALUES",
    "IGNORE_INDEX",
    "QAFeatures",
    "Tokenized",
    "align_labels",
    "batch_shapes",
    "bucket_batches",
    "bucket_for",
    "bucket_plan",
    "decode_qa_predictions",
    "length_buckets",
    "load_tokenizer",
    "pad_batch",
    "prepare_qa_features",
    "tokenize_text_to_text",
    "tokenize_texts",
    "tokenize_words",
    "word_predictions",
]
