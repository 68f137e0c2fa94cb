"""Grid sweeps over config keys, strategies and seeds: one run directory per point, finished points
skipped, hyperparameters selected on validation only, a report with seed statistics.

Example: "freeze vs LLRD vs full" over 3 learning rates and 3 seeds::

    result = jt.sweep("experiments/configs/tweets_minilm.yaml",
                      grid={"optim.learning_rate": [1e-5, 3e-5, 1e-4]}, seeds=[0, 1, 2],
                      strategies={"freeze": {"optim.rules": [{"pattern": "bert/.*", "frozen": True},
                                                             {"pattern": ".*"}]},
                                  "llrd": {"optim.layer_decay": 0.8},
                                  "full": {}})
    result.selected["llrd"].hparams       # best LR of LLRD on validation
    result.paths["report"]                # runs/NAME/sweep.md (+ sweep.jsonl, sweep.png)

Each point runs in ``OUTPUT_DIR/NAME/<point>``, ``<point>`` naming its overrides, e.g.
``strategy=llrd,optim.learning_rate=3e-05,seed=1``. A point whose directory holds a finished run
(``result.json``) with the same fingerprint is not trained again; one with another fingerprint is an
error. Prepared data is shared by all points with the same data config and model path.

With ``members="auto"`` (or a number N), points that differ only in settings that are arrays of a
runtime-mode state (``train.seed``, ``optim.learning_rate``, ``optim.layer_decay``,
``optim.weight_decay``, ``optim.l2_sp``, and ``optim.rules`` frozen / lr_mult / weight_decay /
layer_decay / l2_sp) train as members of one runner invocation, one compiled vmapped step for up to
8 (or N) of them (:func:`jaxtune.finetune_members`); their run directories look like separate runs'.
Other points train as separate runs, and the sweep prints one line saying which key kept them apart.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import sys
from typing import Any, Mapping, Sequence

from jaxtune import sweep_report as R
from jaxtune.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, load_config, to_dict
from jaxtune.errors import UserError

SEED_KEY = "train.seed"
AUTO_MEMBERS = 8  # members="auto": at most this many points per compiled step
DEFAULT_STRATEGY = "default"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")
_MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its strategy, grid hyperparameters, seed, all overrides, directory name."""

    strategy: str
    hparams: dict[str, Any]
    seed: int
    overrides: dict[str, Any]
    name: str


@dataclasses.dataclass
class SweepResult:
    """Rows (one per run, as in ``sweep.jsonl``), per-point summaries, the validation-selected point
    per strategy, paired test differences between strategies, and the written files."""

    rows: list[dict]
    points: list[R.PointSummary]
    selected: dict[str, R.PointSummary]
    differences: list[R.PairedDifference]
    metric: str
    mode: str
    trained: int
    paths: dict[str, str]


