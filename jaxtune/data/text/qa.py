"""Extractive question answering: question + context split into overlapping windows with answer
positions, and the best answer text decoded from start/end logits.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from jaxtune.data.text.tokenizer import _MODEL_FIELDS, _check_strings, _example_arrays, _max_length

logger = logging.getLogger(__name__)


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
