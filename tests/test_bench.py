"""The step-throughput harness: the --smoke suite end to end (output schema) and its pure helpers."""
from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxtune import bench

pytestmark = pytest.mark.xdist_group("bench_smoke")  # its module fixture is expensive: one worker runs it once

REPO = Path(__file__).resolve().parents[1]
CASE_FIELDS = {
    "kind", "case", "family", "framework", "mode", "variant", "batch_size", "shape", "compute_dtype",
    "examples_per_s", "step_time_s", "step_time_min_s", "tflops_per_s", "mfu", "rounds", "steps_per_round",
    "compile_s", "flops_per_step", "flops_source", "peak_memory_bytes", "memory_source",
    "optimizer_state_bytes", "param_count", "trainable_param_count", "compilations", "extra_compilations",
    "xla_bytes_accessed", "compile_concurrency", "recompilations", "attention_kernel",
    "round_step_times_s", "load_average_after",
}
ENV_FIELDS = {"kind", "suite", "date", "backend", "device", "versions", "matmul_peak_tflops", "matmul_peak_dtype",
              "xla_flags", "xla_flags_dropped", "peer_device", "peers_skipped_reason", "load_avg", "cpu_count",
              "attention", "attention_note"}
SMOKE_COMPILE_WORKERS = 3      # the tiny BERT's three other modes compile at once (the default is 1)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run in a fresh process (its XLA flags must be set before JAX starts), compiling
    in a thread pool; returns the output folder, environment record, case records and stdout."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxtune.bench", "--smoke", "--out", str(out), "--results-md",
                           str(out / "RESULTS.md"), "--compile-workers", str(SMOKE_COMPILE_WORKERS),
                           "--profile-steps", "2"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [json.loads(line) for line in (out / "smoke.jsonl").read_text().splitlines()]
    return out, lines[0], lines[1:], proc.stdout


