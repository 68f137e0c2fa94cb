"""The torch-free PyTorch checkpoint reader against files written by ``torch.save`` (torch 2.x, CPU).

Values must equal PyTorch's exactly (bit for bit, dtype for dtype); malicious pickles must be refused
without running anything.
"""
import io
import os
import pickle
import tarfile
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _crafted_torch import FakeStorage, FakeTensor, crafted_zip

from jaxtune.torch_checkpoint import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_torch_state_dict,
    read_torch_file,
    unwrap_state_dict,
)

NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
                torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
                torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_}


def _tensors():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "fp32": torch.randn(3, 5, generator=gen),
        "fp16": torch.randn(7, generator=gen).half(),
        "bf16": torch.randn(2, 3, generator=gen).bfloat16(),
        "fp64": torch.randn(2, generator=gen).double(),
        "int64": torch.arange(-3, 9).reshape(3, 4),
        "int32": torch.tensor([1, -2, 2 ** 30], dtype=torch.int32),
        "int16": torch.tensor([-7, 300], dtype=torch.int16),
        "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "param": torch.nn.Parameter(torch.randn(3, generator=gen)),
        "base": base,
        "transposed": base.t(),                   # shares base's storage, strides (1, 6)
        "sliced": base[1:3, ::2],                 # storage offset 6, strides (6, 2)
        "row": base[2],                           # another view of the same storage
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "fp16_nc": torch.randn(5, 4, generator=gen).half()[:, 1::2],
    }


def _assert_equal(got: np.ndarray, ref: "torch.Tensor", name: str):
    ref = ref.detach()
    assert got.dtype == np.dtype(NUMPY_DTYPES[ref.dtype]), name
    assert got.shape == tuple(ref.shape), name
    assert got.flags["C_CONTIGUOUS"], name
    expected = ref.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if ref.dtype == torch.bfloat16 else ref.numpy()
    assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), name    # bit-exact


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_values_and_dtypes_equal_torch_exactly(tmp_path, zip_format):
    tensors = _tensors()
    path = tmp_path / "weights.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    state = load_torch_state_dict(path)
    assert list(state) == list(tensors)
    for name, ref in tensors.items():
        _assert_equal(state[name], ref, name)
    # Arrays built from a shared storage are independent copies.
    state["base"][0, 0] = 123.0
    assert state["transposed"][0, 0] == tensors["base"][0, 0].item()


def test_module_state_dict_ordered_with_metadata(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    module[1].running_mean.uniform_(-1, 1)
    path = tmp_path / "module.pth"
    torch.save(module.state_dict(), path)
    state = load_torch_state_dict(path)
    reference = module.state_dict()
    assert list(state) == list(reference)
    for name, ref in reference.items():
        _assert_equal(state[name], ref, name)


def test_containers_and_module_prefix_are_unwrapped(tmp_path):
    weight = torch.randn(2, 2)
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, "state_dict": {"module.fc.weight": weight, "module.fc.bias": torch.zeros(2)},
                "optimizer": {"lr": 0.1}}, path)
    state = load_torch_state_dict(path)
    assert sorted(state) == ["fc.bias", "fc.weight"]
    np.testing.assert_array_equal(state["fc.weight"], weight.numpy())
    assert read_torch_file(path)["epoch"] == 7
    assert list(unwrap_state_dict({"model": {"w": np.ones(1)}})) == ["w"]
    with pytest.raises(CheckpointFormatError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3, "best": 0.5})


