"""LoRA as a rule-table action: jt.lora, jt.init_lora / apply_lora / merge_lora, training the factors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxtune as jt
from jaxtune.lora import factors_by_path
from tests import _tiny

RANK, ALPHA = 2, 4.0
RULES = [(r"layer_\d/dense/kernel", jt.lora(rank=RANK, alpha=ALPHA, name="lora")),
         (r"head/.*", jt.settings(name="head")), (r".*", jt.freeze(name="backbone"))]


@pytest.fixture(scope="module")
def params():
    return _tiny.init_params()


@pytest.fixture(scope="module")
def adapters(params):
    return jt.init_lora(params, RULES, jax.random.key(0))


def _random_b(adapters, seed=1):
    """Adapters with a non-zero B, so that the update matters."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    return jax.tree.map(lambda f: f.replace(lora_b=jax.random.normal(next(keys), f.lora_b.shape)), adapters,
                        is_leaf=lambda x: isinstance(x, jt.LoraFactors))


def test_lora_rule_checks_its_values():
    assert jt.lora(rank=8, alpha=16).lora == jt.LoraSpec(8, 16.0, 0.0)
    with pytest.raises(jt.RuleError, match="rank"):
        jt.lora(rank=0)
    assert jt.lora(rank=4, dropout=0.1).lora.dropout == 0.1
    with pytest.raises(jt.RuleError, match="dropout"):
        jt.lora(rank=4, dropout=1.0)
    with pytest.raises(jt.RuleError, match="frozen but also sets lora"):
        jt.Settings(frozen=True, lora=jt.LoraSpec(4, 8.0))


def test_init_lora_shapes_and_model_starts_pretrained(params, adapters):
    flat = factors_by_path(adapters)
    assert sorted(flat) == [f"layer_{i}/dense/kernel" for i in range(_tiny.LAYERS)]
    f = flat["layer_0/dense/kernel"]
    assert f.lora_a.shape == (_tiny.HIDDEN, RANK) and f.lora_b.shape == (RANK, _tiny.HIDDEN)
    assert f.scale == ALPHA / RANK and float(jnp.abs(f.lora_a).max()) > 0 and not jnp.any(f.lora_b)
    merged = jt.apply_lora(params, adapters)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), merged, params)   # B = 0: exactly pretrained
    assert jt.lora_parameter_count(adapters) == _tiny.LAYERS * 2 * _tiny.HIDDEN * RANK


def test_tree_paths_summary_and_masks(params, adapters):
    tree = jt.LoraParams(params, adapters)
    paths = jt.leaf_paths(tree)
    assert "layer_0/dense/kernel" in paths and "layer_0/dense/kernel/lora_a" in paths
    mask = dict(zip(paths, jax.tree.leaves(jt.trainable_mask(tree, RULES))))
    assert not mask["layer_0/dense/kernel"] and mask["layer_0/dense/kernel/lora_b"] and mask["head/kernel"]
    assert not mask["layer_0/dense/bias"]
    labels = dict(zip(paths, jax.tree.leaves(jt.label_params(tree, RULES))))
    assert labels["layer_1/dense/kernel"] == "lora (base)" and labels["layer_1/dense/kernel/lora_a"] == "lora"
    text = jt.summary(tree, RULES)
    lora_row = next(line for line in text.splitlines() if line.split("  ")[0] == "lora")
    n_factors = jt.lora_parameter_count(adapters)
    assert f"{n_factors:,}" in lora_row and "r=2 alpha=4" in lora_row
    assert "lora (base)" in text and f"trainable {n_factors + _tiny.HIDDEN * _tiny.LABELS + _tiny.LABELS:,} of" in text


