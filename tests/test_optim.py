import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from tests._tiny import LAYERS, init_params, layer_ids, loss_fn, make_batch

RULES = [
    (r"embeddings/.*", jt.freeze()),
    (r"layer_0/.*", jt.freeze()),
    (r".*(bias|LayerNorm/scale)", jt.settings(weight_decay=False)),
    (r".*", jt.settings()),
]


def _by_path(tree):
    return dict(zip(jt.leaf_paths(tree), jax.tree.leaves(tree)))


def _n_params(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def test_frozen_leaves_bit_identical_after_20_adamw_steps():
    params = init_params()
    before = jax.tree.map(np.asarray, params)
    tx = jt.make_optimizer(params, RULES, optax.adamw, 1e-2, weight_decay=0.1)
    state = jt.TrainState.create(params, tx)
    step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32)
    for _ in range(20):
        state, metrics = step(state, make_batch())
    after = _by_path(state.params)
    for path, old in _by_path(before).items():
        if path.startswith(("embeddings/", "layer_0/")):
            np.testing.assert_array_equal(np.asarray(after[path]), old, err_msg=path)
        else:
            assert np.abs(np.asarray(after[path]) - old).max() > 1e-4, f"{path} did not train"


def _state_bytes(opt_state):
    arrays = [x for x in jax.tree.leaves(opt_state) if hasattr(x, "nbytes")]
    return sum(x.nbytes for x in arrays if x.ndim > 0), [x for x in arrays if x.ndim == 0]


def test_optimizer_state_holds_only_trainable_moments():
    params = init_params()
    mask = jt.trainable_mask(params, RULES)
    n_trainable = sum(int(np.size(x)) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    tx = jt.make_optimizer(params, RULES, optax.adamw, 1e-3, weight_decay=0.1)
    array_bytes, scalars = _state_bytes(tx.init(params))
    assert array_bytes == 2 * 4 * n_trainable  # mu and nu, float32
    assert all(s.dtype == jnp.int32 for s in scalars)  # only Adam step counts besides the moments
    # A whole frozen subtree (here: a big extra tower) adds zero bytes.
    bigger = dict(params, frozen_tower={"kernel": jnp.zeros((256, 256)), "bias": jnp.zeros(256)})
    tx2 = jt.make_optimizer(bigger, [(r"frozen_tower/.*", jt.freeze())] + RULES, optax.adamw, 1e-3, weight_decay=0.1)
    assert _state_bytes(tx2.init(bigger))[0] == array_bytes


@pytest.mark.parametrize("decay", [0.5, 0.8])
def test_llrd_one_sgd_step_moves_each_layer_by_lr_decay_power(decay):
    params = init_params()
    lr = 0.1
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.sgd, lr, layer_ids=layer_ids, layer_decay=decay)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    top = LAYERS + 1
    for path, p_new in _by_path(new).items():
        moved = np.asarray(p_new) - np.asarray(_by_path(params)[path])
        expected = -lr * decay ** (top - layer_ids(path))
        np.testing.assert_allclose(moved, expected, rtol=1e-5, atol=0, err_msg=path)  # float32


def test_per_rule_weight_decay_and_lr_mult():
    params = {"a": jnp.ones(3), "b": jnp.ones(3), "c": jnp.ones(3)}
    rules = [("a", jt.settings(weight_decay=False)), ("b", jt.settings(weight_decay=0.5, lr_mult=2.0)), ("c", jt.settings())]
    tx = jt.make_optimizer(params, rules, optax.adamw, 0.1, weight_decay=0.1)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)  # zero grads: the update is decay alone
    np.testing.assert_allclose(updates["a"], 0.0)
    np.testing.assert_allclose(updates["b"], -0.1 * 2.0 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["c"], -0.1 * 0.1, rtol=1e-6)


def test_weight_decay_for_optimizer_without_own_argument():
    params = {"w": jnp.ones(2)}
    tx = jt.make_optimizer(params, [("w", jt.settings(weight_decay=0.5))], optax.sgd, 0.1)
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5, rtol=1e-6)


def test_schedules():
    cos = jt.warmup_cosine(1.0, warmup_steps=10, total_steps=110)
    assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.0, abs=1e-7)
    assert float(cos(60)) == pytest.approx(0.5, abs=1e-6)
    lin = jt.warmup_linear(2.0, warmup_steps=10, total_steps=110)
    assert float(lin(5)) == pytest.approx(1.0) and float(lin(60)) == pytest.approx(1.0) and float(lin(110)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        jt.warmup_cosine(1.0, 20, 10)
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.sgd, jt.warmup_linear(1.0, 1, 10))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["head"]["bias"]).max()) == 0.0  # step 0 of the warm-up: lr 0


def test_llrd_without_layer_ids_is_a_clear_error():
    with pytest.raises(jt.RuleError, match="layer_ids"):
        jt.make_optimizer(init_params(), [(r".*", jt.settings())], layer_decay=0.9)


def test_stacked_layers_get_per_layer_multipliers():
    # A scanned block: leading axis = layer. Layer ids 1..3, head 4.
    params = {"layers": {"kernel": jnp.zeros((3, 2, 2))}, "head": {"kernel": jnp.zeros((2, 2))}}
    ids = lambda p: [1, 2, 3] if p.startswith("layers") else 4
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.sgd, 1.0, layer_ids=ids, layer_decay=0.5)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["layers"]["kernel"][:, 0, 0], [-0.125, -0.25, -0.5])
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0)
    with pytest.raises(jt.RuleError, match="leading"):
        jt.make_optimizer(params, [(r".*", jt.settings())], optax.sgd, 1.0, layer_ids=lambda p: [1, 2], layer_decay=0.5)


def test_runtime_mode_set_lr_multipliers_and_stacked_freezing():
    params = {"layers": {"kernel": jnp.zeros((3, 2))}, "head": {"kernel": jnp.zeros(2)}}
    ids = lambda p: [1, 2, 3] if p.startswith("layers") else 4
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.sgd, 1.0, runtime=True, layer_ids=ids)
    state = tx.init(params)
    with pytest.raises(ValueError, match="per-layer values need a stacked leaf"):
        jt.set_trainable(state, {"layers": {"kernel": True}, "head": {"kernel": np.array([True, False])}})
    state = jt.set_trainable(state, {"layers": {"kernel": np.array([False, True, True])}, "head": {"kernel": True}})
    state = jt.set_lr_multipliers(state, {"layers": {"kernel": 1.0}, "head": {"kernel": 3.0}})
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    np.testing.assert_allclose(updates["layers"]["kernel"][:, 0], [0.0, -1.0, -1.0])
    np.testing.assert_allclose(updates["head"]["kernel"], -3.0)
    with pytest.raises(ValueError, match="runtime=True"):
        jt.set_trainable(optax.sgd(1.0).init(params), params)


def test_unfreezing_stages_top_first():
    params = init_params()
    stages = jt.unfreezing_stages(params, layer_ids)
    assert len(stages) == LAYERS + 2
    first = dict(zip(jt.leaf_paths(params), jax.tree.leaves(stages[0])))
    assert all(v == p.startswith("head/") for p, v in first.items())
    last = jax.tree.leaves(stages[-1])
    assert all(last)
    grouped = jt.unfreezing_stages(params, layer_ids, rules=[(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())], num_stages=2)
    final = dict(zip(jt.leaf_paths(params), jax.tree.leaves(grouped[-1])))
    assert final["embeddings/embedding"] is False and final["layer_0/dense/kernel"] is True
