"""L2-SP, weight averaging, WiSE-FT interpolation and drift (jaxtune/forgetting.py), alone, in rule
tables, in the jitted step and through a checkpoint. All float32; tolerances say what they allow."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.checkpoint import Checkpointer
from tests._tiny import init_params, layer_ids, loss_fn, make_batch

BACKBONE_L2SP = [
    (r"head/.*", jt.settings(name="head")),
    (r"embeddings/.*", jt.freeze("embeddings")),
    (r".*", jt.settings(l2_sp=0.3, name="backbone")),
]


def _by_path(tree):
    return dict(zip(jt.leaf_paths(tree), jax.tree.leaves(tree)))


def _quadratic(target):
    """Loss c/2 ||θ - target||² with c = 2, as a function of the params dict."""
    return lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)


def test_l2_sp_equals_adam_on_the_penalised_loss():
    anchor = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([0.3])}
    target = {"w": jnp.array([4.0, 0.0, -1.0]), "b": jnp.array([-2.0])}
    data_loss, strength = _quadratic(target), 0.7
    penalised = lambda p: data_loss(p) + strength / 2 * sum(jnp.sum((p[k] - anchor[k]) ** 2) for k in p)
    tx_ours, tx_ref = optax.chain(jt.l2_sp(strength), optax.adam(0.05)), optax.adam(0.05)
    ours, ref = dict(anchor), dict(anchor)
    s_ours, s_ref = tx_ours.init(ours), tx_ref.init(ref)
    for _ in range(25):
        u, s_ours = tx_ours.update(jax.grad(data_loss)(ours), s_ours, ours)
        ours = optax.apply_updates(ours, u)
        u, s_ref = tx_ref.update(jax.grad(penalised)(ref), s_ref, ref)
        ref = optax.apply_updates(ref, u)
    for k in anchor:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(ours["w"] - anchor["w"]).max()) > 0.5  # it did train


def test_l2_sp_sgd_settles_at_the_analytic_equilibrium():
    # d/dθ [||θ - t||² + s/2 ||θ - a||²] = 0  ->  θ* = (2 t + s a) / (2 + s)
    anchor, target, strength = {"w": jnp.array([1.0, -3.0])}, {"w": jnp.array([5.0, 1.0])}, 2.0
    tx = optax.chain(jt.l2_sp(strength), optax.sgd(0.1))
    params, state = anchor, tx.init(anchor)
    for _ in range(200):
        u, state = tx.update(jax.grad(_quadratic(target))(params), state, params)
        params = optax.apply_updates(params, u)
    expected = (2 * target["w"] + strength * anchor["w"]) / (2 + strength)
    np.testing.assert_allclose(params["w"], expected, atol=1e-5)


def test_anchor_decay_is_l2_sp_for_sgd_and_decoupled_for_adam():
    anchor = {"w": jnp.array([1.0, -2.0, 0.5])}
    target = {"w": jnp.array([4.0, 0.0, -1.0])}
    grad = jax.grad(_quadratic(target))
    sched = optax.linear_schedule(0.1, 0.01, 20)

    def run(tx, steps=20):
        params, state = anchor, tx.init(anchor)
        for _ in range(steps):
            u, state = tx.update(grad(params), state, params)
            params = optax.apply_updates(params, u)
        return params["w"]

    # SGD: the decoupled pull -lr*S*(w - w0) is the coupled penalty's gradient step.
    np.testing.assert_allclose(run(optax.chain(optax.sgd(sched), jt.anchor_decay(0.7, sched))),
                               run(optax.chain(jt.l2_sp(0.7), optax.sgd(sched))), rtol=1e-6, atol=1e-6)
    # Adam: w <- w + adam_update - lr(t) * S * (w - w0), outside Adam's normalisation.
    adam, params = optax.adam(sched), dict(anchor)
    adam_state = adam.init(params)
    for t in range(20):
        u, adam_state = adam.update(grad(params), adam_state, params)
        params = {"w": params["w"] + u["w"] - sched(t) * 0.7 * (params["w"] - anchor["w"])}
    np.testing.assert_allclose(run(optax.chain(optax.adam(sched), jt.anchor_decay(0.7, sched))), params["w"],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        jt.anchor_decay(-1.0, 0.1)


def test_rule_table_decoupled_l2_sp_matches_a_hand_built_optimizer():
    params = init_params()
    tx = jt.make_optimizer(params, BACKBONE_L2SP, optax.adamw, 1e-2, weight_decay=0.0, l2_sp_decoupled=True)
    labels = jax.tree.map(lambda n: {"head": "head", "embeddings": "frozen", "backbone": "backbone"}[n],
                          jt.label_params(params, BACKBONE_L2SP))
    ref = optax.partition({"head": optax.adamw(1e-2, weight_decay=0.0),
                           "backbone": optax.chain(optax.adamw(1e-2, weight_decay=0.0), jt.anchor_decay(0.3, 1e-2)),
                           "frozen": optax.set_to_zero()}, labels)
    moved = jax.tree.map(lambda x: x + 0.5, params)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
    ours, _ = tx.update(grads, tx.init(params), moved)
    theirs, _ = ref.update(grads, ref.init(params), moved)
    for path, u in _by_path(ours).items():
        np.testing.assert_allclose(u, _by_path(theirs)[path], rtol=1e-6, atol=1e-8, err_msg=path)
    coupled, _ = (t := jt.make_optimizer(params, BACKBONE_L2SP, optax.adamw, 1e-2, weight_decay=0.0)).update(
        grads, t.init(params), moved)
    assert not np.allclose(_by_path(coupled)["layer_0/dense/kernel"], _by_path(ours)["layer_0/dense/kernel"])


def test_l2_sp_mask_leaves_other_parameters_alone_and_stores_no_anchor_for_them():
    params = {"body": jnp.ones(3), "head": jnp.ones(2)}
    tx = jt.l2_sp(1.0, mask={"body": True, "head": False})
    state = tx.init(params)
    anchors = optax.tree.get_all_with_path(state, "anchor")[0][1]
    assert isinstance(anchors["head"], optax.MaskedNode)
    moved = {"body": jnp.full(3, 3.0), "head": jnp.full(2, 3.0)}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, moved)
    np.testing.assert_array_equal(updates["body"], np.full(3, 2.0))
    np.testing.assert_array_equal(updates["head"], np.zeros(2))


def test_l2_sp_without_params_is_a_clear_error():
    tx = jt.l2_sp(0.1)
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match=">= 0"):
        jt.l2_sp(-1.0)
    with pytest.raises(ValueError, match="l2_sp must be >= 0"):
        jt.settings(l2_sp=-0.1)


def test_rule_table_l2_sp_matches_a_hand_built_optimizer():
    params = init_params()
    tx = jt.make_optimizer(params, BACKBONE_L2SP, optax.adamw, 1e-2, weight_decay=0.0)
    labels = jax.tree.map(lambda n: {"head": "head", "embeddings": "frozen", "backbone": "backbone"}[n],
                          jt.label_params(params, BACKBONE_L2SP))
    ref = optax.partition({"head": optax.adamw(1e-2, weight_decay=0.0),
                           "backbone": optax.chain(jt.l2_sp(0.3), optax.adamw(1e-2, weight_decay=0.0)),
                           "frozen": optax.set_to_zero()}, labels)
    step, ref_step = (jt.make_train_step(loss_fn, t, compute_dtype=jnp.float32) for t in (tx, ref))
    fresh = lambda: jax.tree.map(jnp.copy, params)  # each state gets buffers of its own (donation)
    state, ref_state = jt.TrainState.create(fresh(), tx), jt.TrainState.create(fresh(), ref)
    for i in range(8):
        state, _ = step(state, make_batch(seed=i))
        ref_state, _ = ref_step(ref_state, make_batch(seed=i))
    ours, theirs, start = _by_path(state.params), _by_path(ref_state.params), _by_path(params)
    for path in ours:
        np.testing.assert_allclose(ours[path], theirs[path], rtol=1e-6, atol=1e-7, err_msg=path)
    # The anchor is the starting point, stored only for the backbone group (frozen: nothing).
    anchors = [a for _, a in optax.tree.get_all_with_path(state.opt_state, "anchor")]
    assert len(anchors) == 1
    stored = {p: a for p, a in zip(jt.leaf_paths(anchors[0]), jax.tree.leaves(anchors[0]))}
    assert stored and all(p.startswith("layer_") for p in stored)
    for path, a in stored.items():
        np.testing.assert_array_equal(a, start[path])


def test_l2_sp_default_strength_summary_and_runtime_mode():
    params = init_params()
    rules = [(r"head/.*", jt.settings(l2_sp=0.0)), (r".*", jt.settings())]
    with_default = jt.make_optimizer(params, rules, optax.sgd, 0.1, l2_sp=0.5)
    explicit = jt.make_optimizer(params, [(r"head/.*", jt.settings()), (r".*", jt.settings(l2_sp=0.5))],
                                 optax.sgd, 0.1)
    moved = jax.tree.map(lambda x: x + 1.0, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    a, _ = with_default.update(zeros, with_default.init(params), moved)
    b, _ = explicit.update(zeros, explicit.init(params), moved)
    for path, u in _by_path(a).items():
        np.testing.assert_array_equal(u, _by_path(b)[path])
        np.testing.assert_allclose(u, 0.0 if path.startswith("head/") else -0.05, atol=1e-7, err_msg=path)
    table = jt.summary(params, rules, l2_sp=0.5)
    assert "l2-sp" in table.splitlines()[0]
    assert {l.split()[0]: l.split()[-1] for l in table.splitlines()[2:4]} == {"head/.*": "-", ".*": "0.5"}
    assert "l2-sp" not in jt.summary(params, rules)
    frozen_rows = jt.summary(params, [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())], l2_sp=0.5)
    assert {l.split()[0]: l.split()[-1] for l in frozen_rows.splitlines()[2:4]} == {"embeddings/.*": "-", ".*": "0.5"}
    # Runtime mode: a frozen group keeps its anchor and gets its strength once unfrozen.
    runtime = jt.make_optimizer(params, [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())], optax.sgd,
                                0.1, runtime=True, l2_sp=0.5)
    state = jt.set_trainable(runtime.init(params), jax.tree.map(lambda _: True, params))
    u, _ = runtime.update(zeros, state, moved)
    np.testing.assert_allclose(_by_path(u)["embeddings/embedding"], -0.05, atol=1e-7)


def _ema_reference(sequence, decay, start_step):
    avg = sequence[0]
    for t, w in enumerate(sequence[1:], start=1):
        avg = w if t <= start_step + 1 else decay * avg + (1 - decay) * w
    return avg


@pytest.mark.parametrize("decay,start_step", [(0.9, 0), (0.5, 3), (None, 0), (None, 4)])
def test_average_weights_matches_a_numpy_average(decay, start_step):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=4), jnp.float32)}
    tx = optax.chain(optax.sgd(0.5), jt.average_weights(decay, start_step=start_step))
    state, seen = tx.init(params), [np.asarray(params["w"])]
    for _ in range(9):
        u, state = tx.update({"w": jnp.asarray(rng.normal(size=4), jnp.float32)}, state, params)
        params = optax.apply_updates(params, u)
        seen.append(np.asarray(params["w"]))
    if decay is None:
        expected = np.mean(seen[start_step + 1:], axis=0)
    else:
        expected = _ema_reference(seen, decay, start_step)
    np.testing.assert_allclose(jt.averaged_params(params, state)["w"], expected, rtol=1e-5, atol=1e-6)


def test_average_weights_mask_frozen_dict_and_errors():
    params = flax.core.freeze({"body": jnp.zeros(2), "head": jnp.zeros(3)})
    tx = optax.chain(optax.sgd(1.0), jt.average_weights(None, mask=flax.core.freeze({"body": True, "head": False})))
    state = tx.init(params)
    for _ in range(2):
        u, state = tx.update(jax.tree.map(lambda x: -jnp.ones_like(x), params), state, params)
        params = optax.apply_updates(params, u)
    out = jt.averaged_params(params, state)
    np.testing.assert_array_equal(out["body"], np.full(2, 1.5))   # mean of 1 and 2
    np.testing.assert_array_equal(out["head"], np.full(3, 2.0))   # not averaged: the weights
    with pytest.raises(ValueError, match="holds 0 weight averages"):
        jt.averaged_params(params, optax.sgd(1.0).init(params))
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        jt.average_weights(1.0)


def test_forgetting_state_survives_jit_donation_and_a_checkpoint(tmp_path):
    params = init_params()
    tx = optax.chain(jt.make_optimizer(params, BACKBONE_L2SP, optax.adamw, 1e-2, weight_decay=0.01),
                     jt.average_weights(0.8, mask=jt.trainable_mask(params, BACKBONE_L2SP)))
    step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32)
    fresh = lambda: jt.TrainState.create(jax.tree.map(jnp.copy, params), tx)  # own buffers (donation)
    straight = fresh()
    for i in range(6):
        straight, _ = step(straight, make_batch(seed=i))
    half = fresh()
    for i in range(3):
        half, _ = step(half, make_batch(seed=i))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, half)
    with Checkpointer(tmp_path) as ckpt:
        resumed, _ = ckpt.restore(template=fresh())
    for i in range(3, 6):
        resumed, _ = step(resumed, make_batch(seed=i))
    for a, b in zip(jax.tree.leaves(jt.averaged_params(resumed.params, resumed.opt_state)),
                    jax.tree.leaves(jt.averaged_params(straight.params, straight.opt_state))):
        np.testing.assert_array_equal(a, b)
    ema = _by_path(jt.averaged_params(straight.params, straight.opt_state))
    now = _by_path(straight.params)
    assert any(float(jnp.abs(ema[p] - now[p]).max()) > 1e-4 for p in ema if p.startswith("head/"))
    np.testing.assert_array_equal(ema["embeddings/embedding"], now["embeddings/embedding"])


def test_interpolate_params_wise_ft():
    start = {"body": jnp.zeros(3), "head": jnp.zeros(2)}
    end = {"body": jnp.full(3, 4.0), "head": jnp.full(2, 8.0)}
    np.testing.assert_array_equal(jt.interpolate_params(start, end, 0.0)["body"], np.zeros(3))
    np.testing.assert_array_equal(jt.interpolate_params(start, end, 1.0)["head"], np.full(2, 8.0))
    half = jt.interpolate_params(start, end, 0.25, mask={"body": True, "head": False})
    np.testing.assert_array_equal(half["body"], np.full(3, 1.0))
    np.testing.assert_array_equal(half["head"], np.full(2, 8.0))
    with pytest.raises(ValueError, match=r"body: shape \(2,\) in start but \(3,\) in end"):
        jt.interpolate_params({"body": jnp.zeros(2), "head": jnp.zeros(2)}, end, 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        jt.interpolate_params(start, end, 1.5)


def test_param_drift_per_group():
    params = init_params()
    rules = [(r"head/.*", jt.settings(name="head")), (r".*", jt.settings(name="rest"))]
    moved = jax.tree.map(lambda x: x, params)
    moved = dict(moved, head=jax.tree.map(lambda x: x * 1.5, params["head"]))
    drift = jt.param_drift(moved, params, jt.label_params(params, rules))
    assert drift["rest"] == 0.0
    np.testing.assert_allclose(drift["head"], 0.5, rtol=1e-6)
    head_sq = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(params["head"]))
    all_sq = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(params))
    np.testing.assert_allclose(drift["all"], 0.5 * np.sqrt(head_sq / all_sq), rtol=1e-5)
    with pytest.raises(ValueError, match="labels have 1 leaves"):
        jt.param_drift(moved, params, ["x"])


def test_structural_step_average_follows_the_weights_it_applies():
    params = init_params()
    stages = jt.unfreezing_stages(params, layer_ids, num_stages=2)
    # AdamW's weight decay updates the frozen leaves too; the step drops those updates, and so does the
    # average (the step passes it trainable=): over every leaf, or only over what the step trains.
    for mask in (None, stages[0]):
        tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), jt.average_weights(0.9, mask=mask))
        staged = jt.StagedTrainStep(loss_fn, tx, compute_dtype=jnp.float32)
        state = jt.TrainState.create(jax.tree.map(jnp.copy, params), tx)
        for _ in range(2):
            state, _ = staged(state, make_batch(), stages[0])
        averaged, weights = _by_path(jt.averaged_params(state.params, state.opt_state)), _by_path(state.params)
        np.testing.assert_array_equal(averaged["embeddings/embedding"], _by_path(params)["embeddings/embedding"])
        np.testing.assert_array_equal(weights["embeddings/embedding"], _by_path(params)["embeddings/embedding"])
        assert not np.array_equal(averaged["head/kernel"], weights["head/kernel"])          # an average of 2 steps
        assert not np.array_equal(averaged["head/kernel"], _by_path(params)["head/kernel"])


def test_rule_l2_sp_and_averaging_on_nnx_state():
    from flax import nnx

    params = nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    rules = [(r"bias", jt.settings(l2_sp=0.0)), (r".*", jt.settings(l2_sp=0.5))]
    tx = optax.chain(jt.make_optimizer(params, rules, optax.sgd, 0.1), jt.average_weights(None))
    state = tx.init(params)
    moved = jax.tree.map(lambda x: x + 1.0, params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, moved)
    by_path = _by_path(updates)
    np.testing.assert_allclose(by_path["kernel"], np.full((3, 2), -0.05), atol=1e-7)  # -lr * S * (w - w0)
    np.testing.assert_array_equal(by_path["bias"], np.zeros(2))
    averaged = jt.averaged_params(moved, state)
    assert isinstance(averaged, nnx.State)
    np.testing.assert_allclose(_by_path(averaged)["kernel"], _by_path(moved)["kernel"] - 0.05, atol=1e-7)
    np.testing.assert_allclose(jt.param_drift(moved, params, jt.label_params(params, rules))["bias"], np.sqrt(2.0))