def test_smoke_writes_every_output(smoke):
    out, _, _, _ = smoke
    for name in ("smoke.jsonl", "smoke.md", "smoke.png", "RESULTS.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "smoke.png").stat().st_size < 300_000
    results = (out / "RESULTS.md").read_text()
    assert "<!-- results:smoke:begin -->" in results and "| case | framework |" in results


def test_smoke_environment_record(smoke):
    _, env, _, _ = smoke
    assert env["kind"] == "env" and ENV_FIELDS <= set(env)
    assert env["suite"] == "smoke" and env["backend"] == "cpu"
    assert env["matmul_peak_tflops"] > 0 and env["matmul_peak_dtype"] == "float32"
    assert {"jax", "jaxlib", "flax", "optax", "torch", "transformers"} <= set(env["versions"])
    assert "--xla_backend_optimization_level=0" in env["xla_flags"] and env["xla_flags_dropped"] == []


def test_smoke_case_records_are_complete_and_sensible(smoke):
    _, _, records, _ = smoke
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
            assert r["recompilations"] == 0, r        # the jitted calls reused the ahead-of-time executable
            assert r["compile_s"] > 0 and r["peak_memory_bytes"] > 0
            assert r["flops_source"] == "xla_hlo_cost_analysis"
            assert r["attention_kernel"] == (None if r["family"] == "resnet" else "xla"), r   # no cuDNN on CPU
        else:
            assert r["flops_source"] == "torch_flop_counter"
            assert r["recompilations"] is None and r["compile_concurrency"] == 1


def test_full_mode_is_profiled_after_timing(smoke):
    """--profile-steps: each case's full-mode record carries the op table (and the log shows it)."""
    _, env, records, stdout = smoke
    assert "--xla_cpu_enable_xprof_traceme=true" in env["xla_flags"]
    for r in records:
        if r["framework"] == "jaxtune" and r["mode"] == "full":
            assert r["profile"].startswith(f"# {r['case']} jaxtune/full\nprofile: 2 step(s)"), r["profile"][:200]
            assert "ms busy per step" in r["profile"] and r["profile"] in stdout
        else:
            assert "profile" not in r


def test_full_mode_compiles_alone_and_the_others_concurrently(smoke):
    _, _, records, _ = smoke
    for r in (r for r in records if r["framework"] == "jaxtune"):
        others = len(next(c for c in bench.suite_cases("smoke") if c.name == r["case"]).modes) - 1
        expected = 1 if r["mode"] == "full" else min(SMOKE_COMPILE_WORKERS, others)
        assert r["compile_concurrency"] == expected, r
    assert any(r["compile_concurrency"] == SMOKE_COMPILE_WORKERS for r in records)


def test_smoke_reports_progress_per_case(smoke):
    _, _, records, stdout = smoke
    assert stdout.startswith("suite smoke") and "\nplan: 3 case(s), estimated " in stdout
    for case in dict.fromkeys(r["case"] for r in records):
        assert f"case {case} done in " in stdout and "elapsed" in stdout


def test_outputs_are_written_case_by_case(smoke, tmp_path):
    _, env, records, _ = smoke
    cases = list(dict.fromkeys(r["case"] for r in records))
    jsonl = bench.start_outputs(env, tmp_path, "smoke", "run", cases)
    assert "**Partial run**: not run yet: " + ", ".join(cases) + "." in (tmp_path / "run.md").read_text()
    done = []
    for i, case in enumerate(cases):
        case_records = [r for r in records if r["case"] == case]
        done += case_records
        bench.append_case_outputs(case_records, done, env, tmp_path, "smoke", "run", cases[i + 1:])
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert lines == [env, *done]                 # what a run killed now would leave
        markdown = (tmp_path / "run.md").read_text()
        assert all(f"| {c} |" in markdown for c in cases[:i + 1])
        pending = cases[i + 1:]
        if pending:
            assert "**Partial run**: not run yet: " + ", ".join(pending) + "." in markdown
        else:
            assert "Partial run" not in markdown


def test_frozen_backbone_keeps_less_state_and_flops(smoke):
    _, _, records, _ = smoke
    for case in {r["case"] for r in records}:
        full = bench.find_record(records, case, mode="full")
        frozen = bench.find_record(records, case, mode="frozen_backbone")
        assert frozen["optimizer_state_bytes"] < full["optimizer_state_bytes"], case
        assert frozen["trainable_param_count"] < full["trainable_param_count"], case
        assert frozen["flops_per_step"] < full["flops_per_step"], case


def test_runtime_unfreezing_switched_stages_without_recompiling(smoke):
    _, _, records, _ = smoke
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
    records[0]["round_step_times_s"], records[-1]["round_step_times_s"] = [1.0, 1.1, 0.9], [1.2, 1.5, 1.1]
    targets = bench.check_targets(records, "cpu")
    got = {t["target"]: (round(t["value"], 3), t["ok"]) for t in targets}
    assert targets[3]["spread"] == "1.200-1.364 over 3 rounds"
    assert "1.250 (per round 1.200-1.364 over 3 rounds) | 1.25 | yes" in bench.targets_table(targets)
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
    cases = {c.name: c for c in bench.suite_cases("gpu") if not c.members}
    members = {(c.name, c.members, c.modes) for c in bench.suite_cases("gpu") if c.members}
    assert members == {("minilm-l6-s128-bs32-n8", 8, bench.MEMBER_MODES), ("bert-base-s128-bs32-n8", 8, bench.MEMBER_MODES)}
    assert {(c.family, c.batch_size, tuple(c.shape.values())) for c in cases.values()} == {
        ("bert", 32, (128,)), ("bert", 128, (128,)), ("bert", 32, (512,)), ("t5", 64, (256, 64)),
        ("resnet", 256, (224,))}
    assert all(c.modes == bench.MODES for c in cases.values())
    assert all("compile" in c.peers for c in cases.values() if c.family == "bert")


def test_members_n_sets_the_member_cases_n_and_their_names():
    gpu = {c.name: c for c in bench.suite_cases("gpu")}
    four = bench.with_members(gpu["minilm-l6-s128-bs32-n8"], 4)
    assert (four.name, four.members) == ("minilm-l6-s128-bs32-n4", 4)
    assert bench.with_members(gpu["bert-base-s128-bs32"], 4) is gpu["bert-base-s128-bs32"]  # no member modes
    cpu = bench.with_members(bench.suite_cases("cpu")[0], 2)
    assert (cpu.name, cpu.members) == ("minilm-l6-s64-bs16", 2)
    assert bench.parse_args(["--members-n", "8"]).members_n == 8
    session = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    assert "--cases minilm-l6-s128-bs32-n8,bert-base-s128-bs32-n8 --modes members,sequential" in session


def _restore_env_after_test(monkeypatch, *names):
    for name in names:          # restored (or removed again) after the test
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


def test_gpu_suite_refuses_cpu_backend(capsys, monkeypatch, restore_threefry_lowering):
    _restore_env_after_test(monkeypatch, "XLA_FLAGS", *bench.GPU_ENV)
    monkeypatch.setattr(bench.xla_flags, "_probe_xla_flags", lambda flags: True)
    assert bench.main(["--suite", "gpu", "--results-md", "none"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_gpu_suite_draws_random_bits_as_the_runner_unless_told(monkeypatch, restore_threefry_lowering):
    _restore_env_after_test(monkeypatch, "XLA_FLAGS", *bench.GPU_ENV)
    monkeypatch.setattr(bench.xla_flags, "_probe_xla_flags", lambda flags: True)
    monkeypatch.delenv(bench.xla_flags.THREEFRY_KERNEL_ENV, raising=False)
    jax.config.update("jax_threefry_gpu_kernel_lowering", False)
    bench.apply_environment("gpu", None)
    assert jax.config.jax_threefry_gpu_kernel_lowering is True     # as train.gpu_threefry_kernel's default
    jax.config.update("jax_threefry_gpu_kernel_lowering", False)
    monkeypatch.setenv(bench.xla_flags.THREEFRY_KERNEL_ENV, "false")  # JAX read it at import: it wins
    bench.apply_environment("gpu", None)
    assert jax.config.jax_threefry_gpu_kernel_lowering is False


def test_time_budget_skips_the_cases_that_do_not_fit_and_says_so(capsys, monkeypatch, tmp_path):
    _restore_env_after_test(monkeypatch, "XLA_FLAGS")
    results = tmp_path / "RESULTS.md"
    argv = ["--smoke", "--out", str(tmp_path), "--results-md", str(results), "--no-peers", "--time-budget-s", "0.01"]
    assert bench.main(argv) == 0
    names = [c.name for c in bench.suite_cases("smoke")]
    assert "skipping 3 case(s) (time budget 0.01 s: " in capsys.readouterr().out
    for text in ((tmp_path / "smoke.md").read_text(), results.read_text()):
        assert "**Not run** (time budget" in text and ", ".join(names) + "." in text
    lines = (tmp_path / "smoke.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["kind"] == "env"
    assert not (tmp_path / "smoke.png").exists()


def test_time_budget_scales_estimates_by_the_finished_cases():
    readings = iter([0.0, 10.0, 50.0, 50.0])
    budget = bench.TimeBudget(100.0, clock=lambda: next(readings))
    assert budget.fits(90.0) and not budget.fits(60.0)           # 10 s, then 50 s elapsed
    budget.finished(estimate_s=20.0, took_s=40.0)                # twice the estimate
    assert budget.estimate(30.0) == 60.0 and not budget.fits(30.0)
    budget.finished(estimate_s=100.0, took_s=1.0)                # the largest ratio stays
    assert budget.scale == 2.0
    fast = bench.TimeBudget(None)
    fast.finished(estimate_s=100.0, took_s=1.0)
    assert fast.scale == bench.MIN_BUDGET_SCALE and fast.fits(1e9)
    with pytest.raises(ValueError, match="time budget"):
        bench.TimeBudget(0.0)


def test_gpu_suite_estimate_and_protocol_fit_one_device_command():
    options = bench.SUITE_OPTIONS["gpu"]
    assert options.compile_workers == 4 and options.rounds * options.steps_per_round <= 30
    assert bench.SUITE_OPTIONS["cpu"].compile_workers == 1 and bench.SUITE_OPTIONS["smoke"].compile_workers == 2
    many_modes = [c for c in bench.suite_cases("gpu") if len(c.modes) > 2]     # the others compile one by one
    estimates = [bench.estimate_case_s(c, options) for c in many_modes]
    serial = [bench.estimate_case_s(c, bench.Options(compile_workers=1)) for c in many_modes]
    assert all(0 < e < s for e, s in zip(estimates, serial))
    assert bench.suite_cases("gpu")[0].name == "bert-base-s128-bs128"    # the targets' case first


def _fake_probe(rejected, calls):
    def probe(flags):
        calls.append(flags)
        return not any(r in flags.split() for r in rejected)
    return probe


def test_accepted_xla_flags_probes_once_when_all_are_fine():
    calls = []
    assert bench.accepted_xla_flags("--user=1", ["--a=1", "--b=2"], _fake_probe([], calls)) == (["--a=1", "--b=2"], [])
    assert calls == ["--user=1 --a=1 --b=2"]


def test_accepted_xla_flags_drops_each_rejected_flag():
    calls = []
    kept, dropped = bench.accepted_xla_flags("", ["--a=1", "--b=2", "--c=3"], _fake_probe(["--b=2"], calls))
    assert (kept, dropped) == (["--a=1", "--c=3"], ["--b=2"])
    assert calls == ["--a=1 --b=2 --c=3", "--a=1", "--b=2", "--c=3"]
    assert bench.accepted_xla_flags("", ["--a=1"], _fake_probe(["--a=1"], [])) == ([], ["--a=1"])
    with pytest.raises(SystemExit, match="from the environment is rejected"):
        bench.accepted_xla_flags("--bad=1", ["--a=1"], _fake_probe(["--bad=1"], []))


def test_gpu_environment_drops_rejected_flags_and_records_them(monkeypatch, smoke):
    _restore_env_after_test(monkeypatch, "XLA_FLAGS", *bench.GPU_ENV)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    rejected = "--xla_gpu_enable_command_buffer=" + bench.GPU_XLA_FLAGS["xla_gpu_enable_command_buffer"][0]
    monkeypatch.setattr(bench.xla_flags, "_probe_xla_flags", _fake_probe([rejected], []))
    assert bench.apply_environment("gpu", None) == [rejected]
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"
    _, env, _, _ = smoke
    markdown = bench.environment_markdown({**env, "xla_flags_dropped": [rejected]})
    assert f"- XLA flags dropped (this jaxlib rejects them): `{rejected}`" in markdown


def test_docstring_examples():
    modules = [importlib.import_module(f"jaxtune.bench.{m.name}") for m in pkgutil.iter_modules(bench.__path__)
               if m.name != "__main__"]
    results = [doctest.testmod(module) for module in modules]
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) >= 15


def test_gpu_xla_flags_parse_with_this_jaxlib():
    # XLA validates every flag (and each enum value) on any backend and aborts on an unknown one.
    flags = " ".join(f"--{k}={v}" for k, (v, _) in bench.GPU_XLA_FLAGS.items())
    proc = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                          check=False, env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr[-2000:]


def test_a_failing_case_is_logged_and_the_others_still_run(capsys, monkeypatch, tmp_path):
    """A one-shot GPU run must not lose every case to one broken one: the failure is logged with
    its traceback, listed in the markdown, and the exit status says so."""
    _restore_env_after_test(monkeypatch, "XLA_FLAGS")
    ran = []

    def fake_run_case(case, options, **kwargs):
        ran.append(case.name)
        if case.family == "t5":
            raise RuntimeError("cuDNN graph build failed\nsecond line")
        return []

    monkeypatch.setattr(bench.harness, "run_case", fake_run_case)
    results = tmp_path / "RESULTS.md"
    assert bench.main(["--smoke", "--out", str(tmp_path), "--results-md", str(results), "--no-peers", "--no-plot"]) == 1
    assert ran == [c.name for c in bench.suite_cases("smoke")]                 # the cases after it ran too
    captured = capsys.readouterr()
    assert "case t5-tiny-s16-t8-bs4 FAILED after" in captured.out and "fake_run_case" in captured.out
    assert "1 case(s) failed: t5-tiny-s16-t8-bs4" in captured.err
    for text in ((tmp_path / "smoke.md").read_text(), results.read_text()):
        assert "**Failed**: t5-tiny-s16-t8-bs4 (RuntimeError: cuDNN graph build failed)." in text


def test_attention_option_sets_the_transformer_cases_only():
    cases = [bench.with_attention(c, "xla") for c in bench.suite_cases("gpu")]
    assert {c.config.attention_implementation for c in cases if c.family in ("bert", "t5")} == {"xla"}
    resnet = next(c for c in cases if c.family == "resnet")
    assert resnet == next(c for c in bench.suite_cases("gpu") if c.family == "resnet")
    assert bench.with_attention(cases[0], None) is cases[0]


def test_cudnn_attention_preflight_decides_the_gpu_suites_attention():
    assert bench.cudnn_attention_preflight() != ""            # no cuDNN on CPU: a reason, not a crash
    ran = []

    def preflight(problem):
        return lambda: ran.append(problem) or problem

    assert bench.choose_attention(None, "gpu", preflight("")) == (None, "")
    assert bench.choose_attention("auto", "gpu", preflight("boom"))[0] == "xla"
    assert bench.choose_attention("cudnn", "gpu", preflight("boom")) == ("cudnn", "")   # asked for: kept
    assert bench.choose_attention(None, "cpu", preflight("boom")) == (None, "")         # CPU: no cuDNN anyway
    assert ran == ["", "boom"]


def test_jaxtune_bench_passes_every_option_to_the_harness(monkeypatch):
    """`jaxtune bench --smoke ...` (the README's form): the options reach the harness in order."""
    from jaxtune import cli

    got = []
    monkeypatch.setattr(bench, "main", lambda argv: got.append(argv) or 0)
    argv = ["--smoke", "--cases", "bert-tiny-s16-bs4", "--no-peers", "--help"]
    assert cli.main(["bench", *argv]) == 0 and got == [argv]
    with pytest.raises(SystemExit):
        cli.main(["eval", "run", "--no-such-option"])


def test_xla_cost_counts_every_dot_of_a_lowered_program():
    """FLOPs come from the lowered program: 2*m*k*n per product, before XLA's passes (float32)."""
    import jax
    import jax.numpy as jnp

    from jaxtune.bench.measure import xla_cost

    a, b = jnp.ones((64, 32), jnp.float32), jnp.ones((32, 16), jnp.float32)
    lowered = jax.jit(lambda a, b: (a @ b) @ b.T).lower(a, b)
    assert xla_cost(lowered) == 2 * 64 * 32 * 16 * 2
    assert xla_cost(lowered.compile(), "bytes accessed") > 0


def test_median_call_seconds_warms_up_once_then_times_each_round():
    calls = []
    seconds = bench.median_call_seconds(lambda: calls.append(1), rounds=5)
    assert len(calls) == 6 and 0 <= seconds < 1
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        bench.median_call_seconds(lambda: None, rounds=0)
