"""Fine-tuning tasks: batch fields, model call, loss, predictions and metrics, in one registry.

A task turns a model into the pure functions the train/eval steps need::

    task = jt.get_task("sequence_classification")
    model, variables = jt.from_pretrained(jt.minilm_path(), task=task.head, num_labels=3)
    loss_fn = task.loss_fn(model)                    # for jt.make_train_step
    eval_fn = task.eval_fn(model)                    # for jt.make_eval_step: sums + predictions
    scores = task.score(predictions, references, label_names)   # host-side metrics

Batches are dicts of arrays. Padding rows (from fixed-size batches) carry ``example_mask`` False;
ignored token labels are ``-100``. Losses and metrics ignore both.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import metrics as M
from jaxtune.models.batch_norm import check_frozen_bn

IGNORE_INDEX = -100


def _example_weights(batch: dict, n: int) -> jax.Array:
    mask = batch.get("example_mask")
    return jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


@dataclasses.dataclass(frozen=True)
class Task:
    """One fine-tuning task.

    Attributes:
      name: registry name.
      head: the ``task`` passed to :func:`jaxtune.from_pretrained` (which head to build).
      inputs: batch fields the model reads, in call order (missing optional ones are passed as None).
      targets: batch fields holding the labels.
      call: ``(model, variables, batch, train, rng, mutable) -> (outputs, updated_collections)``.
      example_loss: ``(outputs, batch) -> (per-example loss (B,), per-example weight (B,))``.
      predict: ``(outputs, batch) -> predictions`` (device arrays, per example).
      score: ``(predictions, references, label_names) -> dict`` of host metrics.
      problem_type: written to an exported ``config.json`` (``"regression"`` makes transformers
        use an MSE loss); ``None`` leaves the family's default.
      decode: ``(model, variables, batch) -> predictions`` that evaluation reports instead of
        ``predict`` (e.g. :func:`generated_tokens`); ``None``: ``predict``.
    """

    name: str
    head: str
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    call: Callable[..., Any]
    example_loss: Callable[[Any, dict], tuple[jax.Array, jax.Array]]
    predict: Callable[[Any, dict], Any]
    score: Callable[[Any, Any, Sequence[str] | None], dict]
    problem_type: str | None = None
    decode: Callable[[Any, dict, dict], Any] | None = None

    def references(self, batch: dict) -> np.ndarray:
        """The label array the task's ``score`` compares predictions with."""
        if len(self.targets) == 1:
            return np.asarray(batch[self.targets[0]])
        return np.stack([np.asarray(batch[t]) for t in self.targets], axis=-1)

    def check_batch(self, batch: dict) -> None:
        """Raises KeyError naming missing fields."""
        required = [f for f in self.inputs[:1] + self.targets if f not in batch]
        if required:
            raise KeyError(f"task {self.name!r} needs batch field(s) {required}; the batch has {sorted(batch)}")

    def loss_fn(self, model) -> Callable:
        """``loss_fn(params, batch, *, rng, model_state)`` for :func:`jaxtune.make_train_step`: the mean
        loss over the rows that count (not padding, with a label), its weight (the sum of the
        example weights) reported as ``metrics["weight"]`` so that gradient accumulation weighs
        micro-batches by it."""

        def loss_fn(params, batch, *, rng, model_state):
            self.check_batch(batch)
            outputs, new_state = self.call(model, {"params": params, **model_state}, batch, True, rng,
                                           list(model_state))
            per_example, weights = self.example_loss(outputs, batch)
            loss = _weighted_mean(per_example, weights)
            return loss, ({"weight": jnp.sum(weights)}, {**model_state, **new_state})

        return loss_fn

    def eval_fn(self, model) -> Callable:
        """``eval_fn(params, batch, *, model_state)`` for :func:`jaxtune.make_eval_step`: returns
        ``{"loss_sum", "weight", "predictions"}`` (sum them over batches; loss = loss_sum / weight)."""

        def eval_fn(params, batch, *, model_state):
            self.check_batch(batch)
            variables = {"params": params, **model_state}
            outputs, _ = self.call(model, variables, batch, False, None, [])
            per_example, weights = self.example_loss(outputs, batch)
            predictions = self.predict(outputs, batch) if self.decode is None else self.decode(model, variables, batch)
            return {"loss_sum": jnp.sum(per_example * weights), "weight": jnp.sum(weights), "predictions": predictions}

        return eval_fn


