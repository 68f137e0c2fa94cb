"""The runner's ``rehearsal:`` section: an old task's rows and head trained beside the new task.

A tiny random BERT (conftest's ``tiny_model_dir``) with a 3-label tweet head plays task A's export; task
B is WNUT NER on a few dozen real sentences, rehearsing a few dozen real tweets.
"""
import math
import os
import shutil
from fractions import Fraction

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import jaxtune as jt
from jaxtune.config import ConfigError
from jaxtune.errors import UserError
from jaxtune.experiment import build, finetune, prepare_data
from jaxtune.member_runs import member_blocker
from jaxtune.models import bert
from jaxtune.run_data import PreparedData
from jaxtune.run_rehearsal import OldTask, old_data_config
from jaxtune.rundir import run_fingerprint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TWEET_LABELS = ("negative", "neutral", "positive")


def _export(directory, variables, config, task):
    jt.save_pretrained(variables, config, directory, task=task, labels=TWEET_LABELS if task else None)
    for name in TOKENIZER_FILES:
        shutil.copy(jt.minilm_path() / name, directory / name)
    return str(directory)


@pytest.fixture(scope="module")
def old_export(tiny_model_dir, tmp_path_factory):
    """Task A's export: the tiny BERT with a (random) 3-label sequence-classification head."""
    model, variables = jt.from_pretrained(tiny_model_dir, task="sequence_classification", num_labels=3)
    return _export(tmp_path_factory.mktemp("A_export"), variables, model.config, "sequence_classification")


@pytest.fixture(scope="module")
def wnut(old_export):
    cfg = jt.load_config(None, ["data.dataset=wnut_ner", "data.max_length=16", "data.train_limit=48",
                                "data.eval_limit=16", "data.test_limit=16"])
    return prepare_data(cfg.data, old_export)


def _config(model_dir, out, name, head_from, **rehearsal):
    return {
        "name": name, "output_dir": str(out), "model": {"path": model_dir},
        "data": {"dataset": "wnut_ner", "max_length": 16, "batch_size": 8, "eval_batch_size": 32,
                 "train_limit": 48, "eval_limit": 16, "test_limit": 16},
        "optim": {"learning_rate": 1e-2, "schedule": "constant"},
        "train": {"max_steps": 4, "eval_every": 2, "log_every": 1, "progress": False},
        "early_stopping": {"enabled": False},
        "checkpoint": {"export_best_hf": True},
        "rehearsal": {"data": {"dataset": "tweet_sentiment", "max_length": 16, "eval_batch_size": 32,
                               "train_limit": 40, "eval_limit": 16, "test_limit": 16},
                      "fraction": 0.2, "head_from": head_from, **rehearsal},
    }


def _records(run_dir, split):
    return [r for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == split]


def test_rehearsal_run_scores_both_tasks_resumes_exactly_and_exports_without_the_old_head(old_export, wnut, tmp_path):
    straight = finetune(_config(old_export, tmp_path, "straight", old_export), data=wnut)
    # Both tasks are scored at every evaluation, and on the test split; result.json keeps them.
    validation = _records(straight.paths["run_dir"], "validation")
    assert [r["step"] for r in validation] == [2, 4]
    assert all({"entity_f1", "old_accuracy", "old_loss"} <= set(r) for r in validation)
    assert {"entity_f1", "old_accuracy", "old_macro_f1"} <= set(jt.read_result(straight.paths["run_dir"]).test_metrics)
    assert 0.0 <= straight.test_metrics["old_accuracy"] <= 1.0

    # Resume: 2 steps, then the same run to 4; which old rows a step takes depends on the step alone.
    finetune(_config(old_export, tmp_path, "resumed", old_export), ["train.max_steps=2"], data=wnut)
    resumed = finetune(_config(old_export, tmp_path, "resumed", old_export), data=wnut)
    assert [(r["step"], r["loss"]) for r in _records(resumed.paths["run_dir"], "train")] == \
           [(r["step"], r["loss"]) for r in _records(straight.paths["run_dir"], "train")]
    assert resumed.test_metrics == straight.test_metrics

    # The old head trained (under params["rehearsal"]); the export is B's model alone.
    setup = build(_config(old_export, tmp_path, "template", old_export), data=wnut)
    with jt.Checkpointer(os.path.join(straight.paths["run_dir"], "checkpoints")) as ckpt:
        trained = ckpt.restore(straight.best_step, template=setup.initial_state)[0].params
    start = setup.initial_state.params
    assert not np.allclose(trained["rehearsal"]["classifier"]["kernel"], start["rehearsal"]["classifier"]["kernel"])
    assert set(trained["rehearsal"]) == {"bert", "classifier"} and set(trained["rehearsal"]["bert"]) == {"pooler"}
    tensors = load_file(os.path.join(straight.paths["export"], "model.safetensors"))
    assert not any("pooler" in k or "rehearsal" in k for k in tensors)
    _, exported, report = jt.from_pretrained(straight.paths["export"], task="token_classification", return_report=True)
    assert report.initialized == ()
    np.testing.assert_array_equal(exported["params"]["classifier"]["kernel"], trained["classifier"]["kernel"])


