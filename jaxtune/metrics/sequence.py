"""Entity-level F1 over sentences of BIO tags (seqeval's default mode)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from jaxtune.metrics.classification import _f1_from, _safe_divide


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not entity_type:
        raise ValueError(
            f"tag {tag!r} is not a BIO tag; expected 'O', 'B-<type>' or 'I-<type>' (pass "
            f"label_names= to score tag ids)."
        )
    return prefix, entity_type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (``end`` inclusive) in one sentence of BIO tags.

    Follows seqeval's default (conlleval) rules: an entity starts at ``B-X``, or at ``I-X``
    after ``O`` or after a tag of another type; it ends before ``O``, ``B-*`` or a type change.

    Example:
        >>> get_entities(["B-PER", "I-PER", "O", "I-LOC"])
        [('PER', 0, 1), ('LOC', 3, 3)]
    """
    entities = []
    prev_prefix, prev_type, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, entity_type = _split_tag(tag)
        type_changed = entity_type != prev_type
        if prev_prefix != "O" and (prefix in ("B", "O") or type_changed):
            entities.append((prev_type, begin, i - 1))
        if prefix == "B" or (prefix == "I" and (prev_prefix == "O" or type_changed)):
            begin = i
        prev_prefix, prev_type = prefix, entity_type
    return entities


@dataclasses.dataclass(frozen=True)
class EntityScores:
    """Micro-averaged entity precision/recall/F1 plus per-type scores.

    ``per_type`` maps each entity type seen in labels or predictions to
    ``{"precision", "recall", "f1", "support"}`` (support = gold entities of that type).
    """

    precision: float
    recall: float
    f1: float
    per_type: dict[str, dict[str, float]]


def _as_tag_sentences(sentences, label_names, what: str) -> list[list[str]]:
    out = []
    for index, sentence in enumerate(sentences):
        if label_names is None:
            out.append([str(tag) for tag in sentence])
            continue
        tags = []
        for tag_id in sentence:
            tag_id = int(tag_id)
            if not 0 <= tag_id < len(label_names):
                raise ValueError(
                    f"{what}[{index}] contains tag id {tag_id}, outside the "
                    f"{len(label_names)} label names."
                )
            tags.append(label_names[tag_id])
        out.append(tags)
    return out


def entity_f1(
    labels: Sequence[Sequence], predictions: Sequence[Sequence],
    label_names: Sequence[str] | None = None,
) -> EntityScores:
    """Entity-level precision, recall and F1 over sentences of BIO tags (seqeval semantics).

    An entity counts as correct only when its type and its exact span match. Scores are
    micro-averaged over all entities; ``0.0`` when there is nothing to divide by (no gold or no
    predicted entities), as in seqeval.

    Args:
      labels: gold tags, one sequence per sentence: tag strings, or tag ids with
        ``label_names``.
      predictions: predicted tags, same sentence lengths.
      label_names: maps tag ids to strings (e.g. ``["O", "B-PER", "I-PER"]``) when the
        sequences hold ids.

    Example:
        >>> scores = entity_f1([["B-PER", "I-PER", "O", "B-LOC"]],
        ...                    [["B-PER", "I-PER", "O", "O"]])
        >>> scores.precision, scores.recall, round(scores.f1, 4)
        (1.0, 0.5, 0.6667)
    """
    gold = _as_tag_sentences(labels, label_names, "labels")
    pred = _as_tag_sentences(predictions, label_names, "predictions")
    if len(gold) != len(pred):
        raise ValueError(
            f"labels have {len(gold)} sentences but predictions have {len(pred)}."
        )
    gold_entities: dict[str, set] = collections.defaultdict(set)
    pred_entities: dict[str, set] = collections.defaultdict(set)
    for index, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(
                f"sentence {index}: {len(gold_tags)} gold tags but {len(pred_tags)} predicted "
                f"tags; predictions must be per word, aligned with the labels."
            )
        for entity_type, start, end in get_entities(gold_tags):
            gold_entities[entity_type].add((index, start, end))
        for entity_type, start, end in get_entities(pred_tags):
            pred_entities[entity_type].add((index, start, end))
    per_type = {}
    totals = np.zeros(3)
    for entity_type in sorted(set(gold_entities) | set(pred_entities)):
        counts = np.array([
            len(gold_entities[entity_type] & pred_entities[entity_type]),
            len(pred_entities[entity_type]),
            len(gold_entities[entity_type]),
        ], dtype=np.float64)
        totals += counts
        precision, recall = _safe_divide(counts[0], counts[1:])
        per_type[entity_type] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(_f1_from(precision, recall)),
            "support": int(counts[2]),
        }
    precision, recall = _safe_divide(totals[0], totals[1:])
    return EntityScores(
        precision=float(precision),
        recall=float(recall),
        f1=float(_f1_from(precision, recall)),
        per_type=per_type,
    )
