"""LoRA adapters <-> Hugging Face PEFT adapter directories (``adapter_config.json`` +
``adapter_model.safetensors``), for the BERT and T5 families.

A jaxtune kernel ``W`` is ``(in, out)`` and its update ``scale * A @ B``; PEFT's ``lora_A.weight``
is ``(rank, in)`` and ``lora_B.weight`` ``(out, rank)`` on the torch ``Linear`` of the same module,
so ``lora_A = A.T`` and ``lora_B = B.T``, with ``scale = lora_alpha / r``. Tensor names come from the
family's name map (the one :func:`jaxtune.save_pretrained` uses), prefixed ``base_model.model.``.

Example::

    jt.save_peft(state.params.adapters, model.config, "out/adapter", task="sequence_classification",
                 params=state.params.params)     # with the trained classifier, as PEFT's modules_to_save
    # peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), "out/adapter")
    adapters, head = jt.load_peft("bias-detector-output", t5_config, task="text_to_text", params=params)
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxtune import hub
from jaxtune.errors import UserError
from jaxtune.lora import LoraFactors, _nest, check_factors, factors_by_path
from jaxtune.models.family import flatten_paths
from jaxtune.models.stacking import stack_layers, unstack_layers
from jaxtune.rules import leaf_paths

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight")
# jaxtune task -> PEFT task_type (which PeftModel class PeftModel.from_pretrained builds).
TASK_TYPES = {None: "FEATURE_EXTRACTION", "sequence_classification": "SEQ_CLS",
              "token_classification": "TOKEN_CLS", "question_answering": "QUESTION_ANS",
              "text_to_text": "SEQ_2_SEQ_LM", "masked_lm": None}


def _hf_module(family: Any, config: Any, path: str, task: str | None) -> str:
    """The HF module name (``bert.encoder.layer.0.attention.self.query``) of a Dense kernel path."""
    try:
        names = family.to_hf(config, {"params": _nest({path: np.zeros((1, 1), np.float32)})}, task)
    except (KeyError, ValueError) as e:
        raise UserError(f"PEFT export: {path} has no Hugging Face name in the {family.name} family "
                        f"({e}); PEFT files hold the factors of Dense kernels of BERT and T5 models") from None
    (name, array), = names.items()
    if not name.endswith(".weight") or array.shape != (1, 1):
        raise UserError(f"PEFT export: {path} is {name} in Hugging Face files, not the weight of a torch Linear; "
                        "PEFT files hold the factors of Dense kernels only")
    return name.removesuffix(".weight")


def _stacks(family: Any, config: Any) -> list[tuple[str, str, int]]:
    """The family's stacked layers of ``config`` (:attr:`ModelFamily.stacked_layers`), params paths."""
    stacks = family.stacked_layers(config) if family.stacked_layers is not None else ()
    return [(stacked.removeprefix("params/"), per_layer.removeprefix("params/"), count)
            for stacked, per_layer, count in stacks]


def per_layer_factors(adapters: Any, config: Any) -> dict[str, LoraFactors]:
    """``{kernel path: LoraFactors}`` of ``adapters`` with the stacked factors of a scanned model
    (``config.scan_layers``) split into one pair per layer, under the per-layer paths that PEFT
    files name (:func:`jaxtune.models.stacking.unstack_layers`).

    Example::

        per_layer_factors(adapters, scanned_bert.config)["bert/encoder/layer_0/attention/self/query/kernel"]
    """
    stacks = _stacks(hub._family_of_config(config), config)
    out: dict[str, LoraFactors] = {}
    for path, f in factors_by_path(adapters).items():
        stack = next(((stacked, per_layer) for stacked, per_layer, _ in stacks if path.startswith(stacked + "/")), None)
        if stack is None:
            out[path] = f
            continue
        a, b = unstack_layers({path: f.lora_a}, *stack), unstack_layers({path: f.lora_b}, *stack)
        out.update({p: LoraFactors(a[p], b[p], scale=f.scale, dropout=f.dropout) for p in a})
    return out


def _stacked_factors(flat: dict[str, LoraFactors], config: Any, family: Any, source: Path) -> dict[str, LoraFactors]:
    """Per-layer factors (PEFT's) stacked for a scanned model: the inverse of :func:`per_layer_factors`."""
    for stacked, per_layer, count in _stacks(family, config):
        kinds = stack_layers({p: np.array([f.rank, f.scale, f.dropout]) for p, f in flat.items()}, per_layer, stacked,
                             count)
        new = [p for p in kinds if p not in flat]
        uneven = [p for p in new if not np.all(kinds[p] == kinds[p][0])]
        if uneven:
            raise UserError(f"{source}: the layers of {uneven[0]} have different LoRA ranks or alphas, which one "
                            f"stacked kernel of a scanned model cannot hold",
                            hint="Hint: load the adapter onto an unscanned model (scan_layers=False).")
        a = stack_layers({p: f.lora_a for p, f in flat.items()}, per_layer, stacked, count)
        b = stack_layers({p: f.lora_b for p, f in flat.items()}, per_layer, stacked, count)
        flat = {p: flat[p] if p in flat else LoraFactors(a[p], b[p], scale=float(kinds[p][0, 1]),
                                                          dropout=float(kinds[p][0, 2])) for p in kinds}
    return flat


