"""Read PyTorch ``.pth`` / ``.pt`` state dicts into numpy without importing torch or running pickle code.

A PyTorch checkpoint is a pickle. Unpickling it with :mod:`pickle` (which is what ``torch.load`` does
unless ``weights_only=True``) runs whatever the file says, so a downloaded checkpoint can execute
arbitrary code. This module unpickles with a *restricted* unpickler: the only globals it resolves are
the few constructors a state dict needs, each replaced by a harmless function written here:

* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter`` (tensors),
* ``torch.{Half,BFloat16,Float,Double,Long,Int,Short,Char,Byte,Bool}Storage`` (storage dtypes),
* ``collections.OrderedDict``.

Any other global (``os.system``, ``builtins.eval``, a model class, ...) raises
:class:`UnsafeCheckpointError` naming it and the file; nothing from the file is ever called.

Two on-disk layouts are read:

* the zip format (``torch.save`` default since PyTorch 1.6): ``<name>/data.pkl`` plus one raw
  ``<name>/data/<key>`` entry per storage and a ``<name>/byteorder`` entry;
* the legacy pickle stream (``_use_new_zipfile_serialization=False``, and every file written by
  PyTorch < 1.6, e.g. torchvision's original ImageNet weights): magic number, protocol version and
  system-info pickles, the object pickle, the storage-key list, then the raw storages in that order.

Tensors are rebuilt from (storage, offset, size, stride), so transposed and sliced tensors and
tensors that share one storage come back with exactly the values PyTorch saved, each as its own
C-contiguous numpy array. ``bfloat16`` uses :mod:`ml_dtypes`.

Example::

    from jaxtune.torch_checkpoint import load_torch_state_dict
    state = load_torch_state_dict("mobilenet_v2-b0353104.pth")
    state["classifier.1.weight"].shape     # (1000, 1280)
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxtune.errors import UserError

__all__ = [
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "load_torch_state_dict",
    "read_torch_file",
    "unwrap_state_dict",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Keys under which training scripts commonly nest the model's state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


class UnsafeCheckpointError(pickle.UnpicklingError, UserError):
    """The checkpoint's pickle asks for a global that a plain state dict never needs."""


class CheckpointFormatError(UserError):
    """The file is not a PyTorch checkpoint this reader understands, or it is corrupt."""


class _Sealed:
    """Refuses pickle's BUILD opcode, so a file cannot alter the shared storage types or constructors."""

    def __setstate__(self, state):
        raise UnsafeCheckpointError("checkpoint pickle tries to set the state of a tensor/storage object or "
                                    "constructor (pickle BUILD); refused")


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
    """Stands in for ``torch.FloatStorage`` & co.: only remembers the element dtype."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES = {
    name: _StorageType(name, np.dtype(dtype))
    for name, dtype in {
        "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16,
        "FloatStorage": np.float32,
        "DoubleStorage": np.float64,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
    }.items()
}


@dataclasses.dataclass
class _Storage(_Sealed):
    """A flat typed buffer; ``data`` is filled when its bytes are read (at once for zip files,
    after the object pickle for legacy files). ``base``/``offset`` describe a legacy storage view."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    base: _Storage | None = None
    offset: int = 0

    def array(self) -> np.ndarray:
        if self.base is not None:
            return self.base.array()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise CheckpointFormatError(f"storage {self.key!r} was referenced but its bytes were never read")
        return self.data


@dataclasses.dataclass(frozen=True)
class _TensorRef(_Sealed):
    """What ``_rebuild_tensor_v2`` returns here: a description turned into an array after loading."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _Constructor(_Sealed):
    """A sealed callable: pickle's BUILD cannot set attributes (e.g. ``__defaults__``) on it."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)


