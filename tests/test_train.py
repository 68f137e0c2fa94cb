import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from tests._tiny import LAYERS, init_params, layer_ids, loss_fn, make_batch

F32 = jnp.float32


def _by_path(tree):
    return dict(zip(jt.leaf_paths(tree), jax.tree.leaves(tree)))


def _moved(before, after):
    a, b = _by_path(before), _by_path(after)
    return {p for p in a if not np.array_equal(np.asarray(a[p]), np.asarray(b[p]))}


def test_step_returns_device_metrics_and_keeps_fp32_master_params():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2)
    loss32, _ = loss_fn(params, make_batch(), rng=None, model_state={})
    step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.bfloat16)
    state, metrics = step(jt.TrainState.create(params, tx), make_batch())
    assert set(metrics) == {"loss", "grad_norm", "accuracy", "nonfinite_leaf"}
    assert all(isinstance(v, jax.Array) for v in metrics.values())
    assert all(x.dtype == F32 for x in jax.tree.leaves(state.params))
    # bf16 compute: the loss agrees with the fp32 loss within bf16 tolerance (rel 2e-2).
    assert float(metrics["loss"]) == pytest.approx(float(loss32), rel=2e-2)
    assert int(state.step) == 1


def test_state_is_donated():
    params = init_params()
    tx = optax.sgd(0.1)
    state = jt.TrainState.create(params, tx)
    step = jt.make_train_step(loss_fn, tx, compute_dtype=F32)
    old_kernel = state.params["head"]["kernel"]
    state, _ = step(state, make_batch())
    assert old_kernel.is_deleted()


def test_runtime_unfreezing_three_stages_zero_recompiles():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2, runtime=True,
                           layer_ids=layer_ids, layer_decay=0.9)
    stages = jt.unfreezing_stages(params, layer_ids, num_stages=3)
    step = jt.make_train_step(loss_fn, tx, compute_dtype=F32)
    state = jt.TrainState.create(params, tx)
    state = state.replace(opt_state=jt.set_trainable(state.opt_state, stages[0]))
    assert jt.compile_count(step) == 0
    state, _ = step(state, make_batch())
    compiled_after_first = jt.compile_count(step)
    trained = []
    for stage in stages:
        state = state.replace(opt_state=jt.set_trainable(state.opt_state, stage))
        before = jax.tree.map(np.asarray, state.params)
        state, _ = step(state, make_batch())
        trained.append(_moved(before, state.params))
    assert compiled_after_first == 1 and jt.compile_count(step) == 1  # 0 new compilations
    # 5 layer ids in 3 groups, top first: {head, layer_2}, {layer_1, layer_0}, {embeddings}.
    assert trained[0] == {p for p in _by_path(params) if layer_ids(p) >= LAYERS}
    # Stage 3 trains everything, stage 2 a strict subset that still includes lower blocks than stage 1.
    assert trained[0] < trained[1] < trained[2]
    assert "embeddings/embedding" in trained[2] and "embeddings/embedding" not in trained[1]


def _count_dots(lowered) -> int:
    text = lowered.as_text()
    return text.count("stablehlo.dot_general") + text.count("stablehlo.convolution")


def test_structural_frozen_backbone_has_fewer_dots_and_same_head_update():
    params = init_params()
    rules = [(r"head/.*", jt.settings()), (r".*", jt.freeze())]
    tx = jt.make_optimizer(params, rules, optax.adamw, 1e-2, weight_decay=0.01)
    full = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False)
    structural = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False,
                                    trainable=jt.trainable_mask(params, rules))
    state = jt.TrainState.create(params, tx)
    batch = make_batch()
    n_full, n_struct = _count_dots(full.lower(state, batch)), _count_dots(structural.lower(state, batch))
    assert n_struct < n_full, (n_struct, n_full)
    s_full, _ = full(state, batch)
    s_struct, _ = structural(state, batch)
    for path, value in _by_path(s_full.params).items():
        np.testing.assert_allclose(np.asarray(_by_path(s_struct.params)[path]), np.asarray(value), atol=1e-6, rtol=0,
                                   err_msg=path)
    assert _moved(params, s_struct.params) == {"head/bias", "head/kernel"}


