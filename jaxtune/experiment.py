"""The experiment runner: config -> data, model, rule table, optimizer, steps -> a finished run.

One call runs a whole fine-tuning with checkpoints (latest + best k), exact resume, early stopping
(restoring the best weights), gradual unfreezing, progress bar, JSONL/TensorBoard logs, a curve
plot and a test report, all under ``output_dir/name``::

    result = jt.finetune(jt.load_config("experiments/configs/tweets_minilm.yaml"))
    result.test_metrics["accuracy"], result.paths["plot"]

Each part stays usable alone: :func:`prepare_data`, :func:`jaxtune.from_pretrained`,
:func:`build_rules`, :func:`jaxtune.run_optim.run_optimizer`, :func:`jaxtune.make_train_step`. :func:`finetune`
runs in named phases: :func:`_setup` (config, run directory, :func:`build`) -> :func:`_resume` (the state
to train from) -> :func:`_train_loop` -> :func:`_evaluate` (best weights on the test split) -> the
outputs (:func:`jaxtune.run_outputs.write_outputs`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
import optax

from jaxtune import multihost
from jaxtune.checkpoint import Checkpointer
from jaxtune.compile_cache import FirstCallWatch, describe, use_run_compile_settings
from jaxtune.config import (ConfigError, ExperimentConfig, load_config, save_config, to_dict,
                            unfreeze_boundaries, unfreeze_stage_count)
from jaxtune.data.checks import check_data_fits_model, check_num_labels
from jaxtune.early_stopping import EarlyStopping
from jaxtune.errors import UserError
from jaxtune.forgetting import averaged_params, param_drift
from jaxtune.lora import merged_params
from jaxtune.nonfinite import NonFiniteGuard, check_finite_metrics
from jaxtune.optim import set_trainable
from jaxtune.qa import qa_run_scores
from jaxtune.unfreezing import unfreezing_stage, unfreezing_stages, with_frozen_layers
from jaxtune.rules import Rule, frozen_batch_norm, label_params, leaf_paths, summary, trainable_mask
from jaxtune.run_batch_stats import BatchStatsRecompute
from jaxtune.run_data import (PreparedData, _dataset, batch_rows, epoch_batches, epoch_plan,  # re-exported
                              prepare_data)
from jaxtune.rundir import (RunDirError, RunDirPlan, RunResult, check_run_dir, finished_result, open_run_dir,
                            read_result, run_fingerprint)  # read_result, run_fingerprint: re-exported
from jaxtune.run_model import build_rules, load_model, with_adapters, with_frozen_bn
from jaxtune.run_optim import run_optimizer, uses_layer_decay
from jaxtune.run_optim import (learning_rate_schedule as _schedule, optax_constructor as _optimizer,  # re-exported
                               uses_layer_decay as _uses_layer_decay, weight_averaging as _weight_averaging)
from jaxtune.run_outputs import export_config, export_model, write_outputs  # export_config, export_model: re-exported
from jaxtune.run_rehearsal import OLD_HEAD, old_scores, with_rehearsal, without_old_head
from jaxtune.runlog import NullLogger, RunLogger, progress_bar, track
from jaxtune.seeds import epoch_seed, seed_stream
from jaxtune.sharding import place_global_batch, process_rows, shard_batch, shard_train_state
from jaxtune.tasks import IGNORE_INDEX, Task, get_task, scored_by_generation
from jaxtune.train import StagedTrainStep, TrainState, make_eval_step, make_train_step

logger = logging.getLogger(__name__)


def check_monitor(monitor: str, task: Task, data: PreparedData) -> None:
    """Raises ConfigError unless ``monitor`` is a validation metric that ``task`` reports on ``data``.

    The metric names come from scoring two validation examples against themselves on the host (no
    model), so a misspelt ``early_stopping.monitor`` fails before the model is loaded, not at the
    first evaluation.

    Example::

        check_monitor("val_f1", get_task("sequence_classification"), data)
        # ConfigError: early_stopping.monitor is 'val_f1'; sequence_classification gives val_accuracy, ...
    """
    if not data.validation:
        return
    references = task.references(epoch_batches(data, data.validation[:2], 2, seed=None)[0])
    metrics = ["val_loss", *(f"val_{k}" for k in task.score(np.zeros_like(references), references, data.label_names))]
    if monitor not in metrics:
        raise ConfigError(f"early_stopping.monitor is {monitor!r}; {task.name} validation gives {', '.join(metrics)} "
                          "(the checkpoints keep the best by it too)")


def _stack_rows(rows: list[np.ndarray], pad: int) -> np.ndarray:
    if rows[0].ndim == 0:
        return np.stack(rows)
    width = max(r.shape[0] for r in rows)
    out = np.full((len(rows), width) + rows[0].shape[1:], pad, rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def evaluate(task: Task, eval_step, state: TrainState, batches: Sequence[dict],
             label_names: Sequence[str] | None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Loss and task metrics over ``batches``; also the stacked predictions and references."""
    loss_sum, weight, preds, refs = 0.0, 0.0, [], []
    for batch in batches:
        out = eval_step(state, batch)
        keep = np.asarray(batch.get("example_mask", np.ones(len(next(iter(batch.values()))), bool)))
        loss_sum += float(out["loss_sum"])
        weight += float(out["weight"])
        p, r = np.asarray(out["predictions"]), task.references(batch)
        preds += [p[i] for i in np.flatnonzero(keep)]
        refs += [r[i] for i in np.flatnonzero(keep)]
    if not preds:
        raise ValueError("evaluation got no examples")
    predictions, references = _stack_rows(preds, 0), _stack_rows(refs, IGNORE_INDEX)
    scores = task.score(predictions, references, label_names)
    return {"loss": loss_sum / max(weight, 1.0), **scores}, predictions, references


