"""benchmarks/cpu_matmul_kernels.py: its table and its in-process XLA worker (the per-library
subprocesses and the timings themselves are the benchmark's, not the tests')."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_matmul_kernels.py"


def _script():
    spec = importlib.util.spec_from_file_location("cpu_matmul_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_gives_each_library_its_ratio_to_pytorch():
    mk = _script()
    shapes = ["1024,384,1536", "8,4,2"]
    results = {"XLA:CPU, Eigen": [{"shape": s, "gflops": g, "kernel": "dot"} for s, g in zip(shapes, (150.0, 3.0))],
               "PyTorch (MKL)": [{"shape": s, "gflops": g, "kernel": "-"} for s, g in zip(shapes, (300.0, 2.0))]}
    table = mk.markdown(results, shapes, "## header")
    assert "| 1024x384 @ 384x1536 (intermediate dense) | 8x4 @ 4x2 (shape) |" in table
    assert "| XLA:CPU, Eigen | dot | 150 (0.50x) | 3 (1.50x) |" in table
    assert "| PyTorch (MKL) | - | 300 (1.00x) | 2 (1.00x) |" in table


def test_worker_times_each_shape_and_reads_the_compiled_dot():
    rows = _script().xla_worker(["16,8,4", "4,4,4"], rounds=1)
    assert [r["shape"] for r in rows] == ["16,8,4", "4,4,4"]
    assert all(r["gflops"] >= 0 and r["kernel"] in ("ynn_fusion", "dot") for r in rows)
