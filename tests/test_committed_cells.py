"""The per-cell caches committed under experiments/results/<experiment>/ belong to the scripts' full
protocol (seeds 0-2): no stale cell (a protocol change, such as a grid, a size or an override,
renames its cells), and every cell of every model the committed results file reports is there, so
the file can be rewritten from them without training."""
import importlib
import json
import os
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "experiments")
sys.path.insert(0, EXPERIMENTS)

from runs import Cells  # noqa: E402


@pytest.mark.parametrize("script, arms", [("pretrained_vs_scratch", "INITS"), ("freezing", "STRATEGIES")])
def test_the_committed_cells_are_the_full_protocols(script, arms):
    module = importlib.import_module(script)
    cells = Cells(os.path.join(EXPERIMENTS, "results", script))
    needed = {m.family.name: {os.path.basename(path) for n in m.family.sizes for arm in getattr(module, arms)
                              for path in cells.extended_paths(m.family.name, n, arm, module.depends_on(m, n, (0, 1, 2)))}
              for m in module.FULL}
    committed = {f for f in os.listdir(cells.folder) if f.endswith(".json")}
    assert committed <= set().union(*needed.values()), "stale cells: rerun the experiment and commit its new cells"
    with open(os.path.join(EXPERIMENTS, "results", f"{script}.json"), encoding="utf-8") as f:
        reported = {claim["claim"].split(":")[0] for claim in json.load(f)["claims"]}
    assert reported and reported <= set(needed)
    for name in reported:
        assert needed[name] <= committed, f"{name}: the results file reports cells that are not committed"
