"""Run directories: what a run is (its fingerprint), whether a directory may take it, and its result.

A run is the config minus the keys that may change on resume (:data:`jaxtune.config.RESUMABLE_KEYS`),
hashed. The runner writes the fingerprint into the run directory before anything else, and refuses to
run a config with another fingerprint into it unless told to continue (``resume``) or to start over
(``overwrite``)::

    run_dir/fingerprint.json  {"fingerprint": hex, "keys": {dotted key: value}, "continued": [...]}
    run_dir/result.json       {"fingerprint": hex, **RunResult} once the run finished (test evaluated)

Example::

    digest, keys = jt.run_fingerprint(cfg)      # keys["optim.learning_rate"] == 5e-05
    jt.read_result("runs/tweets")               # RunResult of a finished run, else None
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

from jaxtune.config import OPTIONAL_SECTIONS, RESUMABLE_KEYS, ExperimentConfig, resumable_keys, to_dict
from jaxtune.errors import UserError

FINGERPRINT_FILE, RESULT_FILE = "fingerprint.json", "result.json"
_RUN_MARKERS = (FINGERPRINT_FILE, "config.yaml", "checkpoints", "metrics.jsonl")  # what makes a dir a run dir
_TMP = ".tmp-"  # infix of the temporary files of atomic writes (a run killed mid-write may leave one)


class RunDirError(UserError):
    """A run directory cannot take this run: it holds another run, or is not a run directory."""


@dataclasses.dataclass
class RunResult:
    """What a run produced: test metrics of the restored best model, and where things are.

    ``paths`` maps ``run_dir``, ``checkpoints``, ``metrics`` (the JSONL log), ``config``, ``report``,
    ``plot`` (and ``export`` with ``checkpoint.export_best_hf``) to files of the run directory.
    ``compile`` is what the first training step cost to compile, and whether the persistent
    compilation cache served it (:class:`jaxtune.compile_cache.FirstCallWatch`; None when no step ran).

    Example::

        result = jt.finetune("experiments/configs/tweets_minilm.yaml")
        result.test_metrics["accuracy"], result.best_step, result.paths["metrics"]
        result = jt.read_result("runs/tweets_minilm")     # a finished run's, from its result.json
    """

    test_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    best_step: int | None
    steps: int
    trainable_params: int
    stopped_early: bool
    paths: dict[str, str]
    seconds: float
    compile: dict[str, Any] | None = None


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


FINGERPRINT_DEFAULTS: dict[str, Any] = {"model.scan_layers": False, "train.recompute_batch_stats": None}
"""Keys added to the config after runs were fingerprinted, with their defaults: a key at its default
is left out of the fingerprint, so that the runs made before it existed keep theirs."""


def run_fingerprint(config: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """The run's fingerprint: a sha256 hex digest, and the flat ``{dotted_key: value}`` dict it hashes.

    The dict is the whole config (model, data, rules, optimizer, schedule, seeds, evaluation, early
    stopping) minus the keys that may change on resume (:func:`jaxtune.config.resumable_keys`) and the
    null optional sections (:data:`jaxtune.config.OPTIONAL_SECTIONS`), as JSON values. Two configs have
    the same fingerprint exactly when their runs compute the same steps. A key of
    :data:`FINGERPRINT_DEFAULTS` at its default is left out (``model.scan_layers: false``).

    Example::

        >>> a, _ = run_fingerprint(load_config(None, ["train.log_every=5"]))
        >>> b, keys = run_fingerprint(load_config(None, ["train.log_every=50"]))
        >>> a == b, keys["train.seed"]
        (True, 0)
    """
    skip = set(resumable_keys(config))
    flat = _flat(to_dict(config))
    skip |= {k for k, default in FINGERPRINT_DEFAULTS.items() if flat.get(k) == default}
    flat = {k: v for k, v in flat.items() if k not in skip}
    keys = json.loads(json.dumps({k: v for k, v in flat.items() if not (k in OPTIONAL_SECTIONS and v is None)}))
    return _digest(keys), keys


def write_json_atomic(path: str | os.PathLike, data: Any) -> str:
    """Writes ``data`` as JSON to ``path`` through a temporary file and ``os.replace``: a reader (or a
    run killed meanwhile) sees the old file or the new one, never half of one. Returns the path.

    Example::

        write_json_atomic("runs/a/result.json", {"fingerprint": "ab12..."})
    """
    path = os.fspath(path)
    tmp = f"{path}{_TMP}{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); delete it or pass overwrite=True (--overwrite) "
                          "to start the run over") from exc
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise RunDirError(f"{path} is not a jaxtune {os.path.basename(path)} (no 'fingerprint' key); delete it "
                          "or pass overwrite=True (--overwrite) to start the run over")
    return data


def read_fingerprint(run_dir: str | os.PathLike) -> dict | None:
    """The ``fingerprint.json`` record of ``run_dir`` (``None`` if it has none).

    Example::

        read_fingerprint("runs/tweets")["keys"]["optim.learning_rate"]   # 5e-05
    """
    return _read_json(os.path.join(os.fspath(run_dir), FINGERPRINT_FILE))


def read_result(run_dir: str | os.PathLike) -> RunResult | None:
    """The :class:`RunResult` of a finished run (its ``result.json``), else ``None``.

    ``None`` too when ``result.json`` belongs to another fingerprint than ``fingerprint.json``.
    ``paths`` inside the run directory are given under ``run_dir`` as passed here, so they stay valid
    from another working directory or after the directory moved.

    Example::

        done = read_result("runs/tweets")
        done.test_metrics["accuracy"] if done else "not finished"
    """
    run_dir = os.fspath(run_dir)
    record = _read_json(os.path.join(run_dir, RESULT_FILE))
    fingerprint = read_fingerprint(run_dir)
    if record is None or fingerprint is None or record["fingerprint"] != fingerprint["fingerprint"]:
        return None
    fields = {f.name for f in dataclasses.fields(RunResult)}
    result = RunResult(**{k: v for k, v in record.items() if k in fields})
    return dataclasses.replace(result, paths=_rebased(result.paths, run_dir))


def _rebased(paths: dict[str, str], run_dir: str) -> dict[str, str]:
    """``paths`` with the recorded run directory (``paths["run_dir"]``) replaced by ``run_dir``."""
    recorded = paths.get("run_dir")
    if recorded is None:
        return paths

    def rebase(path: str) -> str:
        inside = os.path.relpath(path, recorded)
        return path if inside.startswith(os.pardir) else os.path.normpath(os.path.join(run_dir, inside))

    return {key: rebase(path) for key, path in paths.items()}


def write_result(run_dir: str | os.PathLike, fingerprint: str, result: RunResult) -> str:
    """Writes ``result.json`` = ``{"fingerprint": fingerprint, **asdict(result)}`` atomically; returns its path."""
    return write_json_atomic(os.path.join(os.fspath(run_dir), RESULT_FILE),
                             {"fingerprint": fingerprint, **dataclasses.asdict(result)})


_MISSING = object()


def _show(value: Any) -> str:
    return json.dumps(value) if value is not _MISSING else "(absent)"


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted_key: (old, new)}`` for every key whose value differs (``_MISSING`` where absent)."""
    return {k: (old.get(k, _MISSING), new.get(k, _MISSING)) for k in sorted(set(old) | set(new))
            if old.get(k, _MISSING) != new.get(k, _MISSING)}