def _runner_state_record(cfg: ExperimentConfig, rules: list[Rule], epoch: int, batch_index: int,
                         stopper: EarlyStopping | None, stage: int) -> dict:
    return {"config": to_dict(cfg), "rules": [[p, dataclasses.asdict(s)] for p, s in rules],
            "data_position": {"epoch": epoch, "batch": batch_index},
            "early_stopping": None if stopper is None else dataclasses.asdict(stopper), "stage": stage}


@dataclasses.dataclass
class Setup:
    """Everything a run builds before training: usable alone (e.g. to evaluate a checkpoint)."""

    config: ExperimentConfig
    data: PreparedData
    task: Task
    model: Any
    rules: list[Rule]
    layer_ids: Any
    strategy_table: str
    optimizer: optax.GradientTransformation
    total_steps: int
    stages: list | None
    train_step: Any
    eval_step: Any
    initial_state: TrainState
    run_dir: str
    trainable_params: int
    mesh: Any = None
    rehearsal: Any = None   # the old task of a rehearsing run (jaxtune.run_rehearsal.OldTask)
    recompute_bn: Any = None   # train.recompute_batch_stats (jaxtune.run_batch_stats.BatchStatsRecompute)

    def evaluated(self, state: TrainState, stage: int = -1) -> TrainState:
        """The state that validation, test and export read at unfreezing ``stage``: the averaged weights
        (:func:`evaluation_state`), then batch-norm statistics re-estimated when
        ``train.recompute_batch_stats`` is set."""
        state = evaluation_state(self.config, state)
        return state if self.recompute_bn is None else self.recompute_bn(state, stage)

    def place(self, batch: dict) -> dict:
        """``batch`` (held whole by every process) on the run's mesh; itself when there is none."""
        return batch if self.mesh is None else place_global_batch(batch, self.mesh)

    def train_batch(self, chunk: np.ndarray, step: int = 0) -> dict:
        """The training batch of examples ``chunk`` (an entry of :func:`epoch_plan`) at ``step`` on the run's
        mesh: each process builds only the rows of its own devices. A rehearsing run adds the step's old rows."""
        size = self.config.data.batch_size
        if self.mesh is None:
            batch = batch_rows(self.data, self.data.train, chunk, size)
            return batch if self.rehearsal is None else {**batch, OLD_HEAD: self.rehearsal.batch(step)}
        return shard_batch(batch_rows(self.data, self.data.train, chunk, size, process_rows(size, self.mesh)), self.mesh)

    def eval_on_host(self, state: TrainState, batch: dict) -> dict:
        """``eval_step`` on the placed batch, its outputs fetched whole to every process."""
        out = self.eval_step(state, self.place(batch))
        return out if self.mesh is None else multihost.host_copy(out)


