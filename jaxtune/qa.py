"""Extractive QA answers and their SQuAD scores: a model's windows decoded into one answer per question.

The runner trains and validates QA on windows (``span_exact``: the window's gold token span); the
scores that mean something are per *question*: the best span over all of its windows
(:func:`jaxtune.data.decode_qa_predictions`), cut from the context, against every gold answer with
the official SQuAD normalisation (:func:`jaxtune.metrics.squad_exact_match`,
:func:`jaxtune.metrics.squad_f1`). :func:`jaxtune.finetune` adds them to a QA run's test metrics,
:func:`jaxtune.evaluate_run` (``jaxtune eval``) to any split's.

Example::

    answers = qa_answers(model, variables, features, split.contexts, pad_token_id=0)
    squad_scores(answers, split)        # {"exact_match": 0.71, "f1": 0.80}
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from jaxtune import metrics as M

__all__ = ["qa_answers", "qa_run_scores", "squad_scores"]


def qa_answers(model, variables, features, contexts: Sequence[str], *, pad_token_id: int, batch_size: int = 32,
               max_answer_length: int = 30) -> list[str]:
    """Answer text per question from a QA model over its windows (:class:`jaxtune.data.QAFeatures`).

    Windows are scored in order, padded to one length (one compilation), and decoded exactly by
    :func:`jaxtune.data.decode_qa_predictions` (best span over all of a question's windows).

    Example::

        answers = qa_answers(model, variables, features, contexts, pad_token_id=0)
        jt.metrics.squad_f1(answers, split.answer_texts())
    """
    from jaxtune.data.text import decode_qa_predictions, pad_batch

    length = max(len(e["input_ids"]) for e in features.examples)
    inputs = [{k: e[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in e} for e in features.examples]
    apply = jax.jit(lambda variables, ids, mask, types: model.apply(variables, ids, mask, types))
    starts, ends = [], []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        batch = pad_batch(chunk, (length,), pad_token_id=pad_token_id, batch_size=batch_size)
        start_logits, end_logits = apply(variables, batch["input_ids"], batch["attention_mask"],
                                         batch.get("token_type_ids"))
        starts.append(np.asarray(start_logits)[:len(chunk)])
        ends.append(np.asarray(end_logits)[:len(chunk)])
    return decode_qa_predictions(features, np.concatenate(starts), np.concatenate(ends), contexts,
                                 max_answer_length=max_answer_length)


def squad_scores(answers: Sequence[str], split) -> dict[str, float]:
    """``exact_match`` and ``f1`` of one answer per question of ``split`` (a :class:`jaxtune.data.QASplit`)
    against all its gold answers, official SQuAD v1.1 normalisation.

    Example::

        squad_scores(["Denver Broncos"], split)   # {"exact_match": 1.0, "f1": 1.0}
    """
    gold = split.answer_texts()
    return {"exact_match": M.squad_exact_match(answers, gold), "f1": M.squad_f1(answers, gold)}


def qa_run_scores(model, variables: dict[str, Any], data, split: str, *, batch_size: int = 32) -> dict[str, float]:
    """:func:`squad_scores` of a runner's prepared QA data (``data.qa[split]``: windows and questions)
    for ``model`` with ``variables``; ``{}`` when ``data`` is not extractive QA.

    Example::

        qa_run_scores(setup.model, {"params": state.params}, setup.data, "test")
    """
    if getattr(data, "qa", None) is None:
        return {}
    features, questions = data.qa[split]
    answers = qa_answers(model, variables, features, questions.contexts, pad_token_id=data.pad_token_id,
                         batch_size=batch_size)
    return squad_scores(answers, questions)
