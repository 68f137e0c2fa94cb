"""A JAX-native input pipeline on `grain`: seeded shuffle, per-example transforms, batching,
exact restart and prefetch -- from any random-access source.

A *source* is anything with ``len()`` and integer indexing: a TFDS data source
(``builder.as_data_source("train")``, :func:`jaxtune.data.tfds_local.tfds_source`), a list of
examples, a NumPy array, or a :class:`jaxtune.data.rehearsal.Rehearsal` mix. The pipeline is a
``grain.MapDataset`` over the *stream* of all examples of all epochs::

    source --(seeded shuffle, reshuffled every epoch)--> stream of num_epochs * len(source)
           --transform--> --random_transform(example, rng)--> --batch--> --prefetch-->

Design choices (grain 0.2.18):

* **Exact restart.** Every element of the stream has a fixed position, and every random choice
  (shuffle order, the ``rng`` given to ``random_transform``) is a pure function of the seed and
  that position. The iterator's state is therefore just the index of the next batch
  (``{"next_batch": n, ...}``, JSON-serialisable: store it beside the model checkpoint, e.g.
  with ``orbax.checkpoint.args.JsonSave``). A new loader restored from it yields exactly the
  batches the interrupted one would have yielded next, whatever the prefetch depth.
* **Batches cross epoch boundaries** (as ``shuffle().repeat().batch()`` does in tf.data): the
  stream is batched as a whole, so no example is dropped until the very end of the last epoch;
  ``drop_remainder`` only concerns that final partial batch.
* **Prefetch.** ``read_threads`` threads assemble batches in parallel, a background thread keeps
  ``prefetch`` batches ready, and with ``device=`` (a ``jax.Device`` or ``jax.sharding.Sharding``)
  batches are copied to the accelerator ahead of time (``grain.experimental.device_put``), so the
  train step does not wait on the host. ``worker_processes > 0`` moves the work to separate
  processes (transforms and source must then be picklable).
* ``tf.data`` remains a choice where TensorFlow is installed (``builder.as_dataset``); this module
  never imports TensorFlow.

Example:
    >>> loader = Loader(list(range(10)), batch_size=4, seed=0, num_epochs=2)
    >>> len(loader)
    5
    >>> with loader.iterator() as it:
    ...     first = next(it)
    ...     state = it.get_state()
    >>> state["next_batch"]
    1
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, Self, runtime_checkable

import grain
import jax
import numpy as np

__all__ = ["Loader", "LoaderIterator", "StreamSpec", "example_stream"]

_SEED_LIMIT = 2**32


@runtime_checkable
class StreamSpec(Protocol):
    """A recipe for an example stream that is not a plain shuffle of one source.

    :class:`Loader` calls ``to_stream`` instead of shuffling the source itself (used by
    :class:`jaxtune.data.rehearsal.Rehearsal`). The returned ``grain.MapDataset`` must be
    deterministic in ``seed`` and have length ``num_epochs`` epochs (``sys.maxsize`` when
    ``num_epochs`` is None).
    """

    def to_stream(self, *, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
        ...


def check_seed(seed: int) -> int:
    """``seed`` as an int in ``[0, 2**32)``, or a ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    return int(seed)


def check_source(source: Any, what: str = "source") -> int:
    """Length of a random-access source; a clear error when it has none or is empty."""
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise TypeError(
            f"{what} must support len() and integer indexing (a TFDS data source, list or "
            f"array), got {type(source).__name__}."
        )
    n = len(source)
    if n == 0:
        raise ValueError(f"{what} is empty: there is nothing to load.")
    return n


# Up to this many examples an epoch's order is a cached NumPy permutation (4 bytes an example);
# beyond it grain's O(1)-memory ``index_shuffle``, which is slow on small sets (it costs ~60 us an
# index at 1,000 examples and ~600 us at 100, against ~8 us at a million).
_PERMUTATION_LIMIT = 1 << 22


