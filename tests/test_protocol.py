"""experiments/protocol.py (seed statistics, selection on validation, tables, plots, headers,
sidecars) and experiments/index.py (RESULTS.md is current). Pure numpy/scipy: no JAX work."""
import json
import math
import os
import sys
import time

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

import index  # noqa: E402  (experiments/index.py)
import protocol  # noqa: E402  (experiments/protocol.py)


def test_mean_std_is_the_sample_std():
    values = [0.71, 0.74, 0.69, 0.73]
    mean, std = protocol.mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-15)                # float64
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert math.isnan(protocol.mean_std([0.5])[1])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        protocol.mean_std([])


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_paired_interval_matches_scipy(confidence):
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.7, 0.02, 5), rng.normal(0.68, 0.02, 5)
    mean, low, high = protocol.paired_interval(a, b, confidence)
    ci = stats.ttest_rel(a, b).confidence_interval(confidence)
    assert mean == pytest.approx(np.mean(a - b), abs=1e-12)                 # float64
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    one = stats.ttest_1samp(a - b, 0.0).confidence_interval(confidence)
    assert (low, high) == pytest.approx((one.low, one.high), abs=1e-12)


def test_paired_interval_rejects_unpaired_input():
    with pytest.raises(ValueError, match="same non-zero length"):
        protocol.paired_interval([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="confidence"):
        protocol.paired_interval([0.1, 0.2], [0.0, 0.1], confidence=95)
    mean, low, high = protocol.paired_interval([0.3], [0.1])
    assert mean == pytest.approx(0.2) and math.isnan(low) and math.isnan(high)


def test_verdicts():
    assert [protocol.verdict(*i) for i in [(0.01, 0.02), (-0.01, 0.02), (-0.02, -0.01), (math.nan, math.nan)]] == [
        "shown", "not shown", "contradicted", "not shown"]
    assert protocol.combined_verdict(["shown", "shown"]) == "shown"
    assert protocol.combined_verdict(["contradicted", "contradicted"]) == "contradicted"
    assert protocol.combined_verdict(["shown", "contradicted"]) == "contradicted"   # one counterexample refutes it
    assert protocol.combined_verdict(["shown", "not shown"]) == "not shown"
    with pytest.raises(ValueError, match="verdicts"):
        protocol.combined_verdict(["maybe"])


def test_select_on_validation_never_looks_at_test():
    val = {1e-3: {0: 0.70, 1: 0.72, 2: 0.71}, 3e-3: {0: 0.75, 1: 0.74, 2: 0.76}, 1e-2: {0: 0.60, 1: 0.9, 2: 0.6}}
    test = {1e-3: {0: 0.99, 1: 0.99, 2: 0.99}, 3e-3: {2: 0.73, 0: 0.72, 1: 0.70}, 1e-2: {0: 0.1, 1: 0.1, 2: 0.1}}
    chosen = protocol.select_on_validation(val, test)
    assert chosen.point == 3e-3                          # best mean validation, not the best test (1e-3)
    assert chosen.val_mean == pytest.approx(0.75)
    assert chosen.test == {0: 0.72, 1: 0.70, 2: 0.73}    # per seed, in seed order
    assert protocol.select_on_validation(val, test, mode="min").point == 1e-2   # lowest mean (0.7 vs 0.71)


def test_select_on_validation_ties_go_to_the_first_point_and_seeds_must_match():
    val = {"a": {0: 0.5, 1: 0.7}, "b": {0: 0.7, 1: 0.5}}
    test = {"a": {0: 0.1, 1: 0.2}, "b": {0: 0.3, 1: 0.4}}
    assert protocol.select_on_validation(val, test).point == "a"
    with pytest.raises(ValueError, match="grid point 'b' has validation seeds"):
        protocol.select_on_validation({"a": {0: 0.5, 1: 0.7}, "b": {0: 0.7}}, test)
    with pytest.raises(KeyError, match="'b' has validation but no test"):
        protocol.select_on_validation(val, {"a": test["a"]})


def test_formatting_and_markdown_table():
    assert protocol.format_mean_std([0.5, 0.7]) == "0.6000 ± 0.1414"
    assert protocol.format_mean_std([0.5]) == "0.5000"
    assert protocol.format_interval(0.04, 0.01, 0.07, 2) == "+0.04 [+0.01, +0.07]"
    assert protocol.format_interval(0.04, math.nan, math.nan, 2) == "+0.04 [n/a]"
    assert protocol.markdown_table(["a", "b"], [[1, "x|y"]]) == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError, match="2 headers"):
        protocol.markdown_table(["a", "b"], [[1]])