def _resumable_note() -> str:
    return ("Keys that may change on resume (not part of the fingerprint): " + ", ".join(RESUMABLE_KEYS)
            + "; train.max_steps and train.epochs only with optim.schedule 'constant'.")


@dataclasses.dataclass
class RunDirPlan:
    """What :func:`check_run_dir` decided for a run directory (nothing written yet).

    ``action``: ``"new"`` (empty or missing directory), ``"resume"`` (the same run, or a run continued
    with ``resume=True``), ``"overwrite"`` (delete, then start over). ``fingerprint`` is what the
    directory will record: the config's, or, for a run continued with other values, a digest of the
    old run's and the config's (so it never passes for a clean run of either).
    """

    run_dir: str
    action: str
    fingerprint: str
    keys: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]
    continued: list[dict]

    @property
    def record(self) -> dict:
        return {"fingerprint": self.fingerprint, "keys": self.keys, "continued": self.continued}


def _continued(run_dir: str, old: dict | None, digest: str, keys: dict, changes: dict) -> RunDirPlan:
    previous = None if old is None else old["fingerprint"]
    entry = {"from": previous, "changed": {k: [None if o is _MISSING else o, None if n is _MISSING else n]
                                           for k, (o, n) in changes.items()},
             "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    history = [] if old is None else list(old.get("continued", []))
    return RunDirPlan(run_dir, "resume", _digest([previous, digest]), keys, changes, history + [entry])


def check_run_dir(run_dir: str | os.PathLike, config: ExperimentConfig, *, resume: bool = False,
                  overwrite: bool = False) -> RunDirPlan:
    """Decides whether ``config`` may run into ``run_dir``; reads only, writes nothing.

    A missing or empty directory starts a new run. A directory of the same fingerprint resumes (or,
    when finished, returns its result). Any other directory is a :class:`RunDirError` listing the
    differing keys, unless ``resume=True`` (continue it with the new values, recorded in
    ``fingerprint.json["continued"]``) or ``overwrite=True`` (delete it and start over).

    Example::

        plan = check_run_dir("runs/tweets", cfg)     # RunDirError if runs/tweets holds another run
        plan.action                                   # "new" or "resume"
    """
    run_dir = os.fspath(run_dir)
    if resume and overwrite:
        raise ValueError("pass resume=True (continue the run) or overwrite=True (start it over), not both")
    digest, keys = run_fingerprint(config)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} is a file; set name or output_dir to a directory path")
    if not os.path.isdir(run_dir) or all(_TMP in name for name in os.listdir(run_dir)):
        return RunDirPlan(run_dir, "new", digest, keys, {}, [])
    if overwrite:
        if not any(os.path.exists(os.path.join(run_dir, m)) for m in _RUN_MARKERS):
            raise RunDirError(f"overwrite=True would delete {run_dir}, which is not a jaxtune run directory "
                              f"(none of {', '.join(_RUN_MARKERS)}); choose another name or output_dir")
        return RunDirPlan(run_dir, "overwrite", digest, keys, {}, [])
    old = read_fingerprint(run_dir)
    if old is None:
        if resume:
            return _continued(run_dir, None, digest, keys, {})
        raise RunDirError(f"{run_dir} already holds files ({', '.join(sorted(os.listdir(run_dir))[:5])}) but no "
                          f"{FINGERPRINT_FILE}, so it cannot tell whether they belong to this run.",
                          hint="Choose another name, pass overwrite=True to delete it and start over, or "
                               "resume=True to continue it as this config.",
                          config_hint="Choose another name (--set name=NEW), pass --overwrite to delete it and "
                                      "start over, or --resume to continue it as this config.")
    changes = config_changes(old.get("keys", {}), keys)
    if not changes:
        return RunDirPlan(run_dir, "resume", old["fingerprint"], keys, {}, list(old.get("continued", [])))
    if resume:
        return _continued(run_dir, old, digest, keys, changes)
    lines = "\n".join(f"  {k}: {_show(o)} -> {_show(n)}" for k, (o, n) in changes.items())
    raise RunDirError(f"{run_dir} holds another run (fingerprint {old['fingerprint'][:12]}, this config "
                      f"{digest[:12]}); {len(changes)} key(s) differ (old -> new):\n{lines}\n",
                      hint="Start a new run under another name, pass overwrite=True to delete this run and start "
                           f"over, or resume=True to continue it with the new values anyway. {_resumable_note()}",
                      config_hint="Start a new run under another name (--set name=NEW), pass --overwrite to delete "
                                  "this run and start over, or --resume to continue it with the new values anyway. "
                                  f"{_resumable_note()}")


