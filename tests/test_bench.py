"""The step-throughput harness: the --smoke suite end to end (output schema) and its pure helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxtune import bench

REPO = Path(__file__).resolve().parents[1]
CASE_FIELDS = {
    "kind", "case", "family", "framework", "mode", "variant", "batch_size", "shape", "compute_dtype",
    "examples_per_s", "step_time_s", "step_time_min_s", "tflops_per_s", "mfu", "rounds", "steps_per_round",
    "compile_s", "flops_per_step", "flops_source", "peak_memory_bytes", "memory_source",
    "optimizer_state_bytes", "param_count", "trainable_param_count", "compilations", "extra_compilations",
    "xla_bytes_accessed",
}
ENV_FIELDS = {"kind", "suite", "date", "backend", "device", "versions", "matmul_peak_tflops", "matmul_peak_dtype",
              "xla_flags", "peer_device", "peers_skipped_reason", "load_avg", "cpu_count"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run in a fresh process (its XLA flags must be set before JAX starts)."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxtune.bench", "--smoke", "--out", str(out), "--results-md",
                           str(out / "RESULTS.md")], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [json.loads(line) for line in (out / "smoke.jsonl").read_text().splitlines()]
    return out, lines[0], lines[1:]


def test_smoke_writes_every_output(smoke):
    out, _, _ = smoke
    for name in ("smoke.jsonl", "smoke.md", "smoke.png", "RESULTS.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "smoke.png").stat().st_size < 300_000
    results = (out / "RESULTS.md").read_text()
    assert "<!-- results:smoke:begin -->" in results and "| case | framework |" in results


def test_smoke_environment_record(smoke):
    _, env, _ = smoke
    assert env["kind"] == "env" and ENV_FIELDS <= set(env)
    assert env["suite"] == "smoke" and env["backend"] == "cpu"
    assert env["matmul_peak_tflops"] > 0 and env["matmul_peak_dtype"] == "float32"
    assert {"jax", "jaxlib", "flax", "optax", "torch", "transformers"} <= set(env["versions"])
    assert "--xla_backend_optimization_level=0" in env["xla_flags"]


def test_smoke_case_records_are_complete_and_sensible(smoke):
    _, _, records = smoke
    expected = {(c.name, m) for c in bench.suite_cases("smoke") for m in c.modes}
    assert {(r["case"], r["mode"]) for r in records if r["framework"] == "jaxtune"} == expected
    assert any(r["framework"] == "pytorch" and r["variant"] == "eager" for r in records)
    for r in records:
        assert CASE_FIELDS <= set(r), CASE_FIELDS - set(r)
        assert r["examples_per_s"] > 0 and r["step_time_s"] > 0, r
        assert r["step_time_min_s"] <= r["step_time_s"] + 1e-12
        assert r["flops_per_step"] > 0 and r["tflops_per_s"] > 0 and 0 < r["mfu"] < 5, r
        assert r["optimizer_state_bytes"] > 0 and r["param_count"] >= r["trainable_param_count"] > 0
        if r["framework"] == "jaxtune":
            assert r["compilations"] >= 1 and r["extra_compilations"] == 0, r
            assert r["compile_s"] > 0 and r["peak_memory_bytes"] > 0
            assert r["flops_source"] == "xla_cost_analysis"
        else:
            assert r["flops_source"] == "torch_flop_counter"


def test_frozen_backbone_keeps_less_state_and_flops(smoke):
    _, _, records = smoke
    for case in {r["case"] for r in records}:
        full = bench._find(records, case, mode="full")
        frozen = bench._find(records, case, mode="frozen_backbone")
        assert frozen["optimizer_state_bytes"] < full["optimizer_state_bytes"], case
        assert frozen["trainable_param_count"] < full["trainable_param_count"], case
        assert frozen["flops_per_step"] < full["flops_per_step"], case


def test_runtime_unfreezing_switched_stages_without_recompiling(smoke):
    _, _, records = smoke
    runtime = [r for r in records if r["mode"] == "runtime_unfreeze"]
    assert runtime and all(r["compilations"] == 1 and r["extra_compilations"] == 0 for r in runtime)
    assert all(r["rounds"] >= 2 for r in runtime)     # at least one stage switch inside the timed rounds


def test_median_step_time_and_errors():
    assert bench.median_step_time([0.4, 0.2, 0.6], 2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="steps_per_round"):
        bench.median_step_time([], 2)


def test_tree_bytes_counts_every_leaf():
    tree = {"a": np.zeros((2, 3), np.float32), "b": [np.zeros(5, np.int8)], "c": None}
    assert bench.tree_bytes(tree) == 2 * 3 * 4 + 5


def _record(case, mode, step_s, framework="jaxtune", variant="jit", **extra):
    return {"case": case, "framework": framework, "mode": mode, "variant": variant, "step_time_s": step_s,
            "step_time_min_s": 0.8 * step_s,
            "examples_per_s": 16 / step_s, "compile_s": 5.0, "peak_memory_bytes": 100, "extra_compilations": 0,
            **extra}


def test_check_targets_cpu_suite():
    records = [_record("c", "full", 1.0), _record("c", "frozen_backbone", 0.5),
               _record("c", "llrd_masks", 1.02), _record("c", "runtime_unfreeze", 1.0, extra_compilations=1),
               _record("c", "full", 1.25, "pytorch", "eager")]
    got = {t["target"]: (round(t["value"], 3), t["ok"]) for t in bench.check_targets(records, "cpu")}
    assert got == {"frozen-backbone speed-up over full (x)": (2.0, False),
                   "LLRD + masks overhead over AdamW": (0.02, True),
                   "runtime unfreezing extra compilations": (1, False),
                   "jaxtune / PyTorch eager (x)": (1.25, True),
                   "jaxtune / PyTorch eager, best rounds (x)": (1.25, True)}


def test_check_targets_gpu_suite_memory_and_compile():
    records = [_record("bert-base-s128-bs128", "full", 1.0, peak_memory_bytes=1000),
               _record("bert-base-s128-bs128", "frozen_backbone", 0.3, peak_memory_bytes=300),
               _record("bert-base-s128-bs128", "full", 1.5, "pytorch", "compile")]
    got = {t["target"]: t["ok"] for t in bench.check_targets(records, "gpu")}
    assert got == {"frozen-backbone speed-up over full (x)": True, "frozen-backbone peak memory / full": True,
                   "jaxtune / torch.compile (x)": True, "BERT-base step compile (s)": True}


def test_update_results_md_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nintro\n")
    bench.update_results_md(path, "cpu", "old cpu")
    bench.update_results_md(path, "gpu", "gpu table")
    bench.update_results_md(path, "cpu", "new cpu")
    text = path.read_text()
    assert text.startswith("# Results\n\nintro\n")
    assert "new cpu" in text and "old cpu" not in text and "gpu table" in text
    assert text.count("<!-- results:cpu:begin -->") == 1


def test_gpu_suite_covers_the_issue_cases():
    cases = {c.name: c for c in bench.suite_cases("gpu")}
    assert {(c.family, c.batch_size, tuple(c.shape.values())) for c in cases.values()} == {
        ("bert", 32, (128,)), ("bert", 128, (128,)), ("bert", 32, (512,)), ("t5", 64, (256, 64)),
        ("resnet", 256, (224,))}
    assert all(c.modes == bench.MODES for c in cases.values())
    assert all("compile" in c.peers for c in cases.values() if c.family == "bert")


def test_gpu_suite_refuses_cpu_backend(capsys, monkeypatch):
    for name in ("XLA_FLAGS", *bench.GPU_ENV):      # restored (or removed again) after the test
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    assert bench.main(["--suite", "gpu", "--results-md", "none"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_gpu_xla_flags_parse_with_this_jaxlib():
    # XLA validates every flag (and each enum value) on any backend and aborts on an unknown one.
    flags = " ".join(f"--{k}={v}" for k, (v, _) in bench.GPU_XLA_FLAGS.items())
    proc = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                          check=False, env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr[-2000:]
