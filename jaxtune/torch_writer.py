"""Write PyTorch ``.pth`` state dicts from numpy arrays without importing torch.

The file is what ``torch.save(state_dict, path)`` writes (the zip format, PyTorch >= 1.6): one
``archive/data.pkl`` pickle that maps each name to ``torch._utils._rebuild_tensor_v2(storage, 0,
size, stride, False, OrderedDict())``, one raw little-endian ``archive/data/<key>`` entry per tensor,
and ``archive/byteorder`` / ``archive/version`` records. The pickle names only the globals that
``torch.load(path, weights_only=True)`` allows (the tensor rebuilder, the storage types and
``collections.OrderedDict``), so PyTorch users load it without unpickling arbitrary code, and
jaxtune reads it back with :func:`jaxtune.torch_checkpoint.load_torch_state_dict`.

Example::

    from jaxtune.torch_writer import save_torch_state_dict
    save_torch_state_dict({"fc.weight": np.ones((2, 3), np.float32)}, "model.pth")
    # torch: module.load_state_dict(torch.load("model.pth", weights_only=True))
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

__all__ = ["save_torch_state_dict"]

_ARCHIVE = "archive"
# numpy dtype -> the torch storage type whose elements it holds.
_STORAGE_NAMES = {
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def _int(value: int) -> bytes:
    if 0 <= value < 2 ** 31:
        return pickle.BININT + value.to_bytes(4, "little")
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _tuple(items: list[bytes]) -> bytes:
    return pickle.EMPTY_TUPLE if not items else pickle.MARK + b"".join(items) + pickle.TUPLE


def _tensor(key: str, array: np.ndarray) -> bytes:
    """Pickle opcodes for one contiguous tensor whose storage is entry ``data/<key>``."""
    storage = _tuple([_str("storage"), _global("torch", _STORAGE_NAMES[array.dtype]), _str(key), _str("cpu"),
                      _int(array.size)])
    strides = [s // array.itemsize for s in array.strides]
    args = [storage + pickle.BINPERSID, _int(0), _tuple([_int(n) for n in array.shape]),
            _tuple([_int(s) for s in strides]), pickle.NEWFALSE,
            _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(args) + pickle.REDUCE


def _state_pickle(arrays: Mapping[str, np.ndarray]) -> bytes:
    items = b"".join(_str(name) + _tensor(str(i), array) for i, (name, array) in enumerate(arrays.items()))
    body = pickle.EMPTY_DICT + (pickle.MARK + items + pickle.SETITEMS if arrays else b"")
    return pickle.PROTO + bytes([2]) + body + pickle.STOP


def _little_endian_c_array(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    if array.dtype not in _STORAGE_NAMES:
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which has no torch storage type; "
                        f"supported: {', '.join(sorted(str(d) for d in _STORAGE_NAMES))}")
    return array


def save_torch_state_dict(tensors: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Writes ``{name: array}`` as a PyTorch state dict file that ``torch.load(path, weights_only=True)``
    reads (a dict of CPU tensors with the arrays' shapes, dtypes and values). Returns ``path``.

    Example::

        save_torch_state_dict({"classifier.1.bias": np.zeros(10, np.float32)}, "out/model.pth")
    """
    arrays = {str(name): _little_endian_c_array(str(name), value) for name, value in tensors.items()}
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{_ARCHIVE}/data.pkl", _state_pickle(arrays))
        archive.writestr(f"{_ARCHIVE}/byteorder", "little")
        for i, array in enumerate(arrays.values()):
            archive.writestr(f"{_ARCHIVE}/data/{i}", array.tobytes())
        archive.writestr(f"{_ARCHIVE}/version", "3\n")
    return path