def _dropout_kwargs(train: bool, rng) -> dict:
    # Dropout needs a key: without one (rng=None) the forward pass is deterministic.
    if train and rng is not None:
        return {"deterministic": False, "rngs": {"dropout": rng}}
    return {"deterministic": True}


def _call_text_encoder(model, variables, batch, train, rng, mutable):
    kwargs = _dropout_kwargs(train, rng)
    out = model.apply(variables, batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), **kwargs)
    return out, {}


def _call_text_to_text(model, variables, batch, train, rng, mutable):
    from jaxtune.models.t5 import shift_right

    cfg = model.config
    decoder_input_ids = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
    kwargs = _dropout_kwargs(train, rng)
    out = model.apply(variables, batch["input_ids"], batch.get("attention_mask"), decoder_input_ids, **kwargs)
    return out, {}


def _call_image(model, variables, batch, train, rng, mutable):
    """Image models: ``train`` selects batch statistics for the batch-norm layers the model's
    ``frozen_bn`` leaves out; a frozen layer normalises with (and returns) its running statistics."""
    check_frozen_bn(getattr(model, "frozen_bn", False), variables.get("batch_stats", {}))
    kwargs = {"train": train}
    if train and rng is not None:
        kwargs["rngs"] = {"dropout": rng}
    if mutable:
        return model.apply(variables, batch["images"], mutable=mutable, **kwargs)
    return model.apply(variables, batch["images"], **kwargs), {}


def _sequence_loss(logits, batch):
    return _cross_entropy(logits, batch["labels"]), _example_weights(batch, logits.shape[0])


def _argmax(logits, batch):
    return jnp.argmax(logits, axis=-1)


def _classification_scores(predictions, references, label_names=None) -> dict:
    predictions, references = np.asarray(predictions), np.asarray(references)
    return {"accuracy": M.accuracy(references, predictions), "macro_f1": M.macro_f1(references, predictions),
            "mcc": M.matthews_corrcoef(references, predictions)}


def _regression_loss(outputs, batch):
    """Squared error of the single output against a float score, per example."""
    predictions = outputs.astype(jnp.float32)[:, 0]
    return (predictions - batch["labels"].astype(jnp.float32)) ** 2, _example_weights(batch, outputs.shape[0])


def _regression_predict(outputs, batch):
    return outputs.astype(jnp.float32)[:, 0]


def _regression_scores(predictions, references, label_names=None) -> dict:
    """Pearson, Spearman and MSE. Where a correlation is undefined (fewer than 2 examples, or constant
    predictions or labels) it is reported as 0.0, no measurable skill, not NaN: the runner stops on
    non-finite validation metrics, and a collapsed regressor is a result, not a numerical failure."""
    predictions = np.asarray(predictions, np.float64)
    references = np.asarray(references, np.float64)
    mse = float(np.mean((predictions - references) ** 2)) if len(references) else float("nan")
    if len(references) < 2 or np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return {"pearson": 0.0, "spearman": 0.0, "mse": mse}
    return {"pearson": M.pearson(references, predictions), "spearman": M.spearman(references, predictions),
            "mse": mse}