def _head_size(task: Task, cfg: ExperimentConfig, label_names: Sequence[str]) -> int | None:
    """The head's output count: ``model.num_labels``, else one per label; None for a text-to-text head
    (it predicts tokens)."""
    return None if task.head == "text_to_text" else cfg.model.num_labels or len(label_names)


def answer_scores(setup: Setup, state: TrainState, split: str) -> dict[str, float]:
    """Extractive QA runs: ``exact_match`` and ``f1`` of the ``split`` questions, each answered by its
    best span over all its windows (:func:`jaxtune.qa.qa_run_scores`); ``{}`` for other tasks."""
    if setup.data.qa is None:
        return {}
    variables = {"params": without_old_head(merged_params(state.params)), **state.model_state}
    variables = variables if setup.mesh is None else multihost.host_copy(variables)
    return qa_run_scores(setup.model, variables, setup.data, split, batch_size=setup.config.data.eval_batch_size)


def _as_config(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str]) -> ExperimentConfig:
    from jaxtune.config import apply_overrides, from_dict, validate_config

    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    cfg = from_dict(ExperimentConfig, apply_overrides(to_dict(config) if isinstance(config, ExperimentConfig)
                                                     else config, overrides))
    validate_config(cfg)
    return cfg


def build(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = (),
          data: PreparedData | None = None) -> Setup:
    """Data, model (pretrained or ``model.init: random`` weights), rule table, optimizer, jitted steps
    and initial state. ``train.seed`` drives the new head's (or the random model's) init and the
    dropout key (:func:`jaxtune.seed_stream`); ``data.seed`` only the split and subsets. With
    ``train.parallel`` the steps and the state are sharded over a mesh of every device
    (:func:`jaxtune.multihost.run_mesh`)."""
    cfg = _as_config(config, overrides)
    mesh = multihost.run_mesh(cfg)
    data = data if data is not None else prepare_data(cfg.data, cfg.model.path, cfg.model.num_labels, cfg.model.task)
    check_num_labels(cfg.model.num_labels, data.label_names, cfg.data.dataset)
    task = get_task(data.task if cfg.model.task == "auto" else cfg.model.task)
    if (task.name == "text_to_text") != (data.generated is not None):
        raise ConfigError(f"model.task is {cfg.model.task!r} but the data was prepared for {data.task}: pass "
                          "prepare_data(..., task=cfg.model.task), or let finetune prepare it")
    if data.generated is not None:
        task = scored_by_generation(task, data.generated.score)
    check_monitor(cfg.early_stopping.monitor, task, data)
    logger.info("data: %s", data.description)
    num_labels = _head_size(task, cfg, data.label_names)
    if task.problem_type == "regression" and num_labels != 1:
        raise ConfigError(f"model.num_labels={num_labels}: {task.name} predicts one score per example; set "
                          "model.num_labels to 1 or null")
    model, variables = load_model(cfg.model.path, task.head, num_labels, cfg.model.dtype, init=cfg.model.init,
                                  rng=seed_stream(cfg.train.seed, "init"), scan_layers=cfg.model.scan_layers,
                                  remat=cfg.model.remat)
    check_data_fits_model({"train": data.train, "validation": data.validation, "test": data.test}, task.name,
                          getattr(model, "config", None), num_labels, max(data.buckets) if data.buckets else None)
    model_state = {k: v for k, v in variables.items() if k != "params"}
    rules = build_rules(cfg.optim, model)
    task, variables, layer_ids, old = with_rehearsal(cfg, task, model, variables, data)
    params = with_adapters(variables["params"], rules, layer_ids, cfg.train.seed)
    if cfg.checkpoint.export_best_hf and cfg.checkpoint.export_format == "peft":
        from jaxtune.lora_peft import peft_module_names
        peft_module_names(params.adapters, model.config, task.head)   # fails now, not after training
    variables = {**variables, "params": params}
    table = summary(params, rules, layer_ids=layer_ids if uses_layer_decay(cfg.optim, rules) else None,
                    layer_decay=cfg.optim.layer_decay, l2_sp=cfg.optim.l2_sp,
                    batch_stats=variables.get("batch_stats"))
    batches_per_epoch = len(epoch_plan(data, data.train, cfg.data.batch_size, seed=0))
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * batches_per_epoch))
    runtime = cfg.optim.unfreezing == "runtime"
    uses_ids = uses_layer_decay(cfg.optim, rules) or cfg.optim.unfreezing is not None
    tx = run_optimizer(cfg.optim, params, rules, total_steps, layer_ids=layer_ids if uses_ids else None,
                       runtime=runtime, layer_decay=cfg.optim.layer_decay, l2_sp=cfg.optim.l2_sp)
    stages = None
    if cfg.optim.unfreezing is not None:
        stages = unfreezing_stages(params, layer_ids, rules, unfreeze_stage_count(cfg.optim),
                                   groups=cfg.optim.unfreeze_groups)
        unfreezing_stage(0, len(stages), every=cfg.optim.unfreeze_every or None,  # boundaries checked before training
                         at=unfreeze_boundaries(cfg.optim, batches_per_epoch))
    recompute_bn = BatchStatsRecompute.for_run(cfg, model, rules, stages, data, model_state)
    fsdp = cfg.train.parallel == "fsdp"
    step_kwargs = dict(accumulate=cfg.train.accumulate, compute_dtype=cfg.train.compute_dtype,
                       **({} if mesh is None else dict(mesh=mesh, fsdp=fsdp)))
    train_step = _train_step(task, model, variables, rules, tx, stages, runtime, step_kwargs, layer_ids)
    eval_step = make_eval_step(task.eval_fn(model), compute_dtype=cfg.train.compute_dtype, mesh=mesh)
    state = TrainState.create(params, tx, model_state=model_state, rng=seed_stream(cfg.train.seed, "dropout"))
    if mesh is not None:
        state = shard_train_state(state, mesh, fsdp=fsdp)
    n_trainable = sum(int(np.size(p)) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable_mask(params, rules))) if t)
    return Setup(cfg, data, task, model, rules, layer_ids, table, tx, total_steps, stages, train_step, eval_step,
                 state, os.path.join(cfg.output_dir, cfg.name), n_trainable, mesh, old, recompute_bn)


