"""One run over several processes (hosts): ``jax.distributed`` start-up, agreement, failure spreading.

JAX is the distributed engine: :func:`initialize_multihost` calls ``jax.distributed.initialize``
(coordinator, process count and id given, or detected from SLURM, Cloud TPU, Kubernetes, ...),
after which ``jax.devices()`` spans every process and the runner's mesh does too. This module adds
what a multi-controller run needs around it, all through JAX's coordination service (its key-value
store and barriers):

* :func:`agree` -- every process publishes a flat dict (the run fingerprint's keys, package
  versions, a data digest) and checks it equals process 0's; a difference is a
  :class:`MultihostError` naming the key, raised on every process before any training.
* :func:`barrier` -- a named barrier with a timeout, so a missing process is an error, not a hang.
* failure spreading -- a process whose run fails publishes ``process i/n: <error>``; a watcher
  thread in every other process sees it within a second, prints ``stopping: process i/n failed: ...``
  and exits with status 1, instead of waiting forever in the next collective. A process that dies
  without a word (``kill -9``, out of memory, a lost host) stops sending JAX's heartbeats: once
  ``heartbeat_timeout_s`` has passed, JAX's coordination service no longer lists it among the live
  processes (``get_live_nodes``), and the watcher of every other process prints ``stopping:
  process i/n is gone ...`` and exits with status 1 (a collective waiting for it would wait forever).

Example::

    jt.initialize_multihost("10.0.0.1:1234", num_processes=2, process_id=0)   # once, before any JAX work
    jt.process_label()          # "process 0/2"
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import jax

from jaxtune.errors import UserError

FAILED_KEY = "jaxtune/failed"
_ACK_DIR = "jaxtune/failed_ack/"
_DONE_DIR = "jaxtune/done/"  # a process that finished its program (it leaves, and is not "gone")
_POLL_S = 0.5
_ACK_WAIT_S = 10.0
# A collective fails here as soon as a peer process dies, a moment before that peer's own report
# arrives: how long a failing process looks for such a report before calling the failure its own.
_PEER_REPORT_WAIT_S = 3.0
DEFAULT_BARRIER_TIMEOUT_S = 600
# How long a process that finished waits at exit for the others (process 0 may still be exporting).
_EXIT_BARRIER_TIMEOUT_S = 3600


class MultihostError(UserError):
    """The processes of a multi-process run disagree (config, data, versions) or one went missing."""


_watch: dict[str, Any] = {"thread": None, "stop": None, "failed": False, "status": 1, "heartbeat_s": 100,
                          "rounds": 0}
_rounds = threading.Condition()  # notified after each round of the liveness watcher that found everyone alive
_calls: dict[str, int] = {}  # how often each barrier / agreement name was used: keys are unique per use


def _unique(name: str) -> str:
    """``name`` with a per-process use count: every process makes the same calls in the same order,
    so the n-th use of a name gets the same key everywhere (coordination-service keys are write-once)."""
    _calls[name] = _calls.get(name, 0) + 1
    return f"{name}/{_calls[name]}"


def _client():
    """The ``jax.distributed`` coordination client (``None`` in a single-process run)."""
    from jax._src import distributed

    return distributed.global_state.client


def is_multiprocess() -> bool:
    """Whether this run has several processes (``jax.distributed`` joined, ``jax.process_count() > 1``)."""
    return _client() is not None and jax.process_count() > 1


def is_main_process() -> bool:
    """Whether this is process 0: the one that writes logs, plots, reports and exports."""
    return jax.process_index() == 0


def process_label() -> str:
    """``"process i/n"`` in a multi-process run, ``""`` otherwise (for error messages and logs).

    Example::

        >>> process_label()
        ''
    """
    return f"process {jax.process_index()}/{jax.process_count()}" if is_multiprocess() else ""


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, *, heartbeat_timeout_s: int = 100,
                         initialization_timeout_s: int = 300, **kwargs) -> None:
    """Joins a multi-process run: ``jax.distributed.initialize`` plus jaxtune's failure watcher.

    Call it once per process, before any other JAX call. Arguments left ``None`` are detected by
    JAX from the environment (SLURM, Cloud TPU pod slices, Kubernetes, Open MPI; or the
    ``JAX_COORDINATOR_ADDRESS`` variable). On CPU the processes talk through gloo collectives
    (``jax_cpu_collectives_implementation``). ``heartbeat_timeout_s``: after how long without a
    heartbeat JAX declares a process dead and stops the others; ``initialization_timeout_s``: how
    long to wait for every process to connect. Other keyword arguments go to
    ``jax.distributed.initialize``. It turns on ``jax_enable_recoverability``: a dead process then
    no longer aborts the others from inside XLA (a fatal log); jaxtune's watcher stops them instead,
    naming the dead process, and the processes meet in a barrier at exit.

    Example::

        initialize_multihost("127.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
        initialize_multihost()          # under srun / on a TPU pod slice: all detected
    """
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   initialization_timeout=initialization_timeout_s, **kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:  # missing/bad arguments, called twice or too late
        raise MultihostError(f"cannot join the multi-process run: {exc}",
                             hint="Give coordinator_address ('host:port' of process 0), num_processes and "
                                  "process_id, or run under a scheduler JAX detects (SLURM, Cloud TPU, Kubernetes).",
                             config_hint="Give --coordinator HOST:PORT (process 0's address), --num-processes N and "
                                         "--process-id I, or run under a scheduler JAX detects (SLURM srun, Cloud "
                                         "TPU, Kubernetes).") from None
    if is_multiprocess():
        _watch["heartbeat_s"] = heartbeat_timeout_s
        _start_watcher()
        _first_collective()
        # Log lines name their process (unless the program configured logging itself).
        logging.basicConfig(format=f"%(levelname)s [{process_label()}] %(name)s: %(message)s")


def _first_collective() -> None:
    """A sum over every device of every process, run while the processes are in step (they have just
    met). CPU (gloo) collectives set up their communication context for a set of devices on first
    use, waiting a fixed 30 s for every process; a process still compiling its first training step
    would miss that. Later collectives over the same devices reuse the context; a collective over a
    new group of devices (XLA may use sub-groups in an FSDP step) still needs the processes to reach
    it within 30 s of each other."""
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("all",))
    ones = np.ones(jax.device_count(), np.int32)
    spread = jax.make_array_from_callback(ones.shape, NamedSharding(mesh, PartitionSpec("all")), lambda i: ones[i])
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(spread)
    if int(total) != jax.device_count():
        raise MultihostError(f"{process_label()}: a sum over the {jax.device_count()} devices gave {int(total)}")
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("jaxtune: every process joined")  # one device per process (orbax's kind)


def _start_watcher() -> None:
    if _watch["thread"] is not None:
        return
    stop = threading.Event()
    thread = threading.Thread(target=_watch_for_failure, args=(_client(), stop), name="jaxtune-failure-watcher",
                              daemon=True)
    _watch.update(thread=thread, stop=stop)
    thread.start()
    threading.Thread(target=_watch_liveness, args=(_client(), stop), name="jaxtune-liveness-watcher",
                     daemon=True).start()
    atexit.register(_at_exit)  # registered after jax's own: runs before jax.distributed.shutdown


def _say(message: str) -> None:
    print(f"jaxtune ({process_label()}): {message}", file=sys.stderr, flush=True)


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as exc:  # NOT_FOUND: no such key yet; anything else: the coordinator is gone
        if "NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def _wait_for_acks(client) -> None:
    """Waits (at most ``_ACK_WAIT_S``) until every other process is done with the coordination
    service after a failure: process 0 hosts it, so it must outlive their last use of it."""
    deadline = time.monotonic() + _ACK_WAIT_S
    while time.monotonic() < deadline:
        try:
            if len(client.key_value_dir_get(_ACK_DIR)) >= jax.process_count() - 1:
                return
        except Exception:
            return
        time.sleep(0.05)


def _watch_for_failure(client, stop: threading.Event) -> None:
    """Polls the coordination service for a failure of another process; on one, exits this process."""
    while not stop.wait(_POLL_S):
        if _watch["failed"]:
            return
        try:
            failure = _try_get(client, FAILED_KEY)
        except Exception as exc:
            if stop.is_set() or _watch["failed"]:
                return
            _say(f"stopping: lost the coordination service (process 0 died?): {str(exc).splitlines()[0][:300]}")
            os._exit(1)
        if failure is not None and not _watch["failed"]:
            _say(f"stopping: {failure}")
            try:
                if is_main_process():
                    _wait_for_acks(client)
                else:
                    client.key_value_set(f"{_ACK_DIR}{jax.process_index()}", "1")
            finally:
                os._exit(1)


def _watch_liveness(client, stop: threading.Event) -> None:
    """Asks JAX's coordination service which processes are alive (a call returns once every live
    process asked, or once a dead one missed its heartbeats for ``heartbeat_timeout_s``); when one is
    gone without reporting a failure (``kill -9``, out of memory, a lost host), exits this process
    naming it. A failed process's own report goes through :func:`_watch_for_failure` instead."""
    everyone = list(range(jax.process_count()))
    while not stop.wait(_POLL_S):
        try:
            gone = sorted(set(everyone) - set(client.get_live_nodes(everyone)))
            gone = [i for i in gone if _try_get(client, f"{_DONE_DIR}{i}") is None]  # not those that finished
            if gone and _try_get(client, FAILED_KEY) is not None:
                return  # it failed and said so: the failure watcher stops this process
        except Exception:
            return  # the coordination service is gone: the failure watcher says so
        if stop.is_set() or _watch["failed"]:
            return
        if not gone:
            with _rounds:
                _watch["rounds"] += 1
                _rounds.notify_all()
        else:
            names = ", ".join(f"process {i}/{len(everyone)}" for i in gone)
            _say(f"stopping: {names} is gone: JAX's coordination service got no heartbeat from it for "
                 f"{_watch['heartbeat_s']} s (killed, out of memory, or its host is down); see its output")
            if is_main_process():
                time.sleep(2 * _POLL_S)  # the others' watchers learn it too before this process's service ends
            os._exit(1)


