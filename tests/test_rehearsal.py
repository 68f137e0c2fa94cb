"""jaxtune.data.rehearsal: exact mixing ratio, determinism and restart of old-task rehearsal."""

import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest

from jaxtune.data.loader import Loader
from jaxtune.data.rehearsal import Rehearsal, RehearsalBatches, RehearsalSchedule

NEW = [{"x": np.int32(i)} for i in range(1000)]          # ids 0..999
OLD = [{"x": np.int32(10_000 + i)} for i in range(70)]   # ids 10000..10069


def _ids(loader, state=None):
    with loader.iterator(state) as it:
        return [b["x"].tolist() for b in it]


def test_schedule_ratio_is_exact_per_block_and_seeded():
    schedule = RehearsalSchedule(0.2, seed=0)
    assert schedule.ratio == Fraction(1, 5)
    old = np.array([schedule.is_old(p) for p in range(10_000)])
    assert old.sum() == 2000
    assert (old.reshape(-1, 5).sum(axis=1) == 1).all()          # exactly one per block of 5
    assert len({int(np.flatnonzero(b)[0]) for b in old.reshape(-1, 5)}) == 5  # slot varies
    again = [RehearsalSchedule(0.2, seed=0).is_old(p) for p in range(10_000)]
    other = [RehearsalSchedule(0.2, seed=1).is_old(p) for p in range(10_000)]
    assert again == old.tolist() and other != old.tolist()
    # locate() counts consistently: task indices are 0, 1, 2, ... in each task.
    located = [schedule.locate(p) for p in range(100)]
    for task in (0, 1):
        idx = [i for t, i in located if t == task]
        assert idx == list(range(len(idx)))


def test_uncommon_fraction_uses_a_close_rational():
    schedule = RehearsalSchedule(0.137, seed=3)
    assert schedule.ratio == Fraction(137, 1000)
    assert sum(schedule.is_old(p) for p in range(3000)) == 411


def test_example_mix_ratio_coverage_and_determinism():
    loader = Loader(Rehearsal(NEW, OLD, old_fraction=0.2), batch_size=50, seed=11)
    batches = _ids(loader)
    flat = [x for b in batches for x in b]
    new = [x for x in flat if x < 10_000]
    old = [x for x in flat if x >= 10_000]
    assert sorted(new) == list(range(1000))        # one epoch = every new example once
    assert len(old) == 250                         # 1000 * 0.2 / 0.8
    assert len(flat) == 1250 and len(loader) == 25
    per_batch = [sum(x >= 10_000 for x in b) / len(b) for b in batches]
    assert min(per_batch) >= 0.1 and max(per_batch) <= 0.3
    # 250 draws from 70 old examples: every one is rehearsed, each 3 or 4 times.
    counts = np.bincount(np.array(old) - 10_000, minlength=70)
    assert counts.min() >= 3 and counts.max() <= 4
    assert _ids(dataclasses.replace(loader)) == batches
    assert _ids(dataclasses.replace(loader, seed=12)) != batches


def test_old_examples_are_reshuffled_on_every_pass():
    mix = Rehearsal(NEW, OLD, old_fraction=0.5)
    stream = mix.to_stream(seed=0, shuffle=True, num_epochs=1)
    old = [int(ex["x"]) for ex in stream if ex["x"] >= 10_000]
    passes = [old[i * 70:(i + 1) * 70] for i in range(len(old) // 70)]
    assert len(passes) >= 3
    for p in passes:
        assert sorted(p) == list(range(10_000, 10_070))
    assert passes[0] != passes[1]


def test_example_mix_restarts_exactly():
    loader = Loader(Rehearsal(NEW, OLD, old_fraction=0.25, tag_key="is_old"), batch_size=32,
                    seed=4, num_epochs=2, prefetch=2, read_threads=2)
    with loader.iterator() as it:
        head = [next(it) for _ in range(9)]
        state = json.loads(json.dumps(it.get_state()))
    whole = _ids(loader)
    resumed = _ids(dataclasses.replace(loader), state)
    assert [b["x"].tolist() for b in head] + resumed == whole
    for b in head:  # the tag marks the old examples
        np.testing.assert_array_equal(b["is_old"], (b["x"] >= 10_000).astype(np.int32))


def test_batch_mix_names_counts_and_restart():
    def make(state=None):
        new = Loader(list(range(400)), batch_size=10, seed=0)
        old = Loader(list(range(-30, 0)), batch_size=10, seed=1, num_epochs=None)
        return RehearsalBatches(new, old, old_fraction=0.2, seed=5, names=("sst2", "mnli"),
                                state=state)

    with make() as mix:
        whole = [(name, b.tolist()) for name, b in mix]
    names = [n for n, _ in whole]
    assert names.count("sst2") == 40 and names.count("mnli") == 10
    assert all((min(b) >= 0) == (n == "sst2") for n, b in whole)
    with make() as mix:
        head = [(name, b.tolist()) for name, b in (next(mix) for _ in range(17))]
        state = json.loads(json.dumps(mix.get_state()))
    with make(state) as mix:
        assert head + [(name, b.tolist()) for name, b in mix] == whole


def test_batch_mix_old_loader_running_out_is_an_error():
    new = Loader(list(range(100)), batch_size=10, seed=0)
    finite_old = Loader(list(range(10)), batch_size=10, seed=0)  # a single batch
    with RehearsalBatches(new, finite_old, old_fraction=0.5) as mix, \
            pytest.raises(RuntimeError, match="num_epochs=None"):
        list(mix)


def test_bad_rehearsal_arguments():
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="old_fraction"):
            Rehearsal(NEW, OLD, old_fraction=fraction)
    with pytest.raises(ValueError, match="old_fraction"):
        _ = RehearsalSchedule(0.0001).ratio
    with pytest.raises(ValueError, match="old is empty"):
        Rehearsal(NEW, [], old_fraction=0.2)
    with pytest.raises(TypeError, match="dict examples"):
        list(Rehearsal([1, 2, 3, 4], [5], 0.2, tag_key="t").to_stream(
            seed=0, shuffle=False, num_epochs=1))