def _train_step(task: Task, model, variables: dict, rules: list[Rule], tx: optax.GradientTransformation,
                stages: list | None, runtime: bool, step_kwargs: dict, layer_ids: Any = None):
    """``train_step(state, batch, stage)``. Batch-norm layers of frozen groups keep their statistics
    (:func:`jaxtune.frozen_batch_norm`), following the unfreezing stage: one step is built per
    distinct set of frozen batch-norm layers (so a runtime-mode run of a CNN compiles once per stage
    that unfreezes batch norm; a model without batch norm compiles once). In a scanned model the
    bottom layers that the rules (or a structural stage) freeze run under ``stop_gradient``
    (:func:`jaxtune.with_frozen_layers`): no weight gradient is computed for them."""
    structural = stages is not None and not runtime
    masks = [None] if stages is None else stages
    stage_bn = [frozen_batch_norm(variables, rules, trainable=mask) for mask in masks]
    rule_mask = trainable_mask(variables["params"], rules)
    stage_models = [with_frozen_layers(with_frozen_bn(model, frozen), mask if structural else rule_mask, layer_ids)
                    for frozen, mask in zip(stage_bn, masks)]
    steps: dict[tuple[frozenset[str], int], Any] = {}

    def step_of(stage: int):
        run_model = stage_models[stage]
        key = (stage_bn[stage], getattr(run_model, "frozen_layers", 0))
        if key not in steps:
            loss_fn = task.loss_fn(run_model)
            steps[key] = (StagedTrainStep(loss_fn, tx, **step_kwargs) if structural
                          else make_train_step(loss_fn, tx, trainable=rule_mask, **step_kwargs))
        return steps[key]

    if structural:
        return lambda state, batch, stage: step_of(stage)(state, batch, stages[stage])
    return lambda state, batch, stage: step_of(stage)(state, batch)