class _Exploit:
    """Unpickling this would run ``os.system`` and create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _torch_like_zip(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def test_malicious_zip_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _torch_like_zip(path, pickle.dumps({"weight": _Exploit(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_torch_state_dict(path)
    message = str(err.value)
    assert f"{os.system.__module__}.system" in message and str(path) in message
    assert not marker.exists()


def test_malicious_legacy_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pt"
    path.write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"\.system"):
        load_torch_state_dict(path)
    assert not marker.exists()


def test_pickle_cannot_tamper_with_storage_types(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"dtype": 1} on it: would corrupt later loads if allowed.
    path = tmp_path / "tamper.pth"
    _torch_like_zip(path, b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb.")
    with pytest.raises(UnsafeCheckpointError, match="set the state"):
        load_torch_state_dict(path)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert load_torch_state_dict(good)["w"].dtype == np.float32


def test_whole_module_pickle_is_refused_naming_the_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        load_torch_state_dict(path)


def test_files_that_are_not_torch_checkpoints(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        load_torch_state_dict(junk)

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="magic number"):
        load_torch_state_dict(plain)

    tar = tmp_path / "old.tar"
    with tarfile.open(tar, "w") as archive:
        info = tarfile.TarInfo("sys_info")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"1234"))
    with pytest.raises(CheckpointFormatError, match="tar-format"):
        load_torch_state_dict(tar)

    no_pickle = tmp_path / "other.zip"
    with zipfile.ZipFile(no_pickle, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        load_torch_state_dict(no_pickle)

    with pytest.raises(FileNotFoundError, match="no PyTorch checkpoint"):
        load_torch_state_dict(tmp_path / "missing.pt")


def test_truncated_storage_is_reported(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.randn(8)}, path)
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:5] if name.endswith("data/0") else data)
    with pytest.raises(CheckpointFormatError, match=r"'w/data/0' holds 5 bytes, .* = 32 bytes"):
        load_torch_state_dict(broken)


def testcrafted_zip_with_a_legit_view_reads_like_torch(tmp_path):
    storage = FakeStorage("0", 6)
    path = crafted_zip(tmp_path / "ok.pth", {"w": FakeTensor(storage, (2, 2), (1, 3), offset=1)},
                        {"0": np.arange(6, dtype=np.float32).tobytes()})
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], [[1, 4], [2, 5]])   # exact, float32


def test_stride_zero_expansion_is_refused_before_allocating(tmp_path):
    # One float in the file, a (1000, 1000) tensor over it: a 4 MB array from 4 bytes (the same trick
    # with (10**6, 10**6) asks for 4 TB).
    storage = FakeStorage("0", 1)
    path = crafted_zip(tmp_path / "expand.pth", {"w": FakeTensor(storage, (1000, 1000), (0, 0))},
                        {"0": np.ones(1, np.float32).tobytes()})
    with pytest.raises(CheckpointFormatError, match=r"tensor \['w'\] .* 1000000 elements, more than the 1 "
                                                    r"its storage '0' holds; refused before allocating") as err:
        load_torch_state_dict(path)
    assert str(path) in str(err.value)


def test_tensor_beyond_its_storage_is_refused(tmp_path):
    storage = FakeStorage("0", 4)
    path = crafted_zip(tmp_path / "beyond.pth", {"w": FakeTensor(storage, (3,), (2,))},
                        {"0": np.ones(4, np.float32).tobytes()})
    with pytest.raises(CheckpointFormatError, match=r"beyond.pth: tensor \['w'\] .* reaches element 4 of "
                                                    r"storage '0', which declares only 4"):
        load_torch_state_dict(path)


def test_storage_entry_larger_than_declared_is_refused(tmp_path):
    storage = FakeStorage("0", 4)
    path = crafted_zip(tmp_path / "big_entry.pth", {"w": FakeTensor(storage, (4,), (1,))},
                        {"0": bytes(1 << 20)})
    with pytest.raises(CheckpointFormatError, match=r"big_entry.pth: storage entry 'archive/data/0' holds "
                                                    r"1048576 bytes, but its storage declares 4 x float32 = 16"):
        load_torch_state_dict(path)


def test_declared_count_beyond_the_entry_is_refused_before_reading(tmp_path):
    storage = FakeStorage("0", 10 ** 12)      # 4 TB declared, 16 bytes in the file
    path = crafted_zip(tmp_path / "short_entry.pth", {"w": FakeTensor(storage, (10 ** 12,), (1,))},
                        {"0": np.ones(4, np.float32).tobytes()})
    with pytest.raises(CheckpointFormatError, match=r"'archive/data/0' holds 16 bytes, but its storage declares "
                                                    r"1000000000000 x float32"):
        load_torch_state_dict(path)


def test_compressed_storage_entry_is_refused(tmp_path):
    # Deflated zeros: 64 KB on disk could declare gigabytes; torch.save never compresses storages.
    storage = FakeStorage("0", 1 << 20)
    path = crafted_zip(tmp_path / "deflated.pth", {"w": FakeTensor(storage, (4,), (1,))},
                        {"0": bytes(4 << 20)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointFormatError, match=r"deflated.pth: storage entry 'archive/data/0' is compressed"):
        load_torch_state_dict(path)


def test_many_views_of_one_storage_are_refused_before_allocating(tmp_path):
    # One 1 MB storage, viewed whole 64 times through a memoised tensor: 64 MB of arrays from 1 MB.
    storage = FakeStorage("0", 1 << 18)
    whole = FakeTensor(storage, (1 << 18,), (1,))
    path = crafted_zip(tmp_path / "views.pth", {"w": [whole] * 64}, {"0": bytes(1 << 20)})
    with pytest.raises(CheckpointFormatError, match=r"views.pth: its tensors would take 67108864 bytes, more "
                                                    r"than 16x the 1048576 bytes"):
        read_torch_file(path)


def test_self_containing_pickle_is_a_format_error(tmp_path):
    loop = []
    loop.append(loop)
    path = crafted_zip(tmp_path / "loop.pth", {"w": loop}, {})
    with pytest.raises(CheckpointFormatError, match=r"loop.pth: objects nested too deeply or containing themselves"):
        read_torch_file(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_only_the_bytes_a_tensor_needs_are_read(tmp_path, zip_format):
    # A 16 MB storage of which the file's only tensor is a 3-element slice (torch.save keeps the whole
    # storage): loading must not hold the storage in memory.
    big = torch.arange(1 << 22, dtype=torch.float32)
    path = tmp_path / "slice.pt"
    torch.save({"w": big[1000:1003]}, path, _use_new_zipfile_serialization=zip_format)
    tracemalloc.start()
    try:
        state = load_torch_state_dict(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(state["w"], np.float32([1000, 1001, 1002]))
    assert peak < 1 << 20, f"peak {peak} bytes while reading 12 bytes of a 16 MB storage"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_tensor_alone_on_its_storage_is_read_without_a_second_copy(tmp_path, zip_format):
    path = tmp_path / "whole.pt"
    torch.save({"w": torch.arange(1 << 22, dtype=torch.float32).reshape(1024, 4096)}, path,
               _use_new_zipfile_serialization=zip_format)
    tracemalloc.start()
    try:
        state = load_torch_state_dict(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state["w"].flags["C_CONTIGUOUS"] and state["w"].flags["WRITEABLE"]
    assert state["w"][1, 2] == 4098.0
    assert peak < 1.25 * (16 << 20), f"peak {peak} bytes for a 16 MB tensor"


def test_legacy_storage_whose_size_disagrees_with_the_pickle_is_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    raw = bytearray(path.read_bytes())
    header = (4).to_bytes(8, "little") + np.ones(4, np.float32).tobytes()
    at = raw.rindex(header)
    raw[at:at + 8] = (10 ** 9).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match=r"legacy.pt: storage '.*' holds 1000000000 elements, but the "
                                                    r"pickle declared 4"):
        load_torch_state_dict(path)


def test_shipped_torchvision_weights_match_torch_load():
    from jaxtune.models import mobilenet

    path = mobilenet._cnn.find_package_file(mobilenet.WEIGHTS_PACKAGE, mobilenet.WEIGHTS_FILE, mobilenet.WEIGHTS_PIP)
    state = load_torch_state_dict(path)            # a legacy (PyTorch < 1.6) pickle stream
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(reference)
    for name, ref in reference.items():
        _assert_equal(state[name], ref, name)