def _token_loss(logits, batch):
    """Per-example mean cross-entropy over the labelled tokens (-100 ignored); used by token
    classification and text-to-text targets alike. Examples with no labelled token weigh 0."""
    labels = batch["labels"]
    valid = (labels != IGNORE_INDEX).astype(jnp.float32)
    nll = _cross_entropy(logits, jnp.where(labels == IGNORE_INDEX, 0, labels))
    per_example = jnp.sum(nll * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
    weights = _example_weights(batch, labels.shape[0]) * (jnp.sum(valid, axis=-1) > 0)
    return per_example, weights


def _token_accuracy(predictions, references, label_names=None) -> dict:
    predictions, references = np.asarray(predictions), np.asarray(references)
    keep = references != IGNORE_INDEX
    return {"token_accuracy": M.accuracy(references[keep], predictions[keep])}


def _token_scores(predictions, references, label_names=None) -> dict:
    predictions, references = np.asarray(predictions), np.asarray(references)
    keep = references != IGNORE_INDEX
    out = _token_accuracy(predictions, references)
    if label_names is not None:
        names = list(label_names)
        refs = [[names[t] for t in r[k]] for r, k in zip(references, keep)]
        preds = [[names[t] for t in p[k]] for p, k in zip(predictions, keep)]
        scores = M.entity_f1(refs, preds)
        out.update({"entity_f1": scores.f1, "entity_precision": scores.precision, "entity_recall": scores.recall})
    return out


def _qa_loss(outputs, batch):
    start_logits, end_logits = outputs
    loss = 0.5 * (_cross_entropy(start_logits, batch["start_positions"]) + _cross_entropy(end_logits, batch["end_positions"]))
    return loss, _example_weights(batch, start_logits.shape[0])


def _qa_predict(outputs, batch):
    """Best (start, end) with start <= end, per example (feature-level; map to text on the host)."""
    start_logits, end_logits = outputs
    mask = batch.get("attention_mask")
    if mask is not None:
        start_logits = jnp.where(mask > 0, start_logits, -1e9)
        end_logits = jnp.where(mask > 0, end_logits, -1e9)
    scores = start_logits[:, :, None] + end_logits[:, None, :]
    length = scores.shape[-1]
    scores = jnp.where(jnp.triu(jnp.ones((length, length), bool)), scores, -jnp.inf)
    flat = jnp.argmax(scores.reshape(scores.shape[0], -1), axis=-1)
    return jnp.stack([flat // length, flat % length], axis=-1)


def _qa_scores(predictions, references, label_names=None) -> dict:
    predictions, references = np.asarray(predictions), np.asarray(references)
    exact = np.all(predictions == references, axis=-1)
    return {"span_exact": float(exact.mean()) if len(exact) else float("nan")}


def generated_tokens(model, variables: dict, batch: dict) -> jax.Array:
    """Greedy generation (:func:`jaxtune.generate`) as long as the batch's ``labels``, start token
    dropped: ``(batch, labels width)`` token ids, padded after EOS."""
    from jaxtune.generation import generate

    width = batch["labels"].shape[1]
    return generate(model, variables, batch["input_ids"], batch.get("attention_mask"), max_length=width + 1)[:, 1:]


def scored_by_generation(task: Task, score: Callable[[Any, Any, Sequence[str] | None], dict]) -> Task:
    """``task`` (text-to-text) evaluated on what the model generates, read and scored by ``score``
    (e.g. :meth:`jaxtune.data.GeneratedTargets.score`) instead of teacher-forced token accuracy.

    Example::

        task = scored_by_generation(get_task("text_to_text"), GeneratedTargets(tok, SNLI_LABELS, False).score)
    """
    return dataclasses.replace(task, decode=generated_tokens, score=score)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Adds a task to the registry (a new name, or replacing one on purpose)."""
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def task_names() -> list[str]:
    return sorted(_REGISTRY)


_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
register_task(Task("sequence_classification", "sequence_classification", _TEXT_INPUTS, ("labels",),
                   _call_text_encoder, _sequence_loss, _argmax, _classification_scores))
# Sentence pairs: the same head; the tokenizer marks the second sentence with token_type_ids = 1.
register_task(Task("pair_classification", "sequence_classification", _TEXT_INPUTS, ("labels",),
                   _call_text_encoder, _sequence_loss, _argmax, _classification_scores))
# Scored pairs (STS-B): the classification head with one output, MSE loss, Pearson/Spearman.
register_task(Task("sequence_regression", "sequence_classification", _TEXT_INPUTS, ("labels",),
                   _call_text_encoder, _regression_loss, _regression_predict, _regression_scores,
                   problem_type="regression"))
register_task(Task("token_classification", "token_classification", _TEXT_INPUTS, ("labels",),
                   _call_text_encoder, _token_loss, _argmax, _token_scores))
register_task(Task("question_answering", "question_answering", _TEXT_INPUTS, ("start_positions", "end_positions"),
                   _call_text_encoder, _qa_loss, _qa_predict, _qa_scores))
register_task(Task("text_to_text", "text_to_text", ("input_ids", "attention_mask"), ("labels",),
                   _call_text_to_text, _token_loss, _argmax, _token_accuracy))
register_task(Task("image_classification", "image_classification", ("images",), ("labels",),
                   _call_image, _sequence_loss, _argmax, _classification_scores))
