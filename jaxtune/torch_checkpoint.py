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

A crafted file cannot make the reader allocate more than the file holds: every tensor is checked
against the size its storage declares (no stride-0 expansion, nothing beyond the storage), every
storage against its bytes in the file (exact size, uncompressed), all tensors together against the
storages they view, and only then is anything read -- just the span of each storage that tensors use.

Example::

    from jaxtune.torch_checkpoint import load_torch_state_dict
    state = load_torch_state_dict("mobilenet_v2-b0353104.pth")
    state["classifier.1.weight"].shape     # (1000, 1280)
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

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
# A file's tensors may take at most this many times the bytes of the storages they view (and at
# least _MIN_TENSOR_BYTES_BUDGET): shared storages and tied weights stay far below it.
_MAX_TENSOR_BYTES_RATIO = 16
_MIN_TENSOR_BYTES_BUDGET = 16 * 2 ** 20
_READ_CHUNK = 2 ** 20


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
    """A flat typed buffer of ``numel`` elements, as the pickle declares it. Its bytes are read only
    after every tensor has been checked, and only the span the tensors use: ``data`` then holds
    elements ``start .. start + len(data)``; ``users`` counts the tensors that read it.
    ``base``/``offset`` describe a legacy storage view."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    start: int = 0
    users: int = 0
    base: _Storage | None = None
    offset: int = 0

    def root(self) -> tuple[_Storage, int]:
        """The storage that owns the bytes, and where this one starts in it (in elements)."""
        if self.base is None:
            return self, 0
        return self.base, self.offset


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


def _declared_numel(numel: Any, key: str, source: str) -> int:
    count = int(numel)
    if count < 0:
        raise CheckpointFormatError(f"{source}: storage {key!r} declares a negative size {count}")
    return count


def _tensor_refs(obj: Any, where: str = "") -> Iterator[tuple[str, _TensorRef]]:
    """Every tensor of a loaded object with where it sits, e.g. ``['state_dict']['fc.weight']``."""
    if isinstance(obj, _TensorRef):
        yield where or "<top level>", obj
    elif isinstance(obj, dict):  # dict or OrderedDict: the only mappings the unpickler can build
        for key, value in obj.items():
            yield from _tensor_refs(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensor_refs(value, f"{where}[{i}]")


def _tensor_span(ref: _TensorRef, where: str, source: str) -> tuple[_Storage, int, int] | None:
    """Checks one tensor against the size its storage declares, before any byte is read.

    Returns the storage that owns the bytes and the element range ``[lo, hi)`` the tensor reads
    from it, or None for a tensor without elements.
    """
    storage = ref.storage
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(
            f"{source}: tensor {where} is rebuilt from {type(storage).__name__}, not a storage")
    what = f"{source}: tensor {where} (size {ref.size}, stride {ref.stride}, offset {ref.offset})"
    if len(ref.size) != len(ref.stride) or min((*ref.size, *ref.stride, ref.offset)) < 0:
        raise CheckpointFormatError(f"{what} has a negative or mismatched size/stride/offset (corrupt file?)")
    numel = math.prod(ref.size)
    if numel == 0:
        return None
    if numel > storage.numel:
        raise CheckpointFormatError(
            f"{what} declares {numel} elements, more than the {storage.numel} its storage "
            f"{storage.key!r} holds; refused before allocating (a stride-0 expansion can turn a tiny "
            "file into a huge array). Save a contiguous copy (tensor.clone()) instead")
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= storage.numel:
        raise CheckpointFormatError(
            f"{what} reaches element {last} of storage {storage.key!r}, which declares only "
            f"{storage.numel} elements (corrupt file?)")
    root, shift = storage.root()
    if shift < 0 or shift + storage.numel > root.numel:
        raise CheckpointFormatError(
            f"{source}: storage view {storage.key!r} (offset {shift}, {storage.numel} elements) does not "
            f"fit in storage {root.key!r} of {root.numel} elements (corrupt file?)")
    return root, shift + ref.offset, shift + last + 1


def _plan_reads(obj: Any, source: str) -> list[tuple[_Storage, int, int]]:
    """Checks every tensor of ``obj``; returns, per storage, the element span the tensors need.

    Refuses, before anything is allocated, tensors that do not fit their storage and files whose
    tensors would together take more than :data:`_MAX_TENSOR_BYTES_RATIO` times the bytes of their
    storages (many views of one storage, memoised or not, would otherwise amplify a small file).
    """
    spans: dict[str, tuple[_Storage, int, int]] = {}
    tensor_bytes = 0
    for where, ref in _tensor_refs(obj):
        span = _tensor_span(ref, where, source)
        if span is None:
            continue
        root, lo, hi = span
        root.users += 1
        tensor_bytes += math.prod(ref.size) * root.dtype.itemsize
        _, old_lo, old_hi = spans.get(root.key, (root, lo, hi))
        spans[root.key] = (root, min(lo, old_lo), max(hi, old_hi))
    storage_bytes = sum(root.numel * root.dtype.itemsize for root, _, _ in spans.values())
    budget = max(_MAX_TENSOR_BYTES_RATIO * storage_bytes, _MIN_TENSOR_BYTES_BUDGET)
    if tensor_bytes > budget:
        raise CheckpointFormatError(
            f"{source}: its tensors would take {tensor_bytes} bytes, more than "
            f"{_MAX_TENSOR_BYTES_RATIO}x the {storage_bytes} bytes of the storages they view; refused "
            "before allocating (corrupt or crafted file?)")
    return list(spans.values())


def _fill_span(storage: _Storage, stream: IO[bytes], lo: int, hi: int, little_endian: bool, what: str) -> None:
    """Reads elements ``lo .. hi`` of ``storage`` from ``stream``, positioned at element ``lo``."""
    array = np.empty(hi - lo, dtype=storage.dtype)
    buffer = memoryview(array.view(np.uint8))
    got = 0
    while got < len(buffer):
        count = stream.readinto(buffer[got:got + _READ_CHUNK])  # zip entries read via a bytes copy
        if not count:
            raise CheckpointFormatError(
                f"{what}: expected {len(buffer)} bytes for elements {lo}..{hi} of {storage.numel} x "
                f"{storage.dtype}, found {got} (truncated file?)")
        got += count
    if little_endian != (sys.byteorder == "little") and array.itemsize > 1:
        array = array.view(f"u{array.itemsize}").byteswap().view(storage.dtype)
    storage.data, storage.start = array, lo


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _materialize(ref: _TensorRef, source: str) -> np.ndarray:
    """A tensor checked by :func:`_plan_reads` as its own C-contiguous array: the bytes read for it
    when it is the only reader of a contiguous span (no copy), else a fresh copy."""
    numel = math.prod(ref.size)
    if numel == 0:
        return np.zeros(ref.size, dtype=ref.storage.dtype)
    root, shift = ref.storage.root()
    if root.data is None:
        raise CheckpointFormatError(f"{source}: storage {root.key!r} was referenced but its bytes were never read")
    begin = shift + ref.offset - root.start
    if root.users == 1 and begin == 0 and root.data.size == numel and _is_contiguous(ref.size, ref.stride):
        return root.data.reshape(ref.size)
    flat = root.data[begin:]
    view = np.lib.stride_tricks.as_strided(
        flat, shape=ref.size, strides=tuple(s * flat.itemsize for s in ref.stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _materialize_tree(obj: Any, source: str) -> Any:
    if isinstance(obj, _TensorRef):
        return _materialize(obj, source)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize_tree(v, source)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialize_tree(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize_tree(v, source) for v in obj)
    return obj


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str, path: str) -> bool:
    """True for a little-endian archive (also when it has no ``byteorder`` entry)."""
    if prefix + "byteorder" not in archive.namelist():
        return True
    with archive.open(prefix + "byteorder") as entry:
        order = entry.read(16).decode(errors="replace").strip()
    if order not in ("little", "big"):
        raise CheckpointFormatError(f"{path}: unknown byteorder {order!r}")
    return order == "little"


def _check_zip_entry(archive: zipfile.ZipFile, entry: str, storage: _Storage, path: str) -> None:
    """The storage's zip entry must hold exactly the bytes it declares, stored uncompressed within the file."""
    try:
        info = archive.getinfo(entry)
    except KeyError:
        raise CheckpointFormatError(f"{path}: storage entry {entry!r} is missing") from None
    need = storage.numel * storage.dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointFormatError(
            f"{path}: storage entry {entry!r} is compressed; torch.save stores storages uncompressed, and a "
            "compressed entry can inflate far beyond the file's size. Re-save the state dict with torch.save")
    if info.file_size != need:
        raise CheckpointFormatError(
            f"{path}: storage entry {entry!r} holds {info.file_size} bytes, but its storage declares "
            f"{storage.numel} x {storage.dtype} = {need} bytes (corrupt or crafted file)")
    if info.header_offset + info.compress_size > os.path.getsize(path):
        raise CheckpointFormatError(f"{path}: storage entry {entry!r} runs past the end of the file (truncated?)")


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
        little_endian = _zip_byteorder(archive, prefix, path)
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise CheckpointFormatError(f"{path}: unexpected persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid
            key = str(key)
            if key not in storages:
                storage = _Storage(key, _storage_type(storage_type, path).dtype, _declared_numel(numel, key, path))
                _check_zip_entry(archive, f"{prefix}data/{key}", storage, path)
                storages[key] = storage
            return storages[key]

        inflated, on_disk = archive.getinfo(pickles[0]).file_size, os.path.getsize(path)
        if inflated > on_disk:
            raise CheckpointFormatError(
                f"{path}: entry {pickles[0]!r} inflates to {inflated} bytes, more than the {on_disk} of the "
                "whole file; torch.save never compresses, so this is a crafted or corrupt zip")
        with archive.open(pickles[0]) as stream:
            obj = _load(_RestrictedUnpickler(stream, path, load_storage), path)
        for storage, lo, hi in _plan_reads(obj, path):
            entry = f"{prefix}data/{storage.key}"
            with archive.open(entry) as data:
                data.seek(lo * storage.dtype.itemsize)
                _fill_span(storage, data, lo, hi, little_endian, f"{path}:{entry}")
        return _materialize_tree(obj, path)


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as stream:
        file_size = os.fstat(stream.fileno()).st_size

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
                f"{path}: not a PyTorch checkpoint: neither a zip archive nor a legacy torch pickle (magic "
                f"number {magic!r} != {_LEGACY_MAGIC:#x}); a plain pickle is not read here")
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
            root = storages.setdefault(root_key, _Storage(root_key, dtype, _declared_numel(numel, root_key, path)))
            if view is None:
                return root
            view_key, offset, view_size = view
            view_key = str(view_key)
            return storages.setdefault(view_key, _Storage(view_key, dtype, _declared_numel(view_size, view_key, path),
                                                          base=root, offset=int(offset)))

        obj = _load(_RestrictedUnpickler(stream, path, load_storage), path)
        keys = header_pickle("storage key list")
        if not isinstance(keys, list):
            raise CheckpointFormatError(f"{path}: the legacy storage key list is a {type(keys).__name__}")
        spans = {storage.key: (lo, hi) for storage, lo, hi in _plan_reads(obj, path)}
        for key in map(str, keys):
            storage = storages.get(key)
            if storage is None:
                raise CheckpointFormatError(f"{path}: storage key {key!r} listed but never referenced")
            header = stream.read(8)
            if len(header) != 8:
                raise CheckpointFormatError(f"{path}: file ends before storage {key!r}")
            numel = int.from_bytes(header, "little" if little_endian else "big", signed=True)
            if numel != storage.numel:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} holds {numel} elements, but the pickle declared {storage.numel}")
            start = stream.tell()
            end = start + numel * storage.dtype.itemsize
            if end > file_size:
                raise CheckpointFormatError(
                    f"{path}: storage {key!r} needs {end - start} bytes, but the file ends {file_size - start} "
                    "bytes after its start (truncated?)")
            if key in spans:
                lo, hi = spans[key]
                stream.seek(start + lo * storage.dtype.itemsize)
                _fill_span(storage, stream, lo, hi, little_endian, f"{path}: storage {key!r}")
            stream.seek(end)
    return _materialize_tree(obj, path)


def read_torch_file(path: str | os.PathLike) -> Any:
    """Reads a whole ``torch.save`` file safely; tensors come back as numpy arrays.

    Unlike :func:`load_torch_state_dict`, the top-level object is returned as saved (e.g. a dict with
    ``"epoch"``, ``"state_dict"``, ``"optimizer"`` entries). Every tensor is checked against the size
    its storage declares, and every storage against the bytes in the file, before anything is
    allocated; only the bytes that tensors use are read.

    Example::

        ckpt = read_torch_file("checkpoint.pt")
        ckpt["epoch"], ckpt["state_dict"]["fc.weight"].dtype
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no PyTorch checkpoint at {path!r}")
    if tarfile.is_tarfile(path) and not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path}: tar-format checkpoint from PyTorch < 0.4 is not supported; load it once with that "
            "PyTorch and re-save it with torch.save(model.state_dict(), path)")
    try:
        return _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except RecursionError:
        raise CheckpointFormatError(f"{path}: objects nested too deeply or containing themselves "
                                    "(corrupt or crafted file)") from None


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
