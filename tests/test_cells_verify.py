"""experiments/runs.py ``Cells(verify=REGEX)``: a cached cell whose label matches is trained again and
must equal its file in every number (within a relative 1e-4 when another processor computed it), else
``CellMismatch`` names the cell, its file and the fields that differ; other cells are only read. A fake
``run`` stands in for training."""
import json
import os
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

from member_trainer import extend_past_edges, grid_then_seeds  # noqa: E402
from protocol import cpu_description  # noqa: E402
from runs import EXTEND, CellMismatch, Cells  # noqa: E402
from test_grid_extension import SEEDS, fake_run  # noqa: E402


def _rewrite(path: str, **changes) -> None:
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f)


def test_a_matching_cached_cell_is_trained_again_and_must_equal_its_file(tmp_path):
    compute = lambda: {"val": [0.5, 0.25], "test": [0.125, 0.75], "points": [(1e-3, None)]}
    cells = Cells(str(tmp_path))
    path = cells.path("m", 100, "full", [1])
    cells.get(path, compute, "m n=100 full")
    _rewrite(path, seconds=600.0)

    checked = Cells(str(tmp_path), verify="n=100")
    assert checked.will_check(path, "m n=100 full") and not checked.will_check(path + ".missing", "m n=100 full")
    calls = []
    record = checked.get(path, lambda: calls.append(1) or compute(), "m n=100 full")
    assert calls == [1] and record["seconds"] == 600.0 and checked.trained == 0
    assert [label for label, _ in checked.verified] == ["m n=100 full"]
    assert "1 of them trained again to the same numbers (m n=100 full: 0.0 min)" in checked.note("results")
    checked.get(path, lambda: pytest.fail("a cell is checked once per invocation, then read"), "m n=100 full")
    assert len(checked.verified) == 1 and not checked.will_check(path, "m n=100 full")

    other = Cells(str(tmp_path), verify="n=500")
    other.get(path, lambda: pytest.fail("a label the pattern does not match is only read"), "m n=100 full")
    assert other.verified == [] and "trained again" not in other.note("results")
    assert other.note("results").endswith(f"(trained in 10.0 min on {cpu_description()})")   # who computed it

    reordered = Cells(str(tmp_path), verify="n=3")     # a file written with sorted keys equals the same dict
    ordered_path = reordered.path("m", 3, "keys", [1])
    with open(ordered_path, "w", encoding="utf-8") as f:
        json.dump({"settings": {"b": 1, "a": {"d": 2, "c": 3}}, "val": [0.5]}, f, indent=1)
    reordered.get(ordered_path, lambda: {"val": [0.5], "settings": {"a": {"c": 3, "d": 2}, "b": 1}}, "m n=3 keys")
    assert [label for label, _ in reordered.verified] == ["m n=3 keys"]
    with open(ordered_path, encoding="utf-8") as f:    # a check names the processor a file did not name
        assert json.load(f) == {"settings": {"a": {"c": 3, "d": 2}, "b": 1}, "val": [0.5], "machine": cpu_description()}
    assert reordered.read_machines == [cpu_description()]

    nan = lambda: {**compute(), "val": [float("nan"), 0.25]}     # JSON writes NaN; the same NaN is no change
    nan_path = checked.path("m", 7, "nan", [1])
    Cells(str(tmp_path)).get(nan_path, nan, "m n=7 nan")
    assert Cells(str(tmp_path), verify="n=7").get(nan_path, nan, "m n=7 nan")["test"] == [0.125, 0.75]

    _rewrite(path, test=[0.125, 0.7500001])
    with pytest.raises(CellMismatch, match=r"cell 'm n=100 full' \(.*m_n100_full_.*\.json\) trained again differs "
                                           r"from its file in test: now \[0.125, 0.75\], file \[0.125, 0.7500001\]\. "
                                           r"It was computed on this processor \(.*\), which must give it bit for bit\. "):
        Cells(str(tmp_path), verify="full").get(path, compute, "m n=100 full")
    # Computed on another processor, whose vector extensions round differently: within a relative 1e-4
    # the cell agrees (the file keeps its numbers and processor, and the run line counts it apart) ...
    _rewrite(path, machine="Other CPU (x86_64: avx2, avx512f)")
    rounded = Cells(str(tmp_path), verify="full")
    assert rounded.get(path, compute, "m n=100 full")["test"] == [0.125, 0.7500001]
    assert rounded.verified == [] and [label for label, _ in rounded.rounded] == ["m n=100 full"]
    assert rounded.note("results").endswith("; 1 computed on another processor trained again to numbers within a "
                                            "relative 0.0001 of theirs (m n=100 full: 1.3e-07)")
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["machine"] == "Other CPU (x86_64: avx2, avx512f)"
    # ... and beyond it, or in anything but a float, it differs, and the error names both processors.
    _rewrite(path, test=[0.125, 0.7501])
    with pytest.raises(CellMismatch, match=r"It was computed on Other CPU \(x86_64: avx2, avx512f\), this machine is .*"
                                           r"Its largest relative difference, 1\.3e-04, is more than the 0\.0001 allowed"):
        Cells(str(tmp_path), verify="full").get(path, compute, "m n=100 full")
    unnamed = checked.path("m", 9, "unnamed", [1])
    with open(unnamed, "w", encoding="utf-8") as f:
        json.dump({**compute(), "steps": 464}, f)        # no "machine": treated as another processor's
    with pytest.raises(CellMismatch, match=r"in steps: now 463, file 464\. It does not say which processor .*"
                                           r"Something other than a float differs, which rounding cannot explain"):
        Cells(str(tmp_path), verify="n=9").get(unnamed, lambda: {**compute(), "steps": 463}, "m n=9 unnamed")
    nearly = lambda: {**compute(), "steps": 464, "test": [0.125, 0.75000001]}
    assert Cells(str(tmp_path), verify="n=9").get(unnamed, nearly, "m n=9 unnamed")["test"] == [0.125, 0.75]