def _unscanned(config: Any) -> Any:
    """``config`` with ``scan_layers`` off (per-layer names map one tensor at a time)."""
    return dataclasses.replace(config, scan_layers=False) if getattr(config, "scan_layers", False) else config


def peft_module_names(adapters: Any, config: Any, task: str | None) -> list[str]:
    """The HF module name of each kernel of ``adapters`` (in :func:`per_layer_factors` order: a
    scanned model's stacked factors one per layer); a :class:`UserError` names a kernel PEFT cannot
    hold (not a Linear, stacked factors outside the family's layer stacks).

    Example::

        peft_module_names(adapters, model.config, "sequence_classification")
        # ['bert.encoder.layer.0.attention.self.query', ...]
    """
    family = hub._family_of_config(config)
    names = []
    for path, f in per_layer_factors(adapters, config).items():
        if np.ndim(f.lora_a) != 2:
            raise UserError(f"PEFT export: the factors of {path} have shapes {np.shape(f.lora_a)} / "
                            f"{np.shape(f.lora_b)}; PEFT holds one (in, rank) / (rank, out) pair per Linear, and "
                            f"{path} is not in a layer stack of the {family.name} family's scanned models")
        names.append(_hf_module(family, config, path, task))
    return names


def _most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0]


# Tasks whose PeftModel class saves and loads the task head with the adapter (PEFT's modules_to_save).
HEADS = {"sequence_classification": ("classifier",), "token_classification": ("classifier",),
         "question_answering": ("qa_outputs",)}


def _module_tensors(family: Any, config: Any, params: Any, modules: Sequence[str], task: str | None) -> dict:
    """HF tensors of the params under the Flax module prefixes ``modules`` (PEFT's modules_to_save)."""
    flat = dict(zip(leaf_paths(params), jax.tree_util.tree_leaves(params)))
    chosen = {p: x for p, x in flat.items() if any(p == m or p.startswith(m + "/") for m in modules)}
    missing = [m for m in modules if not any(p == m or p.startswith(m + "/") for p in chosen)]
    if missing:
        raise UserError(f"save_peft: modules_to_save {missing} name no parameter (params have e.g. {list(flat)[:3]})")
    return {f"{_PREFIX}{name}": hub._to_numpy(a) for name, a in family.to_hf(config, {"params": _nest(chosen)}, task).items()}


def save_peft(adapters: Any, config: Any, directory: str | Path, task: str | None = None, *, params: Any = None,
              modules_to_save: Sequence[str] | None = None, base_model_name_or_path: str | None = None) -> Path:
    """Writes ``adapters`` as a PEFT LoRA adapter that ``peft.PeftModel.from_pretrained`` loads
    onto the transformers model of ``task`` (the model :func:`jaxtune.save_pretrained` writes).

    ``config`` is the family config (``model.config``). Ranks or alphas that differ between kernels
    go into ``rank_pattern`` / ``alpha_pattern``. A scanned model's stacked factors are written per
    layer, under the names the unscanned model's adapter has (the same files).
    ``modules_to_save``: Flax module paths whose weights (from ``params``) the adapter carries, as
    PEFT's ``modules_to_save``; the default is the head for classification and question answering
    (``classifier`` / ``qa_outputs``), which PEFT's model classes for those tasks always load.

    Example::

        jt.save_peft(state.params.adapters, model.config, "out/adapter", task="sequence_classification",
                     params=state.params.params, base_model_name_or_path="bert-base-uncased")
    """
    family = hub._family_of_config(config)
    flat = per_layer_factors(adapters, config)
    if not flat:
        raise UserError("save_peft: the adapters tree is empty; make it with jt.init_lora or take state.params.adapters")
    modules_to_save = list(HEADS.get(task, ()) if modules_to_save is None else modules_to_save)
    if modules_to_save and params is None:
        raise UserError(f"save_peft: a {task} adapter carries the weights of {modules_to_save} (PEFT's "
                        "modules_to_save); pass params= (state.params.params), or modules_to_save=[]")
    tensors = _module_tensors(family, config, params, modules_to_save, task) if modules_to_save else {}
    modules = {}
    for (path, f), module in zip(flat.items(), peft_module_names(adapters, config, task)):
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(hub._to_numpy(f.lora_a).T)
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(hub._to_numpy(f.lora_b).T)
        modules[module] = (f.rank, f.scale * f.rank, f.dropout)
    dropouts = sorted({d for _, _, d in modules.values()})
    if len(dropouts) > 1:
        raise UserError(f"save_peft: the adapters' LoRA dropouts differ ({dropouts}); a PEFT adapter has one "
                        "lora_dropout for all modules: give the jt.lora rules the same dropout")
    rank = _most_common([r for r, _, _ in modules.values()])
    alpha = _most_common([a for _, a, _ in modules.values()])
    adapter_config = {
        "peft_type": "LORA", "task_type": TASK_TYPES.get(task), "base_model_name_or_path": base_model_name_or_path,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropouts[0],
        "target_modules": sorted(modules), "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": [m.replace("/", ".") for m in modules_to_save] or None,
        "rank_pattern": {re.escape(m): r for m, (r, _, _) in modules.items() if r != rank},
        "alpha_pattern": {re.escape(m): a for m, (_, a, _) in modules.items() if a != alpha},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    from safetensors.numpy import save_file

    save_file(tensors, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def _read_adapter_config(directory: Path) -> dict:
    path = directory / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG_NAME} in {directory}; a PEFT adapter directory holds "
                                f"{ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME} (found: {hub._listing(directory)})")
    cfg = hub._read_json(path)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type is {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}; "
                        "jaxtune reads LoRA adapters (peft_type LORA)")
    unsupported = {key: cfg.get(key) for key in ("use_dora", "fan_in_fan_out", "lora_bias") if cfg.get(key)}
    if cfg.get("bias", "none") != "none":
        unsupported["bias"] = cfg["bias"]
    if unsupported:
        raise UserError(f"{path}: {unsupported} is not supported; jaxtune reads plain LoRA on Linear layers "
                        "(no DoRA, no LoRA biases)")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise UserError(f"{path}: {key} is {cfg.get(key)!r}; expected a positive number")
    return cfg


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _flax_path(family: Any, config: Any, name: str, task: str | None, source: Path) -> str:
    """The params path (no ``params/``) of the HF tensor ``name``; an error names the file if there is none."""
    loaded, used = family.to_flax(config, {name: np.zeros((1, 1), np.float32)}, task)
    paths = list(flatten_paths(loaded))
    if not used or len(paths) != 1 or not paths[0].startswith("params/"):
        raise UserError(f"{source}: {name} has no Flax path in the {family.name} family; is the adapter for a "
                        f"{family.name} model (task {task!r})?")
    return paths[0].removeprefix("params/")