def test_factors_take_the_lora_rules_settings_llrd_and_weight_decay(params, adapters):
    rules = [(r"layer_\d/dense/kernel", jt.lora(rank=RANK, weight_decay=False, lr_mult=2.0)), (r".*", jt.settings())]
    tree = jt.LoraParams(params, adapters)
    paths = jt.leaf_paths(tree)
    mults = dict(zip(paths, jax.tree.leaves(jt.lr_multipliers(tree, rules, _tiny.layer_ids, 0.5))))
    top = _tiny.LAYERS + 1   # layer_i has id i + 1; a factor is in its kernel's layer
    for i in range(_tiny.LAYERS):
        assert float(mults[f"layer_{i}/dense/kernel/lora_a"]) == pytest.approx(2.0 * 0.5 ** (top - i - 1))
    decay = dict(zip(paths, jax.tree.leaves(jt.weight_decay_mask(tree, rules))))
    assert not decay["layer_0/dense/kernel/lora_a"] and decay["layer_0/dense/bias"]


@jax.jit
def _unmerged_apply(params, adapters, ids):
    """TinyNet with each LoRA'd Dense computed as x @ W + b + scale * (x @ A) @ B (never merged)."""
    flat = factors_by_path(adapters)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Dense) and context.method_name == "__call__":
            path = "/".join(module.path) + "/kernel"
            if path in flat:
                x, f = args[0], flat[path]
                return next_fun(*args, **kwargs) + f.scale * (x @ f.lora_a) @ f.lora_b
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        return _tiny.TinyNet().apply({"params": params}, ids)


def test_merge_equals_unmerged_model(params, adapters):
    adapters = _random_b(adapters)
    ids = _tiny.make_batch()["ids"]
    apply = jax.jit(lambda p: _tiny.TinyNet().apply({"params": p}, ids))
    merged = apply(jt.merge_lora(jt.LoraParams(params, adapters)))
    assert float(jnp.abs(merged - apply(params)).max()) > 1e-3  # the update matters
    # float32: x @ (W + s*A@B) and x @ W + s*(x@A)@B round differently (a few ulps of outputs of order 1)
    np.testing.assert_allclose(merged, _unmerged_apply(params, adapters, ids), atol=3e-6, rtol=0)


@pytest.mark.parametrize("runtime", [False, True])
def test_structural_step_trains_only_factors_and_head(params, adapters, runtime):
    tree = jt.LoraParams(params, adapters)
    tx = jt.make_optimizer(tree, RULES, optax.adamw, 1e-2, runtime=runtime)
    state = jt.TrainState.create(tree, tx)
    before = jax.tree.map(np.array, tree)
    mask = jt.trainable_mask(tree, RULES)
    step = jt.make_train_step(_tiny.loss_fn, tx, trainable=mask, donate=False)
    first = None
    for _ in range(3):
        state, metrics = step(state, _tiny.make_batch())
        first = float(metrics["loss"]) if first is None else first
    paths = jt.leaf_paths(state.params)
    for path, old, new, trains in zip(paths, jax.tree.leaves(before), jax.tree.leaves(state.params),
                                      jax.tree.leaves(mask)):
        if trains:
            assert np.any(np.asarray(new) != old), path
        else:
            np.testing.assert_array_equal(new, old, err_msg=path)
    assert float(metrics["loss"]) < first
    if not runtime:   # frozen kernels carry no optimizer state: only factors and head do
        state_numbers = sum(np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x))
        trained = sum(np.size(x) for x, t in zip(jax.tree.leaves(before), jax.tree.leaves(mask)) if t)
        assert state_numbers == 2 * trained   # adam's two moments


def test_eval_step_sees_merged_params(params, adapters):
    tree = jt.LoraParams(params, _random_b(adapters))
    state = jt.TrainState.create(tree, optax.sgd(0.1))
    batch = _tiny.make_batch()
    eval_step = jt.make_eval_step(lambda p, b, model_state: {"logits": _tiny.TinyNet().apply({"params": p}, b["ids"])},
                                  compute_dtype=jnp.float32)
    expected = _tiny.TinyNet().apply({"params": jt.merge_lora(tree)}, batch["ids"])
    np.testing.assert_allclose(eval_step(state, batch)["logits"], expected, atol=1e-6)


