"""Typed experiment configs: dataclasses, a YAML/JSON file form, and ``--set key=value`` overrides.

Unknown keys and wrong types are errors that name the key and list the valid ones. The sections are
defined in :mod:`jaxtune.config_sections`, their value checks in :mod:`jaxtune.config_checks`; every
name of both is importable from here.

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

# The sections and checks are re-exported: every name stays importable from jaxtune.config.
from jaxtune.config_checks import (FLOAT_DTYPES, PARALLEL, SCHEDULES, TRUNCATIONS, UNFREEZING, WEIGHT_AVERAGES,
                                   validate_config)
from jaxtune.config_sections import (EXPORT_FORMATS, MODEL_INITS, CheckpointConfig, ConfigError, DataConfig,
                                     EarlyStoppingConfig, ExperimentConfig, LoraConfig, ModelConfig, OptimConfig,
                                     RehearsalConfig, RuleConfig, TrainConfig)


RESUMABLE_KEYS: dict[str, str] = {
    "name": "names the run directory, not the run",
    "output_dir": "where the run directory lives, not what it holds",
    "train.max_steps": "where training stops (only with optim.schedule 'constant'; see LENGTH_KEYS)",
    "train.epochs": "where training stops (only with optim.schedule 'constant'; see LENGTH_KEYS)",
    "train.log_every": "how often train metrics are logged",
    "train.progress": "whether a progress bar is drawn",
    "train.compilation_cache": "where compiled steps are cached (a cached program computes the same)",
    "train.gpu_threefry_kernel": "how random bits are lowered on GPU (a kernel or XLA ops: the same bits)",
    "model.remat": "what the backward pass recomputes instead of storing (the same gradients, the same checkpoints)",
    "data.eval_batch_size": "how evaluation is batched (the same examples are scored)",
    "checkpoint.keep_best": "how many best checkpoints are kept",
    "checkpoint.keep_latest": "how many latest checkpoints are kept",
    "checkpoint.export_best_hf": "whether the best model is exported in HF format",
    "checkpoint.export_format": "how a LoRA model is exported (merged weights or a PEFT adapter)",
}
"""The config keys that may change when a run resumes: they do not change what the steps compute, so
they are left out of the run's fingerprint (:func:`jaxtune.run_fingerprint`). Every other key defines
the run: model, data, rules, optimizer, schedule, seeds, evaluation and early stopping."""

OPTIONAL_SECTIONS = ("rehearsal",)
"""Sections that may be null. A null one is left out of the run's fingerprint, so runs from before the
section existed keep their fingerprints (and resume)."""

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
        sections = [a for a in options if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # a mapping fills the one section type
            return _convert(value, sections[0], where)
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
            if node.get(p) is None:  # an absent or null optional section (e.g. rehearsal) starts empty
                node[p] = {}
            node = node[p]
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
