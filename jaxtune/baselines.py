"""Honest baselines for sentence pairs and extractive QA.

A fine-tuned number means little without what no training (or a trivial model) gets on the same
examples. These run on the host in seconds:

* classification: :func:`majority_class`; :class:`BagOfWordsProbe`, a multinomial logistic
  regression on binary bag-of-words features (e.g. of the SNLI hypothesis alone: the known
  annotation artefact that lets a model guess the label without the premise);
* similarity: :func:`pair_cosine`, the cosine of mean-pooled pretrained sentence embeddings
  (:func:`sentence_embeddings`), with no training -- the bar a fine-tuned sentence-embedding model
  such as all-MiniLM-L6-v2 must clear;
* QA: :func:`first_sentence_answers` and :func:`sliding_window_answers` (lexical overlap with the
  question). (:func:`qa_answers`, re-exported from :mod:`jaxtune.qa`, decodes a QA model's windows
  into answer texts for EM/F1.)

Example:
    >>> probe = BagOfWordsProbe.fit(["a dog runs", "no cat sleeps"], [0, 1], num_classes=2, min_count=1)
    >>> probe.predict(["the dog runs"]).tolist()
    [0]
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from jaxtune.qa import qa_answers  # re-exported

__all__ = [
    "BagOfWordsProbe",
    "first_sentence_answers",
    "majority_class",
    "pair_cosine",
    "qa_answers",
    "sentence_embeddings",
    "sliding_window_answers",
]

_WORD = re.compile(r"\w+(?:['’.,-]\w+)*")
_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being do does did what which who "
    "whom whose when where why how that this these those it its as into than then there their they he she his her "
    "him i you we our your not no".split())


def majority_class(train_labels: Sequence[int], count: int) -> np.ndarray:
    """``count`` predictions of the most frequent training label (the smallest id on a tie).

    Example:
        >>> majority_class([2, 1, 2], 3).tolist()
        [2, 2, 2]
    """
    return np.full(count, int(np.argmax(np.bincount(np.asarray(train_labels)))), dtype=np.int32)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


@dataclasses.dataclass(frozen=True)
class BagOfWordsProbe:
    """Multinomial logistic regression on binary bag-of-words features (L-BFGS, L2-regularised).

    Attributes:
      vocabulary: word -> feature column (words seen ``min_count`` times in training).
      weights: ``(len(vocabulary) + 1, num_classes)`` float64; the last row is the bias.
    """

    vocabulary: dict[str, int]
    weights: np.ndarray

    def features(self, texts: Sequence[str]):
        """Sparse ``(len(texts), len(vocabulary) + 1)`` binary matrix, last column all ones (bias)."""
        import scipy.sparse

        rows, cols = [], []
        for row, text in enumerate(texts):
            columns = {self.vocabulary[w] for w in _words(text) if w in self.vocabulary} | {len(self.vocabulary)}
            rows += [row] * len(columns)
            cols += sorted(columns)
        return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)),
                                       shape=(len(texts), len(self.vocabulary) + 1))

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], num_classes: int, *, min_count: int = 2,
            l2: float = 1e-4, max_iter: int = 300) -> "BagOfWordsProbe":
        """Fits the probe; deterministic (zero init, full-batch L-BFGS)."""
        import scipy.optimize

        counts: dict[str, int] = {}
        for text in texts:
            for word in set(_words(text)):
                counts[word] = counts.get(word, 0) + 1
        vocabulary = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}
        x = cls(vocabulary, np.zeros((0, 0))).features(texts)
        y = np.eye(num_classes)[np.asarray(labels)]
        shape = (x.shape[1], num_classes)

        def loss_and_grad(flat):
            w = flat.reshape(shape)
            logits = x @ w
            logits -= logits.max(axis=1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            loss = -np.sum(y * log_p) / len(y) + 0.5 * l2 * np.sum(w[:-1] ** 2)
            grad = x.T @ (np.exp(log_p) - y) / len(y)
            grad[:-1] += l2 * w[:-1]
            return loss, np.asarray(grad).ravel()

        result = scipy.optimize.minimize(loss_and_grad, np.zeros(np.prod(shape)), jac=True, method="L-BFGS-B",
                                         options={"maxiter": max_iter})
        return cls(vocabulary, result.x.reshape(shape))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The most likely class id per text."""
        return np.asarray(np.argmax(self.features(texts) @ self.weights, axis=1), dtype=np.int32)