def evaluation_state(cfg: ExperimentConfig, state: TrainState) -> TrainState:
    """The state that validation, test and export read: with ``optim.weight_average`` set, its
    params are the averaged weights (:func:`jaxtune.averaged_params`); else ``state`` itself."""
    if cfg.optim.weight_average is None:
        return state
    return state.replace(params=averaged_params(state.params, state.opt_state))


def _checkpointer(cfg: ExperimentConfig, run_dir: str) -> Checkpointer:
    return Checkpointer(os.path.join(run_dir, "checkpoints"), monitor=cfg.early_stopping.monitor,
                        mode=cfg.early_stopping.mode, keep_best=cfg.checkpoint.keep_best,
                        keep_latest=cfg.checkpoint.keep_latest)


def _resume_state(ckpt: Checkpointer, template: TrainState, run_dir: str,
                  total_steps: int) -> tuple[TrainState, dict | None]:
    """The state to train from: the newest intact checkpoint (printing ``resuming <dir> at step N``)
    and its record, or ``template`` and ``None`` when there is no checkpoint."""
    restored = ckpt.restore_latest_intact(template=template)
    if restored is None:
        return template, None
    state, record = restored
    if int(state.step) > total_steps:
        raise RunDirError(f"{run_dir} is at step {int(state.step)}, past this config's {total_steps} steps "
                          "(train.max_steps / train.epochs): raise them, or pass overwrite=True (--overwrite) "
                          "to start the run over")
    print(f"resuming {run_dir} at step {int(state.step)}")
    return state, record


@multihost.stops_others_on_failure
def finetune(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = (),
             data: PreparedData | None = None, *, resume: bool = False, overwrite: bool = False) -> RunResult:
    """Runs (or resumes) one fine-tuning experiment; see the module docstring.

    ``config`` is an :class:`ExperimentConfig`, a YAML/JSON path, or a dict; ``overrides`` are
    ``key=value`` strings. ``data`` may be passed to reuse prepared examples across runs.

    The run directory ``output_dir/name`` is checked before anything is written to it. A new run
    starts there (``fingerprint.json`` first). The same run (same :func:`run_fingerprint`) resumes
    from its newest intact checkpoint, printing ``resuming <dir> at step N``, or, when it finished,
    returns its result without training. A directory holding another run is a
    :class:`~jaxtune.rundir.RunDirError` listing the differing keys (old -> new), unless
    ``resume=True`` (continue it with the new values anyway) or ``overwrite=True`` (delete it and
    start over). The keys that may change on resume are :data:`jaxtune.config.RESUMABLE_KEYS`.

    A NaN/inf loss, gradient, weight or validation metric raises :class:`jaxtune.NonFiniteError`
    (step and parameter named) at the next log/evaluation point; no non-finite checkpoint is saved.

    Several processes (after :func:`jaxtune.initialize_multihost`, with ``train.parallel`` dp or
    fsdp) run one run together: they check they hold the same config, package versions and data
    (:class:`jaxtune.MultihostError` naming the key otherwise), each feeds its share of every batch,
    orbax writes one checkpoint from all of them, and only process 0 writes the run directory's
    other files (logs, plots, report, export, result). A process that fails stops the others.

    Example::

        result = jt.finetune("experiments/configs/tweets_minilm.yaml", ["train.max_steps=200"])
        result = jt.finetune(cfg, overwrite=True)     # start runs/NAME over
    """
    start = time.time()
    prepared = _setup(config, overrides, data, resume=resume, overwrite=overwrite)
    if isinstance(prepared, RunResult):
        return prepared  # the run had finished: its result, nothing trained or written
    run = _resume(*prepared)
    try:
        _train_loop(run)
        result, predictions, references = _evaluate(run)
    finally:
        run.log.close()
        run.ckpt.close()
    return write_outputs(run.setup, run.plan, run.state, result, predictions, references, start)


