"""Stage-fresh optimizer statistics: a leaf unfrozen at step k moves as a fresh optimizer started at k
(issue #13, item 1), in structural and runtime mode; frozen leaves' statistics stand still."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from tests._tiny import init_params, layer_ids, loss_fn, make_batch

F32 = jnp.float32
SCHEDULE = jt.warmup_linear(0.1, 2, 40)  # the learning rate changes every step: a wrong step is visible
WD = 0.01
K = 3  # steps before the unfreezing
AFTER = 4  # steps compared after it


def _by_path(tree):
    return dict(zip(jt.leaf_paths(tree), jax.tree.leaves(tree)))


def _fresh_adamw_started_at(k):
    return optax.adamw(lambda count: SCHEDULE(count + k), weight_decay=WD)


def _grads(params, batch):
    return jax.grad(lambda p: loss_fn(p, batch, rng=None, model_state={})[0])(params)


# A toy with exact gradients: loss = sum(params * batch["g"]), so d loss / d params == batch["g"] bit for bit
# and the step's update can be compared with a reference optimizer fed the same gradients.
TOY_IDS = {"embed": 0, "layer_0": 1, "layer_1": 2, "head": 3}


def _toy_params():
    shapes = {"embed": {"table": (4, 3)}, "layer_0": {"kernel": (3, 3)}, "layer_1": {"kernel": (3, 3), "bias": (3,)},
              "head": {"kernel": (3, 2)}}
    keys = iter(jax.random.split(jax.random.key(0), 5))
    return jax.tree.map(lambda s: jax.random.normal(next(keys), s), shapes, is_leaf=lambda x: isinstance(x, tuple))


def _toy_layer_ids(path):
    return TOY_IDS[path.split("/")[0]]


def _toy_loss(params, batch, *, rng, model_state):
    terms = jax.tree.map(lambda p, g: jnp.sum(p * g[0]), params, batch["g"])
    return sum(jax.tree.leaves(terms)), ({}, model_state)


def _toy_batch(params, i):
    keys = iter(jax.random.split(jax.random.key(100 + i), len(jax.tree.leaves(params))))
    return {"g": jax.tree.map(lambda p: jax.random.normal(next(keys), (1,) + p.shape), params)}


def _assert_moved_by(new, old, expected, path):
    """``new - old == expected`` to 1e-6 relative (fp32), plus the rounding of ``old + update``."""
    new, old, expected = (np.asarray(x, np.float64) for x in (new, old, expected))
    slack = 1e-6 * np.abs(expected) + np.spacing(np.abs(new).astype(np.float32))
    assert np.all(np.abs((new - old) - expected) <= slack), (path, np.max(np.abs((new - old) - expected)))


def _state_leaves_of(opt_state, name):
    """The optimizer-state arrays that belong to parameter subtree ``name`` (keyed by it)."""
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(opt_state)
            if f"['{name}']" in jax.tree_util.keystr(k)}


def _check_unfrozen_leaf_moves_like_a_fresh_adamw(run_step, state, leaf, factor):
    """Runs AFTER steps with ``run_step`` and compares ``leaf``'s moves with a fresh optax.adamw."""
    ref = _fresh_adamw_started_at(K)
    ref_state = ref.init(_by_path(state.params)[leaf])
    for i in range(K, K + AFTER):
        batch = _toy_batch(state.params, i)
        old = jax.tree.map(np.asarray, state.params)
        u_ref, ref_state = ref.update(_by_path(batch["g"])[leaf][0], ref_state, _by_path(old)[leaf])
        state = run_step(state, batch)
        _assert_moved_by(_by_path(state.params)[leaf], _by_path(old)[leaf], factor * np.asarray(u_ref), leaf)


@pytest.mark.parametrize("mode", ["structural", "runtime"])
def test_a_group_unfrozen_at_step_k_moves_like_a_fresh_adamw_started_at_k(mode):
    params = _toy_params()
    runtime = mode == "runtime"
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, SCHEDULE, weight_decay=WD,
                           layer_ids=_toy_layer_ids, layer_decay=0.5, runtime=runtime)
    stages = jt.unfreezing_stages(params, _toy_layer_ids)  # head; + layer_1; + layer_0; + embed
    state = jt.TrainState.create(params, tx)
    if runtime:
        plain = jt.make_train_step(_toy_loss, tx, compute_dtype=F32, donate=False)
        step = lambda s, b, stage: plain(s.replace(opt_state=jt.set_trainable(s.opt_state, stage)), b)
    else:
        step = jt.StagedTrainStep(_toy_loss, tx, compute_dtype=F32, donate=False)
    init_layer_1 = _state_leaves_of(tx.init(params), "layer_1")
    before = _by_path(jax.tree.map(np.asarray, params))
    for i in range(K):
        state, _ = step(state, _toy_batch(params, i), stages[0])
    factor = 0.5 ** (TOY_IDS["head"] - TOY_IDS["layer_1"])  # LLRD multiplier of layer_1
    run = lambda s, b: step(s, b, stages[1])[0]
    for leaf in ("layer_1/kernel", "layer_1/bias"):
        _check_unfrozen_leaf_moves_like_a_fresh_adamw(run, state, leaf, factor)
    # During the K frozen steps layer_1's moments and step counts stayed exactly at their initial
    # values, and its weights (weight decay included) did not move.
    stats = {k: v for k, v in _state_leaves_of(state.opt_state, "layer_1").items() if ".leaves[" in k}
    assert any(k.endswith(".mu") for k in stats) and any(k.endswith(".count") for k in stats), list(stats)
    for key, value in stats.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(init_layer_1[key]), err_msg=key)
    for path, value in _by_path(state.params).items():
        assert np.array_equal(np.asarray(value), before[path]) != path.startswith("head/"), path


