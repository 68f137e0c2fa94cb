"""Hand-made PyTorch checkpoints for the reader's safety tests: the pickle references storages by
persistent id as ``torch.save`` writes it, with sizes, strides and storage entries chosen by the test."""
import collections
import io
import pickle
import zipfile

import torch


class FakeStorage:
    """A storage as the pickle declares it: a key, an element count and a torch storage type."""

    def __init__(self, key, numel, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class FakeTensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _StatePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return "storage", obj.storage_type, obj.key, "cpu", obj.numel
        return None


def crafted_zip(path, state, entries, compression=zipfile.ZIP_STORED):
    """Writes a torch-format zip whose data.pkl pickles ``state`` and whose storages hold ``entries``
    (``{key: bytes}``); returns ``path``."""
    payload = io.BytesIO()
    _StatePickler(payload, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, data in entries.items():
            archive.writestr(f"archive/data/{key}", data, compress_type=compression)
    return path
