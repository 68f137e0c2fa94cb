"""Broken, truncated and crafted files: every reader refuses them with an error that names the file
(and the tensor or line at fault), before allocating what the file only pretends to hold.

Each row of FAULTS writes one bad file into ``tmp_path`` and returns it with the call that reads it.
"""
import json
import re
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _crafted_torch import FakeStorage, FakeTensor, crafted_zip
from jaxtune import hub
from jaxtune.data.sources import read_text_classification_csv, read_token_tag_file
from jaxtune.torch_checkpoint import CheckpointFormatError, load_torch_state_dict

ONE_FLOAT = np.ones(1, np.float32).tobytes()


# --- PyTorch .pth -------------------------------------------------------------------------------

def _pth(tmp_path, state, entries, **kwargs):
    path = crafted_zip(tmp_path / "bad.pth", state, entries, **kwargs)
    return path, lambda: load_torch_state_dict(path)


def pth_stride_zero_expansion(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 1), (10 ** 6, 10 ** 6), (0, 0))}, {"0": ONE_FLOAT})


def pth_tensor_beyond_storage(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 2), (2,), (2,))}, {"0": bytes(8)})


def pth_entry_larger_than_declared(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 1), (1,), (1,))}, {"0": bytes(1 << 16)})


def pth_declared_count_beyond_entry(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 10 ** 12), (10 ** 12,), (1,))}, {"0": ONE_FLOAT})


def pth_compressed_entry(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 1 << 16), (1,), (1,))}, {"0": bytes(1 << 18)},
                compression=zipfile.ZIP_DEFLATED)


def pth_missing_storage_entry(tmp_path):
    return _pth(tmp_path, {"w": FakeTensor(FakeStorage("0", 1), (1,), (1,))}, {})


def pth_pickle_inflating_beyond_the_file(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + bytes(8 << 20))   # 8 MB of zeros, ~8 KB on disk
    return path, lambda: load_torch_state_dict(path)


def pth_truncated_legacy(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(16)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-8])
    return path, lambda: load_torch_state_dict(path)


# --- safetensors --------------------------------------------------------------------------------

def _safetensors(tmp_path, raw: bytes):
    path = tmp_path / hub.SAFETENSORS_NAME
    path.write_bytes(raw)
    return path, lambda: hub.read_weights(tmp_path)


