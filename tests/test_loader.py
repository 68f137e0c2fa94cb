"""jaxtune.data.loader: seeded shuffling, batching, exact restart, prefetch (grain)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxtune.data.loader import Loader, example_stream


def _collect(loader, state=None):
    with loader.iterator(state) as it:
        return [jax.tree.map(np.asarray, b) for b in it]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for lx, ly in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
            np.testing.assert_array_equal(lx, ly)


def test_unshuffled_batches_and_remainder():
    kept = Loader(np.arange(10), batch_size=4, shuffle=False, drop_remainder=False)
    dropped = Loader(np.arange(10), batch_size=4, shuffle=False, drop_remainder=True)
    assert len(kept) == 3 and len(dropped) == 2
    assert [b.tolist() for b in _collect(kept)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in _collect(dropped)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_every_epoch_is_a_different_seeded_permutation():
    stream = list(example_stream(list(range(50)), seed=3, num_epochs=3))
    epochs = [stream[i * 50:(i + 1) * 50] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(50))
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream == list(example_stream(list(range(50)), seed=3, num_epochs=3))
    assert stream != list(example_stream(list(range(50)), seed=4, num_epochs=3))


def test_batches_cross_epoch_boundaries():
    # 2 epochs of 5 examples in batches of 4: 10 examples, two full batches, no drop mid-way.
    batches = _collect(Loader(list(range(5)), batch_size=4, seed=1, num_epochs=2))
    flat = np.concatenate(batches).tolist()
    assert len(flat) == 8
    assert sorted(flat[:5]) == list(range(5))


@pytest.mark.parametrize("read_threads,prefetch", [(0, 0), (2, 3)])
def test_restart_resumes_at_the_exact_next_batch(read_threads, prefetch):
    examples = [{"x": np.float32(i), "id": i} for i in range(23)]
    loader = Loader(
        examples, batch_size=4, seed=7, num_epochs=3,
        transform=lambda ex: {**ex, "x": ex["x"] * 2},
        random_transform=lambda ex, rng: {**ex, "noise": rng.integers(1 << 30)},
        read_threads=read_threads, prefetch=prefetch,
    )
    uninterrupted = _collect(loader)
    assert len(uninterrupted) == len(loader) == 17  # 69 examples // 4
    k = 6
    with loader.iterator() as it:
        head = [next(it) for _ in range(k)]
        state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    assert state["next_batch"] == k
    resumed = _collect(dataclasses.replace(loader), state)  # a new loader, same recipe
    _assert_same_batches(head + resumed, uninterrupted)
    # The augmentation rng depends on the stream position only: it differs between examples.
    assert len({int(n) for b in uninterrupted for n in b["noise"]}) > 60


def test_state_from_a_different_pipeline_is_refused():
    with Loader(list(range(20)), batch_size=4, seed=0).iterator() as it:
        next(it)
        state = it.get_state()
    with pytest.raises(ValueError, match="batch_size: saved 4, now 5"):
        Loader(list(range(20)), batch_size=5, seed=0).iterator(state)
    with pytest.raises(KeyError, match="next_batch"):
        Loader(list(range(20)), batch_size=4, seed=0).iterator({"seed": 0})


def test_custom_batch_fn_pads_variable_length_examples():
    def pad(examples):
        width = max(len(e) for e in examples)
        return np.stack([np.pad(e, (0, width - len(e))) for e in examples])

    source = [np.arange(n) + 1 for n in (1, 3, 2, 2)]
    batches = _collect(Loader(source, batch_size=2, shuffle=False, batch_fn=pad))
    assert [b.tolist() for b in batches] == [[[1, 0, 0], [1, 2, 3]], [[1, 2], [1, 2]]]


def test_device_prefetch_yields_the_same_batches_on_device():
    host = Loader(np.arange(12, dtype=np.float32), batch_size=4, seed=2)
    on_device = Loader(np.arange(12, dtype=np.float32), batch_size=4, seed=2,
                       device=jax.devices()[0])
    with on_device.iterator() as it:
        device_batches = list(it)
    assert all(isinstance(b, jax.Array) for b in device_batches)
    _assert_same_batches([np.asarray(b) for b in device_batches], _collect(host))


def test_endless_loader():
    loader = Loader(list(range(3)), batch_size=2, num_epochs=None, seed=0)
    assert loader.num_batches is None
    with pytest.raises(TypeError, match="no length"):
        len(loader)
    with loader.iterator() as it:
        values = np.concatenate([next(it) for _ in range(30)])
    assert np.bincount(values).tolist() == [20, 20, 20]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        Loader([], batch_size=2)
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        Loader(list(range(5)), batch_size=8)
    with pytest.raises(ValueError, match="seed"):
        Loader(list(range(5)), batch_size=1, seed=-1)
    with pytest.raises(TypeError, match="integer indexing"):
        Loader(iter(range(5)), batch_size=1)
    with pytest.raises(ValueError, match="num_epochs"):
        Loader(list(range(5)), batch_size=1, num_epochs=0)


def test_worker_processes_give_the_same_batches_and_restart():
    loader = Loader(np.arange(16), batch_size=4, seed=5, read_threads=0, prefetch=0)
    in_process = _collect(loader)
    workers = dataclasses.replace(loader, worker_processes=1)
    with workers.iterator() as it:
        head = [next(it)]
        state = it.get_state()
    _assert_same_batches(head + _collect(workers, state), in_process)


class _Indices:
    """A virtual source of n examples whose example i is i (no memory)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def test_large_sources_shuffle_with_grain_index_shuffle():
    n = (1 << 22) + 1  # above the cached-permutation limit
    stream = example_stream(_Indices(n), seed=9, num_epochs=2)
    first = [stream[i] for i in range(200)]
    second_epoch = [stream[n + i] for i in range(200)]
    assert len(set(first)) == 200 and all(0 <= x < n for x in first)
    assert first != list(range(200)) and first != second_epoch
    assert first == [example_stream(_Indices(n), seed=9)[i] for i in range(200)]