# collections.OrderedDict is a built-in type, whose attributes a pickle cannot change.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _Constructor(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Constructor(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Constructor(_rebuild_parameter),
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_SAFE_GLOBALS`; storages come from ``storage_loader``."""

    def __init__(self, file, source: str, storage_loader=None):
        super().__init__(file)
        self._source = source
        self._storage_loader = storage_loader

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load global {module}.{name}; a plain state dict only "
                "needs tensors, storages and OrderedDict. Nothing from the file was executed. If you "
                "trust the file, load it with torch.load and save model.state_dict() instead."
            ) from None

    def persistent_load(self, pid):
        if self._storage_loader is None:
            raise CheckpointFormatError(f"{self._source}: unexpected persistent id {pid!r} outside the object pickle")
        return self._storage_loader(pid)


def _load(unpickler: _RestrictedUnpickler, source: str) -> Any:
    """Runs the restricted unpickler; malformed data becomes a :class:`CheckpointFormatError`."""
    try:
        return unpickler.load()
    except (UnsafeCheckpointError, CheckpointFormatError) as err:
        if source in str(err):
            raise
        raise type(err)(f"{source}: {err}") from err
    except Exception as err:
        raise CheckpointFormatError(f"{source}: corrupt checkpoint pickle ({type(err).__name__}: {err})") from err


def _storage_type(value: Any, source: str) -> _StorageType:
    if not isinstance(value, _StorageType):
        raise CheckpointFormatError(f"{source}: storage type {value!r} is not a known torch storage dtype")
    return value


def _read_storage_bytes(raw: bytes | memoryview, dtype: np.dtype, numel: int, little_endian: bool,
                        what: str) -> np.ndarray:
    need = numel * dtype.itemsize
    if len(raw) < need:
        raise CheckpointFormatError(f"{what}: expected {need} bytes for {numel} x {dtype}, found {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype, count=numel)
    if little_endian != (sys.byteorder == "little") and dtype.itemsize > 1:
        array = array.view(f"u{dtype.itemsize}").byteswap().view(dtype)
    return array


def _materialize(ref: _TensorRef, source: str) -> np.ndarray:
    if not isinstance(ref.storage, _Storage):
        raise CheckpointFormatError(f"{source}: a tensor is rebuilt from {type(ref.storage).__name__}, not a storage")
    flat = ref.storage.array()
    if any(s == 0 for s in ref.size):
        return np.zeros(ref.size, dtype=flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= flat.size:
        raise CheckpointFormatError(
            f"{source}: tensor of size {ref.size}, stride {ref.stride}, offset {ref.offset} does not fit "
            f"in storage {ref.storage.key!r} of {flat.size} elements (corrupt file?)")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.size, strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _materialize_tree(obj: Any, source: str) -> Any:
    if isinstance(obj, _TensorRef):
        return _materialize(obj, source)
    if isinstance(obj, dict):  # dict or OrderedDict: the only mappings the unpickler can build
        return type(obj)((k, _materialize_tree(v, source)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialize_tree(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize_tree(v, source) for v in obj)
    return obj


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            hint = (" It looks like a TorchScript archive (torch.jit.save); save model.state_dict() with "
                    "torch.save instead." if any(n.endswith("constants.pkl") for n in names) else "")
            raise CheckpointFormatError(
                f"{path}: zip file without exactly one '<name>/data.pkl' entry (found {pickles}); not a "
                f"torch.save checkpoint.{hint}")
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder {order!r}")
            little_endian = order == "little"
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise CheckpointFormatError(f"{path}: unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            dtype = _storage_type(storage_type, path).dtype
            key = str(key)
            if key not in storages:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise CheckpointFormatError(f"{path}: storage entry {entry!r} is missing")
                data = _read_storage_bytes(archive.read(entry), dtype, int(numel), little_endian, f"{path}:{entry}")
                storages[key] = _Storage(key, dtype, int(numel), data)
            return storages[key]

        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, load_storage)
        return _materialize_tree(_load(unpickler, path), path)


def _read_legacy(path: str, raw: bytes) -> Any:
    stream = io.BytesIO(raw)

    def header_pickle(what: str) -> Any:
        try:
            return _RestrictedUnpickler(stream, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # a garbled header is not a torch file at all
            raise CheckpointFormatError(
                f"{path}: not a PyTorch checkpoint (cannot read the legacy {what}: {err}); expected a zip "
                "file from torch.save or a legacy torch pickle stream") from err

    magic = header_pickle("magic number")
    if magic != _LEGACY_MAGIC:
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint: neither a zip archive nor a legacy torch pickle (magic number "
            f"{magic!r} != {_LEGACY_MAGIC:#x}); a plain pickle is not read here")
    protocol = header_pickle("protocol version")
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = header_pickle("system info")
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True

    storages: dict[str, _Storage] = {}

    def load_storage(pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointFormatError(f"{path}: unexpected persistent id {pid!r}")
        _, storage_type, root_key, _location, numel, view = pid
        dtype = _storage_type(storage_type, path).dtype
        root_key = str(root_key)
        root = storages.setdefault(root_key, _Storage(root_key, dtype, int(numel)))
        if view is None:
            return root
        view_key, offset, view_size = view
        return storages.setdefault(str(view_key), _Storage(str(view_key), dtype, int(view_size), base=root,
                                                           offset=int(offset)))

    obj = _load(_RestrictedUnpickler(stream, path, load_storage), path)
    keys = header_pickle("storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointFormatError(f"{path}: storage key {key!r} listed but never referenced")
        header = stream.read(8)
        if len(header) != 8:
            raise CheckpointFormatError(f"{path}: file ends before storage {key!r}")
        numel = int.from_bytes(header, "little" if little_endian else "big", signed=True)
        start = stream.tell()
        view = memoryview(raw)[start:start + numel * storage.dtype.itemsize]
        storage.data = _read_storage_bytes(view, storage.dtype, numel, little_endian, f"{path}: storage {key!r}")
        storage.numel = numel
        stream.seek(start + numel * storage.dtype.itemsize)
    return _materialize_tree(obj, path)


def read_torch_file(path: str | os.PathLike) -> Any:
    """Reads a whole ``torch.save`` file safely; tensors come back as numpy arrays.

    Unlike :func:`load_torch_state_dict`, the top-level object is returned as saved (e.g. a dict with
    ``"epoch"``, ``"state_dict"``, ``"optimizer"`` entries).

    Example::

        ckpt = read_torch_file("checkpoint.pt")
        ckpt["epoch"], ckpt["state_dict"]["fc.weight"].dtype
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no PyTorch checkpoint at {path!r}")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        raw = f.read()
    if tarfile.is_tarfile(path):
        raise CheckpointFormatError(
            f"{path}: tar-format checkpoint from PyTorch < 0.4 is not supported; load it once with that "
            "PyTorch and re-save it with torch.save(model.state_dict(), path)")
    return _read_legacy(path, raw)


def unwrap_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, np.ndarray]:
    """Finds the ``{name: array}`` state dict inside a loaded checkpoint object.

    Rules, in order: a mapping whose values are all arrays is the state dict; otherwise the first
    of ``"state_dict"``, ``"model_state_dict"``, ``"model"`` that holds a mapping is unwrapped
    (recursively). Finally, when *every* name starts with ``"module."`` (``nn.DataParallel`` /
    ``DistributedDataParallel`` checkpoints) that prefix is removed.

    Example::

        unwrap_state_dict({"epoch": 3, "state_dict": {"module.fc.bias": b}})   # {"fc.bias": b}
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        state = {str(k): v for k, v in obj.items()}
        if all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        return state
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            return unwrap_state_dict(obj[key], f"{source}[{key!r}]")
    bad = {str(k): type(v).__name__ for k, v in obj.items() if not isinstance(v, np.ndarray)}
    raise CheckpointFormatError(
        f"{source}: not a state dict: entries {dict(list(bad.items())[:5])} are not tensors and none of "
        f"{list(_CONTAINER_KEYS)} holds one (keys: {list(obj)[:10]})")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (``.pth``/``.pt``) as ``{name: numpy array}``, never running pickle code.

    Containers are unwrapped and a ``module.`` prefix is stripped as described in
    :func:`unwrap_state_dict`. Dtypes map to numpy (``bfloat16`` via ``ml_dtypes``); every array is a
    fresh C-contiguous copy, whatever the tensor's strides or storage sharing were.

    Raises:
      UnsafeCheckpointError: the pickle references a global other than tensors/storages/OrderedDict.
      CheckpointFormatError: the file is not a torch checkpoint, is corrupt, or holds no state dict.

    Example::

        state = load_torch_state_dict("resnet18.pth")
        state["fc.weight"].shape   # (1000, 512)
    """
    return unwrap_state_dict(read_torch_file(path), os.fspath(path))
