import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxtune as jt
from jaxtune.checkpoint import Checkpointer
from tests._tiny import init_params, loss_fn, make_batch

RULES = [(r"embeddings/.*", jt.freeze()), (r".*bias", jt.settings(weight_decay=False)), (r".*", jt.settings())]


def _setup():
    params = init_params()
    tx = jt.make_optimizer(params, RULES, optax.adamw, 1e-2, weight_decay=0.1)
    step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32)
    return params, tx, step


def _fresh_state(params, tx):
    return jt.TrainState.create(jax.tree.map(jnp.array, params), tx, rng=7)


def _run(state, step, start, n):
    losses = []
    for i in range(start, start + n):
        state, metrics = step(state, make_batch(seed=i))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_resume_is_exact(tmp_path):
    params, tx, step = _setup()
    straight, straight_losses = _run(_fresh_state(params, tx), step, 0, 6)

    half, first_losses = _run(_fresh_state(params, tx), step, 0, 3)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, half, record={"data_position": 3})
    with Checkpointer(tmp_path) as ckpt:
        restored, record = ckpt.restore(template=_fresh_state(params, tx))
    assert record["data_position"] == 3 and int(restored.step) == 3
    resumed, second_losses = _run(restored, step, record["data_position"], 3)
    assert first_losses + second_losses == straight_losses  # bit-exact on CPU
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(jax.random.key_data(resumed.rng), jax.random.key_data(straight.rng))


def test_best_k_retention(tmp_path):
    params, tx, _ = _setup()
    state = _fresh_state(params, tx)
    with Checkpointer(tmp_path, monitor="val_accuracy", mode="max", keep_best=2, keep_latest=1) as ckpt:
        for step, acc in [(10, 0.50), (20, 0.90), (30, 0.20), (40, 0.70), (50, 0.10)]:
            ckpt.save(step, state, metrics={"val_accuracy": acc})
        assert ckpt.all_steps() == [20, 40, 50]  # best two + the latest
        assert ckpt.best_step() == 20
    with Checkpointer(tmp_path / "min", monitor="val_loss", mode="min", keep_best=1, keep_latest=1) as ckpt:
        for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]:
            ckpt.save(step, state, metrics={"val_loss": loss})
        assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
        with pytest.raises(KeyError, match="val_loss"):
            ckpt.save(4, state, metrics={"accuracy": 1.0})
        with pytest.raises(FileNotFoundError, match="kept: \\[2, 3\\]"):
            ckpt.restore(1, template=state)


def test_partial_checkpoint_leaves_previous_restorable(tmp_path):
    params, tx, step = _setup()
    state, _ = _run(_fresh_state(params, tx), step, 0, 2)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state, record={"data_position": 2})
    # A run killed while writing step 4: orbax's temporary directory is left behind, half written.
    partial = tmp_path / "4.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 100)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        restored, record = ckpt.restore(template=_fresh_state(params, tx))
        resumed, _ = _run(restored, step, record["data_position"], 2)
        ckpt.save(4, resumed, record={"data_position": 4})
        assert ckpt.all_steps() == [4]
    straight, _ = _run(_fresh_state(params, tx), step, 0, 4)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


WRITE_ON_8 = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp, optax
    import jaxtune as jt
    from jaxtune.checkpoint import Checkpointer
    from tests._tiny import init_params, loss_fn, make_batch
    assert len(jax.devices()) == 8
    params = init_params()
    rules = [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())]
    tx = jt.make_optimizer(params, rules, optax.adamw, 1e-2)
    mesh = jt.make_mesh()
    state = jt.shard_train_state(jt.TrainState.create(params, tx), mesh, fsdp=True, fsdp_min_size=0)
    step = jt.make_train_step(loss_fn, tx, compute_dtype=jnp.float32, mesh=mesh, fsdp=True, fsdp_min_size=0)
    state, _ = step(state, jt.shard_batch(make_batch(16), mesh))
    assert len(state.params["head"]["kernel"].sharding.device_set) == 8
    with Checkpointer(sys.argv[1]) as ckpt:
        ckpt.save(1, state)
    import numpy as np
    np.save(sys.argv[1] + "-head.npy", np.asarray(state.params["head"]["kernel"]))
""")


def test_checkpoint_from_8_devices_restores_onto_1(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", WRITE_ON_8, str(tmp_path / "ckpt")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    params = init_params()
    tx = jt.make_optimizer(params, [(r"embeddings/.*", jt.freeze()), (r".*", jt.settings())], optax.adamw, 1e-2)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        restored, _ = ckpt.restore(template=jt.TrainState.create(params, tx))
    kernel = restored.params["head"]["kernel"]
    assert len(kernel.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(kernel), np.load(str(tmp_path / "ckpt") + "-head.npy"))
    assert int(restored.step) == 1


def test_early_stopping_on_plateau():
    stopper = jt.EarlyStopping(monitor="val_loss", mode="min", patience=2, min_delta=0.01)
    history = [1.0, 0.8, 0.795, 0.81, 0.799]  # improves twice, then plateaus (0.795 is within min_delta)
    stops = [stopper.update(step, {"val_loss": v}) for step, v in enumerate(history)]
    assert stops == [False, False, False, False, True]
    assert stopper.best_step == 1 and stopper.best_value == 0.8
    up = jt.EarlyStopping(monitor="acc", mode="max", patience=0)
    assert [up.update(i, {"acc": v}) for i, v in enumerate([0.1, 0.2, 0.2])] == [False, False, True]
    with pytest.raises(KeyError, match="val_loss"):
        jt.EarlyStopping().update(0, {"loss": 1.0})
