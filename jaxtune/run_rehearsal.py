"""Rehearsal in the runner: an old task's examples trained beside the new task's, with the old task's own
head and loss, so that the shared network keeps what it knew (the config's ``rehearsal:`` section).

Every step trains on the new task's batch plus a few old-task rows, and its loss is the mean over all
the examples of both (each task's per-example loss, padding rows weighing 0): ``fraction`` of the
examples trained on are old ones. Which old examples a step takes is a pure function of ``train.seed``
and the step (a seeded pass after pass over the old training split), so a resumed run takes the same
ones; how many is spread evenly (``floor((t+1) B r) - floor(t B r)`` at step ``t``, with ``B`` the
batch size and ``r = fraction / (1 - fraction)``), so every step has the same shapes (one compile) and
the run has exactly as many new-task steps, schedule and all, as without rehearsal.

The old task's head (e.g. BERT's pooler and classifier) is read from ``head_from`` (the old run's
export) and trained under the ``rehearsal/`` subtree of the parameters; the rule table sees it there
(``rehearsal/classifier/kernel``; its layer ids are the old model's). The rest of the old model is the
run's own network. Validation and test report the old task too (``old_accuracy``, ``old_loss``, ...),
and the export leaves the old head out.

Example (YAML)::

    rehearsal:
      data: {dataset: tweet_sentiment, max_length: 64, train_limit: 4000, eval_limit: 1000}
      fraction: 0.05
      head_from: runs/A_tweets/best_hf
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from fractions import Fraction
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxtune.config import ConfigError, DataConfig, ExperimentConfig, load_config
from jaxtune.data.checks import check_data_fits_model
from jaxtune.errors import UserError
from jaxtune.run_data import PreparedData, _dataset, _model_dir, batch_rows, epoch_batches, prepare_data
from jaxtune.seeds import seed_stream
from jaxtune.tasks import Task, get_task
from jaxtune.train import make_eval_step

OLD_HEAD = "rehearsal"
"""The key of the old task's head in the parameters, and of its rows in a training batch."""
REHEARSABLE = ("sequence_classification", "pair_classification", "sequence_regression", "token_classification")
"""The old tasks rehearsal can train: a loss and scores from the batch alone (no decoding, no windows)."""


def old_data_config(section: DataConfig | str) -> DataConfig:
    """The old task's data section: ``section`` itself, or the ``data`` section of the config file it names."""
    return load_config(section).data if isinstance(section, str) else section


def without_old_head(params: Any) -> Any:
    """``params`` without the ``rehearsal`` subtree (what the new task's model and the export see)."""
    if isinstance(params, dict) and OLD_HEAD in params:
        return {k: v for k, v in params.items() if k != OLD_HEAD}
    return params


@functools.lru_cache(maxsize=8)
def _pass_order(seed: int, n: int, pass_index: int) -> np.ndarray:
    key = jax.random.fold_in(seed_stream(seed, "rehearsal"), pass_index)
    return np.random.default_rng(int(np.asarray(jax.random.bits(key, dtype=np.uint32)))).permutation(n)