def load_peft(directory: str | Path, config: Any, task: str | None = None, *,
              params: Any = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads a PEFT LoRA adapter directory: jaxtune adapters (:func:`jaxtune.apply_lora`) and the
    weights of its ``modules_to_save`` (e.g. a trained classifier) as ``{params path: array}``.

    ``config`` is the family config of the base model (``model.config``); ``params`` (optional,
    plain params or abstract shapes from ``jax.eval_shape``) checks that every tensor names one of
    its parameters with fitting shapes. For a scanned model (``config.scan_layers``) the per-layer
    factors are stacked like its layers (every layer needs factors of one rank and alpha).

    Example::

        model, variables = jt.from_pretrained("t5-large", task="text_to_text")
        adapters, _ = jt.load_peft("bias-detector-output", model.config, "text_to_text", params=variables["params"])
        logits = model.apply({"params": jt.merge_lora(variables["params"], adapters)}, ...)
    """
    directory = Path(directory)
    cfg = _read_adapter_config(directory)
    weights = directory / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in {directory} (found: {hub._listing(directory)})")
    tensors = hub._read_safetensors(weights)
    family = hub._family_of_config(config)
    scanned, config = config, _unscanned(config)
    shapes = dict(zip(leaf_paths(params), (np.shape(x) for x in jax.tree_util.tree_leaves(params)))) \
        if params is not None else None

    def check_path(name: str, path: str) -> None:
        if shapes is not None and path not in shapes:
            raise UserError(f"{weights}: {name} maps to {path}, which the given params lack (e.g. they have "
                            f"{list(shapes)[:3]})")

    pairs: dict[str, dict[str, np.ndarray]] = {}
    saved = {}
    for name, array in tensors.items():
        m = _KEY.fullmatch(name)
        if m is not None:
            pairs.setdefault(m.group("module"), {})[m.group("factor")] = array
            continue
        path = _flax_path(family, config, name.removeprefix(_PREFIX), task, weights)
        value = family.to_flax(config, {name.removeprefix(_PREFIX): array}, task)[0]
        check_path(name, path)
        if shapes is not None and tuple(np.shape(flatten_paths(value)[f"params/{path}"])) != tuple(shapes[path]):
            raise UserError(f"{weights}: {name} has shape {np.shape(array)}, which does not fit {path} {shapes[path]}")
        saved[path] = flatten_paths(value)[f"params/{path}"]
    flat, modules = {}, {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise UserError(f"{weights}: module {module!r} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = np.asarray(pair["A"], np.float32), np.asarray(pair["B"], np.float32)
        rank = _pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise UserError(f"{weights}: {module} has lora_A {a.shape} and lora_B {b.shape}; with r={rank} they "
                            "must be (r, in) and (out, r)")
        scale = alpha / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        path = _flax_path(family, config, f"{module}.weight", task, weights)
        flat[path] = LoraFactors(a.T.copy(), b.T.copy(), scale=float(scale), dropout=float(cfg.get("lora_dropout", 0.0)))
        modules[path] = f"{module}.lora_A.weight"
    flat = _stacked_factors(flat, scanned, family, weights)
    for path, factors in flat.items():
        check_path(modules.get(path, f"the stacked factors of {path}"), path)
        if shapes is not None:
            check_factors(path, shapes[path], factors, source=str(weights))
    return _nest(flat), saved
