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
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
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


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(max(1, os.path.getsize(path) // 2))


def _break_data(step_dir):
    """Truncates every array data file of the step (what a full disk or a killed copy leaves)."""
    for name in os.listdir(step_dir / "state" / "d"):
        _truncate(step_dir / "state" / "d" / name)
    return "state/d/"


def _break_metadata(step_dir):
    _truncate(step_dir / "state" / "_METADATA")
    return "state/_METADATA"


def _lose_record(step_dir):
    os.remove(step_dir / "record" / "metadata")
    return "record/metadata"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax threads of a failed read/write
@pytest.mark.parametrize("damage", [_break_data, _break_metadata, _lose_record])
def test_broken_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage):
    params, tx, step = _setup()
    template = _fresh_state(params, tx)
    first, _ = _run(_fresh_state(params, tx), step, 0, 1)
    first_params = jax.device_get(first.params)
    with Checkpointer(tmp_path / "ckpt", keep_latest=2) as ckpt:
        ckpt.save(1, first, record={"data_position": 1})
        second, _ = _run(first, step, 1, 1)  # donates first
        ckpt.save(2, second, record={"data_position": 2})
    broken = damage(tmp_path / "ckpt" / "2")
    with Checkpointer(tmp_path / "ckpt", keep_latest=2) as ckpt:
        assert broken in ckpt.problem(2) if damage is not _break_data else ckpt.problem(2) is None
        with pytest.warns(UserWarning, match=f"checkpoint step 2 in .* is broken .*{broken}.*resumed from step 1"):
            restored, record = ckpt.restore_latest_intact(template=template)
        assert record["data_position"] == 1 and int(restored.step) == 1
        assert ckpt.all_steps() == [1]  # the broken one is set aside, so step 2 can be written again
        assert os.path.isdir(tmp_path / "ckpt.broken" / "2")
        ckpt.save(2, second, record={"data_position": 2})
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(first_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax threads of a failed read/write
def test_no_intact_checkpoint_names_each_broken_file(tmp_path):
    params, tx, _ = _setup()
    state = _fresh_state(params, tx)
    with Checkpointer(tmp_path, keep_latest=2) as ckpt:
        assert ckpt.restore_latest_intact(template=state) is None  # no checkpoint: nothing to resume
        ckpt.save(1, state)
        ckpt.save(2, state)
    _break_metadata(tmp_path / "2")
    _lose_record(tmp_path / "1")
    with Checkpointer(tmp_path, keep_latest=2) as ckpt:
        with pytest.raises(jt.BrokenCheckpointError, match=r"step 2: bad metadata in .*2/state/_METADATA.*"
                                                           r"step 1: missing file .*1/record/metadata.*overwrite"):
            ckpt.restore_latest_intact(template=state)
        assert ckpt.all_steps() == [1, 2]  # nothing moved


def _failing_record_write(error):
    async def write(self, item, directory):
        raise error(directory / self._filename)
    return write


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax threads of a failed read/write
@pytest.mark.parametrize("error, errno_, text", [
    (lambda path: PermissionError(13, "Permission denied", str(path)), 13, "Permission denied"),
    # tensorstore's form (the arrays): a ValueError whose message carries the file and the OS error code.
    (lambda path: ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed to write: '
                             "No space left on device [os_error_code='28'] [tensorstore_spec='{}']"),
     28, "No space left on device"),
])
def test_write_failure_is_the_os_error_naming_the_file(tmp_path, monkeypatch, error, errno_, text):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    params, tx, _ = _setup()
    state = _fresh_state(params, tx)
    ckpt = Checkpointer(tmp_path, keep_latest=2)
    ckpt.save(1, state)
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", _failing_record_write(error))
    with pytest.raises(jt.CheckpointWriteError) as failure:
        ckpt.save(2, state)
    ckpt.close()  # cleaning up after the failed write raises nothing of its own
    path = failure.value.filename  # orbax writes into 2.orbax-checkpoint-tmp/record.orbax-checkpoint-tmp/
    assert failure.value.errno == errno_ and "/2.orbax-checkpoint-tmp/record" in path and path.endswith("/metadata")
    message = str(failure.value)
    assert text in message and path in message and "checkpoint step 2" in message
    assert "steps [1]) are intact" in message and "asyncio" not in message and "event loop" not in message.lower()
    monkeypatch.undo()
    with Checkpointer(tmp_path) as again:
        assert again.latest_step() == 1 and again.restore(template=state)[1]["step"] == 1


def test_delete_after_drops_the_checkpoints_a_resumed_run_redoes(tmp_path):
    params, tx, _ = _setup()
    state = _fresh_state(params, tx)
    with Checkpointer(tmp_path / "ckpt", keep_latest=5) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, state)
        assert ckpt.delete_after(1) == [2, 3]
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
        ckpt.save(2, state)  # the redone step saves again
        assert ckpt.all_steps() == [1, 2]