@dataclasses.dataclass(frozen=True, eq=False)
class OldTask:
    """The old task of a rehearsing run: its task, model and data, the parameter paths its model shares
    with the run's, and the share of old examples. Built by :func:`with_rehearsal`.

    Example::

        old = setup.rehearsal
        old.rows, old.count_before(100)      # old rows per batch, old examples in the first 100 steps
        old.batch(7)["example_mask"]         # which of step 7's old rows are real
    """

    task: Task
    model: Any
    data: PreparedData
    shared: frozenset[tuple[str, ...]]
    fraction: Fraction
    batch_size: int
    rows: int
    seed: int
    eval_batch_size: int
    compute_dtype: str | None = None

    @property
    def per_new(self) -> Fraction:
        """Old examples per new example: ``fraction / (1 - fraction)``."""
        return self.fraction / (1 - self.fraction)

    def count_before(self, step: int) -> int:
        """How many old examples the steps before ``step`` trained on."""
        r = self.per_new
        return (int(step) * self.batch_size * r.numerator) // r.denominator

    def example(self, count: int) -> int:
        """The index in the old training split of the ``count``-th old example trained on."""
        pass_index, offset = divmod(int(count), len(self.data.train))
        return int(_pass_order(self.seed, len(self.data.train), pass_index)[offset])

    def batch(self, step: int) -> dict:
        """Step ``step``'s old rows: ``rows`` rows padded to the old data's longest bucket, the real
        ones first (``example_mask``)."""
        first, last = self.count_before(step), self.count_before(step + 1)
        chunk = np.asarray([self.example(c) for c in range(first, max(last, first + 1))])
        data = self.data if self.data.buckets is None else dataclasses.replace(self.data, buckets=(max(self.data.buckets),))
        rows = batch_rows(data, data.train, chunk, self.rows)
        rows["example_mask"] = np.arange(self.rows) < last - first
        return rows

    def params(self, params: dict) -> dict:
        """The old model's parameters: the shared ones from ``params``, its head from ``params["rehearsal"]``."""
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({**{k: flat[k] for k in self.shared},
                                             **traverse_util.flatten_dict(params[OLD_HEAD])})

    def training_task(self, task: Task) -> Task:
        """``task`` whose loss also trains the old task on the batch's ``rehearsal`` rows, and whose model
        calls leave the old head out."""
        fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(Task)}
        return _RehearsingTask(**fields, old=self)

    @functools.cached_property
    def eval_step(self) -> Callable:
        """``eval_step(state, batch)`` of the old task on a run's state."""
        eval_fn = self.task.eval_fn(self.model)
        return make_eval_step(lambda params, batch, *, model_state: eval_fn(self.params(params), batch, model_state={}),
                              compute_dtype=self.compute_dtype)

    def scores(self, state: Any, split: str) -> dict[str, float]:
        """The old task's loss and metrics on its ``split`` (``"validation"`` or ``"test"``), named
        ``old_<metric>``."""
        from jaxtune.experiment import evaluate

        examples = self.data.validation if split == "validation" else self.data.test
        batches = epoch_batches(self.data, examples, self.eval_batch_size, seed=None)
        scores, _, _ = evaluate(self.task, self.eval_step, state, batches, self.data.label_names)
        return {f"old_{k}": v for k, v in scores.items()}


@dataclasses.dataclass(frozen=True)
class _RehearsingTask(Task):
    old: OldTask = None

    def loss_fn(self, model) -> Callable:
        new_loss, old_loss = super().loss_fn(model), self.old.task.loss_fn(self.old.model)
        old = self.old

        def loss_fn(params, batch, *, rng, model_state):
            new_rng, old_rng = jax.random.split(rng)
            new_batch = {k: v for k, v in batch.items() if k != OLD_HEAD}
            loss_new, (metrics, state) = new_loss(without_old_head(params), new_batch, rng=new_rng,
                                                  model_state=model_state)
            loss_old, (old_metrics, _) = old_loss(old.params(params), batch[OLD_HEAD], rng=old_rng, model_state={})
            w_new, w_old = metrics["weight"], old_metrics["weight"]
            loss = (loss_new * w_new + loss_old * w_old) / jnp.maximum(w_new + w_old, 1.0)
            return loss, ({**metrics, "weight": w_new + w_old}, state)

        return loss_fn

    def eval_fn(self, model) -> Callable:
        eval_fn = super().eval_fn(model)
        return lambda params, batch, *, model_state: eval_fn(without_old_head(params), batch, model_state=model_state)


def old_scores(old: OldTask | None, state: Any, split: str) -> dict[str, float]:
    """:meth:`OldTask.scores`, or ``{}`` for a run without rehearsal."""
    return {} if old is None else old.scores(state, split)


def _load_old_model(cfg: ExperimentConfig, old_task: Task):
    """The old model from ``rehearsal.head_from``, with the head paths of its family; an error when
    that checkpoint has no trained head for the old task."""
    from jaxtune.hub import from_pretrained

    head_from = cfg.rehearsal.head_from
    try:
        model, variables, report = from_pretrained(_model_dir(head_from), task=old_task.head,
                                                   dtype=jnp.dtype(cfg.model.dtype), return_report=True)
    except (OSError, UserError) as e:
        raise UserError(f"rehearsal.head_from {head_from!r}: {e}") from None
    is_head = lambda p: any(re.fullmatch(h, p) for h in report.head_paths)
    missing = [p for p in report.initialized if is_head(p)]
    if missing:
        raise UserError(f"rehearsal.head_from {head_from!r} has no trained {old_task.head} head: "
                        f"{', '.join(missing)} would be newly initialised; give the old task's export "
                        "(RUN_DIR/best_hf of a run with checkpoint.export_best_hf: true)")
    if set(variables) != {"params"}:
        raise UserError(f"rehearsal.head_from {head_from!r}: a model with {sorted(set(variables) - {'params'})} "
                        "(e.g. batch statistics) cannot rehearse; rehearsal trains text models")
    return model, variables["params"], is_head


