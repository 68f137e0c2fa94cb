"""Where a train step spends its time: a JAX profiler trace reduced to a table of ops.

:func:`profile_step` runs a few steps under ``jax.profiler.trace`` and sums the trace's timed events
per device stream (or host thread pool on CPU) and per op. Numbered instances of an op (``fusion.12``,
``fusion.13``) are added up under one name, and the time is given per step. The table is short
enough to read in a log, which matters where only a log comes back (a GPU session).

Example::

    state, ops = profile_step(step, state, batch, steps=3)
    print(ops.table(top=20))          # ms per step, share and count of the busiest ops per stream
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

# Python frames ($file:line name) and the runtime's own bookkeeping and waits, not ops. They are
# dropped before nesting is resolved, so an op keeps the time it spent waiting on its workers.
_NOT_OPS = re.compile(r"^(\$|ThunkExecutor|PjitFunction|CommonPjRt|end: |TfrtCpu|PjRt|SlinkyThreadPool|"
                      r"ThreadpoolListener|PythonRefManager|ParseArguments|Handle input|AllocateOutput|Wait for)")
_INSTANCE_SUFFIX = re.compile(r"([._]\d+)+$")


@dataclasses.dataclass(frozen=True)
class OpTime:
    """Total time of one op (all its instances) on one stream, per profiled step."""

    stream: str
    op: str
    ms_per_step: float
    count_per_step: float


@dataclasses.dataclass(frozen=True)
class OpTimes:
    """The ops of a profiled step, busiest first within each stream."""

    rows: tuple[OpTime, ...]
    steps: int

    def streams(self) -> list[str]:
        """Streams by total busy time, busiest first."""
        totals = collections.Counter()
        for r in self.rows:
            totals[r.stream] += r.ms_per_step
        return [name for name, _ in totals.most_common()]

    def table(self, top: int = 25) -> str:
        """A plain-text table of the ``top`` busiest ops of each stream.

        Example::

            print(ops.table(top=10))
        """
        lines = [f"profile: {self.steps} step(s); ms per step"]
        for stream in self.streams():
            rows = [r for r in self.rows if r.stream == stream]
            total = sum(r.ms_per_step for r in rows)
            lines.append(f"== {stream}: {total:.2f} ms busy per step, {len(rows)} distinct ops")
            for r in rows[:top]:
                lines.append(f"{r.ms_per_step:10.3f} ms {r.ms_per_step / total:6.1%} {r.count_per_step:7.1f}x  {r.op}")
        return "\n".join(lines)


def _self_times(events: Sequence[dict]) -> list[tuple[dict, float]]:
    """Each event with its own time: its duration less that of the events nested directly in it on
    the same thread (a fusion's inner trace events must not count twice)."""
    out = []
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for thread_events in by_thread.values():
        stack: list[list] = []          # [event, end, own time]
        for e in sorted(thread_events, key=lambda e: (float(e.get("ts", 0.0)), -float(e.get("dur", 0.0)))):
            start, dur = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
            while stack and stack[-1][1] <= start:
                out.append((stack[-1][0], stack.pop()[2]))
            if stack:
                stack[-1][2] -= dur
            stack.append([e, start + dur, dur])
        out.extend((item[0], item[2]) for item in reversed(stack))
    return out


def summarize_trace(events: Sequence[dict], steps: int) -> OpTimes:
    """Sums the complete events (``"ph": "X"``) of a Chrome/Perfetto trace per stream and op, each
    by its own time (less the events nested in it).

    ``events``: the trace's ``traceEvents``; process names come from its metadata events.

    Example::

        >>> events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        ...           {"ph": "X", "pid": 1, "ts": 0, "name": "fusion.3", "dur": 400},
        ...           {"ph": "X", "pid": 1, "ts": 500, "name": "fusion.7", "dur": 200}]
        >>> summarize_trace(events, steps=2).rows[0]
        OpTime(stream='/device:GPU:0', op='fusion', ms_per_step=0.3, count_per_step=1.0)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    names = {e["pid"]: e.get("args", {}).get("name", str(e["pid"]))
             for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    ops = [e for e in events if e.get("ph") == "X" and not _NOT_OPS.match(e.get("name", ""))]
    total_us: dict[tuple[str, str], float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e, self_us in _self_times(ops):
        key = (names.get(e.get("pid"), str(e.get("pid"))), _INSTANCE_SUFFIX.sub("", e["name"]))
        total_us[key] += self_us
        count[key] += 1
    rows = sorted((OpTime(stream, op, us / 1e3 / steps, count[(stream, op)] / steps)
                   for (stream, op), us in total_us.items()), key=lambda r: (r.stream, -r.ms_per_step))
    return OpTimes(tuple(rows), steps)


def profile_step(step: Callable, state: Any, batch: Any, *, steps: int = 3,
                 logdir: str | Path | None = None) -> tuple[Any, OpTimes]:
    """Runs ``steps`` calls of ``step(state, batch) -> (state, metrics)`` under the JAX profiler
    and returns the final state and the op table. Warm the step up (compile it) first, or the
    compilation is profiled too. ``logdir`` keeps the raw trace (TensorBoard / Perfetto);
    by default it goes to a temporary folder that is removed.

    Example::

        state, ops = profile_step(step, state, batch, steps=3)
        print(ops.table())
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(logdir or tmp)
        with jax.profiler.trace(str(folder), create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = step(state, batch)
            jax.block_until_ready((state, metrics))
        traces = sorted(folder.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {folder}; "
                               "is another profiler session active?")
        with gzip.open(traces[-1]) as f:
            events = json.load(f)["traceEvents"]
    return state, summarize_trace(events, steps)