def test_l2_sp_and_weight_average_cover_the_factors(params, adapters):
    tree = jt.LoraParams(params, adapters)
    tx = jt.make_optimizer(tree, RULES, optax.adamw, 1e-2, l2_sp=0.5)
    mask = jt.trainable_mask(tree, RULES)
    tx = optax.chain(tx, jt.average_weights(0.5, mask=mask))
    state = jt.TrainState.create(tree, tx)
    step = jt.make_train_step(_tiny.loss_fn, tx, trainable=mask, donate=False)
    for _ in range(2):
        state, _ = step(state, _tiny.make_batch())
    averaged = jt.averaged_params(state.params, state.opt_state)
    paths = jt.leaf_paths(averaged)
    got = dict(zip(paths, jax.tree.leaves(averaged)))
    now = dict(zip(paths, jax.tree.leaves(state.params)))
    factor = "layer_0/dense/kernel/lora_b"
    assert np.any(got[factor] != 0) and np.any(got[factor] != now[factor])   # averaged, not the current value


def test_stacked_kernel_gets_per_layer_factors():
    params = {"layers": {"kernel": jax.random.normal(jax.random.key(0), (3, 4, 5))}, "head": {"kernel": jnp.ones((5, 2))}}
    layer_ids = lambda path: [1, 2, 3] if path.startswith("layers/") else 4
    rules = [(r"layers/kernel", jt.lora(rank=2, alpha=2)), (r".*", jt.settings())]
    adapters = _random_b(jt.init_lora(params, rules, jax.random.key(1), layer_ids=layer_ids))
    f = adapters["layers"]["kernel"]
    assert f.lora_a.shape == (3, 4, 2) and f.lora_b.shape == (3, 2, 5)
    merged = jt.apply_lora(params, adapters)["layers"]["kernel"]
    for layer in range(3):
        np.testing.assert_allclose(merged[layer], params["layers"]["kernel"][layer] + f.lora_a[layer] @ f.lora_b[layer],
                                   atol=1e-6)
    mults = jt.lr_multipliers(jt.LoraParams(params, adapters), rules, layer_ids, 0.5)
    assert mults.params["layers"]["kernel"].shape == (3, 1, 1) and mults.adapters["layers"]["kernel"].lora_a.shape == (3, 1, 1)


def test_conv_1x1_kernel_and_refused_shapes():
    params = {"proj": {"kernel": jnp.ones((1, 1, 4, 6))}, "conv": {"kernel": jnp.ones((3, 3, 4, 6))}}
    adapters = jt.init_lora(params, [(r"proj/kernel", jt.lora(rank=2)), (r".*", jt.freeze())], jax.random.key(0))
    assert adapters["proj"]["kernel"].lora_a.shape == (4, 2)
    assert jt.apply_lora(params, _random_b(adapters))["proj"]["kernel"].shape == (1, 1, 4, 6)
    with pytest.raises(jt.RuleError, match=r"conv/kernel of shape \(3, 3, 4, 6\)"):
        jt.init_lora(params, [(r".*/kernel", jt.lora(rank=2))], jax.random.key(0))
    with pytest.raises(jt.RuleError, match="no parameter gets LoRA factors"):
        jt.init_lora(params, [(r"nothing", jt.lora(rank=2)), (r".*", jt.settings())], jax.random.key(0))
    with pytest.raises(jt.RuleError, match="do not fit the kernel"):
        jt.apply_lora({"proj": {"kernel": jnp.ones((1, 1, 5, 6))}}, adapters)


class _Nnx(nnx.Module):
    def __init__(self, rngs):
        self.query = nnx.Linear(4, 4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.query(x)))