def _await_liveness_round() -> None:
    """Waits until the liveness watcher has found every process alive in a round it began after this
    call (so: the processes are alive now), at most the heartbeat timeout and a margin. If one is
    gone, the watcher stops this process (naming it) meanwhile, and this never returns."""
    deadline = time.monotonic() + _watch["heartbeat_s"] + 10
    with _rounds:
        target = _watch["rounds"] + 2
        while _watch["rounds"] < target and time.monotonic() < deadline:
            _rounds.wait(timeout=_POLL_S)


def failure_of_another_process(wait_s: float = _PEER_REPORT_WAIT_S) -> str | None:
    """Another process's failure report (``"process i/n failed: ..."``), waiting up to ``wait_s``
    seconds for one to arrive; None if there is none (or in a single process).

    Example::

        cause = failure_of_another_process()   # e.g. after a collective failed with "Connection reset by peer"
    """
    client = _client() if is_multiprocess() else None
    if client is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            failure = _try_get(client, FAILED_KEY)
        except Exception:  # the coordinator is gone
            return None
        if failure is not None and not failure.startswith(f"{process_label()} "):
            return failure
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(_POLL_S, 0.1))


def report_failure(exc: BaseException, status: int = 1) -> None:
    """Tells the other processes that this one failed with ``exc`` (they stop within a second), and
    makes this process exit with ``status`` at interpreter exit without waiting for the others
    (``jax.distributed.shutdown`` would wait for them in a barrier). Nothing in a single process.

    Example::

        try:
            train()
        except Exception as e:
            report_failure(e)
            raise
    """
    if not is_multiprocess() or _client() is None:
        return
    if not _watch["failed"]:
        _watch["failed"] = True
        text = str(exc).strip().splitlines()
        message = f"{process_label()} failed: {type(exc).__name__}: {text[0][:500] if text else ''}"
        try:
            _client().key_value_set(FAILED_KEY, message)
        except Exception:  # another process failed first (the key exists), or the coordinator is gone
            pass
    _watch["status"] = max(_watch["status"], status)