def test_plot_is_a_png_and_the_same_numbers_give_the_same_bytes(tmp_path):
    series = {"random": ([0.5, 0.6, 0.7], [0.02, 0.01, math.nan]), "w2v": ([0.55, 0.62, 0.7], [0.01, 0.01, 0.0])}
    paths = [protocol.plot_lines(str(tmp_path / f"p{i}.png"), [100, 1000, 30000], series, xlabel="n",
                                 ylabel="accuracy", title="t", log_x=True) for i in range(2)]
    data = [open(p, "rb").read() for p in paths]
    assert data[0][:8] == b"\x89PNG\r\n\x1a\n" and data[0] == data[1]
    with pytest.raises(ValueError, match="series 'bad' has 1 means"):
        protocol.plot_lines(str(tmp_path / "bad.png"), [1, 2], {"bad": ([0.1], [0.1])}, xlabel="", ylabel="",
                            title="")


def test_panels_are_one_png_and_the_same_numbers_give_the_same_bytes(tmp_path):
    panels = {"minilm": ([200, 1600], {"probe": ([0.5, 0.6], [0.02, math.nan]), "full": ([0.55, 0.7], [0.01, 0.0])}),
              "mobilenet_v2": ([100, 2000], {"probe": ([0.7, 0.9], [0.03, 0.01])})}
    paths = [protocol.plot_panels(str(tmp_path / f"p{i}.png"), panels, xlabel="n", ylabel="accuracy", title="t",
                                  log_x=True) for i in range(2)]
    data = [open(p, "rb").read() for p in paths]
    assert data[0][:8] == b"\x89PNG\r\n\x1a\n" and data[0] == data[1]
    with pytest.raises(ValueError, match="panel 'm', series 'bad' has 1 means"):
        protocol.plot_panels(str(tmp_path / "bad.png"), {"m": ([1, 2], {"bad": ([0.1], [0.1])})}, xlabel="", ylabel="",
                             title="")
    with pytest.raises(ValueError, match="at least one panel"):
        protocol.plot_panels(str(tmp_path / "none.png"), {}, xlabel="", ylabel="", title="")


def test_header_states_command_machine_versions_seeds_and_only_the_run_line_changes():
    a = protocol.header_lines("T", "python experiments/x.py --quick", [0, 1, 2], 0.0, 1.5, ("scipy",))
    b = protocol.header_lines("T", "python experiments/x.py --quick", [0, 1, 2], 3600.0, 0.25, ("scipy",))
    text = "\n".join(a)
    for expected in ("# T", "- command: `python experiments/x.py --quick`", "- run: 1970-01-01 00:00 UTC",
                     "load average 1.50", f"{os.cpu_count()} CPU cores", "jax ", "numpy ", "scipy ",
                     "- seeds: 0, 1, 2"):
        assert expected in text
    assert a != b and protocol.strip_run_line("\n".join(a)) == protocol.strip_run_line("\n".join(b))
    assert protocol.command_line("x.py", ["--quick", "--out", "a b"]) == "python experiments/x.py --quick --out 'a b'"


def test_sidecar_round_trip_and_errors(tmp_path):
    results = tmp_path / "results"
    claim = {"claim": "A beats B", "verdict": "shown", "summary": "+0.03 [+0.01, +0.05]"}
    protocol.write_sidecar(str(results / "x.json"), title="X", command="python experiments/x.py",
                           results="results/x.md", claims=[claim])
    assert index.read_sidecar(str(results / "x.json")) == {
        "title": "X", "command": "python experiments/x.py", "results": "results/x.md", "claims": [claim]}
    with pytest.raises(ValueError, match="verdict 'likely'"):
        protocol.write_sidecar(str(results / "y.json"), title="Y", command="c", results="r",
                               claims=[{**claim, "verdict": "likely"}])
    with pytest.raises(ValueError, match=r"lacks \['summary'\]"):
        protocol.write_sidecar(str(results / "y.json"), title="Y", command="c", results="r",
                               claims=[{"claim": "c", "verdict": "shown"}])


def test_sidecar_keeps_what_the_results_cost_and_refuses_an_incomplete_account(tmp_path):
    claim = {"claim": "A beats B", "verdict": "shown", "summary": "+0.03 [+0.01, +0.05]"}
    compute = protocol.compute_summary([60.0, 90.0, None], ["EPYC (x86_64: avx2)", None, "EPYC (x86_64: avx2)"])
    assert compute == {"results": 3, "minutes": 2.5, "unrecorded_times": 1,
                       "processors": {"EPYC (x86_64: avx2)": 2, "not recorded": 1}}
    path = str(tmp_path / "x.json")
    protocol.write_sidecar(path, title="X", command="c", results="results/x.md", claims=[claim], compute=compute)
    assert index.read_sidecar(path)["compute"] == compute
    retrained = path.replace("x.json", "x2.json")        # the same results, a cell trained again: other minutes
    protocol.write_sidecar(retrained, title="X", command="c", results="results/x.md", claims=[claim],
                           compute={**compute, "minutes": 7.5})
    first, second = open(path).read(), open(retrained).read()
    assert first != second and protocol.strip_training_time(first) == protocol.strip_training_time(second)
    with pytest.raises(ValueError, match=r"'compute' lacks \['processors'\]"):
        protocol.write_sidecar(path, title="X", command="c", results="r", claims=[claim],
                               compute={"results": 1, "minutes": 1.0, "unrecorded_times": 0})
    (tmp_path / "bad.json").write_text(json.dumps({"title": "B", "command": "c", "claims": [claim],
                                                   "compute": {"minutes": 3}}))
    with pytest.raises(ValueError, match="bad.json: .compute. must hold"):
        index.read_sidecar(str(tmp_path / "bad.json"))