def test_a_grown_cell_checks_its_base_grid_and_its_growth(tmp_path):
    calls = []
    run = fake_run(1e-2, calls)
    trained = lambda: grid_then_seeds(run, [(1e-3, None), (3e-3, None)], SEEDS)
    grow = lambda base: extend_past_edges(run, base, SEEDS, EXTEND)
    cells = Cells(str(tmp_path))
    paths = cells.extended_paths("m", 100, "full", [[1e-3, 3e-3], list(SEEDS)])
    first = cells.get_extended(paths, trained, grow, "m n=100 full")

    calls.clear()
    checked = Cells(str(tmp_path), verify="^m ")
    assert checked.get_extended(paths, trained, grow, "m n=100 full") == first
    assert len(calls) == 5 and len(checked.verified) == 1       # base grid, its seeds, 2 grown points, new seeds

    _rewrite(paths[0], seed0_val=[0.7, 0.8])
    with pytest.raises(CellMismatch, match=r"'m n=100 full \(base grid\)'.* seed0_val: now \[0\.8, 0\.847712\], "
                                           r"file \[0\.7, 0\.8\]"):
        Cells(str(tmp_path), verify="full").get_extended(paths, trained, grow, "m n=100 full")


def test_compute_counts_every_cell_read_or_trained_with_its_recorded_time_and_processor(tmp_path):
    compute = lambda: {"val": [0.5], "test": [0.25]}
    cells = Cells(str(tmp_path))
    paths = [cells.path("m", n, "full", [1]) for n in (100, 200, 300)]
    for n, path in zip((100, 200, 300), paths):
        cells.get(path, compute, f"m n={n} full")
    _rewrite(paths[0], seconds=600.0, machine="Other (x86_64: avx2)")
    _rewrite(paths[1], seconds=1200.0)
    with open(paths[2], encoding="utf-8") as f:
        unnamed = {k: v for k, v in json.load(f).items() if k not in ("machine", "seconds")}
    with open(paths[2], "w", encoding="utf-8") as f:
        json.dump(unnamed, f)                       # an older cell: no time, no processor

    later = Cells(str(tmp_path))
    for n, path in zip((100, 200, 300), paths):
        later.get(path, lambda: pytest.fail("cached"), f"m n={n} full")
    fresh = later.path("m", 400, "full", [1])
    later.get(fresh, compute, "m n=400 full")       # trained now: counted with its own time
    with open(fresh, encoding="utf-8") as f:
        now = json.load(f)["seconds"]
    assert later.compute() == {"results": 4, "minutes": round((1800.0 + now) / 60, 1), "unrecorded_times": 1,
                               "processors": {"Other (x86_64: avx2)": 1, cpu_description(): 2, "not recorded": 1}}


def test_runs_docstring_examples_hold():
    """runs.py's examples: cache paths, the cache note (read times summed, unrecorded ones counted),
    shown paths, step budgets, batch order."""
    import doctest

    import runs

    assert doctest.testmod(runs).failed == 0