def test_exhausted_and_closed_iterators():
    loader = Loader(list(range(4)), batch_size=2, seed=0)
    it = loader.iterator()
    assert len(list(it)) == 2
    with pytest.raises(StopIteration):  # stays exhausted
        next(it)
    assert it.get_state()["next_batch"] == 2
    it = loader.iterator()
    it.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)


def _augment(example, rng):
    return {"x": example, "noise": rng.integers(0, 1_000_000)}


@pytest.mark.parametrize("count", [2, 4])
def test_processes_split_every_global_batch_of_the_single_process_stream(count):
    """Simulated multi-host: the processes' parts, concatenated in process order, are the batches one
    process would load (same shuffle, same augmentation rngs), and each part is batch_size/count."""
    common = dict(batch_size=8, seed=5, num_epochs=2, random_transform=_augment, read_threads=0, prefetch=0)
    single = _collect(Loader(np.arange(37), **common))
    parts = [_collect(Loader(np.arange(37), process_index=i, process_count=count, **common)) for i in range(count)]
    assert all(len(p) == len(single) == 9 for p in parts)           # 74 examples // 8, remainder dropped
    for j, batch in enumerate(single):
        assert all(p[j]["x"].shape == (8 // count,) for p in parts)
        for key in ("x", "noise"):
            np.testing.assert_array_equal(np.concatenate([p[j][key] for p in parts]), batch[key])


def test_process_part_resumes_from_a_position_saved_under_another_process_count():
    single = Loader(np.arange(40), batch_size=4, seed=1, read_threads=0, prefetch=0)
    with single.iterator() as it:
        for _ in range(3):
            next(it)
        state = it.get_state()
    rest = _collect(single, state)
    second_half = Loader(np.arange(40), batch_size=4, seed=1, read_threads=0, prefetch=0,
                         process_index=1, process_count=2)
    resumed = _collect(second_half, state)
    assert len(resumed) == len(rest) == 7
    for mine, whole in zip(resumed, rest):
        np.testing.assert_array_equal(mine, whole[2:])


def test_multi_process_arguments_are_checked():
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        Loader(np.arange(40), batch_size=8, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="drop_remainder=True"):
        Loader(np.arange(40), batch_size=8, process_index=0, process_count=2, drop_remainder=False)
    with pytest.raises(ValueError, match=r"process_index=2 is outside \[0, process_count=2\)"):
        Loader(np.arange(40), batch_size=8, process_index=2, process_count=2)
    assert Loader(np.arange(40), batch_size=8).process_shard == (jax.process_index(), jax.process_count())


def test_process_parts_become_global_arrays_on_a_sharding():
    """With a device sharding and several processes, batches go through
    jax.make_array_from_process_local_data (here one real process: the part is the whole array)."""
    from jaxtune.data.loader import _global_batch
    from jaxtune.sharding import batch_sharding, make_mesh

    sharding = batch_sharding(make_mesh(1))
    loader = Loader(np.arange(16, dtype=np.int32), batch_size=8, shuffle=False, prefetch=1, device=sharding,
                    process_index=0, process_count=2)
    batches = list(loader)
    assert all(isinstance(b, jax.Array) and b.sharding == sharding for b in batches)
    assert [np.asarray(b).tolist() for b in batches] == [[0, 1, 2, 3], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="need a jax.sharding.Sharding"):
        _global_batch(jax.devices()[0], np.zeros(4))
