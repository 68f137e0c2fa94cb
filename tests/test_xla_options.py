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


def _dropout(key, x):
    return jnp.where(jax.random.bernoulli(key, 0.9, x.shape), x / 0.9, 0.0)


def _lowered_text(platform: str) -> str:
    args = (jax.random.key(0), jnp.ones((4, 8), jnp.float32))
    return jax.jit(_dropout).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_gpu_threefry_kernel_replaces_the_unrolled_hash_on_gpu_only(restore_threefry_lowering):
    jt.use_gpu_threefry_kernel(False)
    xla_ops = _lowered_text("cuda")
    cpu_before = _lowered_text("cpu")
    assert jt.use_gpu_threefry_kernel(True) is False            # returns the previous setting
    kernel = _lowered_text("cuda")
    # the GPU program calls jaxlib's kernel instead of carrying the 20 unrolled rounds
    assert "cu_threefry2x32_ffi" in kernel and "cu_threefry2x32_ffi" not in xla_ops
    assert kernel.count("\n") < xla_ops.count("\n") / 2
    assert _lowered_text("cpu") == cpu_before                    # nothing changes off GPU


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU: the kernel exists only there")
def test_gpu_threefry_kernel_draws_the_same_bits(restore_threefry_lowering):
    key, x = jax.random.key(3), jnp.ones((64, 1000), jnp.float32)
    draws = []
    for enabled in (False, True):
        jt.use_gpu_threefry_kernel(enabled)
        draws.append(np.asarray(jax.jit(_dropout)(key, x)))
    np.testing.assert_array_equal(draws[0], draws[1])


def test_runner_compile_settings_follow_the_train_section(restore_threefry_lowering):
    jt.use_run_compile_settings(jt.TrainConfig(compilation_cache=False, gpu_threefry_kernel=False))
    assert jax.config.jax_threefry_gpu_kernel_lowering is False
    jt.use_run_compile_settings(jt.TrainConfig(compilation_cache=False))
    assert jax.config.jax_threefry_gpu_kernel_lowering is True      # the default
    with pytest.raises(jt.ConfigError, match="train.gpu_threefry_kernel"):
        jt.load_config(None, ["train.gpu_threefry_kernel=sometimes"])
    # the same bits either way: the key is not part of the run's fingerprint
    on, _ = jt.run_fingerprint(jt.load_config(None, []))
    off, _ = jt.run_fingerprint(jt.load_config(None, ["train.gpu_threefry_kernel=false"]))
    assert on == off
