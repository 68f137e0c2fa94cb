"""The experiment runner: config -> data, model, rule table, optimizer, steps -> a finished run.

One call runs a whole fine-tuning with checkpoints (latest + best k), exact resume, early stopping
(restoring the best weights), gradual unfreezing, progress bar, JSONL/TensorBoard logs, a curve
plot and a test report, all under ``output_dir/name``::

    result = jt.finetune(jt.load_config("experiments/configs/tweets_minilm.yaml"))
    result.test_metrics["accuracy"], result.paths["plot"]

Each part stays usable alone: :func:`prepare_data`, :func:`jaxtune.from_pretrained`,
:func:`build_rules`, :func:`jaxtune.make_optimizer`, :func:`jaxtune.make_train_step`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import metrics as M
from jaxtune.checkpoint import Checkpointer
from jaxtune.config import ExperimentConfig, OptimConfig, load_config, save_config, to_dict
from jaxtune.early_stopping import EarlyStopping
from jaxtune.forgetting import average_weights, averaged_params, param_drift
from jaxtune.optim import make_optimizer, set_trainable, unfreezing_stages, warmup_cosine, warmup_linear
from jaxtune.rules import Rule, Settings, label_params, summary, trainable_mask
from jaxtune.runlog import RunLogger, plot_classification_report, plot_curves, progress_bar, read_jsonl
from jaxtune.seeds import epoch_seed, seed_stream
from jaxtune.tasks import IGNORE_INDEX, Task, get_task
from jaxtune.train import StagedTrainStep, TrainState, make_eval_step, make_train_step

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    """Examples ready for batching: per-example dicts of numpy arrays for each split."""

    task: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    label_names: tuple[str, ...]
    buckets: tuple[int, ...] | None
    pad_token_id: int
    description: str


@dataclasses.dataclass
class RunResult:
    """What a run produced: test metrics of the restored best model, and where things are."""

    test_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    best_step: int | None
    steps: int
    trainable_params: int
    stopped_early: bool
    paths: dict[str, str]
    seconds: float


def _model_dir(path: str) -> str:
    if path == "minilm":
        from jaxtune.hub import minilm_path
        return str(minilm_path())
    return path


def _take(split, limit: int | None, seed: int):
    if limit is None or limit >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:limit]))


def _dataset(name: str):
    """(loader, task) of an offline data set name."""
    from jaxtune.data import sources

    table = {"tweet_sentiment": (sources.load_tweet_sentiment, "sequence_classification"),
             "wnut_ner": (sources.load_wnut_ner, "token_classification"),
             "mnist_digits": (sources.load_mnist_digits, "image_classification")}
    if name not in table:
        raise ValueError(f"unknown dataset {name!r}; available offline: {sorted(table)}")
    return table[name]


def _image_examples(split, image_size: int) -> list[dict]:
    from jaxtune.data import image as I

    return [{"images": I.normalize(I.resize(I.to_rgb(img), image_size)), "labels": np.int32(label)}
            for img, label in zip(split.images, split.labels)]


def prepare_data(data_cfg, model_path: str) -> PreparedData:
    """Loads a named offline data set and makes per-example arrays for the model.

    ``data_cfg.dataset``: ``"tweet_sentiment"`` (3-class tweets, tokenised with the model's
    tokenizer), ``"wnut_ner"`` (BIO tags), or ``"mnist_digits"`` (grey digits resized to
    ``image_size``, 3 channels, ImageNet-normalised). ``train_limit`` / ``eval_limit`` /
    ``test_limit`` take a seeded random subset of the train / validation / test split.
    """
    from jaxtune.data import text

    loader, _ = _dataset(data_cfg.dataset)
    splits = loader(seed=data_cfg.seed)
    parts = {"train": _take(splits.train, data_cfg.train_limit, data_cfg.seed),
             "validation": _take(splits.validation, data_cfg.eval_limit, data_cfg.seed + 1),
             "test": _take(splits.test, data_cfg.test_limit, data_cfg.seed + 2)}
    sizes = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    source = f"{splits.origin}; licence: {splits.license}"
    if data_cfg.dataset == "mnist_digits":
        examples = {k: _image_examples(v, data_cfg.image_size) for k, v in parts.items()}
        return PreparedData("image_classification", examples["train"], examples["validation"], examples["test"],
                            tuple(splits.label_names), None, 0,
                            f"{splits.name} ({sizes}; resized to {data_cfg.image_size}px RGB; {source})")
    tokenizer = text.load_tokenizer(_model_dir(model_path))
    tokenized = {}
    for name, part in parts.items():
        if data_cfg.dataset == "tweet_sentiment":
            tokenized[name] = text.tokenize_texts(tokenizer, part.texts, labels=part.labels, max_length=data_cfg.max_length)
        else:
            tokenized[name] = text.tokenize_words(tokenizer, part.tokens, part.tags, max_length=data_cfg.max_length)
    task = _dataset(data_cfg.dataset)[1]
    truncated = sum(t.num_truncated for t in tokenized.values())
    return PreparedData(task=task, train=tokenized["train"].examples, validation=tokenized["validation"].examples,
                        test=tokenized["test"].examples, label_names=tuple(splits.label_names),
                        buckets=text.length_buckets(data_cfg.max_length), pad_token_id=int(tokenizer.pad_token_id),
                        description=f"{splits.name} ({sizes}; {truncated} truncated to {data_cfg.max_length} "
                                    f"tokens; {source})")


def epoch_batches(data: PreparedData, examples: list[dict], batch_size: int, seed: int | None) -> list[dict]:
    """The batches of one epoch, deterministic for a given seed (``None``: data order).

    Text goes into length buckets (a bounded number of shapes); every batch has ``batch_size``
    rows, the last one filled with padding rows marked by ``example_mask``.
    """
    from jaxtune.data.text import bucket_batches

    if data.buckets is not None:
        return list(bucket_batches(examples, batch_size, data.buckets, pad_token_id=data.pad_token_id, seed=seed))
    order = np.arange(len(examples)) if seed is None else np.random.default_rng(seed).permutation(len(examples))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))
        batch = {k: np.stack([r[k] for r in rows]) for k in chunk[0]}
        batch["example_mask"] = np.arange(batch_size) < len(chunk)
        batches.append(batch)
    return batches


# Shipped CNN aliases: (module, pretrained loader, architecture builder, config class).
_CNN_ALIASES = {
    "mobilenet_v2_imagenet": ("jaxtune.models.mobilenet", "mobilenet_v2_imagenet", "mobilenet_v2", "MobileNetV2Config"),
    "efficientnet_lite0_imagenet": ("jaxtune.models.efficientnet", "efficientnet_lite0_imagenet", "efficientnet_lite",
                                    "EfficientNetLiteConfig"),
}


def load_model(path: str, task: str, num_labels: int, dtype: str, *, init: str = "pretrained",
               rng: jax.Array | None = None):
    """``from_pretrained`` for a checkpoint directory / hub name, or one of the shipped aliases:
    ``minilm`` (all-MiniLM-L6-v2), ``mobilenet_v2_imagenet``, ``efficientnet_lite0_imagenet``.

    ``init="random"`` builds the same architecture with every weight freshly initialised from
    ``rng`` (a from-scratch baseline); with ``"pretrained"``, ``rng`` initialises a new head only.

    Example::

        model, variables = load_model("mobilenet_v2_imagenet", "image_classification", 10, "float32",
                                      init="random", rng=jt.seed_stream(0, "init"))
    """
    from jaxtune.hub import from_pretrained, random_variables

    if init not in ("pretrained", "random"):
        raise ValueError(f"model.init must be 'pretrained' or 'random', got {init!r}")
    rng = jax.random.key(0) if rng is None else rng
    if path in _CNN_ALIASES:
        module_name, loader, builder, config_cls = _CNN_ALIASES[path]
        module = importlib.import_module(module_name)
        if init == "pretrained":
            return getattr(module, loader)(num_labels=num_labels, dtype=jnp.dtype(dtype), rng=rng)
        from jaxtune.models._cnn import example_images

        config = dataclasses.replace(getattr(module, config_cls)(), num_labels=int(num_labels))
        model = getattr(module, builder)(config, dtype=jnp.dtype(dtype))
        return model, random_variables(model, example_images(), rng, path)[0]
    return from_pretrained(_model_dir(path), task=task, num_labels=num_labels, dtype=jnp.dtype(dtype), rng=rng,
                           init=init)


def _family_module(model):
    module = importlib.import_module(type(model).__module__)
    if not hasattr(module, "default_rules"):
        raise AttributeError(f"{type(model).__module__} has no default_rules(); give optim.rules in the config")
    return module


def build_rules(optim: OptimConfig, model) -> list[Rule]:
    """The config's rule table, or the model family's default rules when it has none."""
    if optim.rules is None:
        return list(_family_module(model).default_rules())
    return [(r.pattern, Settings(frozen=r.frozen, lr_mult=r.lr_mult, weight_decay=r.weight_decay,
                                 layer_decay=r.layer_decay, name=r.name, l2_sp=r.l2_sp)) for r in optim.rules]


def _schedule(optim: OptimConfig, total_steps: int):
    warmup = int(round(optim.warmup_fraction * total_steps))
    if optim.schedule == "constant":
        return optim.learning_rate
    if optim.schedule == "warmup_linear":
        return warmup_linear(optim.learning_rate, warmup, total_steps)
    if optim.schedule == "warmup_cosine":
        return warmup_cosine(optim.learning_rate, warmup, total_steps)
    raise ValueError(f"unknown schedule {optim.schedule!r}; use constant, warmup_linear or warmup_cosine")


def _weight_averaging(optim: OptimConfig, total_steps: int, mask: Any) -> optax.GradientTransformation | None:
    if optim.weight_average is None:
        return None
    if optim.unfreezing == "structural":
        raise ValueError("optim.weight_average needs optim.unfreezing 'runtime' (or none): a structural stage "
                         "drops the updates of the leaves it keeps frozen, which the average cannot see")
    if optim.weight_average not in ("ema", "uniform"):
        raise ValueError(f"optim.weight_average {optim.weight_average!r} is not 'ema' or 'uniform' (or null: off)")
    if not 0.0 <= optim.weight_average_start < 1.0:
        raise ValueError(f"optim.weight_average_start must be a fraction of the steps in [0, 1), "
                         f"got {optim.weight_average_start}")
    if optim.weight_average == "ema" and not 0.0 <= optim.weight_average_decay < 1.0:
        raise ValueError(f"optim.weight_average_decay must be in [0, 1), got {optim.weight_average_decay}")
    decay = optim.weight_average_decay if optim.weight_average == "ema" else None
    return average_weights(decay, start_step=int(optim.weight_average_start * total_steps), mask=mask)


def _optimizer(name: str):
    if not hasattr(optax, name):
        raise ValueError(f"optim.optimizer {name!r} is not an optax optimizer (e.g. adamw, adam, sgd, lion)")
    return getattr(optax, name)


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


def _truncate_log(path: str, last_step: int) -> None:
    if os.path.exists(path):
        kept = [r for r in read_jsonl(path) if r["step"] <= last_step]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


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


def _as_config(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str]) -> ExperimentConfig:
    from jaxtune.config import apply_overrides, from_dict

    if isinstance(config, (str, os.PathLike)):
        return load_config(config, overrides)
    return from_dict(ExperimentConfig, apply_overrides(to_dict(config) if isinstance(config, ExperimentConfig)
                                                      else config, overrides))


def build(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = (),
          data: PreparedData | None = None) -> Setup:
    """Data, model (pretrained or ``model.init: random`` weights), rule table, optimizer, jitted steps
    and initial state. ``train.seed`` drives the new head's (or the random model's) init and the
    dropout key (:func:`jaxtune.seed_stream`); ``data.seed`` only the split and subsets."""
    cfg = _as_config(config, overrides)
    data = data if data is not None else prepare_data(cfg.data, cfg.model.path)
    task = get_task(data.task if cfg.model.task == "auto" else cfg.model.task)
    logger.info("data: %s", data.description)
    model, variables = load_model(cfg.model.path, task.head, cfg.model.num_labels or len(data.label_names),
                                  cfg.model.dtype, init=cfg.model.init, rng=seed_stream(cfg.train.seed, "init"))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    rules = build_rules(cfg.optim, model)
    layer_ids = getattr(model, "layer_ids", None)
    table = summary(params, rules, layer_ids=layer_ids if cfg.optim.layer_decay else None,
                    layer_decay=cfg.optim.layer_decay, l2_sp=cfg.optim.l2_sp)
    batches_per_epoch = len(epoch_batches(data, data.train, cfg.data.batch_size, seed=0))
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * batches_per_epoch))
    runtime = cfg.optim.unfreezing == "runtime"
    uses_ids = bool(cfg.optim.layer_decay) or cfg.optim.unfreezing is not None
    tx = make_optimizer(params, rules, _optimizer(cfg.optim.optimizer), _schedule(cfg.optim, total_steps),
                        layer_ids=layer_ids if uses_ids else None, layer_decay=cfg.optim.layer_decay,
                        runtime=runtime, weight_decay=cfg.optim.weight_decay, l2_sp=cfg.optim.l2_sp,
                        l2_sp_decoupled=cfg.optim.l2_sp_decoupled)
    # Leaves the rules let train (at some unfreezing stage) are averaged; rule-frozen ones never move.
    averaging = _weight_averaging(cfg.optim, total_steps, trainable_mask(params, rules))
    if averaging is not None:
        tx = optax.chain(tx, averaging)
    stages = None
    if cfg.optim.unfreezing is not None:
        if cfg.optim.unfreezing not in ("runtime", "structural") or cfg.optim.unfreeze_every < 1:
            raise ValueError("optim.unfreezing must be 'runtime' or 'structural' with optim.unfreeze_every >= 1")
        stages = unfreezing_stages(params, layer_ids, rules, cfg.optim.unfreeze_stages)
    step_kwargs = dict(accumulate=cfg.train.accumulate, compute_dtype=cfg.train.compute_dtype)
    loss_fn = task.loss_fn(model)
    if stages is not None and not runtime:
        staged = StagedTrainStep(loss_fn, tx, **step_kwargs)
        train_step = lambda state, batch, stage: staged(state, batch, stages[stage])
    else:
        plain = make_train_step(loss_fn, tx, trainable=trainable_mask(params, rules), **step_kwargs)
        train_step = lambda state, batch, stage: plain(state, batch)
    eval_step = make_eval_step(task.eval_fn(model), compute_dtype=cfg.train.compute_dtype)
    state = TrainState.create(params, tx, model_state=model_state, rng=seed_stream(cfg.train.seed, "dropout"))
    n_trainable = sum(int(np.size(p)) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable_mask(params, rules))) if t)
    return Setup(cfg, data, task, model, rules, layer_ids, table, tx, total_steps, stages, train_step, eval_step,
                 state, os.path.join(cfg.output_dir, cfg.name), n_trainable)


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


def finetune(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = (),
             data: PreparedData | None = None) -> RunResult:
    """Runs (or resumes) one fine-tuning experiment; see the module docstring.

    ``config`` is an :class:`ExperimentConfig`, a YAML/JSON path, or a dict; ``overrides`` are
    ``key=value`` strings. ``data`` may be passed to reuse prepared examples across runs. A run
    directory that already holds checkpoints is resumed from the latest one.
    """
    from jaxtune.hub import save_pretrained

    start = time.time()
    setup = build(config, overrides, data)
    cfg, data, task, model, rules, stages = setup.config, setup.data, setup.task, setup.model, setup.rules, setup.stages
    run_dir, total_steps, eval_step = setup.run_dir, setup.total_steps, setup.eval_step
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    print(f"strategy ({cfg.name}):\n{setup.strategy_table}")
    runtime = cfg.optim.unfreezing == "runtime"
    state = setup.initial_state
    # The pretrained weights, on the host (the first step donates the device copy): drift is measured from them.
    pretrained = jax.device_get(state.params)
    groups = label_params(pretrained, rules)
    stopper = EarlyStopping(cfg.early_stopping.monitor, cfg.early_stopping.mode, cfg.early_stopping.patience,
                            cfg.early_stopping.min_delta) if cfg.early_stopping.enabled else None
    ckpt = _checkpointer(cfg, run_dir)
    ckpt_dir = ckpt.directory
    epoch, batch_index, stage = 0, 0, -1
    if ckpt.latest_step() is not None:
        state, record = ckpt.restore(template=state)
        epoch, batch_index = record["data_position"]["epoch"], record["data_position"]["batch"]
        stage = record.get("stage", -1)
        if stopper is not None and record.get("early_stopping"):
            stopper = EarlyStopping(**record["early_stopping"])
        logger.info("resumed %s at step %d", run_dir, int(state.step))
        _truncate_log(os.path.join(run_dir, "metrics.jsonl"), int(state.step))

    log = RunLogger(run_dir)
    val_batches = epoch_batches(data, data.validation, cfg.data.eval_batch_size, seed=None)
    step = int(state.step)
    stopped_early = False
    last_val: dict[str, float] = {}
    examples_seen, t_last = 0, time.time()
    try:
        with progress_bar(total_steps, cfg.name, disable=not cfg.train.progress) as bar:
            bar.update(bar.tasks[0].id, completed=step)
            while step < total_steps and not stopped_early:
                batches = epoch_batches(data, data.train, cfg.data.batch_size, seed=epoch_seed(cfg.train.seed, epoch))
                while batch_index < len(batches) and step < total_steps:
                    if stages is not None:
                        new_stage = min(step // cfg.optim.unfreeze_every, len(stages) - 1)
                        if runtime and new_stage != stage:
                            state = state.replace(opt_state=set_trainable(state.opt_state, stages[new_stage]))
                        stage = new_stage
                    batch = batches[batch_index]
                    state, train_metrics = setup.train_step(state, batch, max(stage, 0))
                    step += 1
                    batch_index += 1
                    examples_seen += int(np.sum(batch.get("example_mask", 1)))
                    if step % cfg.train.log_every == 0 or step == total_steps:
                        values = {k: float(v) for k, v in train_metrics.items()}
                        now = time.time()
                        values["examples_per_s"] = examples_seen / max(now - t_last, 1e-9)
                        examples_seen, t_last = 0, now
                        log.log(step, values, "train")
                        bar.update(bar.tasks[0].id, completed=step, loss=values["loss"], ex_per_s=values["examples_per_s"])
                    if step % cfg.train.eval_every == 0 or step == total_steps:
                        evaluated = evaluation_state(cfg, state)
                        scores, _, _ = evaluate(task, eval_step, evaluated, val_batches, data.label_names)
                        last_val = {f"val_{k}": v for k, v in scores.items()}
                        log.log(step, scores, "validation")
                        log.log(step, param_drift(evaluated.params, pretrained, groups), "drift")
                        next_position = (epoch, batch_index) if batch_index < len(batches) else (epoch + 1, 0)
                        if stopper is not None:
                            stopped_early = stopper.update(step, last_val)
                        ckpt.save(step, state, metrics=last_val,
                                  record=_runner_state_record(cfg, rules, *next_position, stopper, stage))
                        if stopped_early:
                            break
                if batch_index >= len(batches):
                    epoch, batch_index = epoch + 1, 0
        ckpt.wait()
        best_step = ckpt.best_step()
        if best_step is not None and best_step != step:
            state, _ = ckpt.restore(best_step, template=state)
        test_batches = epoch_batches(data, data.test, cfg.data.eval_batch_size, seed=None)
        state = evaluation_state(cfg, state)
        test_scores, predictions, references = evaluate(task, eval_step, state, test_batches, data.label_names)
        best_val = ckpt.record(best_step)["metrics"] if best_step is not None else last_val
        log.log(step, test_scores, "test")
    finally:
        log.close()
        ckpt.close()
    paths = {"run_dir": run_dir, "checkpoints": ckpt_dir, "metrics": log.jsonl_path,
             "tensorboard": os.path.join(run_dir, "tensorboard"), "config": os.path.join(run_dir, "config.yaml")}
    paths["plot"] = plot_curves(log.jsonl_path, os.path.join(run_dir, "curves.png"), title=cfg.name)
    report_lines = [f"run {cfg.name}: best step {best_step} of {step}", data.description, "", setup.strategy_table, "",
                    "test: " + ", ".join(f"{k} {v:.4f}" for k, v in test_scores.items())]
    if task.name in ("sequence_classification", "pair_classification", "image_classification"):
        class_report = M.classification_report(references, predictions, data.label_names)
        report_lines += ["", str(class_report)]
        paths["class_report_plot"] = plot_classification_report(
            class_report, os.path.join(run_dir, "test_report.png"), title=f"{cfg.name}: test")
    paths["report"] = os.path.join(run_dir, "report.txt")
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write("\n".join(report_lines) + "\n")
    if cfg.checkpoint.export_best_hf:
        paths["export"] = os.path.join(run_dir, "best_hf")
        save_pretrained({"params": state.params, **state.model_state}, model.config, paths["export"], task=task.head)
        if data.buckets is not None:  # a text model: its tokenizer goes along, so the export is a model dir
            from jaxtune.data.text import load_tokenizer
            load_tokenizer(_model_dir(cfg.model.path)).save_pretrained(paths["export"])
    print(f"{cfg.name}: test " + ", ".join(f"{k} {v:.4f}" for k, v in test_scores.items()) + f" (best step {best_step})")
    result = RunResult(test_metrics=test_scores, validation_metrics=best_val, best_step=best_step, steps=step,
                       trainable_params=setup.trainable_params, stopped_early=stopped_early, paths=paths,
                       seconds=time.time() - start)
    write_result(run_dir, cfg, result)
    return result



def evaluate_run(run_dir: str | os.PathLike, step: int | None = None, split: str = "test") -> dict[str, float]:
    """Evaluates a finished (or interrupted) run's best checkpoint (or ``step``) on ``split``.

    Example::

        jt.evaluate_run("runs/tweets_minilm_llrd")          # {"loss": ..., "accuracy": ...}
    """
    run_dir = os.fspath(run_dir)
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml (pass the directory that "
                                "jaxtune finetune wrote, e.g. runs/NAME)")
    setup = build(config_path)
    with _checkpointer(setup.config, run_dir) as ckpt:
        step = step if step is not None else (ckpt.best_step() or ckpt.latest_step())
        state, _ = ckpt.restore(step, template=setup.initial_state)
    examples = {"train": setup.data.train, "validation": setup.data.validation, "test": setup.data.test}
    if split not in examples:
        raise ValueError(f"split must be one of {sorted(examples)}, got {split!r}")
    batches = epoch_batches(setup.data, examples[split], setup.config.data.eval_batch_size, seed=None)
    scores, _, _ = evaluate(setup.task, setup.eval_step, evaluation_state(setup.config, state), batches,
                            setup.data.label_names)
    return {"step": step, **scores}


def strategy_table(config: ExperimentConfig | str | os.PathLike | dict, overrides: Sequence[str] = ()) -> str:
    """The strategy summary of a config (model loaded, no data tokenised, no training)."""
    cfg = _as_config(config, overrides)
    loader, data_task = _dataset(cfg.data.dataset)
    label_names = loader(seed=cfg.data.seed).label_names
    task = get_task(data_task if cfg.model.task == "auto" else cfg.model.task)
    model, variables = load_model(cfg.model.path, task.head, cfg.model.num_labels or len(label_names), cfg.model.dtype)
    layer_ids = getattr(model, "layer_ids", None) if cfg.optim.layer_decay else None
    return summary(variables["params"], build_rules(cfg.optim, model), layer_ids=layer_ids,
                   layer_decay=cfg.optim.layer_decay, l2_sp=cfg.optim.l2_sp)


# ---------------------------------------------------------------------------------------------
# Run fingerprint and result file: minimal stand-ins for the "runid" branch's versions.

# Config keys that may differ between two runs that are "the same run" (where it lives, how it logs).
RESUMABLE_KEYS = ("name", "output_dir", "train.progress", "train.log_every")
RESULT_NAME = "result.json"


def _flatten_config(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        flat.update(_flatten_config(value, path) if isinstance(value, dict) else {path: value})
    return flat


def run_fingerprint(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """``(sha256 hex, flat dotted config)`` of everything that defines a run (not ``RESUMABLE_KEYS``).

    Example::

        hex_digest, flat = run_fingerprint(jt.load_config(None))
        flat["optim.learning_rate"]   # 5e-05
    """
    flat = {k: v for k, v in _flatten_config(to_dict(cfg)).items() if k not in RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest(), flat


def write_result(run_dir: str, cfg: ExperimentConfig, result: RunResult) -> str:
    """Writes ``run_dir/result.json`` = ``{"fingerprint": hex, **asdict(result)}``; returns its path."""
    path = os.path.join(run_dir, RESULT_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": run_fingerprint(cfg)[0], **dataclasses.asdict(result)}, f, indent=2, default=float)
    return path


def read_result(run_dir: str | os.PathLike) -> RunResult | None:
    """The :class:`RunResult` of a finished run (its ``result.json``), or None if it has none."""
    path = os.path.join(os.fspath(run_dir), RESULT_NAME)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)
    return RunResult(**{field.name: stored[field.name] for field in dataclasses.fields(RunResult)})
