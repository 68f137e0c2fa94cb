"""The checks of every value of an experiment config (:func:`validate_config`): each error is a
:class:`~jaxtune.config.ConfigError` naming the dotted key, raised before any work.

Example::

    validate_config(jt.ExperimentConfig(train=jt.TrainConfig(eval_every=0)))
    # ConfigError: train.eval_every must be >= 1, got 0
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from jaxtune.config_sections import EXPORT_FORMATS, ConfigError, DataConfig, ExperimentConfig, OptimConfig
from jaxtune.errors import check_choice, check_number


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


def _check_data(section: str, data: DataConfig) -> None:
    """A data section (``data``, or the old task's ``rehearsal.data``), errors naming ``section.key``."""
    _check_limits(section, data, ["max_length", "image_size", "batch_size", "eval_batch_size",
                                  "train_limit", "eval_limit", "test_limit"], low=1)
    _check_limits(section, data, ["seed"], low=0)
    check_choice(f"{section}.truncation", data.truncation, TRUNCATIONS, error=ConfigError)
    _check_limits(section, data, ["doc_stride"], low=1)
    if data.dataset == "squad" and data.doc_stride >= data.max_length:
        raise ConfigError(f"{section}.doc_stride={data.doc_stride} must be below {section}.max_length={data.max_length}: "
                          "consecutive QA windows share doc_stride context tokens (e.g. max_length 256, doc_stride 64)")


def _check_rehearsal(cfg: ExperimentConfig) -> None:
    """The ``rehearsal`` section: a share in (0, 1), the old head's checkpoint, the old data (a section,
    or a config file whose data section is checked as it loads); neither LoRA nor data parallelism."""
    rehearsal = cfg.rehearsal
    check_number("rehearsal.fraction", rehearsal.fraction, low=0.0, high=1.0, low_open=True, high_open=True,
                 error=ConfigError)
    if not rehearsal.head_from.strip():
        raise ConfigError("rehearsal.head_from is empty; give the old task's export, whose head rehearsal trains "
                          "(RUN_DIR/best_hf of a run with checkpoint.export_best_hf: true)")
    if isinstance(rehearsal.data, str):
        if not os.path.isfile(rehearsal.data):
            raise ConfigError(f"rehearsal.data {rehearsal.data!r} is not a config file; give the old run's config "
                              "(e.g. runs/A/config.yaml) or a data section {dataset: tweet_sentiment, ...}")
    else:
        _check_data("rehearsal.data", rehearsal.data)
    if any(r.lora is not None for r in cfg.optim.rules or ()):
        raise ConfigError("rehearsal with LoRA rules is not supported: the old task's head would train beside "
                          "LoRA factors of a frozen network; drop the lora rules or the rehearsal section")
    if cfg.train.parallel is not None:
        raise ConfigError(f"rehearsal with train.parallel={cfg.train.parallel!r} is not supported; set "
                          "train.parallel to null (one device)")


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
    from jaxtune.models.layer_scan import REMAT_POLICIES
    from jaxtune.tasks import task_names

    check_choice("model.task", cfg.model.task, ("auto", *task_names()), error=ConfigError)
    _check_limits("model", cfg.model, ["num_labels"], low=1)
    check_choice("model.dtype", cfg.model.dtype, FLOAT_DTYPES, error=ConfigError)
    check_choice("model.scan_layers", cfg.model.scan_layers, (False, True), error=ConfigError)
    check_choice("model.remat", cfg.model.remat, tuple(REMAT_POLICIES), error=ConfigError)
    _check_data("data", cfg.data)
    _check_optim(cfg.optim)
    check_number("train.epochs", cfg.train.epochs, low=0.0, low_open=True, error=ConfigError)
    _check_limits("train", cfg.train, ["max_steps", "eval_every", "log_every", "accumulate", "recompute_batch_stats"],
                  low=1)
    _check_limits("train", cfg.train, ["seed"], low=0)
    if cfg.train.compute_dtype is not None:
        check_choice("train.compute_dtype", cfg.train.compute_dtype, FLOAT_DTYPES + (None,), error=ConfigError)
    check_choice("train.parallel", cfg.train.parallel, PARALLEL, error=ConfigError)
    check_choice("train.gpu_threefry_kernel", cfg.train.gpu_threefry_kernel, (False, True), error=ConfigError)
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
    if cfg.rehearsal is not None:
        _check_rehearsal(cfg)
    if cfg.checkpoint.export_format == "peft" and not any(r.lora is not None for r in cfg.optim.rules or ()):
        raise ConfigError("checkpoint.export_format is 'peft' but no rule of optim.rules has lora; a PEFT adapter "
                          "holds LoRA factors: add e.g. {pattern: '.*/(query|value)/kernel', lora: {rank: 8}}, "
                          "or export 'merged'")