def finished_result(plan: RunDirPlan, total_steps: int) -> RunResult | None:
    """The result of a finished run that ``plan`` resumes unchanged, when it trained ``total_steps``
    (or stopped early); prints that it is returned without training. Else ``None``."""
    if plan.action != "resume" or plan.changes:
        return None
    result = read_result(plan.run_dir)
    if result is None or not (result.stopped_early or result.steps >= total_steps):
        return None
    print(f"{plan.run_dir} already finished at step {result.steps} (fingerprint {plan.fingerprint[:12]}): "
          "returning its result without training; pass overwrite=True (--overwrite) to train it again")
    return result


def open_run_dir(plan: RunDirPlan) -> None:
    """Makes the run directory ready to train in: deletes it first for ``"overwrite"``, writes
    ``fingerprint.json`` before anything else, and drops a ``result.json`` that training will replace."""
    if plan.action == "overwrite":
        shutil.rmtree(plan.run_dir)
    os.makedirs(plan.run_dir, exist_ok=True)
    path = os.path.join(plan.run_dir, FINGERPRINT_FILE)
    if plan.action == "resume" and (plan.changes or not os.path.exists(path)):
        changed = ", ".join(f"{k} {_show(o)} -> {_show(n)}" for k, (o, n) in plan.changes.items())
        print(f"continuing {plan.run_dir} as a changed run ({changed or f'it had no {FINGERPRINT_FILE}'}); "
              f"its fingerprint is now {plan.fingerprint[:12]}")
    if plan.action != "resume" or plan.changes or not os.path.exists(path):
        write_json_atomic(path, plan.record)
    result = os.path.join(plan.run_dir, RESULT_FILE)
    if os.path.exists(result):
        os.remove(result)
