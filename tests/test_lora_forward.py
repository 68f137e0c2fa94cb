"""LoRA computed unmerged (jt.LoraForward): equality with the merged path, the FLOPs it saves,
LoRA dropout, and what falls back to the merged kernel (scanned layers, nnx)."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtune as jt
from jaxtune.bench import xla_cost
from jaxtune.tasks import get_task
from tests import _tiny

RANK = 2
RULES = [(r"layer_\d/dense/kernel", jt.lora(rank=RANK, alpha=4.0, name="lora")),
         (r"head/.*", jt.settings(name="head")), (r".*", jt.freeze(name="backbone"))]
IS_FACTORS = lambda x: isinstance(x, jt.LoraFactors)


def _random_b(adapters, seed=1, dropout=None):
    """Adapters with a non-zero B (so that the update matters), and ``dropout`` if given."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    return jax.tree.map(lambda f: f.replace(lora_b=jax.random.normal(next(keys), f.lora_b.shape),
                                            dropout=f.dropout if dropout is None else dropout), adapters,
                        is_leaf=IS_FACTORS)


@pytest.fixture(scope="module")
def tiny():
    params = _tiny.init_params()
    return params, _random_b(jt.init_lora(params, RULES, jax.random.key(0)))


def _tiny_loss(params, ids, labels):
    logits = _tiny.TinyNet().apply({"params": params}, ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_unmerged_loss_and_factor_gradients_equal_the_merged_path(tiny):
    params, adapters = tiny
    batch = _tiny.make_batch()
    forwards = []

    def unmerged(adapters):
        forwards.append(jt.LoraForward(params, adapters))
        with forwards[-1] as p:
            return _tiny_loss(p, batch["ids"], batch["labels"])

    merged = lambda adapters: _tiny_loss(jt.apply_lora(params, adapters), batch["ids"], batch["labels"])
    loss, grads = jax.jit(jax.value_and_grad(unmerged))(adapters)
    expected_loss, expected_grads = jax.jit(jax.value_and_grad(merged))(adapters)
    assert forwards[0].routed == [f"layer_{i}/dense/kernel" for i in range(_tiny.LAYERS)] and not forwards[0].merged
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)   # float32
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        assert float(jnp.abs(e).max()) > 1e-3
        np.testing.assert_allclose(g, e, atol=1e-6, rtol=1e-6)


def _bert(hidden=64, layers=2):
    from jaxtune.models import bert

    config = bert.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=hidden, max_position_embeddings=32, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, attention_implementation="xla",
                             initializer_range=0.2)
    model = bert.build(config, "sequence_classification", num_labels=3)
    params = model.init(jax.random.key(0), *bert.example_inputs(config))["params"]
    return model, params