class _EpochPermutation(grain.MapDataset):
    """Index ``i`` -> epoch ``i // n`` and that epoch's seeded NumPy permutation of the parent."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._n = len(parent)
        self._seed = seed

    def __len__(self) -> int:
        return self._n

    def __str__(self) -> str:
        return f"_EpochPermutation(seed={self._seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _parent_index(self, index: int) -> int:
        epoch, offset = divmod(int(index), self._n)
        return epoch * self._n + int(_permutation(self._seed, self._n, epoch)[offset])


class _ProcessSlice(grain.MapDataset):
    """This process's part of every global batch: index ``i`` -> stream position
    ``(i // local) * global_size + process_index * local + i % local``. Only the positions a
    process reads are computed (the parent's maps are lazy), and each example keeps its global
    position, so shuffling and augmentation do not depend on the number of processes."""

    def __init__(self, parent: grain.MapDataset, global_size: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._global, self._local = global_size, global_size // process_count
        self._offset = process_index * self._local
        self._batches = len(parent) // global_size

    def __len__(self) -> int:
        return min(self._batches * self._local, sys.maxsize)

    def __str__(self) -> str:
        return f"_ProcessSlice(global={self._global}, local={self._local}, offset={self._offset})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, within = divmod(int(index), self._local)
        return self._parent[batch * self._global + self._offset + within]


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, n: int, epoch: int) -> np.ndarray:
    # Module-level (not per dataset) so datasets stay picklable for worker processes.
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def example_stream(
    source: Any, *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1
) -> grain.MapDataset:
    """The stream of all examples of ``num_epochs`` epochs of ``source``, as a ``grain.MapDataset``.

    With ``shuffle`` each epoch is a different seeded permutation: a cached NumPy permutation for
    sources up to 4M examples, grain's ``index_shuffle`` (O(1) memory) beyond. ``num_epochs=None``
    repeats forever.

    Example:
        >>> list(example_stream([10, 11, 12], shuffle=False, num_epochs=2))
        [10, 11, 12, 10, 11, 12]
    """
    check_source(source)
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
        raise ValueError(f"num_epochs must be a positive integer or None, got {num_epochs!r}.")
    ds = grain.MapDataset.source(source)
    if shuffle:
        if len(source) <= _PERMUTATION_LIMIT:
            ds = _EpochPermutation(ds, check_seed(seed))
        else:
            ds = ds.shuffle(seed=check_seed(seed))
    return ds.repeat(num_epochs)


@dataclasses.dataclass(frozen=True)
class Loader:
    """Batches from a random-access source, shuffled with a seed and restartable exactly.

    Args:
      source: a random-access source (``len`` + integer indexing) or a :class:`StreamSpec`.
      batch_size: examples per batch.
      transform: ``example -> example``, applied to every example (decode, tokenise, ...).
      random_transform: ``(example, rng) -> example`` for random augmentation; ``rng`` is a
        ``np.random.Generator`` determined by the seed and the example's stream position, so a
        restart reproduces the same augmentation.
      batch_fn: ``list of examples -> batch``; default stacks every leaf with ``np.stack``
        (examples must then have equal shapes; pass a padding function for text).
      seed: shuffle and augmentation seed, in ``[0, 2**32)``.
      shuffle: shuffle each epoch (False for evaluation).
      num_epochs: passes over the source; None repeats forever.
      drop_remainder: drop the final batch of the stream when it is smaller than ``batch_size``.
      read_threads: threads assembling batches in parallel (0: on the consuming thread's
        prefetcher only).
      prefetch: batches kept ready by a background thread (0 disables it).
      device: a ``jax.Device`` or ``jax.sharding.Sharding`` to copy batches to ahead of time;
        None yields NumPy batches.
      worker_processes: grain worker processes (0 keeps everything in this process). Workers
        are spawned: a script using them needs an ``if __name__ == "__main__":`` guard.
      process_index, process_count: this process's share of a multi-process (multi-host) run;
        None: ``jax.process_index()`` / ``jax.process_count()``. ``batch_size`` is the *global*
        batch: each process reads and yields its ``batch_size // process_count`` examples of
        every global batch (contiguous, in process order), so all processes together see exactly
        the single-process stream, and a saved position resumes under any process count. With a
        ``device`` sharding, batches become global ``jax.Array``s
        (``jax.make_array_from_process_local_data``). Several processes need
        ``drop_remainder=True``.

    Example:
        >>> import numpy as np
        >>> loader = Loader(np.arange(6), batch_size=4, shuffle=False, drop_remainder=False)
        >>> [b.tolist() for b in loader]
        [[0, 1, 2, 3], [4, 5]]
    """

    source: Any
    batch_size: int
    transform: Callable[[Any], Any] | None = None
    random_transform: Callable[[Any, np.random.Generator], Any] | None = None
    batch_fn: Callable[[Sequence[Any]], Any] | None = None
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    drop_remainder: bool = True
    read_threads: int = 2
    prefetch: int = 2
    device: Any = None
    worker_processes: int = 0
    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        check_seed(self.seed)
        for name in ("read_threads", "prefetch", "worker_processes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        index, count = self.process_shard
        if not 0 <= index < count:
            raise ValueError(f"process_index={index} is outside [0, process_count={count}).")
        if count > 1 and self.batch_size % count:
            raise ValueError(f"batch_size={self.batch_size} (the global batch) is not divisible by "
                             f"process_count={count}; every process must load an equal share.")
        if count > 1 and not self.drop_remainder:
            raise ValueError(f"{count} processes need drop_remainder=True: a final partial batch cannot be "
                             "split evenly. Pad the data to a multiple of batch_size instead.")
        if self.num_batches == 0:
            raise ValueError(
                f"the stream has {len(self._stream())} examples, fewer than batch_size="
                f"{self.batch_size} with drop_remainder=True: no batch would be produced. "
                f"Use a smaller batch or drop_remainder=False."
            )

    def _stream(self) -> grain.MapDataset:
        if isinstance(self.source, StreamSpec):
            return self.source.to_stream(
                seed=self.seed, shuffle=self.shuffle, num_epochs=self.num_epochs
            )
        return example_stream(
            self.source, seed=self.seed, shuffle=self.shuffle, num_epochs=self.num_epochs
        )

    @property
    def process_shard(self) -> tuple[int, int]:
        """``(process_index, process_count)`` this loader reads for (JAX's, unless given)."""
        index = jax.process_index() if self.process_index is None else self.process_index
        count = jax.process_count() if self.process_count is None else self.process_count
        return int(index), int(count)

    @property
    def local_batch_size(self) -> int:
        """Examples per batch that this process yields."""
        return self.batch_size // self.process_shard[1]

    def _batches(self) -> grain.MapDataset:
        ds = self._stream().seed(self.seed)
        if self.transform is not None:
            ds = ds.map(self.transform)
        if self.random_transform is not None:
            ds = ds.random_map(self.random_transform)
        index, count = self.process_shard
        if count > 1:
            ds = _ProcessSlice(ds, self.batch_size, index, count)
        return ds.batch(self.local_batch_size, drop_remainder=self.drop_remainder, batch_fn=self.batch_fn)

    @property
    def num_batches(self) -> int | None:
        """Batches in the whole stream (all epochs); None when it repeats forever."""
        n = len(self._stream())
        if n >= sys.maxsize:
            return None
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def __len__(self) -> int:
        n = self.num_batches
        if n is None:
            raise TypeError("an endless loader (num_epochs=None) has no length.")
        return n

    def iterator(self, state: dict | None = None) -> LoaderIterator:
        """A fresh iterator; with ``state`` (from :meth:`LoaderIterator.get_state`) it resumes there."""
        it = LoaderIterator(self)
        if state is not None:
            it.set_state(state)
        return it

    def __iter__(self) -> Iterator[Any]:
        return self.iterator()

    def fingerprint(self) -> dict:
        """What a saved state must agree on to be restored into this loader."""
        return {
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
            "shuffle": bool(self.shuffle),
            "stream_length": int(min(len(self._stream()), sys.maxsize)),
        }


def _global_batch(sharding: Any, local_batch: Any) -> Any:
    """A process's part of a global batch -> global ``jax.Array``s split along the example axis."""
    if not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(f"several processes need a jax.sharding.Sharding as device (got {sharding!r}), "
                         "e.g. jaxtune.batch_sharding(mesh)")
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside ``absl.app.run`` they are unparsed and
    # grain raises UnparsedFlagAccessError. Marking them parsed keeps every flag at its default.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class LoaderIterator:
    """Iterator over a :class:`Loader`'s batches with ``get_state``/``set_state``.

    Use it as a context manager (or call :meth:`close`) to stop the prefetch threads.
    """

    def __init__(self, loader: Loader, start: int = 0):
        self._loader = loader
        self._next_batch = start
        self._exhausted = False
        self._it: Iterator[Any] | None = self._build(start)

    def _build(self, start: int) -> Iterator[Any]:
        # Restarting = rebuilding the pipeline from a slice of the batch dataset: positions (and
        # so shuffle order and augmentation rngs) are unchanged, whatever wrappers follow.
        loader = self._loader
        ds = loader._batches()[start:].to_iter_dataset(
            grain.ReadOptions(
                num_threads=loader.read_threads,
                prefetch_buffer_size=max(loader.read_threads, 1) * 2 if loader.read_threads else 0,
            )
        )
        if loader.worker_processes:
            _ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=loader.worker_processes))
        if loader.device is not None and loader.process_shard[1] > 1:
            ds = ds.map(functools.partial(_global_batch, loader.device))
            if loader.prefetch:
                ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=loader.prefetch)
        elif loader.device is not None:
            ds = grain.experimental.device_put(
                ds, loader.device, cpu_buffer_size=max(loader.prefetch, 1),
                device_buffer_size=max(loader.prefetch, 1),
            )
        elif loader.prefetch:
            ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=loader.prefetch)
        return iter(ds)

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            if self._exhausted:
                raise StopIteration
            raise RuntimeError("this loader iterator was closed; create a new one (loader.iterator(state)).")
        try:
            batch = next(self._it)
        except StopIteration:
            self._exhausted = True
            self.close()
            raise
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch index and the loader's fingerprint."""
        return {"next_batch": self._next_batch, **self._loader.fingerprint()}

    def set_state(self, state: dict) -> None:
        """Resume at ``state["next_batch"]``; refuses a state saved by a different pipeline."""
        expected = self._loader.fingerprint()
        missing = [k for k in ("next_batch", *expected) if k not in state]
        if missing:
            raise KeyError(f"loader state lacks {missing}; it has {sorted(state)}.")
        changed = {k: (state[k], v) for k, v in expected.items() if state[k] != v}
        if changed:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"the loader state was saved by a different pipeline ({detail}); resuming would "
                f"not continue the same example order."
            )
        next_batch = int(state["next_batch"])
        total = self._loader.num_batches
        if next_batch < 0 or (total is not None and next_batch > total):
            raise ValueError(f"next_batch={next_batch} is outside [0, {total}].")
        self.close()
        self._it = self._build(next_batch)
        self._next_batch = next_batch
        self._exhausted = False

    def close(self) -> None:
        """Stops background threads/processes; the iterator cannot be used afterwards."""
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
