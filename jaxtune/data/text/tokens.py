"""Token classification: word tags aligned to sub-word tokens, and token predictions back to words."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxtune.data.text.tokenizer import (_MODEL_FIELDS, IGNORE_INDEX, Tokenized, _check_strings, _encode,
                                        _example_arrays, _max_length, _warn_truncated)


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
