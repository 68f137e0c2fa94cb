"""Stop on bad numbers (issue #13): the step's non-finite flag, the runner's batched check, the
last finite checkpoint, NaN validation metrics, and data the model cannot represent."""
import itertools
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune import cli, experiment
from jaxtune.experiment import build, finetune, prepare_data
from jaxtune.models import bert
from jaxtune.nonfinite import ALL_FINITE, FLAG, NONFINITE_GRAD_NORM, NONFINITE_LOSS
from tests._tiny import init_params, loss_fn, make_batch

F32 = jnp.float32
PATHS = jt.leaf_paths(init_params())
TARGET = "layer_1/dense/kernel"  # a leaf in the middle of the tree: index 10 of 15


def _nan_grad_at(path, poison):
    """Adds 0 * sum(sqrt(w * 0 + 1 - poison)) to the loss: the loss stays finite, but with poison = 1
    the gradient of ``path`` is 0 * inf = NaN (and only that leaf's)."""
    def poisoned(params, batch, *, rng, model_state):
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        w = params
        for key in path.split("/"):
            w = w[key]
        return loss + 0.0 * jnp.sum(jnp.sqrt(w * 0.0 + 1.0 - poison)), aux
    return poisoned


def _step_flag(loss, tx=None, trainable=None, state_fn=None):
    params = init_params()
    tx = tx or optax.sgd(0.1)
    state = jt.TrainState.create(params, tx)
    if state_fn is not None:
        state = state_fn(state)
    state, metrics = jt.make_train_step(loss, tx, trainable=trainable, compute_dtype=F32)(state, make_batch())
    return state, metrics


def test_flag_is_minus_one_when_finite_and_a_device_int():
    _, metrics = _step_flag(loss_fn)
    assert isinstance(metrics[FLAG], jax.Array) and metrics[FLAG].dtype == jnp.int32 and metrics[FLAG].shape == ()
    assert int(metrics[FLAG]) == ALL_FINITE


def test_flag_names_the_leaf_with_a_nan_gradient():
    state, metrics = _step_flag(_nan_grad_at(TARGET, 1.0))
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert PATHS[int(metrics[FLAG])] == TARGET
    # Control: the same loss without poison is finite everywhere.
    assert int(_step_flag(_nan_grad_at(TARGET, 0.0))[1][FLAG]) == ALL_FINITE


def test_flag_codes_for_loss_and_gradient_norm():
    def nan_loss(params, batch, *, rng, model_state):  # a NaN constant: its gradient is 0, grads stay finite
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return loss + jnp.float32(jnp.nan), aux
    assert int(_step_flag(nan_loss)[1][FLAG]) == NONFINITE_LOSS

    def huge(params, batch, *, rng, model_state):  # gradients of 1e30 are finite, their squared norm is not
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return loss + 1e30 * params["head"]["bias"].sum() - jax.lax.stop_gradient(1e30 * params["head"]["bias"].sum()), aux
    state, metrics = _step_flag(huge, tx=optax.sgd(1e-40))
    assert np.isinf(float(metrics["grad_norm"])) and int(metrics[FLAG]) == NONFINITE_GRAD_NORM


def test_flag_names_a_leaf_whose_update_overflows():
    # Finite gradients (the loss scaled by 1e4) times a learning rate of 1e38: updated weights overflow to inf.
    def scaled(params, batch, *, rng, model_state):
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        return 1e4 * loss, aux
    state, metrics = _step_flag(scaled, tx=optax.sgd(1e38))
    assert np.isfinite(float(metrics["grad_norm"]))
    index = int(metrics[FLAG])
    assert index >= 0 and not np.isfinite(np.asarray(jax.tree.leaves(state.params)[index])).all()
    finite_before = [np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params)[:index]]
    assert all(finite_before)  # it is the first such leaf


