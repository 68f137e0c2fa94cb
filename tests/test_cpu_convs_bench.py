"""benchmarks/cpu_convs.py: its table (the timings themselves are the benchmark's, not the tests')."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_convs.py"


def test_table_gives_each_call_both_forms_and_the_speed_up():
    spec = importlib.util.spec_from_file_location("cpu_convs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [{"model": "m", "what": "train step, 1 run", "form": "conv", "seconds": 1.2},
            {"model": "m", "what": "train step, 1 run", "form": "cpu", "seconds": 0.3},
            {"model": "m", "what": "evaluation forward", "form": "conv", "seconds": 0.25},
            {"model": "m", "what": "evaluation forward", "form": "cpu", "seconds": 0.05}]
    table = module.markdown(rows, "## header")
    assert table.startswith("## header\n")
    assert "| m | train step, 1 run | 1.200 | 0.300 | 4.0x |" in table
    assert "| m | evaluation forward | 0.250 | 0.050 | 5.0x |" in table
