"""profile_step / summarize_trace: a profiler trace reduced to ms per step per op."""
import doctest
import json
import os
import subprocess
import sys

import pytest

import jaxtune.profiling
from jaxtune.profiling import OpTimes, summarize_trace


def test_docstring_examples():
    assert doctest.testmod(jaxtune.profiling).failed == 0


def test_summarize_trace_adds_instances_per_stream_and_per_step():
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "ts": 0.0, "name": "fusion.3", "dur": 400.0},
        {"ph": "X", "pid": 1, "ts": 500.0, "name": "fusion.17", "dur": 200.0},
        {"ph": "X", "pid": 1, "ts": 800.0, "name": "gemm_bf16_2", "dur": 1200.0},
        {"ph": "X", "pid": 2, "ts": 0.0, "name": "$train.py:10 step", "dur": 9000.0},   # a Python frame, not an op
        {"ph": "X", "pid": 2, "ts": 0.0, "name": "ThunkExecutor::Execute", "dur": 9000.0},
        {"ph": "X", "pid": 2, "ts": 50.0, "name": "copy.4", "dur": 100.0},
        {"ph": "i", "pid": 1, "name": "marker"},
    ]
    ops = summarize_trace(events, steps=2)
    assert isinstance(ops, OpTimes) and ops.streams() == ["/device:GPU:0", "/host:CPU"]
    gpu = {r.op: r for r in ops.rows if r.stream == "/device:GPU:0"}
    assert gpu["gemm_bf16"].ms_per_step == pytest.approx(0.6) and gpu["fusion"].ms_per_step == pytest.approx(0.3)
    assert gpu["fusion"].count_per_step == 1.0
    assert [r.op for r in ops.rows if r.stream == "/host:CPU"] == ["copy"]
    table = ops.table(top=1)
    assert "/device:GPU:0: 0.90 ms busy per step" in table and "gemm_bf16" in table and "fusion" not in table
    with pytest.raises(ValueError, match="steps"):
        summarize_trace(events, steps=0)


def test_nested_events_count_once():
    """A fusion's inner event (same thread, inside its span) is taken out of the fusion's own time."""
    events = [{"ph": "X", "pid": 1, "tid": 7, "name": "fusion.1", "ts": 0.0, "dur": 1000.0},
              {"ph": "X", "pid": 1, "tid": 7, "name": "inner_kernel", "ts": 100.0, "dur": 300.0},
              {"ph": "X", "pid": 1, "tid": 7, "name": "SlinkyThreadPool::Await", "ts": 500.0, "dur": 400.0},
              {"ph": "X", "pid": 1, "tid": 8, "name": "fusion.2", "ts": 100.0, "dur": 500.0}]
    rows = {r.op: r.ms_per_step for r in summarize_trace(events, steps=1).rows}
    assert rows == {"fusion": pytest.approx(0.7 + 0.5), "inner_kernel": pytest.approx(0.3)}


def test_profile_step_on_cpu_names_the_matmul():
    """A real trace of a jitted step (XLA:CPU needs --xla_cpu_enable_xprof_traceme to trace ops,
    set before JAX starts, hence the subprocess)."""
    code = "\n".join([
        "import json, jax, jax.numpy as jnp",
        "from jaxtune.profiling import profile_step",
        "step = jax.jit(lambda s, b: (s @ b, jnp.sum(s)), donate_argnums=0)",
        "s, b = jnp.ones((768, 768)), jnp.ones((768, 768))",   # ~0.9 GFLOP: dominates the sum under any load
        "s, _ = step(s, b)",
        "s, ops = profile_step(step, s, b, steps=2)",
        "print(json.dumps([[r.op, r.ms_per_step, r.count_per_step] for r in ops.rows]))",
    ])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_enable_xprof_traceme=true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    busiest, ms, count = rows[0]
    assert ("dot" in busiest or "ynn" in busiest) and ms > 0 and count >= 1, rows   # the matmul dominates
    assert not [r for r in rows if r[0].startswith(("SlinkyThreadPool", "PjitFunction", "$"))], rows