def test_structurally_frozen_leaf_is_not_differentiated_but_runtime_frozen_is_checked():
    poisoned = _nan_grad_at(TARGET, 1.0)
    frozen_rules = [(r"layer_1/dense/.*", jt.freeze()), (r".*", jt.settings())]
    mask = jt.trainable_mask(init_params(), frozen_rules)
    # Structural mode: no gradient is taken w.r.t. the frozen leaf, so its NaN never exists.
    assert int(_step_flag(poisoned, trainable=mask)[1][FLAG]) == ALL_FINITE
    # Runtime mode: the leaf is frozen inside the optimizer state, but its gradient is still taken.
    # Whether or not the optimizer keeps the NaN out of the weight, the gradient norm is NaN and a
    # NaN anywhere in the backward pass is a broken step: the flag names the leaf.
    tx = jt.make_optimizer(init_params(), [(r".*", jt.settings())], optax.sgd, 0.1, runtime=True)
    state, metrics = _step_flag(poisoned, tx=tx,
                                state_fn=lambda s: s.replace(opt_state=jt.set_trainable(s.opt_state, mask)))
    assert PATHS[int(metrics[FLAG])] == TARGET and not np.isfinite(float(metrics["grad_norm"]))


class Watched:
    """A metric value that records when the host reads it (any conversion or jax.device_get)."""

    def __init__(self, value, reads, clock, step):
        self.value, self.reads, self.clock, self.step = value, reads, clock, step

    def _read(self):
        self.reads.append((self.clock[0], self.step))
        return np.asarray(self.value)

    def copy_to_host_async(self):
        pass

    def __array__(self, dtype=None, copy=None):
        return self._read() if dtype is None else self._read().astype(dtype)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    __index__ = __int__

    def __bool__(self):
        return bool(self._read())

    def item(self):
        return self._read().item()


def test_guard_raises_at_the_first_bad_step_with_one_read_per_check():
    reads, clock = [], [0]
    guard = jt.NonFiniteGuard(PATHS)
    flags = {1: -1, 2: -1, 3: 10, 4: 0}
    for step, flag in flags.items():
        clock[0] = step
        guard.record(step, {k: Watched(v, reads, clock, step) for k, v in
                            {"loss": np.float32(1.0), "grad_norm": np.float32(np.nan if flag >= 0 else 2.0),
                             FLAG: np.int32(flag)}.items()})
    assert reads == []  # recording reads nothing
    with pytest.raises(jt.NonFiniteError, match=f"'{TARGET}' at step 3") as info:
        guard.check(last_checkpoint=2)
    assert (info.value.step, info.value.path, info.value.last_checkpoint) == (3, TARGET, 2)
    assert "step 2) is the last finite one" in str(info.value)
    assert {c for c, _ in reads} == {4}  # everything was read at the one check
    # Stacked members: the flag has a leading axis; the bad member is named.
    guard.record(7, {FLAG: jnp.array([-1, NONFINITE_LOSS]), "loss": jnp.array([0.5, jnp.nan]),
                     "grad_norm": jnp.array([1.0, 1.0])})
    with pytest.raises(jt.NonFiniteError, match=r"non-finite loss at step 7 \(member 1\)") as info:
        guard.check()
    assert info.value.metric == "loss" and info.value.path is None
    assert guard.check({"loss": jnp.float32(0.25), FLAG: jnp.int32(-1)}) == {"loss": 0.25}


def test_check_finite_metrics_names_the_metric():
    jt.nonfinite.check_finite_metrics({"val_loss": 0.1, "val_accuracy": 1.0}, step=3)
    with pytest.raises(jt.NonFiniteError, match="validation metric 'val_macro_f1' is nan at step 3") as info:
        jt.nonfinite.check_finite_metrics({"val_loss": 0.1, "val_macro_f1": float("nan")}, step=3)
    assert info.value.metric == "val_macro_f1"


# ----------------------------------------------------------------------------- the runner

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _tiny_bert(directory, **overrides):
    """A small random BERT with the real all-MiniLM-L6-v2 tokenizer files."""
    config = bert.BertConfig(**{**dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=37, max_position_embeddings=128), **overrides})
    model = bert.build(config, None)
    jt.save_pretrained(model.init(jax.random.key(0), *bert.example_inputs(config, None)), config, directory)
    for name in TOKENIZER_FILES:
        shutil.copy(jt.minilm_path() / name, directory / name)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return _tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    return prepare_data(jt.load_config(None, ["data.train_limit=64", "data.eval_limit=32", "data.test_limit=32",
                                              "data.max_length=32"]).data, tiny_model_dir)