def test_cost_table_sums_recorded_times_or_reads_the_run_line_and_compares_with_the_budget(tmp_path):
    root, results = tmp_path / "experiments", tmp_path / "experiments" / "results"
    results.mkdir(parents=True)
    claim = {"claim": "x beats y", "verdict": "shown", "summary": "+0.1 [+0.05, +0.15]"}
    protocol.write_sidecar(str(results / "cached.json"), title="Cached | one", command="python experiments/c.py",
                           results="results/cached.md", claims=[claim],
                           compute=protocol.compute_summary([3000.0, 2700.0, None], ["P (x86_64: avx2)", None, None]))
    protocol.write_sidecar(str(results / "whole.json"), title="Whole", command="python experiments/w.py",
                           results="results/whole.md", claims=[claim])
    header = protocol.header_lines("Whole", "python experiments/w.py", [0, 1, 2], time.time() - 750.0, 0.5)
    (results / "whole.md").write_text("\n".join(header) + "\n")
    protocol.write_sidecar(str(results / "lost.json"), title="Lost", command="python experiments/l.py",
                           results="results/lost.md", claims=[claim])
    text = index.render(str(root))
    table = text[text.index("## What each experiment costs"):text.index("## Not under the protocol yet")]
    assert ("| [Cached \\| one](results/cached.md) | 3 cached results | 95.0 min (1 results without a recorded "
            "time) | P (x86_64: avx2): 1, not recorded: 2 | over: 2.1x |") in table
    assert (f"| [Whole](results/whole.md) | trained in full by every run | 12.5 min (its last run) | "
            f"{protocol.cpu_description()} | within |") in table
    assert "| [Lost](results/lost.md) | trained in full by every run | not stated (no run line) |" in table
    assert f"about {index.BUDGET_MINUTES} min per experiment" in table


def _readme(path, body="old findings\n"):
    path.write_text(f"# R\n\n### The protocol\n\n{index.README_START}\n{body}{index.README_END}\n\n## Next\n")


def test_index_lists_claims_flat_sidecars_and_files_not_under_protocol(tmp_path):
    root, results = tmp_path / "experiments", tmp_path / "experiments" / "results"
    results.mkdir(parents=True)
    _readme(tmp_path / "README.md")
    protocol.write_sidecar(str(results / "a.json"), title="A", command="python experiments/a.py",
                           results="results/a.md", claims=[
                               {"claim": "x beats y", "verdict": "shown", "summary": "+0.1 [+0.05, +0.15]"},
                               {"claim": "y beats z", "verdict": "contradicted", "summary": "-0.2 [-0.3, -0.1]"}])
    (results / "a.md").write_text("# A\n")
    (results / "b.json").write_text(json.dumps({"claim": "rehearsal | helps", "verdict": "not shown",
                                                "summary": "+0.01 [-0.02, +0.04]",
                                                "command": "python experiments/b.py"}))
    (results / "old.md").write_text("# Old thing\n\nWritten by `python experiments/old.py --x` ... One seed.\n")
    (results / "three.md").write_text("# Three\n\n`jaxtune finetune c.yaml` Seeds 0, 1, 2 (init).\n")
    text = index.render(str(root))
    assert "| x beats y | **shown** | +0.1 [+0.05, +0.15] | `python experiments/a.py` | [results/a.md]" in text
    assert "| y beats z | **contradicted** |" in text
    assert "| rehearsal \\| helps | **not shown** |" in text and "[results/b.md](results/b.md)" in text
    assert ("| [results/old.md](results/old.md) | Old thing | not under protocol (one seed) | "
            "`python experiments/old.py --x` |") in text
    assert "not under protocol (seeds 0, 1, 2, hyperparameters not chosen on validation)" in text
    assert "results/a.md) | A | not under" not in text          # a.md has a sidecar: under the protocol
    assert ("| [../README.md#quick-start](../README.md#quick-start) | The demo: linear probe vs full fine-tuning"
            in text) and "not under protocol (one seed) | `python -m jaxtune.demo --write-readme README.md` |" in text
    assert index.main(["--root", str(root), "--check"]) == 1
    assert index.main(["--root", str(root)]) == 0 and index.main(["--root", str(root), "--check"]) == 0
    (results / "bad.json").write_text('{"claim": "c", "verdict": "yes", "summary": "s", "command": "x"}')
    with pytest.raises(ValueError, match="bad.json: claim 0 has verdict 'yes'"):
        index.render(str(root))