@dataclasses.dataclass
class _Run:
    """A run in progress, handed from phase to phase of :func:`finetune`: what :func:`_setup` built,
    the checkpointer and logger, the pretrained weights drift is measured from (on the host) with
    their rule groups, and where training stands (state, step, data position, stage, early stopping)."""

    setup: Setup
    plan: RunDirPlan
    ckpt: Checkpointer
    log: RunLogger | NullLogger
    pretrained: Any
    groups: Any
    state: TrainState
    step: int
    epoch: int = 0
    batch_index: int = 0
    stage: int = -1
    stopper: EarlyStopping | None = None
    stopped_early: bool = False
    last_val: dict[str, float] = dataclasses.field(default_factory=dict)
    train_step: Any = None   # the setup's train step, watched for its first call's compile (FirstCallWatch)


def _setup(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str], data: PreparedData | None,
           *, resume: bool, overwrite: bool) -> tuple[Setup, RunDirPlan] | RunResult:
    """Phase 1 of :func:`finetune`: the config checked (the same in every process) and the run directory
    checked, then data, model, optimizer and steps built (:func:`build`) and the run directory opened
    (``config.yaml``, the strategy printed). Returns ``(setup, plan)``, or the :class:`RunResult` of a
    run that had already finished (then nothing is written)."""
    cfg = _as_config(config, overrides)
    use_run_compile_settings(cfg.train)
    multihost.check_same_config(cfg)
    plan = check_run_dir(os.path.join(cfg.output_dir, cfg.name), cfg, resume=resume, overwrite=overwrite)
    multihost.barrier("run_dir_checked")  # every process decided before process 0 writes
    setup = build(cfg, data=data)
    if multihost.is_multiprocess():
        multihost.agree("data", {"data.digest": multihost.data_digest(setup.data)})
    done = finished_result(plan, setup.total_steps)
    if done is not None:
        return done
    if multihost.is_main_process():
        open_run_dir(plan)
        save_config(setup.config, os.path.join(setup.run_dir, "config.yaml"))
        print(f"strategy ({setup.config.name}):\n{setup.strategy_table}")
    multihost.barrier("run_dir_opened")
    return setup, plan


def _resume(setup: Setup, plan: RunDirPlan) -> _Run:
    """Phase 2: the pretrained weights copied to the host, the checkpointer, and the state to train
    from: the newest intact checkpoint with its data position, unfreezing stage and early-stopping
    record (:func:`_resume_state`), else the initial state. Returns the :class:`_Run` with its logger
    open; the caller closes the logger and the checkpointer."""
    cfg = setup.config
    # The pretrained weights, on the host (the first step donates the device copy): drift is measured from them.
    # (A LoRA run's drift is that of the merged weights: the LoRA'd kernels form the "<name> (base)" groups.)
    pretrained = multihost.host_copy(merged_params(setup.initial_state.params))
    groups = label_params(pretrained, setup.rules)
    stopper = EarlyStopping(cfg.early_stopping.monitor, cfg.early_stopping.mode, cfg.early_stopping.patience,
                            cfg.early_stopping.min_delta) if cfg.early_stopping.enabled else None
    ckpt = _checkpointer(cfg, setup.run_dir)
    try:
        state, record = _resume_state(ckpt, setup.initial_state, setup.run_dir, setup.total_steps)
    except BaseException:
        ckpt.close()
        raise
    epoch, batch_index, stage = 0, 0, -1
    if record is not None:
        epoch, batch_index = record["data_position"]["epoch"], record["data_position"]["batch"]
        stage = record.get("stage", -1)
        if stopper is not None and record.get("early_stopping"):
            stopper = EarlyStopping(**record["early_stopping"])
    log = (RunLogger(setup.run_dir, resume_step=int(state.step)) if multihost.is_main_process()
           else NullLogger(setup.run_dir))
    return _Run(setup, plan, ckpt, log, pretrained, groups, state, int(state.step), epoch, batch_index, stage, stopper,
                train_step=FirstCallWatch(setup.train_step))


