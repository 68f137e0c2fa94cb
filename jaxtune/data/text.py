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
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jaxtune.errors import UserError

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

logger = logging.getLogger(__name__)

#: Label value that losses and metrics skip (padding, special tokens, non-first sub-words).
IGNORE_INDEX = -100

#: Padding value per field name; ``input_ids`` pads with the tokenizer's pad id (passed in).
DEFAULT_PAD_VALUES: Mapping[str, int] = {
    "attention_mask": 0,
    "token_type_ids": 0,
    "labels": IGNORE_INDEX,
    "decoder_attention_mask": 0,
}

# Tokenizers without a real limit report a huge sentinel as ``model_max_length``.
_UNBOUNDED_MODEL_LENGTH = 1_000_000


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Token classification
# --------------------------------------------------------------------------------------------


def align_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Token labels from word labels: the first sub-word of a word gets its label.

    Later sub-words of the same word and special tokens (word id ``None`` or ``-1``) get
    ``ignore_index``, so the loss and metrics see each word exactly once.

    Example:
        >>> align_labels([None, 0, 1, 1, None], [3, 5]).tolist()
        [-100, 3, 5, -100, -100]
    """
    labels = np.full(len(word_ids), ignore_index, dtype=np.int32)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word >= 0 and word != previous:
            if word >= len(word_labels):
                raise ValueError(
                    f"token {position} belongs to word {word}, but only {len(word_labels)} "
                    f"word labels were given."
                )
            labels[position] = word_labels[word]
        previous = word
    return labels


def tokenize_words(
    tokenizer,
    words: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int]] | None = None,
    *,
    max_length: int | None = None,
) -> Tokenized:
    """Tokenises pre-split sentences for token classification, aligning word tags to tokens.

    Each word's tag goes to its first sub-word (:func:`align_labels`); the other positions get
    ``-100``. A sentence longer than ``max_length`` tokens is truncated: its last words get no
    token and no label (reported in ``truncated``); :func:`word_predictions` fills them in so
    predictions stay aligned with the gold words.

    Args:
      tokenizer: a fast tokenizer.
      words: per sentence, its words (non-empty strings).
      tags: optional per sentence, one tag id per word.
      max_length: token limit including special tokens; defaults to the model maximum.

    Raises:
      ValueError: empty sentence, tag count different from word count, or a word that the
        tokenizer maps to no token at all (e.g. only whitespace).

    Example:
        >>> tok = tokenize_words(tokenizer, [["Paris", "is", "big"]], [[1, 0, 0]])  # doctest: +SKIP
        >>> tok.examples[0]["labels"]  # doctest: +SKIP
        array([-100, 1, 0, 0, -100], dtype=int32)
    """
    if isinstance(words, str) or not len(words):
        raise ValueError("words must be a non-empty sequence of sentences (lists of words).")
    sentences = [list(sentence) for sentence in words]
    for index, sentence in enumerate(sentences):
        if not sentence:
            raise ValueError(f"sentence {index} has no words.")
        _check_strings(sentence, f"words[{index}]")
    if tags is not None:
        if len(tags) != len(sentences):
            raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences.")
        for index, (sentence, sentence_tags) in enumerate(zip(sentences, tags)):
            if len(sentence_tags) != len(sentence):
                raise ValueError(
                    f"sentence {index} has {len(sentence)} words but {len(sentence_tags)} tags."
                )
    max_length = _max_length(tokenizer, max_length)
    rows, truncated = _encode(
        tokenizer, sentences, None, max_length, "longest_first", is_split_into_words=True
    )
    cut = set(truncated)
    examples, all_word_ids = [], []
    for index, (encoding, i) in enumerate(rows):
        word_ids = [-1 if w is None else w for w in encoding.word_ids(i)]
        if index not in cut:
            missing = sorted(set(range(len(sentences[index]))) - set(word_ids))
            if missing:
                raise ValueError(
                    f"sentence {index}: word {missing[0]} "
                    f"({sentences[index][missing[0]]!r}) produces no tokens; remove or replace "
                    f"empty/whitespace-only words."
                )
        example = _example_arrays(encoding, i, _MODEL_FIELDS)
        if tags is not None:
            example["labels"] = align_labels(word_ids, list(tags[index]))
        examples.append(example)
        all_word_ids.append(np.asarray(word_ids, dtype=np.int32))
    _warn_truncated(len(truncated), len(sentences), max_length, "sentences")
    return Tokenized(
        examples=examples, truncated={"input_ids": truncated}, word_ids=tuple(all_word_ids)
    )


def word_predictions(
    token_predictions, word_ids: np.ndarray, num_words: int, *, fill: int = 0
) -> np.ndarray:
    """Per-word predictions from per-token predictions (the first sub-word decides).

    Args:
      token_predictions: 1-D predicted tag ids of one example; may be longer than ``word_ids``
        (batch padding), the extra positions are ignored.
      word_ids: that example's ``Tokenized.word_ids`` entry.
      num_words: number of words in the original sentence.
      fill: tag id for words that got no token because the sentence was truncated (usually
        the id of ``"O"``).

    Example:
        >>> word_predictions([9, 4, 7, 7, 9, 0], np.array([-1, 0, 1, 1, -1]), 3).tolist()
        [4, 7, 0]
    """
    token_predictions = np.asarray(token_predictions)
    if token_predictions.ndim != 1 or len(token_predictions) < len(word_ids):
        raise ValueError(
            f"token_predictions must be 1-D with at least {len(word_ids)} entries, got shape "
            f"{token_predictions.shape}."
        )
    out = np.full(num_words, fill, dtype=np.int32)
    seen = np.zeros(num_words, dtype=bool)
    for position, word in enumerate(word_ids):
        if word >= num_words:
            raise ValueError(f"word id {word} at token {position} >= num_words={num_words}.")
        if word >= 0 and not seen[word]:
            out[word] = token_predictions[position]
            seen[word] = True
    return out


# --------------------------------------------------------------------------------------------
# Extractive question answering
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QAFeatures:
    """Question/context windows for extractive QA.

    Attributes:
      examples: one dict per window (``input_ids``, ``attention_mask``, ``token_type_ids``, and
        0-d ``start_positions`` / ``end_positions`` when answers were given).
      example_index: int64 ``(num_windows,)``, the question each window belongs to.
      offsets: per window, int32 ``(length, 2)`` character span of each token in the context;
        ``(-1, -1)`` for question and special tokens.
      num_split: number of questions whose context needed more than one window.
    """

    examples: list[dict[str, np.ndarray]]
    example_index: np.ndarray
    offsets: tuple[np.ndarray, ...]
    num_split: int

    def __len__(self) -> int:
        return len(self.examples)


def _answer_span(answer: Mapping[str, Any], context: str, index: int) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of a gold answer, ``None`` for an unanswerable question."""
    try:
        text, start = answer["text"], int(answer["answer_start"])
    except (KeyError, TypeError):
        raise ValueError(
            f"answers[{index}] must be a mapping with 'text' and 'answer_start', got {answer!r}."
        ) from None
    if text == "":
        return None
    if context[start:start + len(text)] != text:
        raise ValueError(
            f"answers[{index}]: {text!r} is not at character {start} of its context (found "
            f"{context[start:start + len(text)]!r})."
        )
    return start, start + len(text)


