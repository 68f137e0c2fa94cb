"""The API seams of issue #17: nnx.Optimizer, plain-optax recipes, compile counts, plain loss functions,
summary order. Tiny models, float32 on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtune as jt
from tests._tiny import TinyNet, init_params, layer_ids, loss_fn, make_batch

F32 = jnp.float32
TOL = dict(rtol=1e-5, atol=1e-6)  # float32, a few Adam steps
RULES = [(r"embeddings/.*", jt.freeze()), (r".*(bias|LayerNorm/scale)", jt.settings(weight_decay=False)),
         (r".*", jt.settings())]


def _by_path(tree):
    return dict(zip(jt.leaf_paths(tree), (np.asarray(x) for x in jax.tree.leaves(tree))))


# ---------------------------------------------------------------------------------------------
# nnx: masks and optimizers built from an nnx.State work inside nnx.Optimizer.

class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.embeddings = nnx.Linear(3, 4, rngs=rngs)
        self.layer_0 = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.layer_0(jnp.tanh(self.embeddings(x)))))


NNX_RULES = [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())]
NNX_X = jax.random.normal(jax.random.key(1), (5, 3))
NNX_Y = jax.random.normal(jax.random.key(2), (5, 2))


def _nnx_ids(path):
    return {"embeddings": 0, "layer_0": 1, "head": 2}[path.split("/")[0]]


def _nnx_loss(model):
    return ((model(NNX_X) - NNX_Y) ** 2).mean()


def _train_nnx(make_tx, steps=3):
    """``steps`` updates of a fresh NnxNet through ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; the
    params before and after, as ``{path: array}``."""
    model = NnxNet(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    before = _by_path(state)
    optimizer = nnx.Optimizer(model, make_tx(state), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(_nnx_loss)(model))

    for _ in range(steps):
        train_step(model, optimizer)
    return before, _by_path(nnx.state(model, nnx.Param))


def _plain_optax_reference(before, steps=3):
    """The same training in plain JAX: AdamW on the trainable leaves, embeddings fixed."""
    def forward(p, x):
        lin = lambda name, h: h @ p[f"{name}/kernel"] + p[f"{name}/bias"]
        return lin("head", jnp.tanh(lin("layer_0", jnp.tanh(lin("embeddings", x)))))

    fixed = {k: v for k, v in before.items() if k.startswith("embeddings")}
    train = {k: jnp.asarray(v) for k, v in before.items() if not k.startswith("embeddings")}
    loss = lambda t: ((forward({**fixed, **t}, NNX_X) - NNX_Y) ** 2).mean()
    tx = optax.adamw(1e-2, weight_decay=0.1)
    opt_state = tx.init(train)
    for _ in range(steps):
        updates, opt_state = tx.update(jax.grad(loss)(train), opt_state, train)
        train = optax.apply_updates(train, updates)
    return {k: np.asarray(v) for k, v in train.items()}


@pytest.mark.parametrize("form", ["state", "as_pure"])
def test_make_optimizer_from_nnx_state_works_in_nnx_optimizer(form):
    pure = form == "as_pure"
    make_tx = lambda state: jt.make_optimizer(nnx.as_pure(state) if pure else state, NNX_RULES, optax.adamw, 1e-2,
                                              weight_decay=0.1)
    before, after = _train_nnx(make_tx)
    reference = _plain_optax_reference(before)
    for path, value in after.items():
        if path.startswith("embeddings"):
            np.testing.assert_array_equal(value, before[path], err_msg=path)  # frozen: bit for bit
        else:
            assert not np.allclose(value, before[path]), path
            np.testing.assert_allclose(value, reference[path], **TOL, err_msg=path)


def _recipe_tx(params, rules, layer_ids, layer_decay, learning_rate=1e-2, weight_decay=0.1):
    """The README's "use the masks in your own code" optimizer: plain optax, jaxtune's trees."""
    labels = jax.tree.map(lambda trains: "train" if trains else "frozen", jt.trainable_mask(params, rules))
    return optax.partition({
        "train": optax.chain(
            optax.adamw(learning_rate, weight_decay=weight_decay, mask=jt.weight_decay_mask(params, rules)),
            jt.scale_by_multipliers(jt.lr_multipliers(params, rules, layer_ids, layer_decay))),
        "frozen": optax.set_to_zero(),
    }, labels)


def test_masks_from_nnx_state_work_in_nnx_optimizer():
    """jt.trainable_mask / weight_decay_mask / lr_multipliers of an nnx.State in a plain optax chain
    inside nnx.Optimizer train as jt.make_optimizer does."""
    _, with_masks = _train_nnx(lambda state: _recipe_tx(state, NNX_RULES, _nnx_ids, 0.5))
    before, compiled = _train_nnx(lambda state: jt.make_optimizer(state, NNX_RULES, optax.adamw, 1e-2,
                                                                  weight_decay=0.1, layer_ids=_nnx_ids,
                                                                  layer_decay=0.5))
    for path, value in with_masks.items():
        np.testing.assert_allclose(value, compiled[path], **TOL, err_msg=path)
    np.testing.assert_array_equal(with_masks["embeddings/kernel"], before["embeddings/kernel"])
    assert not np.allclose(with_masks["layer_0/kernel"], before["layer_0/kernel"])


def test_masks_from_nnx_state_fit_the_state_and_its_arrays():
    state = nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param)
    mask = jt.trainable_mask(state, NNX_RULES)
    assert jax.tree.structure(mask) == jax.tree.structure(nnx.as_pure(state))
    for params in (state, nnx.as_pure(state)):  # optax.masked takes the mask as a prefix of either
        tx = optax.masked(optax.sgd(1.0), mask)
        updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
        stepped = {p for p, u in _by_path(updates).items() if np.all(u == -1.0)}  # the others pass through
        assert stepped == {"layer_0/bias", "layer_0/kernel", "head/bias", "head/kernel"}


# ---------------------------------------------------------------------------------------------
# scale_by_multipliers: the README's plain-optax loop, kept true here.

def test_readme_plain_optax_loop_equals_make_optimizer():
    # --- the README loop ("use the masks in your own code") ---
    params = init_params()
    rules = RULES
    labels = jax.tree.map(lambda trains: "train" if trains else "frozen", jt.trainable_mask(params, rules))
    tx = optax.partition({
        "train": optax.chain(
            optax.adamw(1e-2, weight_decay=0.1, mask=jt.weight_decay_mask(params, rules)),
            jt.scale_by_multipliers(jt.lr_multipliers(params, rules, layer_ids, layer_decay=0.8))),
        "frozen": optax.set_to_zero(),
    }, labels)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            logits = TinyNet().apply({"params": p}, batch["ids"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for i in range(3):
        params, opt_state, _ = step(params, opt_state, make_batch(seed=i))
    # --- end of the README loop ---
    assert jt.compile_count(step) == 1
    reference_tx = jt.make_optimizer(init_params(), rules, optax.adamw, 1e-2, weight_decay=0.1,
                                     layer_ids=layer_ids, layer_decay=0.8)
    train_step = jt.make_train_step(loss_fn, reference_tx, compute_dtype=F32)
    state = jt.TrainState.create(init_params(), reference_tx)
    for i in range(3):
        state, _ = train_step(state, make_batch(seed=i))
    start, ours, reference = _by_path(init_params()), _by_path(params), _by_path(state.params)
    for path, value in ours.items():
        np.testing.assert_allclose(value, reference[path], **TOL, err_msg=path)
    np.testing.assert_array_equal(ours["embeddings/embedding"], start["embeddings/embedding"])
    assert not np.allclose(ours["layer_0/dense/kernel"], start["layer_0/dense/kernel"])


def test_scale_by_multipliers_scales_and_passes_masked_leaves():
    params = {"a": jnp.ones(2), "b": jnp.ones((2, 3)), "c": jnp.ones(2)}
    multipliers = {"a": 0.5, "b": np.array([[1.0], [0.25]], np.float32), "c": 3.0}  # b: stacked, one per layer
    tx = optax.multi_transform({"x": optax.chain(optax.sgd(1.0), jt.scale_by_multipliers(multipliers)),
                                "y": optax.sgd(2.0)}, {"a": "x", "b": "x", "c": "y"})
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_array_equal(updates["a"], [-0.5, -0.5])
    np.testing.assert_array_equal(updates["b"], [[-1.0] * 3, [-0.25] * 3])
    np.testing.assert_array_equal(updates["c"], [-2.0, -2.0])  # group "y": untouched by the multipliers


def test_scale_by_multipliers_errors_name_the_problem():
    with pytest.raises(jt.UserError, match=r"multiplier at b is -1\.0.*finite number >= 0"):
        jt.scale_by_multipliers({"a": 1.0, "b": -1.0})
    tx = jt.scale_by_multipliers({"a": 1.0})
    with pytest.raises(ValueError, match=r"do not fit the updates.*jt\.lr_multipliers"):
        tx.update({"a": jnp.ones(1), "b": jnp.ones(1)}, tx.init(None))


# ---------------------------------------------------------------------------------------------
# compile_count

def test_compile_count_needs_a_jitted_function():
    # Runtime unfreezing without recompiling, and one compilation per structural stage, are counted
    # with jt.compile_count in tests/test_train.py.
    with pytest.raises(TypeError, match="compile_count takes a jax.jit-ed function"):
        jt.compile_count(lambda x: x)


# ---------------------------------------------------------------------------------------------
# make_train_step: plain loss functions

def _plain_loss(params, batch):
    logits = TinyNet().apply({"params": params}, batch["ids"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def _plain_loss_with_metrics(params, batch):
    logits = TinyNet().apply({"params": params}, batch["ids"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}


@pytest.mark.parametrize("plain", [_plain_loss, _plain_loss_with_metrics])
def test_plain_loss_fn_trains_as_the_full_form(plain):
    tx = optax.adam(1e-2)
    results = []
    for fn in (plain, loss_fn):
        step = jt.make_train_step(fn, tx, compute_dtype=F32, donate=False)
        state = jt.TrainState.create(init_params(), tx)
        for i in range(2):
            state, metrics = step(state, make_batch(seed=i))
        results.append((_by_path(state.params), metrics))
    (params, metrics), (reference, reference_metrics) = results
    for path, value in params.items():
        np.testing.assert_allclose(value, reference[path], **TOL, err_msg=path)
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], **TOL)
    assert ("accuracy" in metrics) == (plain is _plain_loss_with_metrics)


@pytest.mark.parametrize("bad", [lambda params: 0.0, lambda params, batch, rng: 0.0,
                                 lambda params, batch, *, model_state: 0.0])
def test_wrong_loss_signature_shows_the_accepted_forms(bad):
    with pytest.raises(TypeError, match=r"none of the accepted signatures(.|\n)*loss_fn\(params, batch\) -> loss"
                                        r"(.|\n)*loss_fn\(params, batch, \*, rng, model_state\)"):
        jt.make_train_step(bad, optax.sgd(0.1))


def test_wrong_loss_result_shows_the_accepted_forms():
    step = jt.make_train_step(lambda params, batch: (_plain_loss(params, batch), {}, 1.0), optax.sgd(0.1),
                              compute_dtype=F32)
    with pytest.raises(TypeError, match=r"returned a tuple of 3 item\(s\)(.|\n)*loss_fn\(params, batch\) -> loss"):
        step(jt.TrainState.create(init_params(), optax.sgd(0.1)), make_batch())


# ---------------------------------------------------------------------------------------------
# summary

def test_summary_lists_groups_in_rule_order():
    params = init_params()
    rules = [(r"layer_.*", jt.settings(name="blocks", lr_mult=0.5)), (r"head/.*", jt.settings(name="head")),
             (r"embeddings/.*", jt.freeze("embeddings")), (r"never/.*", jt.settings(name="blocks"))]
    table = jt.summary(params, rules, allow_unused=True)
    rows = [line.split()[0] for line in table.splitlines()[2:-1]]
    assert rows == ["blocks", "head", "embeddings"]  # rule order, not the leaves' (alphabetical) order


# ---------------------------------------------------------------------------------------------
# Models: layer_ids and default_rules on the model, documented __call__; the runner's API from jt.

def _top_level_models():
    from jaxtune.models import bag, bert, efficientnet, mobilenet, resnet, t5, vgg
    tiny_bert = bert.BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=8)
    return [(bert, cls(tiny_bert)) for cls in set(bert.MODELS.values())] + [
        (t5, t5.T5Model(t5.T5Config())), (resnet, resnet.ResNetModel(resnet.resnet_config(18))),
        (resnet, resnet.ResNetForImageClassification(resnet.resnet_config(18, num_labels=2))),
        (mobilenet, mobilenet.MobileNetV2(mobilenet.MobileNetV2Config(), num_labels=2)),
        (efficientnet, efficientnet.EfficientNetLite(efficientnet.EfficientNetLiteConfig(), num_labels=2)),
        (vgg, vgg.VGG(vgg.VGGConfig(), num_labels=2)), (bag, bag.BagClassifier(bag.BagConfig(vocab_size=9, embed_dim=4, num_labels=2)))]


def test_every_model_has_layer_ids_default_rules_and_documented_call():
    import inspect

    from jaxtune.models import bert
    for module, model in _top_level_models():
        name = type(model).__name__
        assert model.default_rules() == module.default_rules(), name
        assert callable(model.layer_ids), name
        documented = inspect.getdoc(type(model).__call__) or ""
        if "arguments as :meth:`BertModel.__call__`" in documented:
            documented = inspect.getdoc(bert.BertModel.__call__)
        arguments = [p for p in inspect.signature(type(model).__call__).parameters if p != "self"]
        assert all(f"{a}:" in documented for a in arguments), (name, arguments, documented)
    assert bert.BertForSequenceClassification(bert.BertConfig(num_hidden_layers=2)).layer_ids("classifier/kernel") == 3


@pytest.mark.parametrize("name", ["finetune", "prepare_data", "build_rules", "RunResult", "ExperimentConfig",
                                  "ModelConfig", "DataConfig", "OptimConfig", "RuleConfig", "TrainConfig",
                                  "EarlyStoppingConfig", "CheckpointConfig", "PreparedData"])
def test_runner_api_is_reachable_from_jt_with_an_example(name):
    assert "Example" in getattr(jt, name).__doc__


# ---------------------------------------------------------------------------------------------
# from_pretrained logging

@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from jaxtune.models import bert
    directory = tmp_path_factory.mktemp("tiny_bert_log")
    config = bert.BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8, max_position_embeddings=16)
    model = bert.build(config, "sequence_classification", 2)
    jt.save_pretrained(jax.jit(model.init)(jax.random.key(0), *bert.example_inputs(config, None)), config, directory,
                       task="sequence_classification")
    return directory


def _hub_records(caplog, path, task, num_labels):
    import logging
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxtune.hub"):
        jt.from_pretrained(path, task=task, num_labels=num_labels)
    return [r for r in caplog.records if r.name == "jaxtune.hub"]


def test_from_pretrained_logs_expected_changes_at_info(tiny_bert_dir, caplog):
    import logging
    (record,) = _hub_records(caplog, tiny_bert_dir, "sequence_classification", 3)  # a new head: resized
    assert record.levelno == logging.INFO
    assert "initialised 2, task head of another shape: classifier/bias: checkpoint (2,) -> model (3,)" \
        in record.getMessage()
    assert "new task head" not in record.getMessage()
    (record,) = _hub_records(caplog, tiny_bert_dir, "question_answering", None)  # a new head, pooler unused
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert "initialised 2, new task head: qa_outputs/bias, qa_outputs/kernel" in message
    assert "ignored 4, not used by this task's model: bert/pooler/dense/bias" in message


def test_load_report_text_is_the_logged_text_with_rule_pattern_paths(tiny_bert_dir, caplog):
    import logging
    import re
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxtune.hub"):
        _, variables, report = jt.from_pretrained(tiny_bert_dir, task="question_answering", return_report=True)
        _, _, random_report = jt.from_pretrained(tiny_bert_dir, task="question_answering", return_report=True,
                                                 init="random")
    logged = [r.getMessage() for r in caplog.records if r.name == "jaxtune.hub"]
    assert logged == [str(report), str(random_report)]      # one text, one naming style, in the log and the report
    first, *kinds = str(report).splitlines()
    assert first == f"loaded {len(report.loaded)} variables from {tiny_bert_dir}"
    assert all(re.fullmatch(r"(initialised|ignored) \d+, [a-z' ]+: \S.*", line) for line in kinds), kinds
    head = kinds[0].partition(": ")[2].split(", ")
    assert head and set(head) <= set(jt.leaf_paths(variables["params"]))   # paths as rule patterns match them
    assert str(random_report) == (f"loaded 0 variables from {tiny_bert_dir} (random init); "
                                  f"initialised all {len(random_report.initialized)}")


def test_from_pretrained_warns_for_missing_and_unknown_tensors(tiny_bert_dir, tmp_path, caplog):
    import logging
    import shutil

    from safetensors.numpy import load_file, save_file
    shutil.copy(tiny_bert_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(tiny_bert_dir / "model.safetensors")
    missing = next(n for n in tensors if n.endswith("attention.output.dense.bias"))
    del tensors[missing]
    save_file({**tensors, "bert.embeddings.position_ids": np.arange(16)[None], "extra.weight": np.zeros(2, np.float32)},
              tmp_path / "model.safetensors")
    (record,) = _hub_records(caplog, tmp_path, "sequence_classification", 2)
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "initialised 1, missing from the checkpoint: bert/encoder/layer_0/attention/output/dense/bias" in message
    assert "ignored 1, unknown to the model family: extra.weight" in message
    assert "ignored 1, PyTorch buffers: bert.embeddings.position_ids" in message