def format_value(value: Any) -> str:
    """How a value appears in a run directory name (YAML-like: 3e-05, true, null).

    Example::

        >>> format_value(3e-5), format_value(True), format_value(None)
        ('3e-05', 'true', 'null')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def point_name(items: Sequence[tuple[str, Any]]) -> str:
    """A readable, filesystem-safe, deterministic directory name for ``(key, value)`` pairs; over
    200 characters it is cut and ends in a hash of the full name.

    Example::

        >>> point_name([("optim.learning_rate", 3e-5), ("seed", 1)])
        'optim.learning_rate=3e-05,seed=1'
    """
    full = ",".join(f"{k}={format_value(v)}" for k, v in items)
    name = _UNSAFE.sub("_", full)
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 17]}-{hashlib.sha256(full.encode()).hexdigest()[:16]}"
    return name


def _strategy_overrides(overrides: Mapping[str, Any] | Sequence[str], name: str) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        raise TypeError(f"strategy {name!r}: give its overrides as a dict or a list of 'key=value' strings, "
                        f"not one string {overrides!r}")
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"strategy {name!r}: override {item!r} is not key=value")
        key, _ = item.split("=", 1)
        flat[key.strip()] = _leaf(apply_overrides({}, [item]), key.strip())
    return flat


def _leaf(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def sweep_points(grid: Mapping[str, Sequence[Any]], seeds: Sequence[int], *,
                 strategies: Mapping[str, Mapping[str, Any] | Sequence[str]] | None = None,
                 strategy_key: str | None = None) -> list[SweepPoint]:
    """Every (strategy, grid combination, seed), strategies outermost, seeds innermost.

    ``strategy_key`` names a grid key whose values are the strategies; ``strategies`` maps names to
    overrides (``{"optim.layer_decay": 0.8}`` or ``["optim.layer_decay=0.8"]``). Without either,
    the whole grid is one strategy, ``"default"``.

    Example::

        >>> [p.name for p in sweep_points({"optim.learning_rate": [1e-4]}, [0, 1])]
        ['optim.learning_rate=0.0001,seed=0', 'optim.learning_rate=0.0001,seed=1']
    """
    grid = {k: list(v) for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"grid key(s) {empty} have no values")
    if SEED_KEY in grid:
        raise ValueError(f"put seeds in seeds=[...], not in the grid as {SEED_KEY!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    if strategies is not None and strategy_key is not None:
        raise ValueError("give either strategies={name: overrides} or strategy_key=<a grid key>, not both")
    if strategy_key is not None and strategy_key not in grid:
        raise ValueError(f"strategy_key {strategy_key!r} is not a grid key; grid keys: {sorted(grid)}")
    if strategy_key is not None:
        named = [(f"{strategy_key}={format_value(v)}", {strategy_key: v}, [(strategy_key, v)])
                 for v in grid.pop(strategy_key)]
    elif strategies is not None:
        if not strategies:
            raise ValueError("strategies is empty; give at least one {name: overrides}")
        named = [(str(n), _strategy_overrides(o, n), [("strategy", n)]) for n, o in strategies.items()]
    else:
        named = [(DEFAULT_STRATEGY, {}, [])]
    points = []
    for (strategy, fixed, name_items), values, seed in itertools.product(named, itertools.product(*grid.values()),
                                                                         seeds):
        hparams = dict(zip(grid, values))
        clash = sorted(set(fixed) & set(hparams))
        if clash:
            raise ValueError(f"strategy {strategy!r} sets {clash}, which the grid also varies")
        name = point_name(name_items + list(hparams.items()) + [("seed", seed)])
        points.append(SweepPoint(strategy, hparams, int(seed), {**fixed, **hparams, SEED_KEY: int(seed)}, name))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"two sweep points get the same directory name (e.g. {names[0]!r}); make the grid "
                         "values or strategy names differ in letters, digits or ._+=,-")
    return points


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"sweep key {dotted!r}: {part!r} is not a config section")
    tree[leaf] = value


def point_config(base: ExperimentConfig, point: SweepPoint) -> ExperimentConfig:
    """The point's config: ``base`` with its overrides, run directory ``OUTPUT_DIR/NAME/<point>``."""
    data = to_dict(base)
    for key, value in point.overrides.items():
        _set(data, key, value)
    data["output_dir"] = os.path.join(base.output_dir, base.name)
    data["name"] = point.name
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as e:
        raise ConfigError(f"sweep point {point.name}: {e}") from e


def _finished(run_dir: str, cfg: ExperimentConfig):
    """The stored result of a finished run with this config's fingerprint; None when unfinished.

    A sweep point is one length of training: a run trained to another ``train.max_steps`` /
    ``train.epochs`` (keys a plain resume may change) counts as another config here too."""
    from jaxtune.config import LENGTH_KEYS
    from jaxtune.rundir import RESULT_FILE, read_result, run_fingerprint

    result = read_result(run_dir)
    if result is None:
        return None
    with open(os.path.join(run_dir, RESULT_FILE), encoding="utf-8") as f:
        stored = json.load(f).get("fingerprint")
    expected, flat = run_fingerprint(cfg)
    old = {}
    if os.path.exists(os.path.join(run_dir, "config.yaml")):
        old_cfg = load_config(os.path.join(run_dir, "config.yaml"))
        old = _with_length(run_fingerprint(old_cfg)[1], old_cfg)
    flat = _with_length(flat, cfg)
    changed = sorted(k for k in flat.keys() | old.keys() if flat.get(k) != old.get(k)) if old else []
    if stored != expected or any(k in LENGTH_KEYS for k in changed):
        listed = f" (changed: {changed})" if changed else ""
        raise UserError(f"{run_dir} holds a finished run of another config{listed}; delete that directory "
                        "or give the sweep another name (config name=...)")
    return result