def _config(model_dir, out, name, **train):
    return {
        "name": name, "output_dir": str(out), "model": {"path": model_dir},
        "data": {"dataset": "tweet_sentiment", "max_length": 32, "batch_size": 8, "eval_batch_size": 32,
                 "train_limit": 64, "eval_limit": 32, "test_limit": 32},
        "optim": {"optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 0.0, "schedule": "constant"},
        "train": {"max_steps": 8, "eval_every": 2, "log_every": 4, "progress": False, **train},
        "early_stopping": {"enabled": False, "monitor": "val_loss"},
        "checkpoint": {"keep_latest": 1, "keep_best": 1},
    }


def _leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _poison_gradient(monkeypatch, path, at_call):
    """The runner's train step, with a NaN gradient of ``path`` (only) at its ``at_call``-th call."""
    real = experiment.make_train_step

    def make(task_loss, tx, **kwargs):
        def poisoned(params, batch, *, rng, model_state):
            clean = {k: v for k, v in batch.items() if k != "poison"}
            loss, aux = task_loss(params, clean, rng=rng, model_state=model_state)
            return loss + 0.0 * jnp.sum(jnp.sqrt(_leaf(params, path) * 0.0 + 1.0 - batch["poison"])), aux

        step, calls = real(poisoned, tx, **kwargs), itertools.count(1)
        return lambda state, batch: step(state, {**batch, "poison": np.float32(next(calls) == at_call)})

    monkeypatch.setattr(experiment, "make_train_step", make)


def _checkpoint_arrays_finite(run_dir, template, step):
    with jt.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
        state, _ = ckpt.restore(step, template=template)
    floats = [x for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    return len(floats) > 0 and all(bool(np.isfinite(np.asarray(x)).all()) for x in floats)


def _steps_on_disk(run_dir):
    with jt.Checkpointer(os.path.join(run_dir, "checkpoints")) as ckpt:
        return ckpt.all_steps()


def test_nan_gradient_stops_the_run_names_step_and_path_and_keeps_the_last_finite_checkpoint(
        tiny_model_dir, data, tmp_path, monkeypatch):
    cfg = _config(tiny_model_dir, tmp_path, "poisoned")
    template = build(cfg, data=data).initial_state
    target = "bert/encoder/layer_1/attention/self/key/kernel"
    assert target in jt.leaf_paths(template.params) and jt.leaf_paths(template.params).index(target) > 0
    _poison_gradient(monkeypatch, target, at_call=5)
    with pytest.raises(jt.NonFiniteError) as info:
        finetune(cfg, data=data)
    error, run_dir = info.value, str(tmp_path / "poisoned")
    assert isinstance(error, ValueError)
    assert (error.step, error.path, error.last_checkpoint) == (5, target, 4)
    assert f"'{target}' at step 5" in str(error) and "(step 4) is the last finite one" in str(error)
    # Checkpoints at 2 and 4 were written; 6 (after the NaN at 5) was not; what is kept is finite.
    steps = _steps_on_disk(run_dir)
    assert max(steps) == 4
    assert all(_checkpoint_arrays_finite(run_dir, template, s) for s in steps)
    logged = [r["step"] for r in jt.read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if r["split"] == "train"]
    assert logged == [4]  # nothing from a non-finite step reached the log


def test_runner_reads_the_flags_only_at_log_and_eval_points(tiny_model_dir, data, tmp_path, monkeypatch):
    real, reads, clock = experiment.make_train_step, [], [0]

    def make(task_loss, tx, **kwargs):
        step = real(task_loss, tx, **kwargs)

        def watched(state, batch):
            state, metrics = step(state, batch)
            clock[0] += 1
            assert all(isinstance(v, jax.Array) for v in metrics.values())  # the step returns device arrays
            return state, {k: Watched(v, reads, clock, (clock[0], k)) for k, v in metrics.items()}
        return watched

    monkeypatch.setattr(experiment, "make_train_step", make)
    result = finetune(_config(tiny_model_dir, tmp_path, "watched", max_steps=6, log_every=3, eval_every=6), data=data)
    assert result.steps == 6
    # The host read metrics only after dispatching steps 3 and 6 (log points), never per step ...
    assert {when for when, _ in reads} == {3, 6}
    # ... and every step's flag exactly once, in those batched reads.
    assert sorted(step for _, (step, key) in reads if key == FLAG) == [1, 2, 3, 4, 5, 6]


def test_nan_validation_metric_is_an_error_even_when_early_stopping_watches_another(
        tiny_model_dir, data, tmp_path, monkeypatch):
    real, calls = experiment.evaluate, itertools.count(1)

    def evaluate(*args, **kwargs):
        scores, predictions, references = real(*args, **kwargs)
        return ({**scores, "loss": float("nan")} if next(calls) == 2 else scores), predictions, references

    monkeypatch.setattr(experiment, "evaluate", evaluate)
    cfg = _config(tiny_model_dir, tmp_path, "nan_val", max_steps=6, log_every=2)
    cfg["early_stopping"] = {"enabled": True, "monitor": "val_accuracy", "mode": "max", "patience": 5}
    cfg["checkpoint"]["keep_latest"] = 3
    with pytest.raises(jt.NonFiniteError, match="validation metric 'val_loss' is nan at step 4") as info:
        finetune(cfg, data=data)
    assert (info.value.metric, info.value.step, info.value.last_checkpoint) == ("val_loss", 4, 2)
    assert _steps_on_disk(str(tmp_path / "nan_val")) == [2]  # the NaN evaluation was neither best nor saved


def test_cli_finetune_with_an_exploding_learning_rate_exits_2_and_saves_only_finite_checkpoints(
        tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    cfg = _config(tiny_model_dir, tmp_path, "explode", max_steps=12, log_every=1, eval_every=1)
    cfg["optim"].update(learning_rate=1e30, schedule="warmup_linear", warmup_fraction=0.5)
    cfg["checkpoint"]["keep_latest"] = 20
    path = tmp_path / "explode.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setattr(experiment, "prepare_data", lambda *args, **kwargs: data)  # reuse the tokenised data
    capsys.readouterr()
    assert cli.main(["finetune", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxtune finetune: error: "), err
    stopped_at = int(re.search(r"at step (\d+)", err).group(1))
    run_dir, template = str(tmp_path / "explode"), build(cfg, data=data).initial_state
    steps = _steps_on_disk(run_dir)  # step 1 runs at learning rate 0 (warmup), so it is finite and saved
    assert steps and max(steps) < stopped_at < 12
    assert f"(step {max(steps)}) is the last finite one" in err
    assert all(_checkpoint_arrays_finite(run_dir, template, s) for s in steps)


# ----------------------------------------------------------------------------- data the model cannot take


def test_num_labels_below_the_label_set_fails_before_any_work(tiny_model_dir, data, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the num_labels check")

    monkeypatch.setattr(experiment, "load_model", no_work)
    monkeypatch.setattr(jt.data.text, "load_tokenizer", no_work)
    cfg = _config(tiny_model_dir, tmp_path, "two_labels")
    cfg["model"]["num_labels"] = 2
    for given in (None, data):
        with pytest.raises(jt.ConfigError, match="model.num_labels=2 is smaller than the 3 labels of 'tweet_sentiment'"):
            build(cfg, data=given)


def test_token_ids_outside_the_vocabulary_name_split_example_and_limit(data, tmp_path):
    small_vocab = _tiny_bert(tmp_path, vocab_size=1000)
    with pytest.raises(jt.DataError, match=r"train example \d+: input_ids\[\d+\] = \d+ is outside the model's "
                                           r"vocabulary \[0, 1000\) \(vocab_size=1000\)") as info:
        build(_config(small_vocab, tmp_path, "small_vocab"), data=data)
    error = info.value
    assert isinstance(error, jt.UserError) and (error.split, error.limit) == ("train", 1000)
    assert data.train[error.index]["input_ids"].max() >= 1000
    assert all(e["input_ids"].max() < 1000 for e in data.train[:error.index])  # the first such example


def test_sequences_longer_than_the_position_table_name_split_example_and_limit(data, tmp_path):
    short = _tiny_bert(tmp_path, max_position_embeddings=16)
    with pytest.raises(jt.DataError, match=r"train example \d+ has \d+ tokens, more than the model's position "
                                           r"table \(max_position_embeddings=16\)") as info:
        build(_config(short, tmp_path, "short"), data=data)
    error = info.value
    assert (error.split, error.limit) == ("train", 16) and len(data.train[error.index]["input_ids"]) > 16
    assert all(len(e["input_ids"]) <= 16 for e in data.train[:error.index])


def test_labels_outside_the_head_name_split_example_and_limit(tiny_model_dir, data, tmp_path):
    validation = [dict(e) for e in data.validation]
    validation[3]["labels"] = np.int32(5)
    bad = experiment.PreparedData(**{**data.__dict__, "validation": validation})
    with pytest.raises(jt.DataError, match=r"validation example 3: label 5 is outside the classifier head's "
                                           r"range \[0, 3\) \(num_labels=3\)") as info:
        build(_config(tiny_model_dir, tmp_path, "bad_label"), data=bad)
    assert (info.value.split, info.value.index, info.value.limit) == ("validation", 3, 3)


def test_max_length_past_the_position_table_is_a_config_error():
    config = bert.BertConfig(vocab_size=100, max_position_embeddings=24)
    short = {"train": [{"input_ids": np.arange(10, dtype=np.int32), "labels": np.int32(0)}]}
    jt.data.check_data_fits_model(short, "sequence_classification", config, num_labels=2, max_length=24)
    with pytest.raises(jt.ConfigError, match=r"data.max_length=32 exceeds the model's position table "
                                             r"\(max_position_embeddings=24\)"):
        jt.data.check_data_fits_model(short, "sequence_classification", config, num_labels=2, max_length=32)
    # Token labels may be -100 (ignored); class labels may not.
    tokens = {"test": [{"input_ids": np.arange(3), "labels": np.array([-100, 1, -100])}]}
    jt.data.check_data_fits_model(tokens, "token_classification", config, num_labels=2)
    with pytest.raises(jt.DataError, match=r"test example 0: label -100 is outside"):
        jt.data.check_data_fits_model({"test": [{"labels": np.int32(-100)}]}, "sequence_classification", None, 2)
    # Text-to-text targets are token ids: checked against the vocabulary, -100 allowed.
    targets = {"train": [{"input_ids": np.arange(3), "labels": np.array([5, 200, -100])}]}
    with pytest.raises(jt.DataError, match=r"train example 0: labels\[1\] = 200 is outside the model's vocabulary"):
        jt.data.check_data_fits_model(targets, "text_to_text", bert.BertConfig(vocab_size=100), num_labels=None)


def test_nan_image_is_a_data_error_naming_the_example():
    images = [{"images": np.zeros((4, 4, 3), np.float32), "labels": np.int32(1)} for _ in range(3)]
    images[2]["images"][1, 2, 0] = np.nan
    jt.data.check_data_fits_model({"train": images[:2]}, "image_classification", None, num_labels=2)
    with pytest.raises(jt.DataError, match=r"test example 2: images has 1 NaN/inf values") as info:
        jt.data.check_data_fits_model({"test": images}, "image_classification", None, num_labels=2)
    assert (info.value.split, info.value.index) == ("test", 2)
    images[2]["images"][1, 2, 0], images[0]["labels"] = 0.0, np.int32(2)
    with pytest.raises(jt.DataError, match=r"train example 0: label 2 is outside the classifier head's range \[0, 2\)"):
        jt.data.check_data_fits_model({"train": images}, "image_classification", None, num_labels=2)