def test_structural_gradual_unfreezing_compiles_once_per_stage():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adam, 1e-2)
    staged = jt.StagedTrainStep(loss_fn, tx, compute_dtype=F32)
    stages = jt.unfreezing_stages(params, layer_ids)
    state = jt.TrainState.create(params, tx)
    moved_per_stage = []
    for stage in stages:
        for _ in range(2):
            before = jax.tree.map(np.asarray, state.params)
            state, _ = staged(state, make_batch(), stage)
        moved_per_stage.append(_moved(before, state.params))
    assert staged.num_stages_compiled == len(stages) == LAYERS + 2
    assert jt.compile_count(staged) == len(stages)  # each stage's step compiled once, over two steps
    for stage, moved in zip(stages, moved_per_stage):
        assert moved == {p for p, t in _by_path(stage).items() if t}


def test_gradient_accumulation_equals_big_batch():
    params = init_params()
    tx = jt.make_optimizer(params, [(r".*", jt.settings())], optax.adamw, 1e-2, weight_decay=0.1)
    batch = make_batch(16)
    one = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False)
    four = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False, accumulate=4)
    state = jt.TrainState.create(params, tx)
    s1, m1 = one(state, batch)
    s4, m4 = four(state, batch)
    for path, value in _by_path(s1.params).items():
        np.testing.assert_allclose(np.asarray(_by_path(s4.params)[path]), np.asarray(value), atol=1e-6, rtol=0,
                                   err_msg=path)
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    with pytest.raises(ValueError, match="not divisible by accumulate=4"):
        four(state, make_batch(6))


def test_train_step_fn_is_the_pure_step_and_vmaps_over_members():
    tx = jt.make_optimizer(init_params(), [(r".*", jt.settings())], optax.adamw, 1e-2, weight_decay=0.1, runtime=True)
    members = [jt.TrainState.create(init_params(seed), tx, rng=seed) for seed in (0, 1)]
    pure = jt.train_step_fn(loss_fn, tx, compute_dtype=F32)
    assert not hasattr(pure, "lower")  # not jitted: the caller transforms it
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
    batch = make_batch()
    vmapped, metrics = jax.jit(jax.vmap(pure, in_axes=(0, None)))(stacked, batch)
    single = jt.make_train_step(loss_fn, tx, compute_dtype=F32, donate=False)
    for i, member in enumerate(members):
        expected, expected_metrics = single(member, batch)
        for a, b in zip(jax.tree.leaves(vmapped.params), jax.tree.leaves(expected.params)):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-6, atol=1e-7)  # fp32
        np.testing.assert_allclose(float(metrics["loss"][i]), float(expected_metrics["loss"]), rtol=1e-6)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(2)(x)


def test_model_state_batch_stats_are_threaded_through_the_step():
    model = BNNet()
    x = jax.random.normal(jax.random.key(0), (8, 3))
    variables = model.init(jax.random.key(1), x, train=False)

    def bn_loss(params, batch, *, rng, model_state):
        out, updates = model.apply({"params": params, **model_state}, batch["x"], train=True, mutable=["batch_stats"])
        return jnp.mean(out ** 2), ({}, updates)

    tx = optax.sgd(0.1)
    state = jt.TrainState.create(variables["params"], tx, model_state={"batch_stats": variables["batch_stats"]})
    step = jt.make_train_step(bn_loss, tx, compute_dtype=F32, donate=False)
    state, _ = step(state, {"x": x})
    mean = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    h = x @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"]
    np.testing.assert_allclose(np.asarray(mean), 0.5 * np.asarray(h.mean(0)), atol=1e-5)


def test_eval_step():
    params = init_params()
    state = jt.TrainState.create(params, optax.sgd(0.1))

    def eval_fn(params, batch, *, model_state):
        loss, (metrics, _) = loss_fn(params, batch, rng=None, model_state=model_state)
        return {"loss": loss, **metrics}

    metrics = jt.make_eval_step(eval_fn, compute_dtype=F32)(state, make_batch())
    expected, _ = loss_fn(params, make_batch(), rng=None, model_state={})
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-6)


MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxtune as jt
    from tests._tiny import init_params, loss_fn, make_batch
    assert len(jax.devices()) == 8, jax.devices()
    params = init_params()
    fresh = lambda: jax.tree.map(jnp.array, params)  # a copy per state: each step donates its state
    rules = [(r"embeddings/.*", jt.freeze()), (r".*bias", jt.settings(weight_decay=False)), (r".*", jt.settings())]
    # With an L2-SP anchor and a weight average in the optimizer state: they are sharded like the params.
    tx = optax.chain(jt.make_optimizer(params, rules, optax.adamw, 1e-2, weight_decay=0.1, l2_sp=0.05),
                     jt.average_weights(0.9, mask=jt.trainable_mask(params, rules)))
    batch = make_batch(16)
    ref = jt.TrainState.create(fresh(), tx)
    single = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32)
    for _ in range(3):
        ref, ref_metrics = single(ref, batch)
    mesh = jt.make_mesh()
    for fsdp in (False, True):
        state = jt.shard_train_state(jt.TrainState.create(fresh(), tx), mesh, fsdp=fsdp, fsdp_min_size=0)
        step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32, mesh=mesh, fsdp=fsdp, fsdp_min_size=0)
        for _ in range(3):
            state, metrics = step(state, jt.shard_batch(batch, mesh))
        kernel = state.params["layer_0"]["dense"]["kernel"]
        assert len(kernel.sharding.device_set) == 8
        anchor, = [a["layer_0"]["dense"]["kernel"] for _, a in optax.tree.get_all_with_path(state.opt_state, "anchor")
                   if not isinstance(a["layer_0"]["dense"]["kernel"], optax.MaskedNode)]  # its weight-decay group
        if fsdp:
            assert "data" in str(kernel.sharding.spec), kernel.sharding
            assert "data" in str(anchor.sharding.spec), anchor.sharding
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
        for a, b in zip(jax.tree.leaves(jt.averaged_params(state.params, state.opt_state)),
                        jax.tree.leaves(jt.averaged_params(ref.params, ref.opt_state))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
        np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), atol=1e-5)
    print("MESH-OK")
""")


def test_data_parallel_and_fsdp_on_8_cpu_devices_equal_single_device():
    out = _run_on_8_cpu_devices(MESH_SCRIPT)
    assert out.returncode == 0 and "MESH-OK" in out.stdout, out.stderr[-4000:]


ACCUMULATE_MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxtune as jt
    from tests._tiny import TinyNet, init_params, make_batch
    assert len(jax.devices()) == 8, jax.devices()
    seen = []

    def masked_loss(params, batch, *, rng, model_state):
        jax.debug.inspect_array_sharding(batch["ids"], callback=seen.append)
        logits = TinyNet().apply({"params": params}, batch["ids"])
        w = batch["example_mask"].astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0), ({"weight": jnp.sum(w)}, model_state)

    params = init_params()
    fresh = lambda: jax.tree.map(jnp.array, params)
    tx = optax.sgd(1.0)
    padding = [1, 5, 9, 13, 17, 21, 25, 26, 27, 28, 29, 30, 31]  # micro-batch 1 (rows 1, 5, ..., 29) and the tail
    batch = dict(make_batch(32), example_mask=~np.isin(np.arange(32), padding))
    single = jt.make_train_step(masked_loss, tx, compute_dtype=jnp.float32)
    ref, ref_metrics = single(jt.TrainState.create(fresh(), tx), batch)
    mesh = jt.make_mesh()
    seen.clear()
    step = jt.make_train_step(masked_loss, tx, compute_dtype=jnp.float32, mesh=mesh, accumulate=4)
    state, metrics = step(jt.shard_train_state(jt.TrainState.create(fresh(), tx), mesh), jt.shard_batch(batch, mesh))
    # Every micro-batch (8 rows, micro-batch 1 all padding) is split over all 8 devices, one row each.
    assert seen and all(len(s.device_set) == 8 and s.spec == jax.sharding.PartitionSpec("data") for s in seen), seen
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    print("ACCUMULATE-MESH-OK")
""")


def _run_on_8_cpu_devices(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)


def test_accumulation_on_8_cpu_devices_splits_every_micro_batch_over_all_devices():
    out = _run_on_8_cpu_devices(ACCUMULATE_MESH_SCRIPT)
    assert out.returncode == 0 and "ACCUMULATE-MESH-OK" in out.stdout, out.stderr[-4000:]


def test_fsdp_spec_and_batch_errors():
    assert jt.fsdp_spec((768, 3072), 8) == jax.sharding.PartitionSpec(None, "data")
    assert jt.fsdp_spec((3, 5), 8) == jax.sharding.PartitionSpec()
    mesh = jt.make_mesh(1)
    with pytest.raises(ValueError, match="asked for 2 devices"):
        jt.make_mesh(len(jax.devices()) + 1)
    assert jt.shard_batch({"x": np.zeros((3, 2))}, mesh)["x"].shape == (3, 2)