def _with_length(flat: dict, cfg: ExperimentConfig) -> dict:
    return {**flat, "train.max_steps": cfg.train.max_steps, "train.epochs": cfg.train.epochs}


def member_cap(members: str | int) -> int:
    """How many points one compiled step may train: ``"off"`` 1, ``"auto"`` :data:`AUTO_MEMBERS`, N.

    Example::

        >>> member_cap("auto"), member_cap("off"), member_cap("4")
        (8, 1, 4)
    """
    if isinstance(members, str) and members in ("off", "auto"):
        return 1 if members == "off" else AUTO_MEMBERS
    try:
        cap = int(members)
    except (TypeError, ValueError):
        cap = 0
    if isinstance(members, bool) or cap < 1 or str(cap) != str(members).strip():
        raise ConfigError(f"members must be 'auto', 'off' or a positive integer (the most points per compiled "
                          f"step), got {members!r}")
    return cap


def member_chunks(configs: Sequence[ExperimentConfig], members: str | int) -> tuple[list[list[int]], list[str]]:
    """Which of ``configs`` train together: lists of indices (one list, one runner invocation; a
    list of one is a separate run), in order of their first index, and the lines saying why points
    train apart (the config key). See the module docstring for what members may differ in.

    Example::

        chunks, notes = member_chunks([point_config(base, p) for p in points], "auto")
    """
    from jaxtune.member_runs import differing_keys, group_key, member_blocker

    cap = member_cap(members)
    if cap == 1:
        return [[i] for i in range(len(configs))], []
    groups: dict[str, list[int]] = {}
    keys: dict[str, dict] = {}
    blocked: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        why = member_blocker(cfg)
        if why is not None:
            blocked[why] = blocked.get(why, 0) + 1
            groups[f"blocked-{i}"] = [i]
            continue
        key = group_key(cfg)
        text = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(text, []).append(i)
        keys[text] = key
    notes = [f"sweep: {count} point(s) train as separate runs, not members: {why}" for why, count in blocked.items()]
    if len(keys) > 1:
        notes.append(f"sweep: {', '.join(differing_keys(list(keys.values())))} cannot differ between members (not "
                     "an array of the runtime state): points that differ in it train apart")
    alone = [configs[g[0]].name for text, g in groups.items() if text in keys and len(g) == 1]
    if alone:
        notes.append(f"sweep: {len(alone)} point(s) train as separate runs: no other unfinished point differs from "
                     f"them only in member settings (e.g. {alone[0]})")
    chunks = [g[start:start + cap] for g in groups.values() for start in range(0, len(g), cap)]
    return sorted(chunks), notes


def _train_points(configs: list[ExperimentConfig], data) -> list:
    """Trains ``configs`` as members of one step, or (one config, or members unsupported) one by one."""
    from jaxtune.experiment import finetune
    from jaxtune.member_runs import MembersUnsupported, finetune_members

    if len(configs) > 1:
        try:
            return finetune_members(configs, data=data)
        except MembersUnsupported as e:
            print(f"sweep: {len(configs)} points train as separate runs, not members: {e.key} ({e.message})")
    return [finetune(cfg, data=data) for cfg in configs]


def _machine() -> str:
    import jax

    devices = jax.devices()
    return (f"{platform.node()} ({platform.platform()}), jax {jax.__version__}, "
            f"{len(devices)} x {devices[0].device_kind}")


def _resolve_metric(cfg: ExperimentConfig, metric: str | None, mode: str | None) -> tuple[str, str]:
    monitor = R.metric_keys(cfg.early_stopping.monitor)[1]
    metric = R.metric_keys(metric or cfg.early_stopping.monitor)[1]
    if mode is None:
        mode = cfg.early_stopping.mode if metric == monitor else ("min" if "loss" in metric else "max")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return metric, mode


def _row(point: SweepPoint, run_dir: str, result, skipped: bool) -> dict:
    return {"run": point.name, "run_dir": run_dir, "strategy": point.strategy, "hparams": point.hparams,
            "seed": point.seed, "overrides": point.overrides, "validation": result.validation_metrics,
            "test": result.test_metrics, "best_step": result.best_step, "steps": result.steps,
            "seconds": result.seconds, "skipped": skipped}