def test_readme_findings_one_sentence_per_claim_one_line_per_result_not_under_protocol(tmp_path, capsys):
    root, results = tmp_path / "experiments", tmp_path / "experiments" / "results"
    results.mkdir(parents=True)
    protocol.write_sidecar(str(results / "a.json"), title="A", command="python experiments/a.py",
                           results="results/a.md", claims=[
                               {"claim": "x beats y", "verdict": "shown", "summary": "+0.1 [+0.05, +0.15]"},
                               {"claim": "z (n <= 100)", "verdict": "contradicted", "summary": "-0.2 [-0.3, -0.1]",
                                "sentence": "Freezing helps with few labels, as commonly advised."}])
    (results / "old.md").write_text("# Old thing\n\n`python experiments/old.py` One seed.\n")
    block = index.findings_markdown(str(root))
    assert block.splitlines() == [
        "- A (`python experiments/a.py`, [experiments/results/a.md](experiments/results/a.md)):",
        "  - x beats y: **shown** (+0.1 [+0.05, +0.15]).",
        "  - Freezing helps with few labels, as commonly advised: **contradicted** (-0.2 [-0.3, -0.1]).",
        "- Not under the protocol yet (fewer than 3 seeds, or hyperparameters not chosen on validation):",
        "  - [Old thing](experiments/results/old.md): one seed; `python experiments/old.py`.",
        f"  - [{index.DEMO['title']}](#quick-start): one seed; `python -m jaxtune.demo --write-readme README.md`."]
    assert index.read_sidecar(str(results / "a.json"))["claims"][1]["sentence"].startswith("Freezing helps")
    readme = tmp_path / "README.md"
    _readme(readme)
    before = readme.read_text()
    assert index.main(["--root", str(root)]) == 0
    after = readme.read_text()
    assert after == before.replace("old findings\n", block + "\n")          # only the block changed
    assert index.main(["--root", str(root), "--check"]) == 0
    readme.write_text(after.replace("**shown**", "**not shown**"))           # a hand edit inside the block
    assert index.main(["--root", str(root), "--check"]) == 1
    assert f"{readme} is not current; run: python experiments/index.py" in capsys.readouterr().err
    readme.write_text("# R without markers\n")
    assert index.main(["--root", str(root)]) == 2
    assert "must hold exactly one findings block" in capsys.readouterr().err
    assert index.main(["--root", str(root), "--readme", str(tmp_path / "nowhere.md")]) == 2
    assert "nowhere.md" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty 'sentence'"):
        protocol.write_sidecar(str(results / "c.json"), title="C", command="c", results="r",
                               claims=[{"claim": "c", "verdict": "shown", "summary": "s", "sentence": " "}])


def test_readme_findings_are_current():
    """README.md's findings block is what `python experiments/index.py` writes from the sidecars now."""
    with open(os.path.join(EXPERIMENTS, os.pardir, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert index.with_findings(readme, index.findings_markdown(EXPERIMENTS)) == readme, (
        "README.md's experiment findings are not current; run: python experiments/index.py")


def test_results_index_is_current():
    """experiments/RESULTS.md is what `python experiments/index.py` writes from the sidecars now."""
    with open(os.path.join(EXPERIMENTS, "RESULTS.md"), encoding="utf-8") as f:
        assert f.read() == index.render(EXPERIMENTS), "run: python experiments/index.py"


def test_edge_lines_name_edge_choices_and_tied_grids_apart():
    lines = protocol.edge_lines([("low", [1e-4, 3e-4, 1e-3], 1e-4, [0.8, 0.7, 0.6]),
                                 ("middle", [1e-4, 3e-4, 1e-3], 3e-4, [0.6, 0.8, 0.7]),
                                 ("stuck", [1e-4, 3e-4, 1e-3], 1e-4, [0.105, 0.105, 0.105]),
                                 ("one point", [1e-4], 1e-4, [0.5])])
    assert len(lines) == 4 and lines[0] == lines[2] == ""
    assert lines[1].endswith(": low (0.0001, the lowest).")
    assert lines[3].startswith("Every grid point tied on validation") and lines[3].endswith(": stuck (0.105).")
    assert protocol.edge_lines([("middle", [1e-4, 3e-4, 1e-3], 3e-4, [0.6, 0.8, 0.7])]) == []


def test_protocol_docstring_examples_hold():
    import doctest

    assert doctest.testmod(protocol).failed == 0