def test_bert_step_skips_the_lora_kernels_gradient_and_equals_the_merged_step():
    hidden, layers, batch_size, length = 64, 1, 8, 16
    model, params = _bert(hidden, layers)
    rules = [(r".*attention/self/(query|value)/kernel", jt.lora(rank=RANK, alpha=4.0)),
             (r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
    adapters = _random_b(jt.init_lora(params, rules, jax.random.key(1)))
    tree = jt.LoraParams(params, adapters)
    mask = jt.trainable_mask(tree, rules)
    ids = jax.random.randint(jax.random.key(2), (batch_size, length), 1, 50)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": jnp.arange(batch_size) % 3}
    task_loss = get_task("sequence_classification").loss_fn(model)

    def merged_loss(pair, batch, *, rng, model_state):   # the merged path: the loss sees W + scale * A @ B
        return task_loss(jt.apply_lora(*pair), batch, rng=rng, model_state=model_state)

    def compiled(loss_fn, state, trainable):
        step = jt.make_train_step(loss_fn, optax.sgd(0.5), trainable=trainable, compute_dtype=jnp.float32,
                                  donate=False)
        return step.lower(state, batch).compile()

    pair = (params, adapters)
    pair_mask = jax.tree.unflatten(jax.tree.structure(pair), jax.tree.leaves(mask))
    lora_state, merged_state = jt.TrainState.create(tree, optax.sgd(0.5)), jt.TrainState.create(pair, optax.sgd(0.5))
    lora_step, merged_step = compiled(task_loss, lora_state, mask), compiled(merged_loss, merged_state, pair_mask)
    tokens, kernels = batch_size * length, 2 * layers
    kernel_grads = kernels * 2 * tokens * hidden * hidden   # x^T g of each LoRA'd kernel
    branch = kernels * 6 * 2 * tokens * hidden * RANK        # the unmerged branch: 2 forward + 4 backward products
    merge = kernels * 3 * 2 * hidden * hidden * RANK         # the merged path: A @ B and its 2 backward products
    saved = xla_cost(merged_step) - xla_cost(lora_step)
    assert abs(saved - (kernel_grads - branch + merge)) < 0.05 * kernel_grads, (saved, kernel_grads)

    (new, metrics), (new_merged, merged_metrics) = lora_step(lora_state, batch), merged_step(merged_state, batch)
    np.testing.assert_allclose(metrics["loss"], merged_metrics["loss"], rtol=1e-6)
    got, expected = jax.tree.leaves(new.params.adapters), jax.tree.leaves(new_merged.params[1])
    for g, e, old in zip(got, expected, jax.tree.leaves(adapters)):
        assert float(jnp.abs(e - old).max()) > 1e-2   # trained
        np.testing.assert_allclose(g, e, atol=2e-6)   # float32 values O(1), updates up to 0.4


def _t5_case():
    from jaxtune.models import t5

    config = t5.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1, num_heads=2,
                         relative_attention_num_buckets=4, relative_attention_max_distance=8,
                         attention_implementation="xla")
    ids = jnp.arange(10).reshape(2, 5) + 2
    return t5.build(config, "text_to_text"), (ids, jnp.ones_like(ids), ids[:, :4]), {}, r".*/(q|v)/kernel"


def _resnet_case():
    from jaxtune.bench.cases import _resnet_config
    from jaxtune.models import resnet

    cnn = resnet.build(_resnet_config(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1), num_labels=3),
                       "image_classification", 3)
    images = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))   # the stage-1 shortcut 1x1 conv has stride 2
    return cnn, (images,), {"train": False}, r".*/(layer_0|layer_2|shortcut)/convolution/kernel"


@pytest.mark.parametrize("case", [_t5_case, _resnet_case], ids=["t5_qv", "resnet_1x1"])
def test_t5_and_resnet_1x1_convolutions_route_every_lora_kernel(case):
    net, args, kwargs, pattern = case()
    variables = jax.jit(lambda key: net.init(key, *args, **kwargs))(jax.random.key(0))
    rules = [(pattern, jt.lora(rank=RANK)), (r".*", jt.freeze())]
    adapters = _random_b(jt.init_lora(variables["params"], rules, jax.random.key(1)))
    forwards = []

    @jax.jit
    def unmerged(params, adapters):
        forwards.append(jt.LoraForward(params, adapters))
        with forwards[-1] as p:
            return net.apply({**variables, "params": p}, *args, **kwargs)

    apply = jax.jit(lambda params: net.apply({**variables, "params": params}, *args, **kwargs))
    got, expected = unmerged(variables["params"], adapters), apply(jt.merge_lora(variables["params"], adapters))
    forward, = forwards
    assert len(forward.routed) == 6 and not forward.merged, forward.merged   # T5: q, v of 3 attentions; ResNet: 2 blocks
    assert float(jnp.abs(expected - apply(variables["params"])).max()) > 1e-3   # the factors matter
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)   # float32


class _Proj(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="proj")(x)


def test_lora_dropout_drops_the_branch_input_in_training_only():
    x = jax.random.normal(jax.random.key(0), (4, 6))
    dense = _Proj()
    params = dense.init(jax.random.key(1), x)["params"]
    rules = [(r"proj/kernel", jt.lora(rank=RANK, dropout=0.5)), (r".*", jt.freeze())]
    adapters = _random_b(jt.init_lora(params, rules, jax.random.key(2)))
    f = adapters["proj"]["kernel"]
    assert f.dropout == 0.5
    key = jax.random.key(3)
    with jt.LoraForward(params, adapters, rng=key) as p:
        train = dense.apply({"params": p}, x)
    with jt.LoraForward(params, adapters) as p:
        evaluation = dense.apply({"params": p}, x)
    keep = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, x.shape)   # the first routed call's key
    base = x @ params["proj"]["kernel"] + params["proj"]["bias"]
    np.testing.assert_allclose(train, base + f.scale * (jnp.where(keep, 2 * x, 0) @ f.lora_a) @ f.lora_b, atol=1e-5)
    np.testing.assert_allclose(evaluation, base + f.scale * (x @ f.lora_a) @ f.lora_b, atol=1e-5)


