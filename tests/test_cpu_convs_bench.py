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


def test_rows_table_and_results_section_are_written_together(tmp_path):
    from jaxtune.bench import write_rows_and_table

    results = tmp_path / "RESULTS.md"
    paths = write_rows_and_table(tmp_path / "out", "cpu-convs", [{"a": 1}], "## t\n| x |\n", results_md=results)
    assert paths["jsonl"].read_text().strip() == '{"a": 1}' and paths["markdown"].read_text() == "## t\n| x |\n"
    assert "<!-- results:cpu-convs:begin -->\n## t\n| x |\n<!-- results:cpu-convs:end -->" in results.read_text()
    write_rows_and_table(tmp_path / "out2", "other", [], "## u\n", results_md="none")
    assert "results:other" not in results.read_text()