def _at_exit() -> None:
    stop = _watch["stop"]
    if _watch["failed"]:
        if stop is not None:
            stop.set()
        sys.stdout.flush()
        sys.stderr.flush()
        client = _client()
        if client is not None and is_main_process():
            _wait_for_acks(client)
        elif client is not None:
            try:
                client.key_value_set(f"{_ACK_DIR}{jax.process_index()}", "1")  # done with the coordinator
            except Exception:
                pass
        os._exit(_watch["status"])
    client = _client()
    if client is not None:  # every process done before process 0's coordination service ends
        try:
            client.key_value_set(f"{_DONE_DIR}{jax.process_index()}", "1")
            client.wait_at_barrier("jaxtune/exit", _EXIT_BARRIER_TIMEOUT_S * 1000)
        except Exception as exc:
            _say(f"at exit: the other processes did not all finish: {str(exc).splitlines()[0][:300]}")
    if stop is not None:
        stop.set()
    thread = _watch["thread"]
    if thread is not None:
        thread.join(timeout=2 * _POLL_S)


def barrier(name: str, timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S) -> None:
    """Waits until every process reaches barrier ``name``; a :class:`MultihostError` after
    ``timeout_s`` seconds (a process is missing or stuck). Nothing in a single process.

    Example::

        if jt.is_main_process():
            write_files()
        barrier("files_written")
    """
    if not is_multiprocess():
        return
    try:
        _client().wait_at_barrier(f"jaxtune/{_unique(name)}", int(timeout_s * 1000))
    except Exception as exc:
        raise MultihostError(f"{process_label()}: barrier {name!r} timed out after {timeout_s:.0f} s or failed: "
                             f"{str(exc).splitlines()[0][:300]}",
                             hint="Another process failed or is stuck; see its output.") from None


