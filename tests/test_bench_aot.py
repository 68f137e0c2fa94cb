"""The ahead-of-time compile check (jaxtune/bench/aot.py), on this machine's CPU as the target;
the GPU targets need the CUDA plugin, which CI does not install."""
import json

import pytest

from jaxtune import bench
from jaxtune.bench import aot as bench_aot


def test_compile_check_on_cpu_writes_memory_plan_and_frozen_ratios(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    cases = ["bert-tiny-s16-bs4", "resnet-tiny-i32-bs4"]
    rc = bench_aot.main(["--target", "cpu", "--suite", "smoke", "--cases", ",".join(cases), "--out", str(tmp_path),
                         "--modes", "full,frozen_backbone", "--results-md", str(results_md)])
    assert rc == 0
    env, *records = [json.loads(line) for line in (tmp_path / "compile-cpu.jsonl").read_text().splitlines()]
    assert env["target"] == "cpu" and env["compute_dtype"] == "float32"
    assert [(r["case"], r["mode"]) for r in records] == [(c, m) for c in cases for m in ("full", "frozen_backbone")]
    assert all(r["error"] is None and r["peak_memory_bytes"] > 0 and r["compile_s"] > 0 for r in records)
    ratios = bench_aot.frozen_memory_ratios(records)
    assert set(ratios) == set(cases)
    assert all(0 < ratio < 1 for ratio in ratios.values())  # a head-only step plans less memory
    text = (tmp_path / "compile-cpu.md").read_text()
    assert "frozen-backbone / full peak memory" in text and "bert-tiny-s16-bs4" in text
    assert "<!-- results:compile-cpu:begin -->" in results_md.read_text()


def test_a_failing_compile_is_recorded_and_the_rest_go_on(monkeypatch):
    case = bench.suite_cases("smoke")[0]
    real_prepare = bench.JaxContestant.prepare

    def prepare(self):
        if self.mode == "frozen_backbone":
            raise RuntimeError("boom in frozen")
        real_prepare(self)

    monkeypatch.setattr(bench.JaxContestant, "prepare", prepare)
    records = bench_aot.compile_case(case, ["frozen_backbone", "full"], bench_aot.target_sharding("cpu"),
                                     "float32", log=lambda _: None)
    assert records[0]["error"] == "RuntimeError: boom in frozen" and records[0]["peak_memory_bytes"] is None
    assert records[1]["error"] is None and records[1]["peak_memory_bytes"] > 0
    assert "**failed**: RuntimeError: boom in frozen" in bench_aot.markdown(
        records, {"target": "cpu", "date": "d", "jax": "j", "host": "h", "device": "cpu", "compute_dtype": "float32",
                  "attention": "auto", "xla_flags": ""})


def test_gpu_target_attention_choice_and_missing_plugin_hint():
    cases = {c.name: c for c in bench.suite_cases("gpu")}
    assert bench_aot._auto_attention(cases["bert-base-s128-bs128"]) == "cudnn"   # no attention dropout
    assert bench_aot._auto_attention(cases["t5-small-s256-t64-bs64"]) == "xla"   # T5 drops attention weights
    with pytest.raises(ValueError, match="unknown target"):
        bench_aot.target_sharding("a100")
    try:
        import jax_plugins.xla_cuda13  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="jax-cuda13-plugin"):
            bench_aot.target_sharding("h100")


def test_layouts_compile_side_by_side_with_a_scanned_vs_unrolled_table(tmp_path):
    rc = bench_aot.main(["--target", "cpu", "--suite", "smoke", "--cases", "bert-tiny-s16-bs4,resnet-tiny-i32-bs4",
                         "--out", str(tmp_path), "--modes", "full", "--layouts", "unrolled,scanned",
                         "--results-md", "none"])
    assert rc == 0
    env, *records = [json.loads(line) for line in (tmp_path / "compile-cpu.jsonl").read_text().splitlines()]
    assert [(r["case"], r["layout"]) for r in records] == [
        ("bert-tiny-s16-bs4", "unrolled"), ("bert-tiny-s16-bs4", "scanned"),
        ("resnet-tiny-i32-bs4", "unrolled"), ("resnet-tiny-i32-bs4", "scanned")]
    assert all(r["error"] is None for r in records)
    pairs = bench_aot.layout_rows(records)
    assert [(p["case"], p["mode"]) for p in pairs] == [("bert-tiny-s16-bs4", "full"), ("resnet-tiny-i32-bs4", "full")]
    # the stacked BERT plans different buffers; a ResNet has no layers to scan and plans the same
    assert pairs[1]["scanned"]["peak_memory_bytes"] == pairs[1]["unrolled"]["peak_memory_bytes"]
    text = (tmp_path / "compile-cpu.md").read_text()
    assert "| bert-tiny-s16-bs4 | full | scanned |" in text and "scanned / unrolled" in text
    with pytest.raises(SystemExit, match="--layouts"):
        bench_aot.main(["--target", "cpu", "--layouts", "rolled"])
    assert bench_aot.with_layout(bench.suite_cases("smoke")[0], "scanned").config.scan_layers


def test_both_gpu_reports_name_the_random_bits_source_only_for_gpu_runs():
    from jaxtune.bench.report import environment_markdown

    env = {"date": "d", "device": "H100", "backend": "gpu", "device_count": 1, "cpu_count": 2, "threads": 2,
           "load_avg": [0.1, 0.1, 0.1], "matmul_peak_tflops": 1.0, "matmul_peak_dtype": "bf16", "versions": {},
           "xla_flags": "", "peer_device": "cuda", "threefry_gpu_kernel": True}
    assert "- random bits on GPU: the threefry kernel\n" in environment_markdown(env)
    assert "random bits" not in environment_markdown({**env, "backend": "cpu"})
    aot_env = {"target": "h100", "date": "d", "jax": "j", "host": "h", "device": "H100", "compute_dtype": "bf16",
               "attention": "auto", "xla_flags": "", "threefry_gpu_kernel": False}
    assert "; random bits from XLA ops." in bench_aot.markdown([], aot_env)
    assert "random bits" not in bench_aot.markdown([], {**aot_env, "target": "cpu"})