def _old_task(fraction, batch_size, n=10, seed=0):
    train = [{"x": np.float32(i), "labels": np.int32(i % 3)} for i in range(n)]
    data = PreparedData("sequence_classification", train, [], [], TWEET_LABELS, None, 0, "")
    rows = math.ceil(batch_size * fraction / (1 - fraction))
    return OldTask(None, None, data, frozenset(), fraction, batch_size, rows, seed, 8)


def test_old_rows_per_step_are_an_exact_share_and_a_pure_function_of_seed_and_step():
    old = _old_task(Fraction(1, 20), batch_size=16)          # 5%: 16/19 old rows per step
    assert old.rows == 1
    counts = [old.count_before(t + 1) - old.count_before(t) for t in range(190)]
    assert set(counts) == {0, 1} and sum(counts) == 160      # 160 / (160 + 190 * 16) = 5% exactly
    assert [old.count_before(t + 1) - old.count_before(t) for t in range(50)] == \
           [old.batch(t)["example_mask"].sum() for t in range(50)]
    every = _old_task(Fraction(1, 5), batch_size=16)           # 20%: 4 old rows with every 16 new ones
    assert every.rows == 4 and all(every.batch(t)["example_mask"].all() for t in range(10))
    # Pass after pass over the old examples, each pass a new seeded order; the same for the same seed.
    seen = [every.example(c) for c in range(30)]
    assert all(sorted(seen[i:i + 10]) == list(range(10)) for i in (0, 10, 20)) and seen[:10] != seen[10:20]
    assert seen == [_old_task(Fraction(1, 5), 16).example(c) for c in range(30)]
    assert seen != [_old_task(Fraction(1, 5), 16, seed=1).example(c) for c in range(30)]
    np.testing.assert_array_equal(every.batch(3)["x"], [float(every.example(c)) for c in range(12, 16)])


@pytest.mark.parametrize("overrides, match", [
    (["rehearsal.fractoin=0.1"], r"unknown key\(s\) rehearsal.fractoin; valid keys of rehearsal: data, fraction"),
    (["rehearsal.head_from=x", "rehearsal.data.datset=snli"], r"unknown key\(s\) rehearsal.data.datset"),
    (["rehearsal.head_from=x", "rehearsal.fraction=0"], "rehearsal.fraction"),
    (["rehearsal.head_from=x", "rehearsal.fraction=1.0"], "rehearsal.fraction"),
    (["rehearsal.fraction=0.1"], "rehearsal.head_from is empty"),
    (["rehearsal.head_from=x", "rehearsal.data=missing.yaml"], "rehearsal.data 'missing.yaml' is not a config file"),
    (["rehearsal.head_from=x", "rehearsal.data.train_limit=0"], "rehearsal.data.train_limit"),
    (["rehearsal.head_from=x", "train.parallel=dp"], "rehearsal with train.parallel='dp' is not supported"),
    (["rehearsal.head_from=x", 'optim.rules=[{pattern: ".*/query/kernel", lora: {rank: 2}}, {pattern: ".*"}]'],
     "rehearsal with LoRA rules is not supported"),
])
def test_bad_rehearsal_sections_fail_when_the_config_loads(overrides, match):
    with pytest.raises(ConfigError, match=match):
        jt.load_config(None, overrides)


def test_rehearsal_section_from_a_config_file_and_as_a_members_blocker(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("name: A\ndata: {dataset: tweet_sentiment, train_limit: 7}\n")
    cfg = jt.load_config(None, ["rehearsal.head_from=x", f"rehearsal.data={old}"])
    assert cfg.rehearsal.data == str(old) and cfg.rehearsal.fraction == 0.05
    assert old_data_config(cfg.rehearsal.data).train_limit == 7
    assert member_blocker(cfg).startswith("rehearsal")
    # A null section is not part of the fingerprint: runs from before rehearsal existed keep theirs.
    assert not any(k.startswith("rehearsal") for k in run_fingerprint(jt.load_config(None))[1])
    assert run_fingerprint(cfg)[1]["rehearsal.fraction"] == 0.05


def test_what_cannot_be_mixed_fails_at_build(old_export, tiny_model_dir, wnut, tmp_path):
    def fails(head_from, match, **rehearsal):
        with pytest.raises((UserError, ConfigError), match=match):
            build(_config(old_export, tmp_path, "bad", head_from, **rehearsal), data=wnut)

    fails(tiny_model_dir, "has no trained sequence_classification head: .*classifier")      # a bare encoder
    fails(old_export, "is a question_answering task", data={"dataset": "squad", "max_length": 64, "doc_stride": 32})
    fails(old_export, "is a image_classification task", data={"dataset": "mnist_digits"})
    config = bert.BertConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=12, max_position_embeddings=64)
    model = bert.build(config, "sequence_classification", num_labels=3)
    other = _export(tmp_path / "other", model.init(jax.random.key(0), *bert.example_inputs(config, None)),
                    model.config, "sequence_classification")
    fails(other, "is not the same network as model.path")
