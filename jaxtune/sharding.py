"""Device meshes and partition specs: data parallelism and FSDP-style parameter sharding.

Sharding comes from a ``jax.sharding.Mesh`` passed in, never from globals. Parameters are either
replicated (data parallel) or split along their largest dimension that the mesh axis divides
(FSDP); optimizer moments have the parameters' shapes and so get the same specs.

Example::

    mesh = jt.make_mesh()                                   # all devices on one "data" axis
    state = jt.shard_train_state(state, mesh, fsdp=True)
    batch = jt.shard_batch(batch, mesh)
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtune.multihost import initialize_multihost  # noqa: F401  (its former home)

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over the first ``num_devices`` devices (default: all, across hosts).

    Example::

        >>> mesh = make_mesh(1)
        >>> mesh.axis_names
        ('data',)
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices but only {len(devices)} are visible ({devices[0].platform}); "
                         "on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N fakes N devices")
    return Mesh(np.asarray(devices[:n]), (axis_name,))


def fsdp_spec(shape: tuple[int, ...], axis_size: int, axis_name: str = DATA_AXIS, min_size: int = 2 ** 12) -> P:
    """Partition spec splitting the largest dimension divisible by ``axis_size``; small arrays replicate.

    Example::

        >>> fsdp_spec((768, 3072), 8)
        PartitionSpec(None, 'data')
    """
    if int(np.prod(shape, dtype=np.int64)) < min_size or axis_size == 1:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % axis_size == 0:
            return P(*[axis_name if d == dim else None for d in range(len(shape))])
    return P()


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool = False, axis_name: str = DATA_AXIS,
                   fsdp_min_size: int = 2 ** 12) -> Any:
    """NamedShardings for every array leaf of ``tree``: replicated, or FSDP specs if ``fsdp``
    (arrays smaller than ``fsdp_min_size`` elements stay replicated)."""
    size = mesh.shape[axis_name]

    def spec(leaf):
        shape = np.shape(leaf)
        return NamedSharding(mesh, fsdp_spec(shape, size, axis_name, fsdp_min_size) if fsdp else P())

    return jax.tree_util.tree_map(spec, tree)


def fsdp_gather(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS, min_size: int = 2 ** 12) -> Any:
    """``tree`` (parameters inside a jitted step) whole on every device: one all-gather of each
    FSDP-sharded leaf (:func:`fsdp_spec`), whose gradient goes back sharded like the leaf (a
    reduce-scatter, not an all-reduce of the whole gradient). Leaves that stay replicated, and leaves
    that get no gradient (frozen ones), pass as they are or are only gathered.

    Example::

        def loss_of(params, batch):
            params = fsdp_gather(cast_floating(params, jnp.bfloat16), mesh)   # gathered in bfloat16
            return loss_fn(params, batch)
    """
    size = mesh.shape[axis_name]

    def gather(leaf):
        spec = fsdp_spec(np.shape(leaf), size, axis_name, min_size)
        if spec == P():
            return leaf
        return _gathered(leaf, NamedSharding(mesh, spec), NamedSharding(mesh, P()))

    return jax.tree_util.tree_map(gather, tree)


def _gathered(leaf: jax.Array, sharded: NamedSharding, whole: NamedSharding) -> jax.Array:
    """``leaf`` constrained to ``sharded`` then to ``whole`` (an all-gather); its cotangent is
    constrained to ``sharded`` (a reduce-scatter), where a sharding constraint's own transpose would
    keep it whole (an all-reduce)."""
    @jax.custom_vjp
    def gather(x):
        return jax.lax.with_sharding_constraint(jax.lax.with_sharding_constraint(x, sharded), whole)

    def forward(x):
        return gather(x), None

    def backward(_, grad):
        return (jax.lax.with_sharding_constraint(grad, sharded),)

    gather.defvjp(forward, backward)
    return gather(leaf)


def shard_train_state(state: Any, mesh: Mesh, fsdp: bool = False, axis_name: str = DATA_AXIS,
                      fsdp_min_size: int = 2 ** 12) -> Any:
    """Places a TrainState (or any pytree) on the mesh: replicated or FSDP-sharded.

    With several processes every process must pass the same values (e.g. built from the same
    seeds); each copies to its own devices only the parts they hold.
    """
    shardings = tree_shardings(state, mesh, fsdp, axis_name, fsdp_min_size)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    return jax.tree_util.tree_map(_from_host, state, shardings)


def _from_host(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same on every process) as a global array on ``sharding``; each process copies the
    slices of its own devices."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_from_host(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding of a batch: leading (example) axis split over the mesh axis."""
    return NamedSharding(mesh, P(axis_name))


def shard_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Places a batch on the mesh, split along the example axis.

    In a single process ``batch`` is the whole batch. With several processes (multi-host) it is
    this process's part (what ``Loader(..., process_count=n)`` yields), and the result is the
    global array assembled from every process's part. The leading axis must be divisible by the
    devices of the axis that this process holds.

    Example::

        batch = shard_batch(next(loader_iter), mesh)      # jax.Arrays split over mesh axis "data"
    """
    local = max(mesh.shape[axis_name] // jax.process_count(), 1)
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % local:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; its leading "
                             f"axis must be divisible by the {local} devices of mesh axis {axis_name!r} in this "
                             "process")
    sharding = batch_sharding(mesh, axis_name)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def process_rows(batch_size: int, mesh: Mesh, axis_name: str = DATA_AXIS) -> slice:
    """The rows of a ``batch_size``-row batch split over mesh axis ``axis_name`` (:func:`shard_batch`)
    that this process's devices hold: what it builds and feeds of every batch. All rows in a
    single process.

    Example::

        >>> process_rows(8, make_mesh(1))
        slice(0, 8, None)
    """
    shards = batch_sharding(mesh, axis_name).addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({index[0].indices(batch_size)[:2] for index in shards})
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
        raise ValueError(f"this process's devices hold rows {starts} of a {batch_size}-row batch, not one block; "
                         f"order the mesh's devices by process (jt.make_mesh does)")
    return slice(start, stop)


def place_global_batch(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Places a batch that every process holds whole on the mesh, split along the example axis;
    each process copies only the rows its own devices hold (so, with several processes, each
    feeds its share of every batch).

    Example::

        batch = place_global_batch(batches[i], mesh)      # same result on 1 process or on many
    """
    sharding = batch_sharding(mesh, axis_name)
    size = mesh.shape[axis_name]
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % size:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; its leading "
                             f"axis must be divisible by the {size} devices of mesh axis {axis_name!r}")

    return jax.tree_util.tree_map(lambda x: _from_host(x, sharding), batch)