def _train_loop(run: _Run) -> None:
    """Phase 3: trains ``run`` from where it stands until ``total_steps`` or an early stop, stage by
    unfreezing stage; logs train metrics at log points; validates, logs drift and checkpoints at
    evaluation points. Updates ``run`` in place (state, step, data position, stage, early stopping,
    last validation scores). A non-finite value raises :class:`jaxtune.NonFiniteError` at the next
    log or evaluation point, and at the end."""
    setup, ckpt, log, pretrained, groups = run.setup, run.ckpt, run.log, run.pretrained, run.groups
    cfg, data, task, rules, stages = setup.config, setup.data, setup.task, setup.rules, setup.stages
    total_steps, eval_step, main = setup.total_steps, setup.eval_on_host, multihost.is_main_process()
    runtime = cfg.optim.unfreezing == "runtime"
    state, step, epoch, batch_index, stage = run.state, run.step, run.epoch, run.batch_index, run.stage
    stopper, stopped_early, last_val = run.stopper, run.stopped_early, run.last_val
    guard = NonFiniteGuard(leaf_paths(state.params))
    val_batches = epoch_batches(data, data.validation, cfg.data.eval_batch_size, seed=None)
    examples_seen, t_last = 0, time.time()
    with progress_bar(total_steps, cfg.name, disable=not (cfg.train.progress and main)) as bar:
        bar.update(bar.tasks[0].id, completed=step)
        while step < total_steps and not stopped_early:
            batches = epoch_plan(data, data.train, cfg.data.batch_size, seed=epoch_seed(cfg.train.seed, epoch))
            while batch_index < len(batches) and step < total_steps:
                if stages is not None:
                    new_stage = unfreezing_stage(step, len(stages), every=cfg.optim.unfreeze_every or None,
                                                 at=unfreeze_boundaries(cfg.optim, len(batches)))
                    if runtime and new_stage != stage:
                        state = state.replace(opt_state=set_trainable(state.opt_state, stages[new_stage]))
                    stage = new_stage
                chunk = batches[batch_index]
                state, train_metrics = run.train_step(state, setup.train_batch(chunk, step), max(stage, 0))
                step += 1
                batch_index += 1
                guard.record(step, train_metrics)
                examples_seen += len(chunk)
                if step % cfg.train.log_every == 0 or step == total_steps:
                    values = guard.check(train_metrics, last_checkpoint=ckpt.latest_step())
                    now = time.time()
                    values["examples_per_s"] = examples_seen / max(now - t_last, 1e-9)
                    examples_seen, t_last = 0, now
                    log.log(step, values, "train")
                    bar.update(bar.tasks[0].id, completed=step, loss=values["loss"], ex_per_s=values["examples_per_s"])
                else:
                    bar.update(bar.tasks[0].id, completed=step)  # a live ETA between log points too
                if step % cfg.train.eval_every == 0 or step == total_steps:
                    guard.check(last_checkpoint=ckpt.latest_step())  # every step up to here is finite
                    evaluated = setup.evaluated(state, max(stage, 0))
                    scores, _, _ = evaluate(task, eval_step, evaluated,
                                            track(val_batches, f"{cfg.name}: validation", bar=bar), data.label_names)
                    scores.update(old_scores(setup.rehearsal, evaluated, "validation"))
                    last_val = {f"val_{k}": v for k, v in scores.items()}
                    check_finite_metrics(last_val, step, last_checkpoint=ckpt.latest_step())
                    log.log(step, scores, "validation")
                    log.log(step, param_drift(merged_params(evaluated.params), pretrained, groups), "drift")
                    next_position = (epoch, batch_index) if batch_index < len(batches) else (epoch + 1, 0)
                    if stopper is not None:
                        stopped_early = stopper.update(step, last_val)
                    ckpt.save(step, state, metrics=last_val,
                              record=_runner_state_record(cfg, rules, *next_position, stopper, stage))
                    log.flush()
                    if stopped_early:
                        break
            if batch_index >= len(batches):
                epoch, batch_index = epoch + 1, 0
    guard.check(last_checkpoint=ckpt.latest_step())
    run.state, run.step, run.epoch, run.batch_index, run.stage = state, step, epoch, batch_index, stage
    run.stopper, run.stopped_early, run.last_val = stopper, stopped_early, last_val