def test_lora_dropout_in_the_step_changes_the_training_loss_not_evaluation(tiny):
    params, adapters = tiny
    batch = _tiny.make_batch()
    eval_step = jt.make_eval_step(lambda p, b, model_state: {"loss": _tiny_loss(p, b["ids"], b["labels"])},
                                  compute_dtype=jnp.float32)
    out = {}
    for rate in (0.0, 0.5):
        tree = jt.LoraParams(params, _random_b(adapters, dropout=rate))
        state = jt.TrainState.create(tree, optax.sgd(0.1))
        step = jt.make_train_step(_tiny.loss_fn, optax.sgd(0.1), trainable=jt.trainable_mask(tree, RULES),
                                  compute_dtype=jnp.float32, donate=False)
        out[rate] = float(step(state, batch)[1]["loss"]), float(eval_step(state, batch)["loss"])
    assert out[0.0][0] == pytest.approx(out[0.0][1], abs=1e-6)   # dropout 0: training loss = evaluation loss
    assert abs(out[0.5][0] - out[0.0][0]) > 1e-3                 # dropout changes the training loss
    assert out[0.5][1] == out[0.0][1]                            # but not evaluation


class _ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(_tiny.HIDDEN, name="dense")(x)), None


class _Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        layers = nn.scan(_ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return layers(name="layers")(x, None)[0]


def test_scanned_layers_and_nnx_use_the_merged_kernel_and_refuse_dropout():
    x = jax.random.normal(jax.random.key(0), (2, _tiny.HIDDEN))
    model = _Scanned()
    params = model.init(jax.random.key(1), x)["params"]
    layer_ids = lambda path: [1, 2, 3]
    rules = [(r"layers/dense/kernel", jt.lora(rank=RANK)), (r".*", jt.freeze())]
    adapters = _random_b(jt.init_lora(params, rules, jax.random.key(2), layer_ids=layer_ids))
    forwards = []

    @jax.jit
    def unmerged(params, adapters):
        forwards.append(jt.LoraForward(params, adapters, rng=jax.random.key(3)))
        with forwards[-1] as p:
            return model.apply({"params": p}, x)

    got = unmerged(params, adapters)
    assert forwards[0].routed == [] and forwards[0].merged == ["layers/dense/kernel"]
    np.testing.assert_allclose(got, jax.jit(model.apply)({"params": jt.merge_lora(params, adapters)}, x), atol=1e-6)
    with pytest.raises(jt.RuleError, match=r"LoRA dropout .* \['layers/dense/kernel'\]"):
        unmerged(params, _random_b(adapters, dropout=0.1))

    linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(linear, nnx.Param)
    nnx_adapters = _random_b(jt.init_lora(state, [(r"kernel", jt.lora(rank=RANK))], jax.random.key(0)))
    forward = jt.LoraForward(state, nnx_adapters)
    with forward as p:
        got = nnx.merge(graphdef, p)(jnp.ones((2, 4)))
    assert forward.merged == ["kernel"]
    np.testing.assert_allclose(got, nnx.merge(graphdef, jt.merge_lora(state, nnx_adapters))(jnp.ones((2, 4))),
                               atol=1e-6)


def test_peft_export_writes_the_lora_dropout(tmp_path):
    from jaxtune.models import bert

    config = bert.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8, max_position_embeddings=16)
    params = jax.eval_shape(lambda k: bert.build(config).init(k, *bert.example_inputs(config)), jax.random.key(0))
    rules = [(r".*/(query|value)/kernel", jt.lora(rank=RANK, dropout=0.1)), (r".*", jt.freeze())]
    adapters = jt.init_lora(params["params"], rules, jax.random.key(0))
    jt.save_peft(adapters, config, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_dropout"] == pytest.approx(0.1)
    loaded, _ = jt.load_peft(tmp_path, config, params=params["params"])
    assert all(f.dropout == pytest.approx(0.1) for f in jax.tree.leaves(loaded, is_leaf=IS_FACTORS))
    query = adapters["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]
    query["kernel"] = query["kernel"].replace(dropout=0.2)
    with pytest.raises(jt.UserError, match="lora_dropout"):   # PEFT has one dropout for all modules
        jt.save_peft(adapters, config, tmp_path / "mixed")