def test_nnx_state():
    model = _Nnx(nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    rules = [(r"query/kernel", jt.lora(rank=2)), (r".*", jt.freeze())]
    adapters = _random_b(jt.init_lora(state, rules, jax.random.key(0)))
    merged = jt.merge_lora(state, adapters)
    assert isinstance(merged, nnx.State)
    f = adapters["query"]["kernel"]
    x = jnp.ones((3, 4))
    expected = jnp.tanh(x @ state["query"]["kernel"][...] + state["query"]["bias"][...] + f.scale * x @ f.lora_a @ f.lora_b)
    expected = expected @ state["out"]["kernel"][...] + state["out"]["bias"][...]
    np.testing.assert_allclose(nnx.merge(graphdef, merged)(x), expected, atol=1e-5)
    assert "query/kernel/lora_a" in jt.leaf_paths(jt.LoraParams(state, adapters))


def test_resnet_1x1_convolutions_get_factors_and_batch_norm_stays_frozen():
    from jaxtune.bench.cases import _resnet_config
    from jaxtune.models import resnet

    model = resnet.build(_resnet_config(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1), num_labels=3),
                         "image_classification", 3)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 16, 16, 3)), train=False), jax.random.key(0))
    rules = [(r".*/(layer_0|layer_2|shortcut)/convolution/kernel", jt.lora(rank=2, name="lora")),
             (r"classifier/.*", jt.settings()), (r".*", jt.freeze())]
    adapters = jt.init_lora(variables["params"], rules, jax.random.key(1))   # shapes are enough
    flat = factors_by_path(adapters)
    assert len(flat) == 6   # the 1x1 convolutions; the 3x3 ones stay plain
    f = flat["resnet/encoder/stages_1/layers_0/shortcut/convolution/kernel"]
    assert f.lora_a.shape == (16, 2) and f.lora_b.shape == (2, 32)
    tree = jt.LoraParams(variables["params"], adapters)
    assert len(jt.frozen_batch_norm({**variables, "params": tree}, rules)) == 9   # all: their scale/bias are frozen
    assert "lora (base)" in jt.summary(tree, rules, batch_stats=variables["batch_stats"])


def test_save_pretrained_writes_lora_params_merged(tmp_path):
    from jaxtune.models import bert

    config = bert.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8, max_position_embeddings=16)
    model = bert.build(config, None)
    params = jax.eval_shape(lambda k: model.init(k, *bert.example_inputs(config)), jax.random.key(0))["params"]
    params = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), params)
    adapters = _random_b(jt.init_lora(params, [(r".*/query/kernel", jt.lora(rank=2)), (r".*", jt.freeze())],
                                      jax.random.key(0)))
    jt.save_pretrained(jt.LoraParams(params, adapters), config, tmp_path)
    _, loaded = jt.from_pretrained(tmp_path)
    expected = jt.merge_lora(params, adapters)["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    np.testing.assert_allclose(loaded["params"]["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"],
                               expected, atol=1e-6)


def test_members_share_the_frozen_base_and_train_their_own_factors(params):
    rules = [(r"layer_\d/dense/kernel", jt.lora(rank=RANK)), (r".*", jt.freeze())]
    tx = jt.make_optimizer(jt.LoraParams(params, jt.init_lora(params, rules, jax.random.key(0))), rules,
                           optax.adam, 1e-2)
    states = [jt.TrainState.create(jt.LoraParams(params, jt.init_lora(params, rules, jax.random.key(seed))), tx)
              for seed in range(2)]
    mask = jt.trainable_mask(states[0].params, rules)
    stacked = jt.stack_members(states, share=jax.tree.map(lambda t: not t, mask))
    assert stacked.params.params["embeddings"]["embedding"].shape[0] == 1   # the base is stored once
    step = jt.make_train_step(_tiny.loss_fn, tx, trainable=mask, members=2, donate=False)
    new, metrics = step(stacked, _tiny.make_batch())
    separate = jt.make_train_step(_tiny.loss_fn, tx, trainable=mask, donate=False)
    for i, state in enumerate(states):
        alone, alone_metrics = separate(state, _tiny.make_batch())
        np.testing.assert_allclose(metrics["loss"][i], alone_metrics["loss"], rtol=1e-6)
        np.testing.assert_allclose(jt.unstack_members(new, i).params.adapters["layer_2"]["dense"]["kernel"].lora_b,
                                   alone.params.adapters["layer_2"]["dense"]["kernel"].lora_b, atol=1e-6)
