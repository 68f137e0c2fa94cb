"""The steps' XLA compiler options: memory-optimised scheduling on CPU, same numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.xla_options import CPU_STEP_OPTIONS, resolve_compiler_options


def _mlp_loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"])
    h = jnp.tanh(h @ params["w2"]) + h
    return jnp.mean((h @ params["w3"] - batch["y"]) ** 2)


def _setup():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(k1, (32, 64)) / 8, "w2": jax.random.normal(k2, (64, 64)) / 8,
              "w3": jax.random.normal(k3, (64, 1)) / 8}
    batch = {"x": jax.random.normal(k4, (256, 32)), "y": jnp.ones((256, 1))}
    return params, batch


def test_cpu_steps_get_the_memory_optimised_scheduler():
    assert jt.step_compiler_options("cpu") == CPU_STEP_OPTIONS
    assert jt.step_compiler_options("gpu") is None and jt.step_compiler_options("tpu") is None
    assert resolve_compiler_options("auto") == CPU_STEP_OPTIONS      # the test machine is a CPU
    assert resolve_compiler_options(None) is None


def test_scheduling_changes_no_number_and_no_more_memory():
    params, batch = _setup()
    tx = optax.adamw(1e-2)
    results, temps = {}, {}
    for name, options in [("auto", "auto"), ("xla_default", None)]:
        state = jt.TrainState.create(jax.tree.map(jnp.array, params), tx)
        step = jt.make_train_step(_mlp_loss, tx, compiler_options=options)
        temps[name] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
        for _ in range(3):
            state, metrics = step(state, batch)
        results[name] = (state.params, metrics["loss"])
    # float32, bit for bit: a scheduler orders the same ops, it does not change them
    for a, b in zip(jax.tree.leaves(results["auto"]), jax.tree.leaves(results["xla_default"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert temps["auto"] <= temps["xla_default"]


def test_eval_and_member_steps_take_the_options_too():
    params, batch = _setup()
    state = jt.TrainState.create(params, optax.sgd(0.1))
    eval_step = jt.make_eval_step(lambda p, b, model_state: {"loss": _mlp_loss(p, b)})
    auto_eval = jt.make_eval_step(lambda p, b, model_state: {"loss": _mlp_loss(p, b)}, compiler_options="auto")
    np.testing.assert_array_equal(np.asarray(eval_step(state, batch)["loss"]), np.asarray(auto_eval(state, batch)["loss"]))
    member_step = jt.make_train_step(_mlp_loss, optax.sgd(0.1), members=2, donate=False, compiler_options=None)
    stacked = jt.stack_members([state, state])
    _, metrics = member_step(stacked, batch)
    assert metrics["loss"].shape == (2,)
    # an eval step nested in the member eval's jit: JAX takes compiler options on the outer jit only
    member_eval = jt.make_member_eval_step(eval_step, members=2)
    np.testing.assert_array_equal(np.asarray(member_eval(stacked, batch)["loss"]),
                                  np.asarray([eval_step(state, batch)["loss"]] * 2))


@pytest.mark.parametrize("bad, error", [("fast", ValueError), (3, TypeError)])
def test_a_wrong_compiler_options_value_is_named(bad, error):
    with pytest.raises(error, match="compiler_options"):
        jt.make_train_step(_mlp_loss, optax.sgd(0.1), compiler_options=bad)