def agree(name: str, values: dict[str, Any], timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S) -> None:
    """Checks that every process holds the same flat ``values`` (JSON-able), e.g. the run fingerprint's
    keys; raises :class:`MultihostError` on every process naming the first differing keys, the
    processes and both values. Nothing in a single process.

    Example::

        agree("config", run_fingerprint(cfg)[1])
        # MultihostError: process 1/2's config differs from process 0's: optim.learning_rate: 0.001 on
        # process 0, 0.002 on process 1. ...
    """
    if not is_multiprocess():
        return
    client, n, prefix = _client(), jax.process_count(), f"jaxtune/agree/{_unique(name)}"
    mine = json.loads(json.dumps(values, sort_keys=True, default=str))
    client.key_value_set(f"{prefix}/{jax.process_index()}", json.dumps(mine, sort_keys=True))
    def values_of(process: int) -> dict:
        try:
            return json.loads(client.blocking_key_value_get(f"{prefix}/{process}", int(timeout_s * 1000)))
        except Exception as exc:
            raise MultihostError(f"{process_label()}: process {process} did not publish its {name} within "
                                 f"{timeout_s:.0f} s ({str(exc).splitlines()[0][:200]})",
                                 hint="It failed or is stuck; see its output.") from None

    reference = values_of(0)
    for other in range(1, n):
        theirs = values_of(other)
        differ = sorted(k for k in set(reference) | set(theirs) if reference.get(k, "(absent)") != theirs.get(k, "(absent)"))
        if differ:
            shown = "; ".join(f"{k}: {json.dumps(reference.get(k, '(absent)'))} on process 0, "
                              f"{json.dumps(theirs.get(k, '(absent)'))} on process {other}" for k in differ[:5])
            raise MultihostError(f"process {other}/{n}'s {name} differs from process 0's in {len(differ)} key(s): "
                                 f"{shown}{' ...' if len(differ) > 5 else ''}.",
                                 hint="Every process must run the same config (overrides included), on the same "
                                      "data files, with the same jaxtune/jax/flax/optax/orbax versions.")