def _evaluate(run: _Run) -> tuple[RunResult, np.ndarray, np.ndarray]:
    """Phase 4: the best checkpoint restored (when it is not the last step), the evaluated weights
    (:func:`evaluation_state`, kept in ``run.state``) scored on the test split and logged. Returns the
    run's :class:`RunResult` (``seconds`` is set when the outputs are written) and the test
    predictions and references."""
    setup, ckpt, log, cfg = run.setup, run.ckpt, run.log, run.setup.config
    data, state, main = setup.data, run.state, multihost.is_main_process()
    ckpt.wait()
    best_step = ckpt.best_step()
    if best_step is not None and best_step != run.step:
        state, _ = ckpt.restore(best_step, template=state)
    test_batches = epoch_batches(data, data.test, cfg.data.eval_batch_size, seed=None)
    run.state = setup.evaluated(state, max(run.stage, 0))
    test_scores, predictions, references = evaluate(
        setup.task, setup.eval_on_host, run.state,
        track(test_batches, f"{cfg.name}: test", disable=not (cfg.train.progress and main)), data.label_names)
    test_scores.update({**answer_scores(setup, run.state, "test"), **old_scores(setup.rehearsal, run.state, "test")})
    best_val = ckpt.record(best_step)["metrics"] if best_step is not None else run.last_val
    log.log(run.step, test_scores, "test")
    result = RunResult(test_metrics=test_scores, validation_metrics=best_val, best_step=best_step, steps=run.step,
                       trainable_params=setup.trainable_params, stopped_early=run.stopped_early,
                       paths={"checkpoints": ckpt.directory, "metrics": log.jsonl_path}, seconds=0.0,
                       compile=run.train_step.report)
    print(f"{cfg.name}: {describe(run.train_step.report)}")
    return result, predictions, references


def evaluate_run(run_dir: str | os.PathLike, step: int | None = None, split: str = "test") -> dict[str, float]:
    """Evaluates a finished (or interrupted) run's best checkpoint (or ``step``) on ``split``.

    Example::

        jt.evaluate_run("runs/tweets_minilm_llrd")          # {"loss": ..., "accuracy": ...}
    """
    run_dir = os.fspath(run_dir)
    if split not in ("train", "validation", "test"):
        raise UserError(f"split must be one of ['test', 'train', 'validation'], got {split!r}")
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml (pass the directory that "
                                "jaxtune finetune wrote, e.g. runs/NAME)")
    setup = build(config_path)
    with _checkpointer(setup.config, run_dir) as ckpt:
        step = step if step is not None else (ckpt.best_step() or ckpt.latest_step())
        state, _ = ckpt.restore(step, template=setup.initial_state)
    examples = {"train": setup.data.train, "validation": setup.data.validation, "test": setup.data.test}
    batches = epoch_batches(setup.data, examples[split], setup.config.data.eval_batch_size, seed=None)
    state = setup.evaluated(state)
    scores, _, _ = evaluate(setup.task, setup.eval_on_host, state, batches, setup.data.label_names)
    return {"step": step, **scores, **answer_scores(setup, state, split)}


def strategy_table(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = ()) -> str:
    """The strategy summary of a config (model loaded, no data tokenised, no training)."""
    cfg = _as_config(config, overrides)
    loader, data_task = _dataset(cfg.data.dataset)
    label_names = loader(seed=cfg.data.seed).label_names
    check_num_labels(cfg.model.num_labels, label_names, cfg.data.dataset)
    task = get_task(data_task if cfg.model.task == "auto" else cfg.model.task)
    model, variables = load_model(cfg.model.path, task.head, _head_size(task, cfg, label_names), cfg.model.dtype,
                                  scan_layers=cfg.model.scan_layers, remat=cfg.model.remat)
    rules = build_rules(cfg.optim, model)
    params = with_adapters(variables["params"], rules, getattr(model, "layer_ids", None), cfg.train.seed)
    layer_ids = getattr(model, "layer_ids", None) if uses_layer_decay(cfg.optim, rules) else None
    return summary(params, rules, layer_ids=layer_ids, layer_decay=cfg.optim.layer_decay,
                   l2_sp=cfg.optim.l2_sp, batch_stats=variables.get("batch_stats"))