def _token_span(offsets: np.ndarray, span: tuple[int, int] | None, cls_index: int):
    """Token start/end of a character span inside one window, or the CLS index twice."""
    if span is None:
        return cls_index, cls_index
    context = np.flatnonzero(offsets[:, 0] >= 0)
    start_char, end_char = span
    if offsets[context[0], 0] > start_char or offsets[context[-1], 1] < end_char:
        return cls_index, cls_index
    start = context[np.flatnonzero(offsets[context, 0] <= start_char)[-1]]
    end = context[np.flatnonzero(offsets[context, 1] >= end_char)[0]]
    return int(start), int(end)


def prepare_qa_features(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[Mapping[str, Any]] | None = None,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
) -> QAFeatures:
    """Splits question + context into overlapping windows and maps answers to token positions.

    Each window holds the whole question and a slice of the context; consecutive windows share
    ``doc_stride`` context tokens (Hugging Face semantics: the stride is the overlap). With
    ``answers``, a window's ``start_positions`` / ``end_positions`` are the first and last
    tokens of the answer, or the CLS index (0) when the answer is not fully inside the window
    or the answer text is empty (unanswerable).

    Args:
      tokenizer: a fast tokenizer (question first, context second).
      questions, contexts: one each per example.
      answers: optional SQuAD-style ``{"text": str, "answer_start": int}`` per example.
      max_length: tokens per window including special tokens.
      doc_stride: context tokens shared by consecutive windows.

    Raises:
      ValueError: mismatched lengths, empty strings, an answer that is not at its
        ``answer_start``, a question that leaves no room for context, or ``doc_stride`` not
        smaller than the context room.

    Example:
        >>> features = prepare_qa_features(tokenizer, ["Where is it?"], ["It is in Paris."],
        ...                                [{"text": "Paris", "answer_start": 9}])  # doctest: +SKIP
    """
    questions = _check_strings(questions, "questions")
    contexts = _check_strings(contexts, "contexts")
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts.")
    for name, values in (("questions", questions), ("contexts", contexts)):
        for index, value in enumerate(values):
            if not value.strip():
                raise ValueError(f"{name}[{index}] is empty.")
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    spans = None if answers is None else [
        _answer_span(answer, context, i)
        for i, (answer, context) in enumerate(zip(answers, contexts))
    ]
    max_length = _max_length(tokenizer, max_length)
    questions = [q.lstrip() for q in questions]
    question_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
    question_lengths = [len(ids) for ids in question_ids]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for index, length in enumerate(question_lengths):
        room = max_length - special - length
        if room <= doc_stride:
            raise ValueError(
                f"questions[{index}] has {length} tokens, leaving {max(room, 0)} context tokens "
                f"per window with max_length={max_length}; that must exceed doc_stride="
                f"{doc_stride}. Raise max_length, lower doc_stride or shorten the question."
            )
    encoding = tokenizer(
        questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    cls_id = tokenizer.cls_token_id
    example_index = np.asarray(encoding["overflow_to_sample_mapping"], dtype=np.int64)
    examples, offsets = [], []
    for window in range(len(example_index)):
        sequence_ids = encoding.sequence_ids(window)
        window_offsets = np.asarray(encoding["offset_mapping"][window], dtype=np.int32)
        window_offsets[[s != 1 for s in sequence_ids]] = -1
        example = _example_arrays(encoding, window, _MODEL_FIELDS)
        if spans is not None:
            ids = example["input_ids"]
            is_cls = ids == cls_id if cls_id is not None else np.zeros(len(ids), dtype=bool)
            cls_index = int(np.argmax(is_cls)) if is_cls.any() else 0
            start, end = _token_span(window_offsets, spans[example_index[window]], cls_index)
            example["start_positions"] = np.asarray(start, dtype=np.int32)
            example["end_positions"] = np.asarray(end, dtype=np.int32)
        examples.append(example)
        offsets.append(window_offsets)
    num_split = int(np.sum(np.bincount(example_index, minlength=len(questions)) > 1))
    if num_split:
        logger.info(
            "%d of %d QA contexts exceed one window of %d tokens and were split into "
            "overlapping windows (doc_stride=%d).",
            num_split, len(questions), max_length, doc_stride,
        )
    return QAFeatures(
        examples=examples, example_index=example_index, offsets=tuple(offsets),
        num_split=num_split,
    )


def decode_qa_predictions(
    features: QAFeatures,
    start_logits,
    end_logits,
    contexts: Sequence[str],
    *,
    max_answer_length: int = 30,
) -> list[str]:
    """Best answer text per question from per-window start/end logits.

    For every window the span ``(s, e)`` of context tokens with ``s <= e < s +
    max_answer_length`` that maximises ``start_logits[s] + end_logits[e]`` is found exactly; the
    best-scoring window of a question gives its answer, cut from the context by character
    offsets. A question with no valid span gets ``""``.

    Args:
      features: the :class:`QAFeatures` the logits were computed on, in the same window order.
      start_logits, end_logits: ``(num_windows, length)`` arrays; padding beyond a window's
        length is ignored.
      contexts: the original contexts.
      max_answer_length: longest answer in tokens.

    Example:
        >>> answers = decode_qa_predictions(features, start, end, contexts)  # doctest: +SKIP
    """
    start_logits = np.asarray(start_logits, dtype=np.float32)
    end_logits = np.asarray(end_logits, dtype=np.float32)
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2:
        raise ValueError(
            f"start/end logits must both be (num_windows, length), got {start_logits.shape} "
            f"and {end_logits.shape}."
        )
    if start_logits.shape[0] != len(features):
        raise ValueError(
            f"{start_logits.shape[0]} rows of logits for {len(features)} windows."
        )
    num_questions = len(contexts)
    if features.example_index.size and features.example_index.max() >= num_questions:
        raise ValueError(
            f"features refer to question {features.example_index.max()} but only "
            f"{num_questions} contexts were given."
        )
    best_score = np.full(num_questions, -np.inf)
    answers = [""] * num_questions
    for window, offsets in enumerate(features.offsets):
        length = len(offsets)
        if start_logits.shape[1] < length:
            raise ValueError(
                f"window {window} has {length} tokens but the logits only {start_logits.shape[1]}."
            )
        in_context = offsets[:, 0] >= 0
        start = np.where(in_context, start_logits[window, :length], -np.inf)
        end = np.where(in_context, end_logits[window, :length], -np.inf)
        gap = np.arange(length)[None, :] - np.arange(length)[:, None]
        scores = np.where((gap >= 0) & (gap < max_answer_length), start[:, None] + end[None, :],
                          -np.inf)
        s, e = np.unravel_index(np.argmax(scores), scores.shape)
        question = int(features.example_index[window])
        if np.isfinite(scores[s, e]) and scores[s, e] > best_score[question]:
            best_score[question] = scores[s, e]
            answers[question] = contexts[question][offsets[s, 0]:offsets[e, 1]]
    return answers


# --------------------------------------------------------------------------------------------
# Text-to-text (T5)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Length buckets and batching
# --------------------------------------------------------------------------------------------


def length_buckets(max_length: int, *, min_length: int = 16) -> tuple[int, ...]:
    """Powers of two from ``min_length`` up to ``max_length`` (always included).

    A jitted step sees at most ``len(length_buckets(...))`` sequence lengths, so it compiles at
    most that many times, while short batches are not padded to ``max_length``.

    Example:
        >>> length_buckets(384, min_length=32)
        (32, 64, 128, 256, 384)
    """
    if min_length < 1 or max_length < min_length:
        raise ValueError(
            f"need 1 <= min_length <= max_length, got min_length={min_length}, "
            f"max_length={max_length}."
        )
    buckets = []
    length = 1 << (int(min_length) - 1).bit_length()
    while length < max_length:
        buckets.append(length)
        length *= 2
    buckets.append(int(max_length))
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket that holds ``length`` tokens.

    Example:
        >>> bucket_for(40, (16, 32, 64))
        64
    """
    for bucket in sorted(buckets):
        if length <= bucket:
            return int(bucket)
    raise ValueError(
        f"a sequence of {length} tokens exceeds the largest bucket {max(buckets)}; tokenise with "
        f"max_length <= {max(buckets)} or add a larger bucket."
    )


def _pad_value(field: str, pad_token_id: int, pad_values: Mapping[str, int]) -> int:
    if field == "input_ids":
        return pad_token_id
    if field in pad_values:
        return pad_values[field]
    raise KeyError(
        f"no padding value for sequence field {field!r}; pass pad_values={{{field!r}: ...}}."
    )


def pad_batch(
    examples: Sequence[Mapping[str, np.ndarray]],
    buckets: Sequence[int],
    *,
    pad_token_id: int,
    batch_size: int | None = None,
    pad_values: Mapping[str, int] | None = None,
    field_buckets: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Stacks examples into a batch, padding each sequence field to its length bucket.

    Every 1-D field is padded to :func:`bucket_for` of its longest value in the batch (fields of
    equal length, like ``input_ids`` and ``attention_mask``, land in the same bucket); 0-d
    fields (class labels, answer positions) are stacked. With ``batch_size``, a short batch is
    filled with padding rows and a boolean ``example_mask`` field (``True`` for real rows) is
    always added, so the last batch has the same shapes as the others.

    Args:
      examples: per-example dicts, all with the same fields.
      buckets: allowed sequence lengths.
      pad_token_id: padding id for ``input_ids`` (``tokenizer.pad_token_id``).
      batch_size: fixed number of rows; ``None`` keeps ``len(examples)``.
      pad_values: padding per field, over :data:`DEFAULT_PAD_VALUES`.
      field_buckets: buckets for particular fields (e.g. ``{"labels": (8, 16, 32)}`` for T5
        targets).

    Example:
        >>> batch = pad_batch([{"input_ids": np.array([5, 6, 7])}], (4, 8), pad_token_id=0)
        >>> batch["input_ids"].tolist()
        [[5, 6, 7, 0]]
    """
    if not examples:
        raise ValueError("pad_batch got no examples.")
    fields = list(examples[0])
    for index, example in enumerate(examples):
        if list(example) != fields:
            raise KeyError(
                f"example {index} has fields {sorted(example)}, expected {sorted(fields)}."
            )
    rows = len(examples) if batch_size is None else int(batch_size)
    if rows < len(examples):
        raise ValueError(f"{len(examples)} examples do not fit batch_size={batch_size}.")
    pad_values = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    field_buckets = field_buckets or {}
    batch: dict[str, np.ndarray] = {}
    for field in fields:
        values = [np.asarray(example[field]) for example in examples]
        ndim = values[0].ndim
        if any(v.ndim != ndim for v in values) or ndim > 1:
            raise ValueError(
                f"field {field!r} must be 0-d or 1-D in every example, got shapes "
                f"{sorted({v.shape for v in values})}."
            )
        if ndim == 0:
            out = np.zeros(rows, dtype=values[0].dtype)
            out[:len(values)] = values
        else:
            length = bucket_for(max(len(v) for v in values), field_buckets.get(field, buckets))
            out = np.full((rows, length), _pad_value(field, pad_token_id, pad_values),
                          dtype=values[0].dtype)
            for row, value in enumerate(values):
                out[row, :len(value)] = value
        batch[field] = out
    if batch_size is not None:
        batch["example_mask"] = np.arange(rows) < len(examples)
    return batch


def bucket_plan(lengths: Sequence[int], batch_size: int, buckets: Sequence[int], *, seed: int | None = None,
                drop_remainder: bool = False) -> list[np.ndarray]:
    """The example indices of each batch of :func:`bucket_batches` (same arguments, the examples
    given by their lengths): what goes in which batch, without building a batch.

    Example:
        >>> [chunk.tolist() for chunk in bucket_plan([3, 9, 4], 2, (4, 16))]
        [[0, 2], [1]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    rng = None if seed is None else np.random.default_rng(seed)
    by_bucket: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_bucket.setdefault(bucket_for(length, buckets), []).append(index)
    plan = []
    for bucket in sorted(by_bucket):
        members = np.asarray(by_bucket[bucket])
        if rng is not None:
            members = rng.permutation(members)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            if len(chunk) == batch_size or not drop_remainder:
                plan.append(chunk)
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def bucket_batches(
    examples: Sequence[Mapping[str, np.ndarray]],
    batch_size: int,
    buckets: Sequence[int],
    *,
    pad_token_id: int,
    seed: int | None = None,
    drop_remainder: bool = False,
    length_field: str = "input_ids",
    pad_values: Mapping[str, int] | None = None,
    field_buckets: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of fixed-size batches, each drawn from examples of a single length bucket.

    Examples are grouped by the bucket of their ``length_field`` length, so little padding is
    wasted; every batch has exactly ``batch_size`` rows (short ones are filled, see
    :func:`pad_batch`, and carry ``example_mask``). The batch shapes are therefore bounded by
    the number of buckets (times the ``field_buckets`` of other fields, e.g. T5 labels); check
    with :func:`batch_shapes`.

    Args:
      examples: per-example dicts (e.g. ``Tokenized.examples``).
      batch_size: rows per batch.
      buckets: allowed lengths (:func:`length_buckets`).
      pad_token_id: padding id for ``input_ids``.
      seed: shuffles examples within buckets and the order of batches; ``None`` keeps data
        order within buckets and goes through buckets from short to long.
      drop_remainder: drop each bucket's last short batch instead of filling it.
      length_field: the field whose length picks the bucket.
      pad_values, field_buckets: as in :func:`pad_batch`.

    Example:
        >>> examples = [{"input_ids": np.ones(n, np.int32)} for n in (3, 9, 4)]
        >>> [b["input_ids"].shape for b in bucket_batches(examples, 2, (4, 16), pad_token_id=0)]
        [(2, 4), (2, 16)]
    """
    if not examples:
        raise ValueError("bucket_batches got no examples.")
    plan = bucket_plan([len(example[length_field]) for example in examples], batch_size, buckets, seed=seed,
                       drop_remainder=drop_remainder)
    for chunk in plan:
        yield pad_batch(
            [examples[i] for i in chunk], buckets, pad_token_id=pad_token_id,
            batch_size=batch_size, pad_values=pad_values, field_buckets=field_buckets,
        )


def batch_shapes(batches) -> set[tuple[tuple[str, tuple[int, ...]], ...]]:
    """The distinct ``((field, shape), ...)`` signatures in an iterable of batches.

    A jitted step compiles once per signature, so ``len(batch_shapes(...))`` is the number of
    compilations an epoch will cause.

    Example:
        >>> batch_shapes([{"x": np.zeros((2, 4))}, {"x": np.zeros((2, 4))}])
        {(('x', (2, 4)),)}
    """
    return {tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items())) for batch in batches}