def host_copy(tree: Any) -> Any:
    """``tree`` with every array fetched whole to host memory (numpy), on every process: also arrays
    sharded over devices of several processes (those ``jax.device_get`` cannot fetch). Every process
    must call it (it is a collective then).

    Example::

        >>> host_copy({"w": jax.numpy.ones(2)})["w"]
        array([1., 1.], dtype=float32)
    """
    if not is_multiprocess():
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def package_versions() -> dict[str, str]:
    """The versions of the packages a run's numbers depend on (compared across processes by the runner).

    Example::

        package_versions()["versions.jax"]   # '0.10.2'
    """
    from importlib import metadata

    out = {}
    for name in ("jaxtune", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            out[f"versions.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"versions.{name}"] = "(not installed)"
    return out


def run_mesh(config) -> Any:
    """The mesh of a runner config's ``train.parallel``: ``None`` (one device), or one ``"data"``
    axis over every device of every process; checks the batch sizes split evenly over it.

    Example::

        mesh = run_mesh(jt.load_config(None, ["train.parallel=dp"]))   # Mesh over jax.devices()
    """
    from jaxtune.config import ConfigError
    from jaxtune.sharding import make_mesh

    parallel = config.train.parallel
    if parallel is None:
        if is_multiprocess():
            raise ConfigError(f"train.parallel is null, but this run has {jax.process_count()} processes; set "
                              "train.parallel to dp (data parallel) or fsdp (parameters sharded too)")
        return None
    mesh = make_mesh()
    devices, accumulate = mesh.size, config.train.accumulate
    for key, size, per in (("data.batch_size", config.data.batch_size, devices * accumulate),
                           ("data.eval_batch_size", config.data.eval_batch_size, devices)):
        if size % per:
            accumulated = f" x train.accumulate {accumulate}" if key == "data.batch_size" and accumulate > 1 else ""
            raise ConfigError(f"{key} is {size}, not divisible by the {devices} devices{accumulated} of the "
                              f"train.parallel {parallel!r} mesh ({jax.process_count()} process(es)); use a "
                              f"multiple of {per}")
    return mesh


def check_same_config(config) -> None:
    """Checks every process runs ``config`` (every key, overrides included) with the same package
    versions (:func:`package_versions`); a :class:`MultihostError` naming the key otherwise.
    Nothing in a single process."""
    from jaxtune.config import to_dict

    if not is_multiprocess():
        return

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    agree("config", {**flat(to_dict(config)), **package_versions()})


def data_digest(data) -> str:
    """A sha256 hex digest of prepared data (labels and every example array of every split), for
    checking that every process read the same data files.

    Example::

        data_digest(jt.experiment.prepare_data(cfg.data, cfg.model.path))[:12]
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256(json.dumps([data.task, list(data.label_names)]).encode())
    for split in (data.train, data.validation, data.test):
        digest.update(str(len(split)).encode())
        for example in split:
            for key in sorted(example):
                value = np.ascontiguousarray(example[key])
                digest.update(f"{key}{value.dtype}{value.shape}".encode())
                digest.update(value.tobytes())
    return digest.hexdigest()


def stops_others_on_failure(fn):
    """Decorator: an exception escaping ``fn`` is reported to the other processes
    (:func:`report_failure`) before it propagates, so they stop instead of waiting for this one.

    Example::

        @stops_others_on_failure
        def train(cfg): ...
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if is_multiprocess() and not isinstance(exc, UserError):  # the command prints user errors itself
                # A peer's death breaks this process's collectives first: name the peer's failure as the cause.
                broke = isinstance(exc, jax.errors.JaxRuntimeError)
                cause = None if _watch["failed"] else failure_of_another_process(_PEER_REPORT_WAIT_S if broke else 0.0)
                if cause is None and broke and not _watch["failed"]:
                    _await_liveness_round()  # a peer that died without a word: the liveness watcher names it
                if cause is not None:
                    _say(f"stopping: {cause} (here it broke a collective: {type(exc).__name__})")
                else:
                    _say(f"failed: {type(exc).__name__}: {exc}")
            report_failure(exc)
            raise

    return wrapper