def sweep(config: ExperimentConfig | str | os.PathLike | dict, grid: Mapping[str, Sequence[Any]] | None = None,
          seeds: Sequence[int] = (0,), *, strategies: Mapping[str, Mapping[str, Any] | Sequence[str]] | None = None,
          strategy_key: str | None = None, metric: str | None = None, mode: str | None = None,
          overrides: Sequence[str] = (), data=None, command: str | None = None,
          members: str | int = "off") -> SweepResult:
    """Runs every point of the grid (see the module docstring) and writes ``sweep.md``,
    ``sweep.jsonl`` and ``sweep.png`` to ``OUTPUT_DIR/NAME``.

    Args:
      config: the base config (object, YAML/JSON path or dict); ``overrides`` apply to it.
      grid: ``{dotted config key: [values]}``; every combination is a point.
      seeds: ``train.seed`` values; every point runs once per seed.
      strategies / strategy_key: what counts as a strategy (see :func:`sweep_points`).
      metric, mode: the selection metric (``accuracy`` or ``val_accuracy``) and ``"max"``/``"min"``;
        default the config's ``early_stopping.monitor`` / ``mode``.
      data: prepared data to use for every point (else prepared once per distinct data config and
        model path); an error when the sweep varies ``data.*`` or ``model.path``.
      command: the command line for the report header (default: this process's ``sys.argv``).
      members: ``"off"`` (default: every point a separate run, bit-for-bit as before), ``"auto"``
        (points that differ only in member settings train together, up to 8 per compiled step) or
        N (up to N per step). Members agree with separate runs to fp32 rounding (a runtime-mode
        optimizer, per-member learning rates as multipliers), not bit for bit, and hold N models
        in memory at once: hence off by default.
    """
    from jaxtune.experiment import _as_config, prepare_data

    base = _as_config(config, overrides)
    metric, mode = _resolve_metric(base, metric, mode)
    member_cap(members)
    points = sweep_points(grid or {}, seeds, strategies=strategies, strategy_key=strategy_key)
    configs = [point_config(base, p) for p in points]  # every config error before any training
    varied = sorted({k for p in points for k in p.overrides if k.startswith("data.") or k == "model.path"})
    if data is not None and varied:
        raise ValueError(f"data= is used for every point, but the sweep varies {varied}; leave data=None "
                         "(the sweep prepares the data once per distinct data config)")
    sweep_dir = os.path.join(base.output_dir, base.name)
    os.makedirs(sweep_dir, exist_ok=True)
    prepared: dict[str, Any] = {}
    results = [_finished(os.path.join(cfg.output_dir, cfg.name), cfg) for cfg in configs]
    skipped = [r is not None for r in results]
    todo = [i for i, r in enumerate(results) if r is None]
    chunks, notes = member_chunks([configs[i] for i in todo], members)
    for note in notes:
        print(note)
    for chunk in chunks:
        chunk_configs = [configs[todo[j]] for j in chunk]
        first = chunk_configs[0]
        key = json.dumps([to_dict(first.data), first.model.path, first.model.task], sort_keys=True)
        if data is None and key not in prepared:
            prepared[key] = prepare_data(first.data, first.model.path, None, first.model.task)
        for j, result in zip(chunk, _train_points(chunk_configs, data if data is not None else prepared[key])):
            results[todo[j]] = result
    trained = len(todo)
    rows = [_row(p, os.path.join(c.output_dir, c.name), r, s) for p, c, r, s in zip(points, configs, results, skipped)]
    summaries = R.summarize_points(rows, metric)
    selected = R.select_best(summaries, mode)
    differences = R.paired_differences(rows, selected, metric)
    header = {"name": base.name, "command": command or shlex.join([os.path.basename(sys.executable), *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": _machine(), "seeds": ", ".join(str(s) for s in seeds),
              "grid": json.dumps(dict(grid or {}), default=str), "strategies": ", ".join(selected),
              "runs": f"{len(rows)} ({trained} trained, {len(rows) - trained} finished before)"}
    paths = {"dir": sweep_dir, "report": os.path.join(sweep_dir, "sweep.md"),
             "rows": os.path.join(sweep_dir, "sweep.jsonl"), "plot": os.path.join(sweep_dir, "sweep.png")}
    with open(paths["rows"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, default=float) + "\n" for r in rows)
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write(R.markdown(header, summaries, selected, differences, metric, mode))
    R.plot(summaries, selected, metric, paths["plot"], title=f"sweep {base.name}")
    return SweepResult(rows, summaries, selected, differences, metric, mode, trained, paths)