def sentence_embeddings(model, variables, tokenizer, texts: Sequence[str], *, max_length: int = 128,
                        batch_size: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states (padding excluded) of a bare BERT (``task=None``) for ``texts``.

    Example:
        >>> model, variables = jt.from_pretrained(jt.minilm_path())  # doctest: +SKIP
        >>> sentence_embeddings(model, variables, tokenizer, ["a cat"]).shape  # doctest: +SKIP
        (1, 384)
    """
    import jax

    from jaxtune.data.text import pad_batch, tokenize_texts
    from jaxtune.models.bert import mean_pool

    examples = tokenize_texts(tokenizer, list(texts), max_length=max_length).examples
    apply = jax.jit(lambda ids, mask, types: mean_pool(model.apply(variables, ids, mask, types)[0], mask))
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = pad_batch(chunk, (max_length,), pad_token_id=int(tokenizer.pad_token_id), batch_size=batch_size)
        pooled = apply(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        out.append(np.asarray(pooled, dtype=np.float64)[:len(chunk)])
    return np.concatenate(out)


def pair_cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` embedding arrays.

    Example:
        >>> pair_cosine(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])).round(4).tolist()
        [0.7071]
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return np.sum(first * second, axis=1) / np.maximum(norms, 1e-12)


def first_sentence_answers(contexts: Sequence[str]) -> list[str]:
    """The first sentence of each context (up to the first ``.``, ``!`` or ``?`` before a space).

    Example:
        >>> first_sentence_answers(["It rains. Then it stops."])
        ['It rains.']
    """
    return [re.split(r"(?<=[.!?])\s+", context.strip(), maxsplit=1)[0] for context in contexts]


def _window_answer(question: str, context: str, window: int, max_words: int) -> str:
    asked = {w for w in _words(question) if w not in _STOPWORDS}
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(context)]
    if not spans:
        return ""
    hits = np.asarray([word in asked for _, _, word in spans], dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(hits)])
    best, answer = None, (0, 0)
    for start in range(len(spans)):
        for end in range(start, min(start + max_words, len(spans))):
            words = [spans[i][2] for i in range(start, end + 1)]
            if hits[start:end + 1].any() or all(w in _STOPWORDS for w in words):
                continue
            score = prefix[min(end + 1 + window, len(spans))] - prefix[max(start - window, 0)]
            key = (score, -(end - start))
            if best is None or key > best:
                best, answer = key, (start, end)
    if best is None:
        return ""
    return context[spans[answer[0]][0]:spans[answer[1]][1]]


def sliding_window_answers(questions: Sequence[str], contexts: Sequence[str], *, window: int = 3,
                           max_words: int = 3) -> list[str]:
    """A lexical-overlap answer per question, after the sliding-window baseline of the SQuAD paper.

    Candidates are spans of 1..``max_words`` context words that contain no question word and are not
    all stopwords; a candidate scores the number of question content words (stopwords excluded) within
    ``window`` words on either side. The best score wins, then the shorter span, then the earlier one.
    The defaults had the best F1 (0.119) on 600 questions of :func:`jaxtune.data.load_squad`'s
    validation split among windows 3/5/10 and 1-3 words (never chosen on the test split).

    Example:
        >>> sliding_window_answers(["Where was Chopin born?"], ["Chopin was born in Warsaw in 1810."],
        ...                        window=2, max_words=1)
        ['Warsaw']
    """
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts.")
    return [_window_answer(q, c, window, max_words) for q, c in zip(questions, contexts)]