def _shared_paths(params: dict, old_params: dict, is_head: Callable[[str], bool], head_from: str) -> frozenset:
    """The old model's non-head parameter paths, each of which the run's model must hold with the same shape."""
    new_flat, old_flat = traverse_util.flatten_dict(params), traverse_util.flatten_dict(old_params)
    body = [k for k in old_flat if not is_head("params/" + "/".join(k))]
    absent = [f"{'/'.join(k)} {np.shape(old_flat[k])}" for k in body
              if k not in new_flat or np.shape(new_flat[k]) != np.shape(old_flat[k])]
    if absent or not body:
        raise UserError(f"rehearsal.head_from {head_from!r} is not the same network as model.path: "
                        f"{len(absent)} of its parameters are not in this run's model with that shape "
                        f"(e.g. {', '.join(absent[:3])}); rehearse with the old task's export of this backbone")
    return frozenset(body)


def with_rehearsal(cfg: ExperimentConfig, task: Task, model: Any, variables: dict,
                   data: PreparedData) -> tuple[Task, dict, Any, OldTask | None]:
    """``(task, variables, layer_ids, old)`` of a run: with a ``rehearsal`` section, the training task
    (:meth:`OldTask.training_task`), the variables with the old head under ``params["rehearsal"]``, layer
    ids that know that subtree, and the :class:`OldTask`; else the inputs as they are, the model's layer
    ids and ``None``. Raises :class:`jaxtune.ConfigError` / :class:`jaxtune.UserError` for what cannot be
    mixed (an old task without a batch-only loss, other inputs than the new task's, another backbone, a
    checkpoint without the old head); LoRA and data parallelism are refused by :func:`jaxtune.validate_config`.

    Example::

        task, variables, layer_ids, old = with_rehearsal(cfg, task, model, variables, data)
    """
    layer_ids = getattr(model, "layer_ids", None)
    section = cfg.rehearsal
    if section is None:
        return task, variables, layer_ids, None
    data_cfg = old_data_config(section.data)
    old_task = get_task(_dataset(data_cfg.dataset)[1])
    if old_task.name not in REHEARSABLE:
        raise ConfigError(f"rehearsal.data.dataset {data_cfg.dataset!r} is a {old_task.name} task; rehearsal "
                          f"trains {', '.join(REHEARSABLE)} tasks")
    if old_task.inputs != task.inputs:
        raise ConfigError(f"rehearsal.data.dataset {data_cfg.dataset!r} gives {old_task.inputs} but this run's "
                          f"model reads {task.inputs}: the old and new tasks must share the model's inputs")
    old_model, old_params, is_head = _load_old_model(cfg, old_task)
    shared = _shared_paths(variables["params"], old_params, is_head, section.head_from)
    old_data = prepare_data(data_cfg, cfg.model.path)
    head_size = old_model.config.num_labels
    check_data_fits_model({"train": old_data.train, "validation": old_data.validation, "test": old_data.test},
                          old_task.name, old_model.config, head_size, max(old_data.buckets))
    if old_task.problem_type is None and head_size != len(old_data.label_names):
        raise UserError(f"rehearsal.head_from {section.head_from!r} has a head of {head_size} labels but "
                        f"{data_cfg.dataset!r} has {len(old_data.label_names)}; give that data set's export")
    fraction = Fraction(section.fraction).limit_denominator(1000)
    per_new = fraction / (1 - fraction)
    accumulate = cfg.train.accumulate
    rows = math.ceil(math.ceil(cfg.data.batch_size * per_new) / accumulate) * accumulate
    old = OldTask(old_task, old_model, old_data, shared, fraction, cfg.data.batch_size, rows, cfg.train.seed,
                  cfg.data.eval_batch_size, cfg.train.compute_dtype)
    flat = traverse_util.flatten_dict(old_params)
    head = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in shared})
    params = {**variables["params"], OLD_HEAD: head}

    def rehearsal_layer_ids(path: str):
        if path.startswith(OLD_HEAD + "/"):
            return old_model.layer_ids(path[len(OLD_HEAD) + 1:])
        return layer_ids(path)

    return (old.training_task(task), {**variables, "params": params},
            None if layer_ids is None else rehearsal_layer_ids, old)