def test_nan_gradient_on_a_runtime_frozen_leaf_reaches_neither_param_nor_state():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2, weight_decay=WD, runtime=True)

    def nan_grad_loss(params, batch, *, rng, model_state):
        loss, aux = loss_fn(params, batch, rng=rng, model_state=model_state)
        # Value 0, gradient 0 * inf = NaN on the embedding.
        return loss + jnp.sum(jnp.sqrt(0.0 * params["embeddings"]["embedding"])), aux

    mask = jax.tree.map(lambda _: True, params)
    mask["embeddings"]["embedding"] = False
    state = jt.TrainState.create(params, tx)
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, mask))
    step = jt.make_train_step(nan_grad_loss, tx, compute_dtype=F32, donate=False)
    nan_grads = jax.grad(lambda p: nan_grad_loss(p, make_batch(), rng=None, model_state={})[0])(params)
    assert np.isnan(np.asarray(nan_grads["embeddings"]["embedding"])).all()
    before_state = _state_leaves_of(state.opt_state, "embeddings")
    for i in range(3):
        state, _ = step(state, make_batch(seed=i))
    np.testing.assert_array_equal(np.asarray(state.params["embeddings"]["embedding"]),
                                  np.asarray(params["embeddings"]["embedding"]))
    for key, value in _state_leaves_of(state.opt_state, "embeddings").items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(before_state[key]), err_msg=key)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.opt_state))
    assert not np.array_equal(np.asarray(state.params["head"]["kernel"]), np.asarray(params["head"]["kernel"]))


def test_stacked_leaf_layers_unfrozen_one_at_a_time_get_fresh_statistics_each():
    params = {"layers": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 2, 2)}, "head": {"kernel": jnp.ones(2)}}
    ids = lambda p: [1, 2, 3] if p.startswith("layers") else 4
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, SCHEDULE, weight_decay=WD,
                           layer_ids=ids, runtime=True)
    stages = jt.unfreezing_stages(params, ids)  # head; + layer 3 (slice 2); + slice 1; + slice 0
    state = jt.set_trainable(tx.init(params), stages[0])
    grad_at = lambda i: jax.tree.map(lambda x: jnp.sin(x * (i + 2.0)) + 0.1 * i, params)
    for i in range(K):
        updates, state = tx.update(grad_at(i), state, params)
        np.testing.assert_array_equal(np.asarray(updates["layers"]["kernel"]), 0.0)
    state = jt.set_trainable(state, stages[1])
    ref = _fresh_adamw_started_at(K)
    ref_state = ref.init(params["layers"]["kernel"][2])
    for i in range(K, K + AFTER):
        updates, state = tx.update(grad_at(i), state, params)
        u_ref, ref_state = ref.update(grad_at(i)["layers"]["kernel"][2], ref_state, params["layers"]["kernel"][2])
        np.testing.assert_allclose(np.asarray(updates["layers"]["kernel"][2]), np.asarray(u_ref), rtol=1e-6, atol=0)
        np.testing.assert_array_equal(np.asarray(updates["layers"]["kernel"][:2]), 0.0)
    counts = lambda name: [np.asarray(v).tolist() for k, v in _state_leaves_of(state, name).items()
                           if k.endswith(".count")]
    assert counts("layers") == [[0, 0, AFTER]] and counts("head") == [K + AFTER]  # Adam step counts per layer


def test_optimizer_level_update_equals_fresh_adamw_and_frozen_update_is_exactly_zero():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, SCHEDULE, weight_decay=WD)
    head_only = jax.tree.map(lambda _: False, params)
    head_only["head"] = jax.tree.map(lambda _: True, params["head"])
    everything = jax.tree.map(lambda _: True, params)
    state = tx.init(params)
    grads = lambda i: jax.tree.map(lambda x: jnp.cos(x * (i + 1.0)), params)
    for i in range(K):
        updates, state = tx.update(grads(i), state, params, trainable=head_only)
        assert float(jnp.abs(updates["layer_0"]["dense"]["kernel"]).max()) == 0.0
    ref = _fresh_adamw_started_at(K)
    ref_state = ref.init(params["layer_0"])
    for i in range(K, K + AFTER):
        updates, state = tx.update(grads(i), state, params, trainable=everything)
        u_ref, ref_state = ref.update(grads(i)["layer_0"], ref_state, params["layer_0"])
        for path, u in _by_path(u_ref).items():
            np.testing.assert_allclose(np.asarray(_by_path(updates["layer_0"])[path]), np.asarray(u), rtol=1e-6,
                                       atol=0, err_msg=path)


def test_per_layer_flags_for_an_unstacked_leaf_are_a_clear_error():
    params = {"w": jnp.ones((3, 2))}
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adam, 0.1)
    with pytest.raises(ValueError, match="w: per-layer trainable flags"):
        tx.update({"w": jnp.ones((3, 2))}, tx.init(params), params, trainable={"w": np.array([True, False, True])})


def test_docstring_examples():
    import doctest

    import jaxtune.stage_fresh

    assert doctest.testmod(jaxtune.stage_fresh).failed == 0