def _with_header(header, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def safetensors_truncated_header(tmp_path):
    return _safetensors(tmp_path, b"\x10\x00\x00")


def safetensors_header_length_beyond_file(tmp_path):
    return _safetensors(tmp_path, (10 ** 6).to_bytes(8, "little") + b"{}")


def safetensors_header_not_json(tmp_path):
    return _safetensors(tmp_path, (5).to_bytes(8, "little") + b"{nope")


def safetensors_offsets_beyond_file(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}
    return _safetensors(tmp_path, _with_header(header, bytes(12)))


def safetensors_unknown_dtype(tmp_path):
    header = {"a": {"dtype": "Q7", "shape": [3], "data_offsets": [0, 12]}}
    return _safetensors(tmp_path, _with_header(header, bytes(12)))


def safetensors_shape_and_offsets_disagree(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}
    return _safetensors(tmp_path, _with_header(header, bytes(12)))


# --- config.json and the sharded index -----------------------------------------------------------

def _config(tmp_path, raw: bytes):
    path = tmp_path / hub.CONFIG_NAME
    path.write_bytes(raw)
    return path, lambda: hub.read_config(tmp_path)


def config_not_json(tmp_path):
    return _config(tmp_path, b'{"model_type": "bert",\n "hidden_size": }')


def config_not_an_object(tmp_path):
    return _config(tmp_path, b'["bert"]')


def config_without_model_type(tmp_path):
    return _config(tmp_path, b'{"hidden_size": 8}')


def config_not_utf8(tmp_path):
    return _config(tmp_path, b'{"model_type": "b\xe9rt"}')


def _index(tmp_path, raw: bytes):
    path = tmp_path / hub.SAFETENSORS_INDEX_NAME
    path.write_bytes(raw)
    return path, lambda: hub.read_weights(tmp_path)


def index_not_json(tmp_path):
    return _index(tmp_path, b'{"weight_map": ')


def index_points_to_a_missing_shard(tmp_path):
    (tmp_path / "model-1-of-2.safetensors").write_bytes(_with_header({}, b""))
    return _index(tmp_path, json.dumps({"weight_map": {"a.weight": "model-1-of-2.safetensors",
                                                       "b.weight": "model-2-of-2.safetensors"}}).encode())


def index_points_outside_its_directory(tmp_path):
    return _index(tmp_path, json.dumps({"weight_map": {"a.weight": "../elsewhere.safetensors"}}).encode())


# --- text files ---------------------------------------------------------------------------------

def _text(tmp_path, name, raw: bytes, read):
    path = tmp_path / name
    path.write_bytes(raw)
    return path, lambda: read(path)


def csv_not_utf8(tmp_path):
    return _text(tmp_path, "reviews.csv", b"text,label\nfine,pos\ncaf\xe9 au lait,neg\n",
                 lambda p: read_text_classification_csv(p, ["neg", "pos"]))


def csv_not_utf8_far_down(tmp_path):  # past the first read-ahead chunk of the text layer
    rows = b"".join(b"text number %d,pos\n" % i for i in range(3000))
    return _text(tmp_path, "long.csv", b"text,label\n" + rows + b"bad \xff byte,neg\n",
                 lambda p: read_text_classification_csv(p, ["neg", "pos"]))


def token_tags_not_utf8(tmp_path):
    return _text(tmp_path, "ner.txt", b"ok\tO\n\ncaf\xc3\tO\n",
                 lambda p: read_token_tag_file(p, ["O"]))


def labelled_csv_not_utf8(tmp_path):
    from jaxtune.data.tfds_local import read_labelled_records

    return _text(tmp_path, "pairs.csv", b"text,label\nfine,pos\ncaf\xe9,neg\n",
                 lambda p: read_labelled_records(p, ["text"], "label", ["neg", "pos"]))


def labelled_jsonl_not_utf8(tmp_path):
    from jaxtune.data.tfds_local import read_labelled_records

    return _text(tmp_path, "pairs.jsonl", b'{"text": "ok", "label": "pos"}\n{"text": "caf\xe9", "label": "neg"}\n',
                 lambda p: read_labelled_records(p, ["text"], "label", ["neg", "pos"]))


# (file maker, error type, what the message must say besides the file's path)
FAULTS = [
    (pth_stride_zero_expansion, CheckpointFormatError,
     r"tensor \['w'\] .* declares 1000000000000 elements, more than the 1 its storage '0' holds; refused before"),
    (pth_tensor_beyond_storage, CheckpointFormatError,
     r"tensor \['w'\] .* reaches element 2 of storage '0', which declares only 2"),
    (pth_entry_larger_than_declared, CheckpointFormatError,
     r"storage entry 'archive/data/0' holds 65536 bytes, but its storage declares 1 x float32 = 4 bytes"),
    (pth_declared_count_beyond_entry, CheckpointFormatError,
     r"'archive/data/0' holds 4 bytes, but its storage declares 1000000000000 x float32"),
    (pth_compressed_entry, CheckpointFormatError, r"storage entry 'archive/data/0' is compressed"),
    (pth_missing_storage_entry, CheckpointFormatError, r"storage entry 'archive/data/0' is missing"),
    (pth_pickle_inflating_beyond_the_file, CheckpointFormatError,
     r"entry 'archive/data.pkl' inflates to 8388610 bytes, more than the \d+ of the whole file"),
    (pth_truncated_legacy, CheckpointFormatError, r"storage '.*' needs 64 bytes, but the file ends 56 bytes"),
    (safetensors_truncated_header, ValueError, r"truncated safetensors file of 3 bytes"),
    (safetensors_header_length_beyond_file, ValueError, r"header length 1000000 goes beyond the file's 10 bytes"),
    (safetensors_header_not_json, ValueError, r"the safetensors header is not valid JSON"),
    (safetensors_offsets_beyond_file, ValueError,
     r"tensor 'a': data_offsets \[0, 400\] go beyond the 12 data bytes"),
    (safetensors_unknown_dtype, ValueError,
     r"tensor 'a' has dtype 'Q7', which jaxtune cannot read; known dtypes: BF16"),
    (safetensors_shape_and_offsets_disagree, ValueError, r"tensor 'a': shape \[4\] of F32 needs 16 bytes"),
    (config_not_json, ValueError, r"not valid JSON \(Expecting value at line 2, column 17\)"),
    (config_not_an_object, ValueError, r"expected a JSON object of model settings, found a JSON list"),
    (config_without_model_type, ValueError, r"no 'model_type' key; .*supported: bert, "),
    (config_not_utf8, ValueError, r"not UTF-8 text \(byte 17\)"),
    (index_not_json, ValueError, r"not valid JSON"),
    (index_points_to_a_missing_shard, FileNotFoundError,
     r"lists shards missing from .*\['model-2-of-2.safetensors'\] \(e.g. tensor 'b.weight' is in"),
    (index_points_outside_its_directory, ValueError,
     r"'\.\./elsewhere.safetensors'\} do not name a shard file .*\(plain file names only\)"),
    (csv_not_utf8, ValueError, r", line 3: not valid utf-8 text \(byte 0xe9 at column 4: invalid continuation"),
    (csv_not_utf8_far_down, ValueError, r", line 3002: not valid utf-8 text \(byte 0xff at column 5"),
    (token_tags_not_utf8, ValueError, r", line 3: not valid utf-8 text \(byte 0xc3 at column 4.*encoding='latin-1'"),
    (labelled_csv_not_utf8, ValueError, r", line 3: not valid utf-8 text"),
    (labelled_jsonl_not_utf8, ValueError, r", line 2: not valid utf-8 text"),
]


@pytest.mark.parametrize("make, error, match", FAULTS, ids=[f[0].__name__ for f in FAULTS])
def test_bad_file_is_refused_naming_it(tmp_path, make, error, match):
    path, read = make(tmp_path)
    with pytest.raises(error) as caught:
        read()
    message = str(caught.value)
    assert str(path) in message, message
    assert re.search(match, message), message


def test_good_files_still_read(tmp_path):
    """The checks do not refuse what the libraries write (safetensors, config, index, text)."""
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch_file

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 2), np.int64),
               "c": np.array(1.5, np.float16)}
    save_file(tensors, str(tmp_path / "model-1.safetensors"), metadata={"format": "pt"})
    save_torch_file({"d": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, str(tmp_path / "model-2.safetensors"))
    index = {"metadata": {}, "weight_map": {**{name: "model-1.safetensors" for name in tensors},
                                            "d": "model-2.safetensors"}}
    (tmp_path / hub.SAFETENSORS_INDEX_NAME).write_text(json.dumps(index))
    (tmp_path / hub.CONFIG_NAME).write_text(json.dumps({"model_type": "bert"}))
    loaded = hub.read_weights(tmp_path)
    assert set(loaded) == set(tensors) | {"d"}
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    assert np.array_equal(np.asarray(loaded["d"], np.float32), [1.5, -2.0])      # bfloat16, exact
    assert hub.read_config(tmp_path) == {"model_type": "bert"}
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9,pos\n")
    assert read_text_classification_csv(latin, ["pos"], encoding="latin-1").texts == ("café",)
