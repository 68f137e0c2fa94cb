"""Checkpoint files: where a checkpoint directory is (a path, the local Hugging Face cache or a Hub
download) and its tensors read back checked: ``model.safetensors``, sharded indexes, and pickles only
when allowed. Every error names the file (and the tensor at fault). :mod:`jaxtune.hub` builds models
from what is read here.

Example::

    directory = resolve_directory("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True)
    tensors = read_weights(directory)      # {HF name: numpy array}
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxtune.errors import UserError

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
