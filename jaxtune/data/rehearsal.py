"""Rehearsal: mix examples (or batches) of an old task into the new task's stream.

Fine-tuning on a new task erodes what the network learned before (catastrophic forgetting).
Replaying a fraction of the old task's data is the simplest remedy. Two granularities:

* :class:`Rehearsal` mixes **examples**: a source for :class:`jaxtune.data.loader.Loader`, so
  every batch holds about ``old_fraction`` old examples. Both tasks must share the batch format
  (same fields, shapes after the transform).
* :class:`RehearsalBatches` mixes **batches** of two loaders: each step is wholly old or wholly
  new and is returned with its task name, so the two tasks may have different fields, heads and
  losses.

Both use the same :class:`RehearsalSchedule`: positions are cut into blocks of ``q`` slots, and
in each block exactly ``k`` slots, chosen by a seeded permutation, go to the old task, where
``k / q`` is ``old_fraction`` as a fraction (``0.2 -> 1/5``; denominators up to 1000). The
ratio is therefore exact over every block, the layout is random within blocks, and whether a
position is old is a pure function of ``(seed, position)`` -- which is what makes the mix
deterministic and exactly restartable.

Example:
    >>> from jaxtune.data.loader import Loader
    >>> new = [{"x": i} for i in range(8)]
    >>> old = [{"x": 100 + i} for i in range(50)]
    >>> mix = Rehearsal(new, old, old_fraction=0.2)
    >>> len(mix.to_stream(seed=0, shuffle=True, num_epochs=1))  # 8 new + 2 old
    10
    >>> batches = list(Loader(mix, batch_size=5, seed=0))
    >>> sorted(int(x >= 100) for b in batches for x in b["x"])
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Self

import grain
import grain.python as grain_python
import numpy as np

from jaxtune.data.loader import check_seed, check_source, example_stream

__all__ = ["Rehearsal", "RehearsalBatches", "RehearsalSchedule"]

_MAX_DENOMINATOR = 1000


@dataclasses.dataclass(frozen=True)
class RehearsalSchedule:
    """Which positions of a stream belong to the old task, exactly ``old_fraction`` per block.

    Args:
      old_fraction: share of old-task positions, in ``(0, 1)``; approximated by the nearest
        fraction ``k/q`` with ``q <= 1000`` (see :attr:`ratio`).
      seed: picks the old slots inside each block.

    Example:
        >>> s = RehearsalSchedule(0.25, seed=0)
        >>> s.ratio, sum(s.is_old(p) for p in range(400))
        (Fraction(1, 4), 100)
    """

    old_fraction: float
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < float(self.old_fraction) < 1.0:
            raise ValueError(
                f"old_fraction must be strictly between 0 and 1, got {self.old_fraction!r} "
                f"(0 means no rehearsal: use the new source alone)."
            )
        check_seed(self.seed)

    @functools.cached_property
    def ratio(self) -> Fraction:
        """``old_fraction`` as the fraction ``k/q`` actually used."""
        ratio = Fraction(self.old_fraction).limit_denominator(_MAX_DENOMINATOR)
        if ratio.numerator == 0 or ratio.numerator == ratio.denominator:
            raise ValueError(
                f"old_fraction={self.old_fraction!r} rounds to {ratio} with denominators up to "
                f"{_MAX_DENOMINATOR}; choose a share between 0.001 and 0.999."
            )
        return ratio

    def _old_slots(self, block: int) -> np.ndarray:
        return _old_slots(self.seed, block, self.ratio.numerator, self.ratio.denominator)

    def is_old(self, position: int) -> bool:
        """Whether stream ``position`` takes an old-task element."""
        block, offset = divmod(int(position), self.ratio.denominator)
        slots = self._old_slots(block)
        i = int(np.searchsorted(slots, offset))
        return bool(i < len(slots) and slots[i] == offset)

    def old_before(self, position: int) -> int:
        """How many old-task positions come before ``position``."""
        block, offset = divmod(int(position), self.ratio.denominator)
        return block * self.ratio.numerator + int(np.searchsorted(self._old_slots(block), offset))

    def locate(self, position: int) -> tuple[int, int]:
        """``(task, index)``: task 0 (new) or 1 (old) and the element's index in that task's stream."""
        old = self.old_before(position)
        if self.is_old(position):
            return 1, old
        return 0, int(position) - old

    def length_for(self, num_new: int) -> int:
        """Stream length that holds exactly ``num_new`` new positions (ending on a new one)."""
        k, q = self.ratio.numerator, self.ratio.denominator
        full_blocks, rest = divmod(num_new, q - k)
        length = full_blocks * q
        if rest:
            new_slots = np.setdiff1d(np.arange(q), self._old_slots(full_blocks))
            length += int(new_slots[rest - 1]) + 1
        return length


@functools.lru_cache(maxsize=64)
def _old_slots(seed: int, block: int, k: int, q: int) -> np.ndarray:
    rng = np.random.default_rng([seed, block])
    return np.sort(rng.permutation(q)[:k])


class _ScheduleSelection(grain_python.DatasetSelectionMap):
    """grain selection map: stream position -> (task, index in that task's stream)."""

    def __init__(self, schedule: RehearsalSchedule, length: int):
        self._schedule = schedule
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self._schedule.locate(index)


def _tagged(example: Any, key: str, value: int) -> Any:
    if not isinstance(example, dict):
        raise TypeError(
            f"tag_key={key!r} needs dict examples, got {type(example).__name__}; drop tag_key "
            f"or turn examples into dicts."
        )
    if key in example:
        raise KeyError(f"tag_key={key!r} is already a field of the examples; choose another name.")
    return {**example, key: np.int32(value)}


@dataclasses.dataclass(frozen=True)
class Rehearsal:
    """Example-level mix of a new task's source with an old task's, for :class:`Loader`.

    An epoch is one pass over ``new``; ``old`` examples are drawn from their own endless seeded
    stream (reshuffled after every pass over ``old``, so a small old set cycles and a large one
    is sampled without repeats). ``len(new) * old_fraction / (1 - old_fraction)`` old examples
    join each epoch.

    Args:
      new, old: random-access sources (``len`` + indexing) with the same example format.
      old_fraction: share of old examples in the mixed stream, e.g. ``0.2``.
      tag_key: if set, each (dict) example gains this field: ``0`` new, ``1`` old -- to report
        the loss on each task separately.

    Example:
        >>> mix = Rehearsal(list(range(8)), [-1, -2], old_fraction=0.2)
        >>> stream = mix.to_stream(seed=0, shuffle=False, num_epochs=1)
        >>> sorted(stream)
        [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7]
    """

    new: Any
    old: Any
    old_fraction: float
    tag_key: str | None = None

    def __post_init__(self):
        check_source(self.new, "new")
        check_source(self.old, "old")
        RehearsalSchedule(self.old_fraction)  # validates old_fraction early

    def schedule(self, seed: int) -> RehearsalSchedule:
        """The slot schedule used with ``seed``."""
        return RehearsalSchedule(self.old_fraction, seed=seed)

    def to_stream(self, *, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
        """The mixed stream (see :class:`jaxtune.data.loader.StreamSpec`)."""
        schedule = self.schedule(seed)
        old_seed = (check_seed(seed) + 0x9E3779B9) % 2**32  # a different order than ``new``'s
        new_stream = example_stream(self.new, seed=seed, shuffle=shuffle, num_epochs=None)
        old_stream = example_stream(self.old, seed=old_seed, shuffle=shuffle, num_epochs=None)
        if self.tag_key is not None:
            new_stream = new_stream.map(functools.partial(_tagged, key=self.tag_key, value=0))
            old_stream = old_stream.map(functools.partial(_tagged, key=self.tag_key, value=1))
        if num_epochs is None:
            length = sys.maxsize
        else:
            length = schedule.length_for(num_epochs * len(self.new))
        return grain.MapDataset.select_from_datasets(
            [new_stream, old_stream], _ScheduleSelection(schedule, length)
        )


class RehearsalBatches:
    """Batch-level mix of two batch iterators: yields ``(task_name, batch)``.

    Each step draws a whole batch from ``old`` with share ``old_fraction`` (exact per block, see
    :class:`RehearsalSchedule`), otherwise from ``new``; iteration ends when ``new`` is
    exhausted. ``old`` should repeat (``Loader(..., num_epochs=None)``); running out of it is an
    error. The state combines the step count with both loaders' states, so a restart continues
    the exact sequence.

    Args:
      new, old: :class:`jaxtune.data.loader.Loader` objects (anything with ``iterator(state)``).
      old_fraction: share of old batches.
      seed: picks which steps are old.
      names: the task names returned with each batch.

    Example:
        >>> from jaxtune.data.loader import Loader
        >>> new = Loader(list(range(40)), batch_size=4, seed=0)
        >>> old = Loader(list(range(-20, 0)), batch_size=4, seed=1, num_epochs=None)
        >>> with RehearsalBatches(new, old, old_fraction=0.2, seed=0) as mix:
        ...     names = [name for name, _ in mix]
        >>> names.count("new"), names.count("old")
        (10, 2)
    """

    def __init__(
        self,
        new: Any,
        old: Any,
        old_fraction: float,
        *,
        seed: int = 0,
        names: tuple[str, str] = ("new", "old"),
        state: dict | None = None,
    ):
        self._schedule = RehearsalSchedule(old_fraction, seed=seed)
        self._loaders = (new, old)
        self._names = tuple(names)
        if len(self._names) != 2 or self._names[0] == self._names[1]:
            raise ValueError(f"names must be two different task names, got {names!r}.")
        state = state or {}
        self._step = int(state.get("step", 0))
        self._iterators = (new.iterator(state.get("new")), old.iterator(state.get("old")))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self

    def __next__(self) -> tuple[str, Any]:
        task = int(self._schedule.is_old(self._step))
        try:
            batch = next(self._iterators[task])
        except StopIteration:
            if task == 1:
                raise RuntimeError(
                    f"the old task's loader ran out at step {self._step}; give it "
                    f"num_epochs=None so rehearsal can draw from it for as long as needed."
                ) from None
            raise
        self._step += 1
        return self._names[task], batch

    def get_state(self) -> dict:
        """``{"step", "new", "old"}``: JSON-serialisable, for :meth:`__init__`'s ``state``."""
        return {
            "step": self._step,
            "new": self._iterators[0].get_state(),
            "old": self._iterators[1].get_state(),
        }

    def close(self) -> None:
        """Stops both loaders' background threads."""
        for it in self._iterators:
            it.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

